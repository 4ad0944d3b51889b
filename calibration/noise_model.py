"""The NoiseModel: what calibration learned about an array, in the form training consumes.

Versioned (``schema_version``) and validated; stored in the database as JSON with the
array and the runs it came from. All quantities in SI units.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import laws

SCHEMA_VERSION = 1


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConductanceWindow(_Part):
    g_min_s: float = Field(gt=0, description="median lower bound over working devices")
    g_max_s: float = Field(gt=0, description="median upper bound over working devices")
    g_min_spread: float = Field(ge=0, description="sigma of ln(g_min) across devices")
    g_max_spread: float = Field(ge=0, description="sigma of ln(g_max) across devices")


class ProgrammingNoise(_Part):
    """Error of write-verify programming (achieved minus target) by target level, every parameter
    interpolated linearly in between (see :func:`calibration.laws.programming_error`).

    ``law`` "normal": a Gaussian of ``bias_s`` and ``sigma_s`` per level. "mixture": that Gaussian is the
    core, the devices write-verify brought to the level, and a fraction ``tail_fraction`` of the devices
    lies in a tail around the same bias, a Laplace distribution of scale ``tail_width_s``: the devices it
    left far from their target. "skewed": the tail is a share ``tail_up`` of it above the bias, of mean
    ``tail_width_s``, and the rest below, of mean ``tail_width_down_s`` (the one-sided tail of an abrupt
    polarity). The calibration chooses the law by held-out likelihood and records every score
    (``selection``). A model stored before the mixture existed has none of the new fields and loads as
    "normal".
    """

    law: Literal["normal", "mixture", "skewed"] = "normal"
    levels_s: list[float] = Field(min_length=1)
    sigma_s: list[float] = Field(description="sigma of the Gaussian (mixture: of its core) per level")
    bias_s: list[float]
    tolerance_s: float = Field(gt=0, description="write-verify tolerance used")
    tail_fraction: list[float] | None = Field(None, description="mixture: fraction of the devices in the tail "
                                                                "per level")
    tail_width_s: list[float] | None = Field(None, description="mixture: Laplace scale of the tail per level (S); "
                                                               "its standard deviation is sqrt(2) times this; "
                                                               "skewed: mean distance of the tail above the bias")
    tail_up: list[float] | None = Field(None, description="skewed: share of the tail above the bias per level")
    tail_width_down_s: list[float] | None = Field(None, description="skewed: mean distance of the tail below the "
                                                                    "bias per level (S)")
    selection: dict[str, float] | None = Field(None, description="held-out log-likelihood per device of each "
                                                                 "law, errors in units of the tolerance")

    @model_validator(mode="after")
    def _lengths(self):
        if not len(self.levels_s) == len(self.sigma_s) == len(self.bias_s):
            raise ValueError("levels_s, sigma_s and bias_s must have equal lengths")
        tails = (self.tail_fraction, self.tail_width_s)
        skews = (self.tail_up, self.tail_width_down_s)
        if self.law in ("mixture", "skewed"):
            if any(t is None or len(t) != len(self.levels_s) for t in tails):
                raise ValueError(f"programming law {self.law} needs tail_fraction and tail_width_s of the length of "
                                 "levels_s")
            if not all(0 <= f < 1 for f in self.tail_fraction) or min(self.tail_width_s) < 0:
                raise ValueError("tail_fraction must lie in [0, 1) and tail_width_s be non-negative")
        elif any(t is not None for t in tails):
            raise ValueError("tail_fraction and tail_width_s belong to the programming laws mixture and skewed")
        if self.law == "skewed":
            if any(t is None or len(t) != len(self.levels_s) for t in skews):
                raise ValueError("programming law skewed needs tail_up and tail_width_down_s of the length of "
                                 "levels_s")
            if not all(0 <= p <= 1 for p in self.tail_up) or min(self.tail_width_down_s) < 0:
                raise ValueError("tail_up must lie in [0, 1] and tail_width_down_s be non-negative")
        elif any(t is not None for t in skews):
            raise ValueError("tail_up and tail_width_down_s belong to the programming law skewed")
        return self

    def sigma(self, g_s) -> np.ndarray:
        """Sigma (S) of the Gaussian at target ``g_s``; of the mixture's core under that law."""
        return np.interp(g_s, self.levels_s, self.sigma_s)

    def bias(self, g_s) -> np.ndarray:
        return np.interp(g_s, self.levels_s, self.bias_s)

    def tail_fraction_at(self, g_s) -> np.ndarray:
        """Fraction of the devices in the tail at target ``g_s``; 0 under the normal law."""
        if self.law == "normal":
            return np.zeros(np.shape(g_s))
        return np.interp(g_s, self.levels_s, self.tail_fraction)

    def tail_width_at(self, g_s) -> np.ndarray:
        """Laplace scale (S) of the tail at target ``g_s``; 0 under the normal law."""
        if self.law == "normal":
            return np.zeros(np.shape(g_s))
        return np.interp(g_s, self.levels_s, self.tail_width_s)

    def tail_up_at(self, g_s) -> np.ndarray:
        """Share of the tail above the bias at target ``g_s``: one half but under the skewed law."""
        if self.law != "skewed":
            return np.full(np.shape(g_s), 0.5)
        return np.interp(g_s, self.levels_s, self.tail_up)

    def tail_width_down_at(self, g_s) -> np.ndarray:
        """Mean distance (S) of the tail below the bias at target ``g_s``: the tail's width but under the
        skewed law."""
        if self.law != "skewed":
            return self.tail_width_at(g_s)
        return np.interp(g_s, self.levels_s, self.tail_width_down_s)

    def std(self, g_s) -> np.ndarray:
        """Root mean square (S) of the error about the bias at target ``g_s``, core and tail together (the
        standard deviation but for the mean a skewed tail adds)."""
        f, p = self.tail_fraction_at(g_s), self.tail_up_at(g_s)
        tail = p * self.tail_width_at(g_s) ** 2 + (1 - p) * self.tail_width_down_at(g_s) ** 2
        return np.sqrt((1 - f) * self.sigma(g_s) ** 2 + f * 2 * tail)

    def error(self, g_s, z, u) -> np.ndarray:
        """Errors (S) of devices programmed to ``g_s`` from standard-normal draws ``z`` and uniform draws
        ``u`` (arguments broadcast)."""
        return laws.programming_error(self.bias(g_s), self.sigma(g_s), self.tail_fraction_at(g_s),
                                      self.tail_width_at(g_s), np.asarray(z), np.asarray(u),
                                      self.tail_up_at(g_s), self.tail_width_down_at(g_s))


class ReadNoise(_Part):
    """Read noise of one read, by the law the calibration chose (see :mod:`calibration.laws`).

    ``law`` "white": sigma(g) = sqrt(floor_s^2 + (relative * g)^2), the same at every time.
    "flicker": sigma(g, t)^2 = floor_s^2 + (relative * g)^2 + (flicker * g_ref (|g| / g_ref)^p)^2 L(t),
    with p = ``flicker_exponent``, g_ref = ``flicker_g_ref_s`` and the 1/f time term
    L(t) = ln((t + flicker_t0_s + t_read_s) / (2 t_read_s)), t the time since programming: 1/f noise
    grows with the time a device has had since it was programmed. Its amplitude relative to the
    conductance is set by the programmed conductance g_p: a device that drifted from g_p to g has
    (g / g_p) times the fluctuations it had (see :func:`calibration.laws.read_variance`); callers that
    know g_p pass it, otherwise g_p = g.

    ``reference_age_s`` is the time since programming of the reads the read-noise stage took (the
    white law was fitted at such times); it is the time the law is evaluated at when none is given.

    "telegraph": the white law (or, with ``flicker`` > 0 and its fields, the flicker law) for every device,
    plus, for a fraction ``telegraph_fraction`` of the devices, random telegraph noise of variance
    (a g_ref (|g| / g_ref)^beta)^2 with g_ref = ``telegraph_g_ref_s``, beta = ``telegraph_exponent`` and a
    device's amplitude a log-normal over devices: median ``telegraph_amplitude``, ``telegraph_sigma_ln`` the
    spread of ln a (:func:`calibration.laws.telegraph_variance`). It is the noise a trap adds to a burst of
    ``telegraph_reads`` reads: a trap whose dwell times are far longer than the burst shows within it only
    as a static offset. :meth:`variance` and :meth:`sigma` give the law every device has (without the
    telegraph part); :meth:`telegraph_nodes` the distribution of the extra variance over devices.

    The calibration chooses the law by held-out likelihood and records the scores (``selection``).
    A model stored before the flicker law existed has none of the new fields and loads as "white".
    """

    law: Literal["white", "flicker", "telegraph"] = "white"
    floor_s: float = Field(ge=0)
    relative: float = Field(ge=0)
    flicker: float = Field(0.0, ge=0, description="flicker: 1/f amplitude q, relative at flicker_g_ref_s")
    flicker_exponent: float = Field(1.0, ge=0, le=4, description="flicker: p, sigma of the 1/f part ~ g^p")
    flicker_g_ref_s: float | None = Field(None, gt=0, description="flicker: conductance q is quoted at (S)")
    flicker_t0_s: float | None = Field(None, ge=0, description="flicker: offset of the time since programming (s)")
    t_read_s: float | None = Field(None, gt=0, description="flicker: duration of one read in the 1/f integral (s)")
    reference_age_s: float | None = Field(None, ge=0, description="time since programming of the read-noise "
                                                                  "stage's reads (s)")
    selection: dict[str, float] | None = Field(None, description="held-out log-likelihood per sample variance of "
                                                                 "each law")
    telegraph_fraction: float | None = Field(None, ge=0, le=1, description="telegraph: fraction of devices with "
                                                                           "telegraph noise")
    telegraph_amplitude: float | None = Field(None, ge=0, description="telegraph: median rms telegraph fluctuation "
                                                                      "relative to g, at telegraph_g_ref_s")
    telegraph_sigma_ln: float | None = Field(None, ge=0, le=10, description="telegraph: spread of ln amplitude "
                                                                            "over devices")
    telegraph_exponent: float | None = Field(None, ge=-2, le=4, description="telegraph: beta, its sigma ~ g^beta")
    telegraph_g_ref_s: float | None = Field(None, gt=0, description="telegraph: conductance the amplitude is "
                                                                    "quoted at (S)")
    telegraph_reads: int | None = Field(None, ge=2, description="telegraph: reads per burst it was measured over")

    @model_validator(mode="after")
    def _flicker_fields(self):
        if self.law == "flicker" or (self.law == "telegraph" and self.flicker != 0):
            if None in (self.flicker_g_ref_s, self.flicker_t0_s, self.t_read_s, self.reference_age_s):
                raise ValueError("read-noise law flicker needs flicker_g_ref_s, flicker_t0_s, t_read_s and "
                                 "reference_age_s")
        elif self.flicker != 0:
            raise ValueError("a flicker amplitude belongs to the read-noise law flicker")
        telegraph = (self.telegraph_fraction, self.telegraph_amplitude, self.telegraph_sigma_ln,
                     self.telegraph_exponent, self.telegraph_g_ref_s)
        if self.law == "telegraph":
            if None in telegraph:
                raise ValueError("read-noise law telegraph needs telegraph_fraction, telegraph_amplitude, "
                                 "telegraph_sigma_ln, telegraph_exponent and telegraph_g_ref_s")
        elif any(v is not None for v in telegraph + (self.telegraph_reads,)):
            raise ValueError("the telegraph fields belong to the read-noise law telegraph")
        return self

    @property
    def base_law(self) -> str:
        """The law every device has: "white" or "flicker" (a telegraph law adds to one of them)."""
        if self.law == "telegraph":
            return "flicker" if self.flicker != 0 else "white"
        return self.law

    def telegraph_kwargs(self) -> dict:
        """The telegraph arguments of :func:`calibration.laws.read_variance` but the per-device amplitude."""
        if self.law != "telegraph":
            return {}
        return {"telegraph_exponent": self.telegraph_exponent, "telegraph_g_ref_s": self.telegraph_g_ref_s}

    def telegraph_distribution(self) -> dict:
        """The arguments of :func:`calibration.laws.telegraph_amplitude` (no telegraph noise for other laws)."""
        if self.law != "telegraph":
            return {"fraction": 0.0, "median": 0.0, "sigma_ln": 0.0}
        return {"fraction": self.telegraph_fraction, "median": self.telegraph_amplitude,
                "sigma_ln": self.telegraph_sigma_ln}

    def telegraph_nodes(self, nodes: int = 64, span: float = 5.5) -> tuple[np.ndarray, np.ndarray]:
        """Quadrature of the amplitude distribution over the devices with telegraph noise: amplitudes and
        weights (summing to 1) on a grid of ``nodes`` points of ln a, ``span`` spreads either side of the
        median; the trapezoidal rule on a smooth integrand over a Gaussian is accurate far beyond the grid's
        spacing. Empty for laws without telegraph noise."""
        if self.law != "telegraph":
            return np.zeros(0), np.zeros(0)
        z = np.linspace(-span, span, nodes) if self.telegraph_sigma_ln > 0 else np.zeros(1)
        w = np.exp(-0.5 * z ** 2)
        return self.telegraph_amplitude * np.exp(self.telegraph_sigma_ln * z), w / w.sum()

    def telegraph_variance(self, g_s, amplitude) -> np.ndarray:
        """The variance (S^2) telegraph noise of ``amplitude`` adds at conductance ``g_s`` (0 for other laws)."""
        if self.law != "telegraph":
            return np.zeros(np.broadcast_shapes(np.shape(g_s), np.shape(amplitude)))
        return laws.telegraph_variance(np.asarray(g_s, dtype=np.float64), np.asarray(amplitude, dtype=np.float64),
                                       self.telegraph_exponent, self.telegraph_g_ref_s)

    def log_age(self, age_s=None):
        """The 1/f time term L at ``age_s`` after programming (default ``reference_age_s``); 0 for white."""
        if self.base_law == "white":
            return 0.0
        age = self.reference_age_s if age_s is None else age_s
        value = laws.log_age(np.asarray(age, dtype=np.float64), self.flicker_t0_s, self.t_read_s)
        return float(value) if np.ndim(value) == 0 else value

    def law_kwargs(self, age_s=None) -> dict:
        """The arguments of :func:`calibration.laws.read_sigma` at ``age_s`` after programming (default
        ``reference_age_s``), for callers that evaluate the law on their own arrays (torch tensors). The
        telegraph part is not among them: it differs from device to device (:meth:`telegraph_kwargs`)."""
        if self.base_law == "white":
            return {"floor_s": self.floor_s, "relative": self.relative}
        return {"floor_s": self.floor_s, "relative": self.relative, "flicker": self.flicker,
                "flicker_exponent": self.flicker_exponent, "g_ref_s": self.flicker_g_ref_s,
                "log_age": self.log_age(age_s)}

    def variance(self, g_s, age_s=None, g_programmed_s=None) -> np.ndarray:
        """Variance (S^2) of one read at conductance ``g_s``, ``age_s`` after programming to
        ``g_programmed_s`` (default ``g_s``); the arguments broadcast."""
        gp = None if g_programmed_s is None else np.asarray(g_programmed_s, dtype=np.float64)
        return laws.read_variance(np.asarray(g_s, dtype=np.float64), **self.law_kwargs(age_s), g_programmed_s=gp)

    def sigma(self, g_s, age_s=None, g_programmed_s=None) -> np.ndarray:
        """Standard deviation (S) of one read at conductance ``g_s``, ``age_s`` after programming to
        ``g_programmed_s`` (default ``g_s``)."""
        gp = None if g_programmed_s is None else np.asarray(g_programmed_s, dtype=np.float64)
        return laws.read_sigma(np.asarray(g_s, dtype=np.float64), **self.law_kwargs(age_s), g_programmed_s=gp)


class Drift(_Part):
    """Drift after programming, by the law the calibration chose, with one standard normal z per device.

    Power laws, multiplicative: g(t) = g_prog * ((t + t0_s) / t0_s) ** -nu, nu = mean + std z.
    ``law`` "power": one mean and spread for every device. "power_g": the mean and spread depend on the
    device's conductance, given at ``levels_s`` and interpolated linearly in between (constant beyond the
    ends), as phase-change devices drift faster and more unevenly at low conductance.

    Shift laws, absolute (:func:`calibration.laws.relaxation_shift`): g(t) = g_prog + m h(t) + z (b0 a(t) +
    b1 h(t)), h = ln((t + t0_s) / t0_s), a = t / (t + t0_s), with m = ``shift_mean_s``, b1 = ``shift_sigma_s``
    and b0 = ``shift_sigma_early_s``: filamentary devices relax by an amount that does not scale with their
    conductance and in either direction. "shift": one set for every device; "shift_g": by conductance at
    ``levels_s``, as power_g. For the shift laws ``nu_mean`` and ``nu_std`` are the power law's fit to the
    same reads (with its own t0), kept as a summary; the law does not use them.

    The calibration chooses among the laws by held-out likelihood and records every score (``selection``).
    A model stored before the shift laws existed has none of their fields and loads unchanged.
    """

    law: Literal["power", "power_g", "shift", "shift_g"] = "power"
    nu_mean: float = Field(description="over all devices")
    nu_std: float = Field(ge=0, description="over all devices")
    t0_s: float = Field(gt=0)
    levels_s: list[float] | None = Field(None, description="power_g, shift_g: conductances the curves are given at")
    nu_mean_by_level: list[float] | None = None
    nu_std_by_level: list[float] | None = None
    shift_mean_s: float | None = Field(None, description="shift laws: mean shift per unit of h(t) (S), over all "
                                                         "devices")
    shift_sigma_s: float | None = Field(None, ge=0, description="shift laws: spread per unit of h(t) (S)")
    shift_sigma_early_s: float | None = Field(None, ge=0, description="shift laws: early spread, of a(t) (S)")
    shift_mean_by_level: list[float] | None = None
    shift_sigma_by_level: list[float] | None = None
    shift_sigma_early_by_level: list[float] | None = None
    selection: dict[str, float] | None = Field(None, description="held-out log-likelihood per device of each law")

    @model_validator(mode="after")
    def _curves(self):
        nu_curves = (self.nu_mean_by_level, self.nu_std_by_level)
        shift = (self.shift_mean_s, self.shift_sigma_s, self.shift_sigma_early_s)
        shift_curves = (self.shift_mean_by_level, self.shift_sigma_by_level, self.shift_sigma_early_by_level)
        if self.law == "power_g":
            if any(c is None for c in (self.levels_s, *nu_curves)) or not len(self.levels_s) == \
                    len(self.nu_mean_by_level) == len(self.nu_std_by_level) or len(self.levels_s) < 2:
                raise ValueError("drift law power_g needs levels_s, nu_mean_by_level and nu_std_by_level of one "
                                 "length, at least 2")
            if any(b <= a for a, b in zip(self.levels_s, self.levels_s[1:])) or min(self.nu_std_by_level) < 0:
                raise ValueError("drift levels_s must increase and nu_std_by_level be non-negative")
        elif any(c is not None for c in nu_curves) or (self.levels_s is not None and self.law != "shift_g"):
            raise ValueError("levels_s and the curves by level belong to the drift law power_g")
        if self.law in ("shift", "shift_g"):
            if any(c is None for c in shift):
                raise ValueError(f"drift law {self.law} needs shift_mean_s, shift_sigma_s and shift_sigma_early_s")
        elif any(c is not None for c in shift + shift_curves):
            raise ValueError("the shift fields belong to the drift laws shift and shift_g")
        if self.law == "shift_g":
            if any(c is None for c in (self.levels_s, *shift_curves)) or len(self.levels_s) < 2 or \
                    len({len(self.levels_s), *(len(c) for c in shift_curves)}) != 1:
                raise ValueError("drift law shift_g needs levels_s, shift_mean_by_level, shift_sigma_by_level and "
                                 "shift_sigma_early_by_level of one length, at least 2")
            if any(b <= a for a, b in zip(self.levels_s, self.levels_s[1:])) or \
                    min(self.shift_sigma_by_level + self.shift_sigma_early_by_level) < 0:
                raise ValueError("drift levels_s must increase and the shift spreads by level be non-negative")
        elif any(c is not None for c in shift_curves):
            raise ValueError("the shift curves by level belong to the drift law shift_g")
        return self

    def nu_mean_at(self, g_s) -> np.ndarray:
        """The mean exponent of devices at conductance ``g_s`` (S)."""
        if self.law != "power_g":
            return np.full(np.shape(g_s), self.nu_mean)
        return np.interp(g_s, self.levels_s, self.nu_mean_by_level)

    def nu_std_at(self, g_s) -> np.ndarray:
        """The device-to-device spread of the exponent at conductance ``g_s`` (S)."""
        if self.law != "power_g":
            return np.full(np.shape(g_s), self.nu_std)
        return np.interp(g_s, self.levels_s, self.nu_std_by_level)

    def shift_at(self, g_s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The shift law's mean, spread and early spread (S) for devices at conductance ``g_s`` (S)."""
        if self.law == "shift_g":
            return tuple(np.interp(g_s, self.levels_s, c) for c in (
                self.shift_mean_by_level, self.shift_sigma_by_level, self.shift_sigma_early_by_level))
        return tuple(np.full(np.shape(g_s), c) for c in (self.shift_mean_s, self.shift_sigma_s,
                                                          self.shift_sigma_early_s))

    def sample(self, g_s, t_s, z, since_s=0.0) -> np.ndarray:
        """Conductance (S) at ``t_s`` after programming of devices that were at ``g_s`` at ``since_s`` (default:
        programmed to ``g_s``), each with its standard normal ``z``; the arguments broadcast. The law's
        parameters are those of conductance ``g_s``."""
        g = np.asarray(g_s, dtype=np.float64)
        t, since = np.asarray(t_s, dtype=np.float64), np.asarray(since_s, dtype=np.float64)
        if self.law in ("shift", "shift_g"):
            m, b1, b0 = self.shift_at(g)
            return g + (laws.relaxation_shift(t, self.t0_s, m, b1, b0, z)
                        - laws.relaxation_shift(since, self.t0_s, m, b1, b0, z))
        nu = self.nu_mean_at(g) + self.nu_std_at(g) * z
        return g * self.factor(t, nu) / self.factor(since, nu)

    def factor(self, t_s, nu=None) -> np.ndarray:
        """g(t) / g(0) of the power law with exponent ``nu`` (default the mean)."""
        nu = self.nu_mean if nu is None else nu
        return laws.drift_factor(np.asarray(t_s, dtype=np.float64), self.t0_s, np.asarray(nu))


class Defects(_Part):
    """Devices that did not switch in the window measurement, by the side of the window they sit on, and
    where they sit: a frozen device can hold any conductance of the window, not only its ends."""

    stuck_on_rate: float = Field(ge=0, le=1)
    stuck_off_rate: float = Field(ge=0, le=1)
    stuck_levels_s: list[float] | None = Field(
        None, description="quantiles of the stuck devices' measured conductance (equal probability each); "
                          "None: stuck-on devices at g_max, stuck-off at g_min")

    @model_validator(mode="after")
    def _levels(self):
        if self.stuck_levels_s is not None and (not self.stuck_levels_s or
                                                any(b < a for a, b in zip(self.stuck_levels_s, self.stuck_levels_s[1:]))):
            raise ValueError("stuck_levels_s must be a non-empty, non-decreasing list")
        return self


class Periphery(_Part):
    read_voltage_v: float = Field(gt=0)
    dac_bits: int | None = None
    adc_bits: int | None = None
    adc_step_a: float | None = None
    adc_full_scale_a: float | None = None
    output_noise_a: float | None = None
    output_noise_upper_a: float | None = None
    # kappa in I = g V (1 + kappa V^2) / (1 + kappa V_r^2), g read at V_r; None: not measured
    iv_cubic_per_v2: float | None = None


class NoiseModel(_Part):
    schema_version: Literal[1] = SCHEMA_VERSION
    array_id: str
    rows: int = Field(ge=1)
    cols: int = Field(ge=1)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    window: ConductanceWindow
    programming: ProgrammingNoise | None = None
    read: ReadNoise
    drift: Drift | None = None
    defects: Defects
    periphery: Periphery
    source_runs: list[int] = Field(default_factory=list)

    def weight_window(self) -> tuple[float, float]:
        """The conductance range (S) weights are mapped into: the range of levels write-verify was
        measured to reach, or without that measurement the window narrowed by two spreads, so that
        nearly every device can reach both ends."""
        if self.programming is not None and len(self.programming.levels_s) > 1:
            return float(min(self.programming.levels_s)), float(max(self.programming.levels_s))
        w = self.window
        return float(w.g_min_s * np.exp(2 * w.g_min_spread)), float(w.g_max_s * np.exp(-2 * w.g_max_spread))

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json")
