"""Parameters of the software crossbar's physical device model.

All values are SI (siemens, volts, seconds, amperes). The defaults describe a
filamentary HfOx/TaOx 1T1R RRAM array in the ranges reported in the literature;
they are representative, not a fit to one device:

* Conductance window ~1 uS (HRS) to ~100 uS (LRS) with a few percent
  device-to-device spread of the bounds: Li et al., Nature Electronics 1, 52 (2018);
  Yao et al., Nature 577, 641 (2020); Wan et al., Nature 608, 504 (2022).
* Stuck-at-on / stuck-at-off cells, 0.5 % each by default: the optimistic end of what is reported
  (Xia et al., "Stuck-at fault tolerance in RRAM computing systems", IEEE JETCAS 8, 102 (2018));
  HfO2 test chips have shown about 10 % (Li et al., Nat. Commun. 9, 2385 (2018): 11 % unresponsive),
  which the ``pessimistic`` preset models.
* Switching rate exponential in pulse voltage (the "voltage-time dilemma"):
  Menzel et al., Adv. Funct. Mater. 21, 4487 (2011). Saturating, state-dependent
  (soft-bound) conductance update per pulse, as in the NeuroSim nonlinear update model:
  Chen, Peng & Yu, IEEE TCAD 37, 3067 (2018). Cycle-to-cycle variation of tens of
  percent of the step.
* Read noise (random telegraph and 1/f): a fraction of a percent of the
  conductance plus an absolute floor, so relatively larger (several percent) at
  low conductance:
  Ambrogio et al., IEEE TED 61, 2920 (2014).
* Conductance relaxation after programming, G (t / t0)^-nu with nu = 0.005 by default: about
  1.1 % per decade of time (10^-0.005 = 0.989), with device-to-device spread: Zhao et al., IEDM 2017
  ("Investigation of statistical retention of filamentary analog RRAM for neuromorphic computing").
* Periphery: 8-bit input DACs and 8-10-bit column ADCs as in Wan et al. (2022).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .limits import (ABSOLUTE_MAX_PULSE_WIDTH_S, ABSOLUTE_MAX_VOLTAGE_V, ABSOLUTE_MIN_PULSE_WIDTH_S,
                     ABSOLUTE_MIN_VOLTAGE_V)


class DeviceConfig(BaseModel):
    """Hidden truth of a simulated array; calibration tries to recover it."""

    # Strict and finite, as every number of a protocol: an infinite or string parameter would give a
    # simulated array that measures NaN, and every bound is one a physical device could have.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    family: Literal["rram"] = Field("rram", description="device family; see drivers.device_families")
    preset: Literal["default", "pessimistic"] = Field(
        "default", description="pessimistic: the defaults of PESSIMISTIC_RRAM; fields given explicitly still win")

    # --- conductance window and its device-to-device spread
    g_min_s: float = Field(1e-6, ge=1e-12, le=1, description="median lower conductance bound, HRS (S)")
    g_max_s: float = Field(100e-6, ge=1e-12, le=1, description="median upper conductance bound, LRS (S)")
    window_spread: float = Field(0.05, ge=0, le=1,
                                 description="sigma of ln(g_min) and ln(g_max) across devices")
    initial_state: float = Field(0.0, ge=0, le=1,
                                 description="state of fresh cells as a fraction of their window (0 = HRS)")

    # --- defects
    stuck_on_rate: float = Field(0.005, ge=0, le=0.5, description="fraction of cells stuck at LRS")
    stuck_off_rate: float = Field(0.005, ge=0, le=0.5, description="fraction of cells stuck at HRS")
    stuck_mid_rate: float = Field(0.0, ge=0, le=0.5,
                                  description="fraction of cells unresponsive to pulses, frozen anywhere in the window")

    # --- pulse response: a pulse of amplitude V and width w moves the conductance a
    # fraction 1 - exp(-r) of the way to the bound, r = (w / w_ref)**width_exponent
    # * exp((|V| - V_half) / V_slope), and not at all below |V| = V_threshold.
    set_threshold_v: float = Field(0.6, gt=0, le=ABSOLUTE_MAX_VOLTAGE_V,
                                   description="SET amplitude below which nothing moves (V)")
    set_v_half: float = Field(1.6, gt=0, le=ABSOLUTE_MAX_VOLTAGE_V,
                              description="SET amplitude with r = 1 at the reference width (V)")
    reset_threshold_v: float = Field(0.6, gt=0, le=ABSOLUTE_MAX_VOLTAGE_V,
                                     description="RESET |amplitude| below which nothing moves (V)")
    reset_v_half: float = Field(1.5, gt=0, le=ABSOLUTE_MAX_VOLTAGE_V,
                                description="RESET |amplitude| with r = 1 at the reference width (V)")
    switching_slope_v: float = Field(0.12, ge=1e-3, le=ABSOLUTE_MAX_VOLTAGE_V,
                                     description="voltage per e-fold of switching rate (V)")
    v_half_spread_v: float = Field(0.03, ge=0, le=1, description="device-to-device sigma of V_half (V)")
    reference_width_s: float = Field(1e-6, ge=ABSOLUTE_MIN_PULSE_WIDTH_S, le=ABSOLUTE_MAX_PULSE_WIDTH_S,
                                     description="pulse width at which r is quoted (s)")
    width_exponent: float = Field(1.0, gt=0, le=3, description="r grows as width**width_exponent")
    c2c_relative: float = Field(0.25, ge=0, le=2,
                                description="cycle-to-cycle sigma of a step, relative to the step")
    c2c_absolute: float = Field(0.002, ge=0, le=0.2,
                                description="cycle-to-cycle sigma per effective pulse, fraction of the window")

    # --- read noise: sigma(g) = sqrt(read_noise_floor_s**2 + (read_noise_relative * g)**2)
    read_noise_relative: float = Field(0.005, ge=0, le=1, description="relative read noise")
    read_noise_floor_s: float = Field(0.2e-6, ge=0, le=1, description="absolute read-noise floor (S)")
    read_noise_correlation_s: float = Field(1e-3, ge=1e-9, le=1e6,
                                            description="time over which read fluctuations stay correlated (s)")

    # --- relaxation: g(t) = g_prog * ((t - t_prog + t0) / t0) ** (-nu), nu per device
    drift_nu_mean: float = Field(0.005, ge=0, le=0.5, description="mean drift exponent")
    drift_nu_std: float = Field(0.002, ge=0, le=0.5, description="device-to-device sigma of the drift exponent")
    drift_t0_s: float = Field(1.0, ge=1e-9, le=1e6, description="drift reference time after programming (s)")

    # --- read path and MVM periphery
    read_reference_v: float = Field(0.2, ge=ABSOLUTE_MIN_VOLTAGE_V, le=ABSOLUTE_MAX_VOLTAGE_V,
                                    description="voltage at which conductance is defined (V)")
    iv_nonlinearity_per_v2: float = Field(0.5, ge=0, le=100,
                                          description="kappa in I = g V (1 + kappa V^2) / (1 + kappa V_ref^2)")
    dac_bits: int | None = Field(8, ge=1, le=24, description="input DAC resolution (signed, bits); None: exact")
    dac_range_v: float = Field(0.25, ge=ABSOLUTE_MIN_VOLTAGE_V, le=ABSOLUTE_MAX_VOLTAGE_V,
                               description="input DAC full scale (V); also caps the read voltage")
    adc_bits: int | None = Field(10, ge=1, le=24,
                                 description="column ADC resolution (signed, bits); None: exact and unclipped")
    adc_range_a: float | None = Field(None, ge=1e-12, le=1,
                                      description="column ADC full scale (A); None: a quarter of rows*g_max*dac_range")
    output_noise_a: float = Field(50e-9, ge=0, le=1e-2, description="additive column-current noise sigma (A)")

    # --- timing of the virtual clock
    read_time_s: float = Field(1e-3, ge=1e-9, le=10, description="duration of one read transaction (s)")
    mvm_time_s: float = Field(1e-6, ge=1e-12, le=10, description="duration of one input vector in an MVM (s)")
    pulse_overhead_s: float = Field(10e-6, ge=0, le=10, description="set-up time of one pulse transaction (s)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return apply_preset(data, PESSIMISTIC_RRAM)

    @model_validator(mode="after")
    def _consistent(self) -> "DeviceConfig":
        if self.g_min_s >= self.g_max_s:
            raise ValueError(f"g_min_s ({self.g_min_s}) must be below g_max_s ({self.g_max_s})")
        if self.stuck_on_rate + self.stuck_off_rate + self.stuck_mid_rate >= 1:
            raise ValueError("stuck_on_rate + stuck_off_rate + stuck_mid_rate must be below 1")
        if self.set_threshold_v >= self.set_v_half or self.reset_threshold_v >= self.reset_v_half:
            raise ValueError("switching thresholds must be below their V_half")
        return self

    @classmethod
    def ideal(cls, **overrides) -> "DeviceConfig":
        """A device without noise, spread, defects, drift, nonlinearity or quantisation."""
        base = dict(window_spread=0.0, stuck_on_rate=0.0, stuck_off_rate=0.0, stuck_mid_rate=0.0, v_half_spread_v=0.0,
                    c2c_relative=0.0, c2c_absolute=0.0, read_noise_relative=0.0, read_noise_floor_s=0.0,
                    drift_nu_mean=0.0, drift_nu_std=0.0, iv_nonlinearity_per_v2=0.0,
                    dac_bits=None, adc_bits=None, output_noise_a=0.0)
        base.update(overrides)
        return cls(**base)


def apply_preset(data: Any, pessimistic: dict[str, Any]) -> Any:
    """``data`` with the pessimistic preset's values for every field it does not set itself."""
    if isinstance(data, dict) and data.get("preset") == "pessimistic":
        return {**pessimistic, **data}
    return data


# About 10 % of the devices of an HfO2 RRAM test chip are faulty: 11 % were "unresponsive to
# programming pulses" on a 128x64 Ta/HfO2 1T1R array (Li et al., Nat. Commun. 9, 2385 (2018)),
# and Aguirre et al., Electronics 10, 2427 (2021) quote ~10 %. Li et al. imply cells frozen where
# they are, not only at the bounds, so the 11 % are split low / high / mid as 0.5 / 0.2 / 0.3
# (an engineering choice; the often-quoted 9.04 % / 1.75 % split was not verified). The doubled
# cycle-to-cycle, read and relaxation spreads are engineering choices in the spirit of the
# pessimistic columns of aihwkit's CMO model (2 % acceptance instead of 0.2 %).
PESSIMISTIC_RRAM: dict[str, Any] = dict(
    stuck_off_rate=0.055, stuck_on_rate=0.022, stuck_mid_rate=0.033,
    window_spread=0.10, v_half_spread_v=0.06, c2c_relative=0.5, c2c_absolute=0.004,
    read_noise_relative=0.01, read_noise_floor_s=0.4e-6, drift_nu_mean=0.01, drift_nu_std=0.004,
)
