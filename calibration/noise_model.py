"""The NoiseModel: what calibration learned about an array, in the form training consumes.

Versioned (``schema_version``) and validated; stored in the database as JSON with the
array and the runs it came from. All quantities in SI units.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    """sigma(g) = sqrt(floor_s^2 + (relative * g)^2) for one read."""

    floor_s: float = Field(ge=0)
    relative: float = Field(ge=0)

    def sigma(self, g_s) -> np.ndarray:
        g = np.asarray(g_s, dtype=np.float64)
        return np.sqrt(self.floor_s ** 2 + (self.relative * g) ** 2)


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
        return ((np.asarray(t_s, dtype=np.float64) + self.t0_s) / self.t0_s) ** (-np.asarray(nu))


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
