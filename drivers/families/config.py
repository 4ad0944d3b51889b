"""Parameters of the software crossbar's device families other than the default RRAM one.

All values are SI. Each default carries its source; ``research`` tags follow
``research/device_families.md``: values read in a public model's source code, values
from a paper's text, and engineering choices (marked "choice"), which are not measurements.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..device_model import apply_preset
from ..limits import (ABSOLUTE_MAX_PULSE_WIDTH_S, ABSOLUTE_MAX_VOLTAGE_V, ABSOLUTE_MIN_PULSE_WIDTH_S,
                      ABSOLUTE_MIN_VOLTAGE_V)


class _Strict(BaseModel):
    # Strict and finite like every number of a protocol: an infinite or string parameter would give a
    # simulated array that measures NaN.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class PeripheryFields(_Strict):
    """The read path, MVM periphery and virtual-clock timing every family shares (as DeviceConfig has them)."""

    window_spread: float = Field(0.05, ge=0, le=1, description="sigma of ln(g_min), ln(g_max) across devices")
    initial_state: float = Field(0.0, ge=0, le=1, description="fresh cells' state as a fraction of their window")
    read_reference_v: float = Field(0.2, ge=ABSOLUTE_MIN_VOLTAGE_V, le=ABSOLUTE_MAX_VOLTAGE_V,
                                    description="voltage at which conductance is defined (V)")
    iv_nonlinearity_per_v2: float = Field(0.5, ge=0, le=100,
                                          description="kappa in I = g V (1 + kappa V^2) / (1 + kappa V_ref^2)")
    read_noise_correlation_s: float = Field(1e-3, ge=1e-9, le=1e6,
                                            description="time over which MVM read fluctuations stay correlated (s)")
    dac_bits: int | None = Field(8, ge=1, le=24, description="input DAC resolution (signed, bits); None: exact")
    dac_range_v: float = Field(0.25, ge=ABSOLUTE_MIN_VOLTAGE_V, le=ABSOLUTE_MAX_VOLTAGE_V,
                               description="input DAC full scale (V); also caps the read voltage")
    adc_bits: int | None = Field(10, ge=1, le=24, description="column ADC resolution (signed, bits); None: exact")
    adc_range_a: float | None = Field(None, ge=1e-12, le=1,
                                      description="column ADC full scale (A); None: rows*g_max*dac_range/4")
    output_noise_a: float = Field(50e-9, ge=0, le=1e-2, description="additive column-current noise sigma (A)")
    read_time_s: float = Field(1e-3, ge=1e-9, le=10, description="duration of one read transaction (s)")
    mvm_time_s: float = Field(1e-6, ge=1e-12, le=10, description="duration of one input vector in an MVM (s)")
    pulse_overhead_s: float = Field(10e-6, ge=0, le=10, description="set-up time of one pulse transaction (s)")


class FaultFields(_Strict):
    """Faults and read offsets (research notes section 5; the rates there are engineering choices except
    the pessimistic ~10 %, which is measured)."""

    stuck_low_rate: float = Field(0.005, ge=0, le=0.5, description="fraction of cells stuck at g_min")
    stuck_high_rate: float = Field(0.002, ge=0, le=0.5, description="fraction of cells stuck at g_max")
    stuck_mid_rate: float = Field(0.003, ge=0, le=0.5,
                                  description="fraction of cells unresponsive to pulses, frozen anywhere in the window")
    intermittent_rate: float = Field(0.0, ge=0, le=0.5,
                                     description="probability per read that a cell reads as open (its g_min)")
    read_offset_a: float = Field(0.0, ge=-1e-6, le=1e-6,
                                 description="static offset current of the read channel (A); mean over columns")
    read_offset_spread_a: float = Field(0.0, ge=0, le=1e-6,
                                        description="column-to-column sigma of the static offset current (A)")
    read_offset_jitter_a: float = Field(0.0, ge=0, le=1e-6, description="per-read sigma of the offset current (A)")

    @model_validator(mode="after")
    def _rates(self):
        if self.stuck_low_rate + self.stuck_high_rate + self.stuck_mid_rate >= 1:
            raise ValueError("stuck_low_rate + stuck_high_rate + stuck_mid_rate must be below 1")
        return self


# ~10 % faulty devices on HfO2 test chips: 11 % "unresponsive to programming pulses" (Li et al.,
# Nat. Commun. 9, 2385 (2018)); ~10 % (Aguirre et al., Electronics 10, 2427 (2021)). The low/high/mid
# split 0.5/0.2/0.3, the intermittent rate and the 1 nA offsets are engineering choices (notes, sec. 7).
PESSIMISTIC_FAULTS: dict[str, Any] = dict(
    stuck_low_rate=0.055, stuck_high_rate=0.022, stuck_mid_rate=0.033, intermittent_rate=1e-3,
    read_offset_a=1e-9, read_offset_spread_a=1e-9, read_offset_jitter_a=1e-9,
)


class PCMConfig(PeripheryFields, FaultFields):
    """A phase-change memory array after IBM's statistical PCM model.

    The model: Nandakumar et al., ICECS 2019 (doi:10.1109/ICECS46596.2019.8964852), as implemented in
    aihwkit ``PCMLikeNoiseModel`` (github.com/IBM/aihwkit, src/aihwkit/inference/noise/pcm.py) and applied
    by Joshi et al., Nat. Commun. 11, 2473 (2020). Every statistical default below is read in that code;
    its polynomials are in :mod:`drivers.families.pcm`. With x = G / g_max:

    * programming noise sigma(x) = (0.26348 + 1.9650 x - 1.1731 x^2) uS * g_max / 25 uS;
    * drift nu = |mu(x) + sigma(x) z|, mu = clip(-0.0155 ln x + 0.0244, 0.049, 0.1),
      sigma = clip(-0.0125 ln x - 0.0059, 0.008, 0.045), G(t) = G_prog ((t + t0) / t0)^-nu;
    * 1/f read noise, relative sigma Q_s(x) sqrt(ln((t + t0 + t_read) / (2 t_read))),
      Q_s = min(0.0088 / max(x^0.65, 1e-3), 0.2).
    """

    family: Literal["pcm"] = "pcm"
    preset: Literal["default", "pessimistic"] = Field("default", description="pessimistic: PESSIMISTIC_PCM")

    g_max_s: float = Field(25e-6, ge=1e-9, le=1e-2, description="median fully crystalline conductance (S); aihwkit")
    # On/off ratio 100 (0.25 to 25 uS): CrossSim PCM_Joshi (github.com/sandialabs/cross-sim).
    g_min_s: float = Field(0.25e-6, ge=1e-12, le=1e-2, description="median fully amorphous conductance (S)")
    prog_noise_scale: float = Field(1.0, ge=0, le=10, description="scale of the programming-noise polynomial")
    drift_scale: float = Field(1.0, ge=0, le=10, description="scale of the drift exponent")
    read_noise_scale: float = Field(1.0, ge=0, le=10, description="scale of the 1/f read noise")
    drift_t0_s: float = Field(20.0, ge=1e-9, le=1e6, description="drift reference time after programming (s)")
    t_read_s: float = Field(250e-9, ge=1e-12, le=1, description="duration of one read for the 1/f integral (s)")

    # Pulse response (engineering choices; see drivers.families.pcm): SET pulses crystallise part of the
    # amorphous plug, moving G a fraction 1 - exp(-r) towards g_max with
    # r = (w / w_ref) exp((V - V_half) / V_slope); a RESET pulse above the melting threshold amorphises a
    # fraction of the cell growing linearly to complete at reset_full_v, whatever its width.
    set_threshold_v: float = Field(0.5, gt=0, le=ABSOLUTE_MAX_VOLTAGE_V, description="SET amplitude below which nothing moves (V)")
    set_v_half: float = Field(1.0, gt=0, le=ABSOLUTE_MAX_VOLTAGE_V, description="SET amplitude with r = 1 at w_ref (V)")
    switching_slope_v: float = Field(0.1, ge=1e-3, le=ABSOLUTE_MAX_VOLTAGE_V, description="V per e-fold of SET rate")
    v_half_spread_v: float = Field(0.03, ge=0, le=1, description="device-to-device sigma of V_half (V)")
    reference_width_s: float = Field(1e-6, ge=ABSOLUTE_MIN_PULSE_WIDTH_S, le=ABSOLUTE_MAX_PULSE_WIDTH_S,
                                     description="pulse width at which r is quoted (s)")
    reset_threshold_v: float = Field(1.2, gt=0, le=ABSOLUTE_MAX_VOLTAGE_V, description="|V| at which melting starts (V)")
    reset_full_v: float = Field(1.6, gt=0, le=ABSOLUTE_MAX_VOLTAGE_V, description="|V| that amorphises the whole cell (V)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return apply_preset(data, PESSIMISTIC_PCM)

    @model_validator(mode="after")
    def _consistent(self) -> "PCMConfig":
        if self.g_min_s >= self.g_max_s:
            raise ValueError(f"g_min_s ({self.g_min_s}) must be below g_max_s ({self.g_max_s})")
        if self.set_threshold_v >= self.set_v_half:
            raise ValueError("set_threshold_v must be below set_v_half")
        if self.reset_threshold_v >= self.reset_full_v:
            raise ValueError("reset_threshold_v must be below reset_full_v")
        return self


# Research notes sec. 7, pessimistic PCM column: HERMES single-device window (aihwkit hermes.py), its
# t0 and t_read; the 1.5x scales are engineering choices.
PESSIMISTIC_PCM: dict[str, Any] = dict(
    PESSIMISTIC_FAULTS, g_max_s=10.35e-6, g_min_s=0.1035e-6, drift_t0_s=200.0, t_read_s=512e-9,
    prog_noise_scale=1.5, drift_scale=1.5, read_noise_scale=1.5,
)


class VCMConfig(PeripheryFields, FaultFields):
    """A filamentary valence-change RRAM array after the Stanford-PKU gap model.

    Jiang et al., IEEE TED 63, 1884 (2016); Verilog-A on nanoHUB, doi:10.4231/D37H1DN48; parameters as in
    the MemTorch port (github.com/coreylammie/MemTorch, memtorch/bh/memristor/Stanford_PKU.py):
    I = I0 exp(-g/g0) sinh(V/V0); dg/dt = -v0 exp(-Ea/kT) sinh(gamma a0/tox qV/kT);
    gamma = gamma0 - beta (g/1 nm)^3; T = T0 + |V I| Rth. Positive pulses SET (close the gap).
    Relaxation, random telegraph noise and faults are the engineering choices of the research notes
    (sections 3-5), anchored on aihwkit's CMO/HfOx model for the relaxation magnitudes.
    """

    family: Literal["vcm"] = "vcm"
    preset: Literal["default", "pessimistic"] = Field("default", description="pessimistic: PESSIMISTIC_VCM")

    # --- Stanford-PKU gap model (MemTorch / nanoHUB code values)
    i0_a: float = Field(1e-3, gt=0, le=1, description="I0 (A)")
    g0_m: float = Field(0.25e-9, gt=0, le=1e-8, description="g0, gap decay length of the current (m)")
    v0_v: float = Field(0.25, gt=0, le=10, description="V0 (V)")
    vel0_m_per_s: float = Field(10.0, gt=0, le=1e6, description="v0, gap velocity prefactor (m/s)")
    ea_ev: float = Field(0.6, gt=0, le=5, description="activation energy (eV)")
    a0_m: float = Field(0.25e-9, gt=0, le=1e-8, description="hopping distance (m)")
    tox_m: float = Field(12e-9, gt=0, le=1e-6, description="oxide thickness (m)")
    gamma0: float = Field(16.0, gt=0, le=100, description="field-enhancement factor at g = 0")
    beta: float = Field(0.8, ge=0, le=100, description="gamma = gamma0 - beta (g / 1 nm)^3")
    f_min_v_per_m: float = Field(1.4e9, ge=0, le=1e11, description="field below which the gap does not move")
    gap_min_m: float = Field(0.2e-9, gt=0, le=1e-8, description="smallest gap (m)")
    gap_max_m: float = Field(1.7e-9, gt=0, le=1e-8, description="largest gap (m)")
    rth_k_per_w: float = Field(2.1e3, ge=0, le=1e8, description="effective thermal resistance (K/W)")
    t0_k: float = Field(298.0, gt=0, le=1000, description="ambient temperature (K)")
    gap_spread_m: float = Field(0.02e-9, ge=0, le=1e-9,
                                description="device-to-device sigma of gap_min, gap_max (m); choice")
    gap_c2c_m: float = Field(0.02e-9, ge=0, le=1e-9,
                             description="cycle-to-cycle sigma of the gap after a pulse that moved it by g0 (m); "
                                         "the variance grows with the distance moved, sd = gap_c2c_m "
                                         "sqrt(|dgap| / g0) (choice: ion hops as a random walk), on the scale "
                                         "of the model's dynamic-mode dg0")
    formed_g_s: float = Field(1.2e-4, gt=0, le=1,
                              description="conductance of a cell stuck high: a filament SET to the 1T1R compliance "
                                          "and never reset (S); choice: what a full 2 V SET at 1 mA compliance "
                                          "reaches, the top of the window")

    # --- relaxation after aihwkit ReRamCMONoiseModel (CMO/HfOx; github.com/IBM/aihwkit,
    # src/aihwkit/inference/noise/reram.py), whose G(t) - G_prog has mean m ln t and sigma b0 + b1 ln t
    # for t >= 1 s. Here, per cell and programming, with s ~ N(0,1) and L = ln(1 + age/t0):
    # G = G_prog + m L + s (b0 age/(age + t0) + b1 L), which is the published law for age >> t0 and is
    # zero at programming (the interpolation below t0 is a choice). The spread exceeds the mean shift
    # at hours to days, so cells move both ways.
    relax_sigma0_s: float = Field(0.41183e-6, ge=0, le=1e-3, description="b0 of the relaxation spread (S)")
    relax_sigma_per_ln_s: float = Field(0.04201e-6, ge=0, le=1e-3, description="b1 of the relaxation spread (S)")
    relax_mean_per_ln_s: float = Field(-0.08900e-6, ge=-1e-3, le=1e-3, description="mean shift per ln t (S)")
    relax_t0_s: float = Field(1.0, ge=1e-9, le=1e6, description="relaxation reference time (s)")

    # --- read noise: white part plus random telegraph noise (research notes sec. 4, engineering choices)
    # The model's I = I0 exp(-g/g0) sinh(V/V0) gives I/V = const * (1 + V^2 / (6 V0^2) + ...): its cubic
    # term is the shared periphery's kappa = 1 / (6 V0^2) = 2.67 / V^2 at V0 = 0.25 V.
    iv_nonlinearity_per_v2: float = Field(1 / (6 * 0.25 ** 2), ge=0, le=100,
                                          description="kappa in I = g V (1 + kappa V^2) / (1 + kappa V_ref^2)")
    read_noise_relative: float = Field(0.01, ge=0, le=1, description="white relative read noise (aihwkit note)")
    read_noise_floor_s: float = Field(0.05e-6, ge=0, le=1, description="absolute read-noise floor (S)")
    rtn_traps_per_cell: float = Field(0.5, ge=0, le=10, description="mean number of two-state traps per cell")
    rtn_amplitude_ref: float = Field(0.01, ge=0, le=1, description="median dG/G of a trap at rtn_g_ref_s")
    rtn_g_ref_s: float = Field(100e-6, gt=0, le=1, description="reference conductance of the RTN amplitude (S)")
    rtn_alpha: float = Field(0.5, ge=0, le=3, description="dG/G grows as (G / g_ref)^-alpha")
    rtn_sigma_ln: float = Field(1.0, ge=0, le=3, description="log-normal spread of trap amplitudes")
    drift_t0_s: float = Field(1.0, ge=1e-9, le=1e6, description="age scale of the conductance cache (s)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return apply_preset(data, PESSIMISTIC_VCM)

    @model_validator(mode="after")
    def _consistent(self) -> "VCMConfig":
        if self.gap_min_m >= self.gap_max_m:
            raise ValueError("gap_min_m must be below gap_max_m")
        return self


PESSIMISTIC_VCM: dict[str, Any] = dict(
    PESSIMISTIC_FAULTS, relax_sigma0_s=2 * 0.41183e-6, relax_sigma_per_ln_s=2 * 0.04201e-6,
    relax_mean_per_ln_s=2 * -0.08900e-6, read_noise_relative=0.02, rtn_traps_per_cell=2.0,
    rtn_amplitude_ref=0.05, rtn_alpha=1.0, rtn_sigma_ln=1.2, gap_spread_m=0.04e-9,
)


def _gap_conductance(cfg: VCMConfig, gap_m: float) -> float:
    """I(V_ref, gap) / V_ref of the Stanford-PKU current law (S)."""
    import math
    v = cfg.read_reference_v
    return cfg.i0_a * math.exp(-gap_m / cfg.g0_m) * math.sinh(v / cfg.v0_v) / v


# The window of a gap model follows from its gap bounds; the periphery sizes its ADC from g_max_s.
VCMConfig.g_max_s = property(lambda self: _gap_conductance(self, self.gap_min_m))
VCMConfig.g_min_s = property(lambda self: _gap_conductance(self, self.gap_max_m))
