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
    """Error of write-verify programming by target level, interpolated linearly in between."""

    levels_s: list[float] = Field(min_length=1)
    sigma_s: list[float]
    bias_s: list[float]
    tolerance_s: float = Field(gt=0, description="write-verify tolerance used")

    @model_validator(mode="after")
    def _lengths(self):
        if not len(self.levels_s) == len(self.sigma_s) == len(self.bias_s):
            raise ValueError("levels_s, sigma_s and bias_s must have equal lengths")
        return self

    def sigma(self, g_s) -> np.ndarray:
        return np.interp(g_s, self.levels_s, self.sigma_s)

    def bias(self, g_s) -> np.ndarray:
        return np.interp(g_s, self.levels_s, self.bias_s)


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
    The calibration chooses the law by held-out likelihood and records both scores (``selection``).
    A model stored before the flicker law existed has none of the new fields and loads as "white".
    """

    law: Literal["white", "flicker"] = "white"
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

    @model_validator(mode="after")
    def _flicker_fields(self):
        if self.law == "flicker":
            if None in (self.flicker_g_ref_s, self.flicker_t0_s, self.t_read_s, self.reference_age_s):
                raise ValueError("read-noise law flicker needs flicker_g_ref_s, flicker_t0_s, t_read_s and "
                                 "reference_age_s")
        elif self.flicker != 0:
            raise ValueError("a flicker amplitude belongs to the read-noise law flicker")
        return self

    def log_age(self, age_s=None):
        """The 1/f time term L at ``age_s`` after programming (default ``reference_age_s``); 0 for white."""
        if self.law == "white":
            return 0.0
        age = self.reference_age_s if age_s is None else age_s
        value = laws.log_age(np.asarray(age, dtype=np.float64), self.flicker_t0_s, self.t_read_s)
        return float(value) if np.ndim(value) == 0 else value

    def law_kwargs(self, age_s=None) -> dict:
        """The arguments of :func:`calibration.laws.read_sigma` at ``age_s`` after programming (default
        ``reference_age_s``), for callers that evaluate the law on their own arrays (torch tensors)."""
        if self.law == "white":
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
    """g(t) = g_prog * ((t + t0_s) / t0_s) ** -nu, nu ~ Normal(mean, std) per device.

    ``law`` "power": one mean and spread for every device. "power_g": the mean and spread depend on the
    device's conductance, given at ``levels_s`` and interpolated linearly in between (constant beyond the
    ends), as phase-change devices drift faster and more unevenly at low conductance. The calibration
    chooses between them by held-out likelihood and records both scores (``selection``).
    """

    law: Literal["power", "power_g"] = "power"
    nu_mean: float = Field(description="over all devices")
    nu_std: float = Field(ge=0, description="over all devices")
    t0_s: float = Field(gt=0)
    levels_s: list[float] | None = Field(None, description="power_g: conductances the curves are given at")
    nu_mean_by_level: list[float] | None = None
    nu_std_by_level: list[float] | None = None
    selection: dict[str, float] | None = Field(None, description="held-out log-likelihood per device of each law")

    @model_validator(mode="after")
    def _curves(self):
        curves = (self.levels_s, self.nu_mean_by_level, self.nu_std_by_level)
        if self.law == "power_g":
            if any(c is None for c in curves) or not len(self.levels_s) == len(self.nu_mean_by_level) \
                    == len(self.nu_std_by_level) or len(self.levels_s) < 2:
                raise ValueError("drift law power_g needs levels_s, nu_mean_by_level and nu_std_by_level of one "
                                 "length, at least 2")
            if any(b <= a for a, b in zip(self.levels_s, self.levels_s[1:])) or min(self.nu_std_by_level) < 0:
                raise ValueError("drift levels_s must increase and nu_std_by_level be non-negative")
        elif any(c is not None for c in curves):
            raise ValueError("levels_s and the curves by level belong to the drift law power_g")
        return self

    def nu_mean_at(self, g_s) -> np.ndarray:
        """The mean exponent of devices at conductance ``g_s`` (S)."""
        if self.law == "power":
            return np.full(np.shape(g_s), self.nu_mean)
        return np.interp(g_s, self.levels_s, self.nu_mean_by_level)

    def nu_std_at(self, g_s) -> np.ndarray:
        """The device-to-device spread of the exponent at conductance ``g_s`` (S)."""
        if self.law == "power":
            return np.full(np.shape(g_s), self.nu_std)
        return np.interp(g_s, self.levels_s, self.nu_std_by_level)

    def factor(self, t_s, nu=None) -> np.ndarray:
        nu = self.nu_mean if nu is None else nu
        return laws.drift_factor(np.asarray(t_s, dtype=np.float64), self.t0_s, np.asarray(nu))


class Defects(_Part):
    stuck_on_rate: float = Field(ge=0, le=1)
    stuck_off_rate: float = Field(ge=0, le=1)


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
