"""What a calibration measures and how hard it tries: validated options, SI units in the names.

Each part can be switched off by setting it to ``null`` in the protocol. The
defaults calibrate a 64x64 array in well under a minute on the software crossbar.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from drivers.limits import ABSOLUTE_MIN_PULSE_WIDTH_S, ABSOLUTE_MIN_VOLTAGE_V


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class WindowOptions(_Options):
    """Saturating RESET then SET trains: each device's g_min and g_max, and which devices do not switch."""

    pulses: int = Field(4, ge=1, le=100, description="pulses per saturating train")
    set_voltage_v: float = Field(2.0, ge=ABSOLUTE_MIN_VOLTAGE_V)
    reset_voltage_v: float = Field(2.0, ge=ABSOLUTE_MIN_VOLTAGE_V)
    pulse_width_s: float = Field(10e-6, ge=ABSOLUTE_MIN_PULSE_WIDTH_S)
    reads: int = Field(8, ge=1, le=1000, description="reads averaged at each bound")
    stuck_fraction: float = Field(0.2, gt=0, lt=1,
                                  description="a device whose window is below this fraction of the median is stuck")


class PulseResponseOptions(_Options):
    """SET and RESET trains of identical pulses at a few amplitudes, read after every pulse."""

    amplitudes_v: list[float] = Field(default_factory=lambda: [1.1, 1.3, 1.5], min_length=1, max_length=16)
    pulses: int = Field(30, ge=1, le=1000)
    pulse_width_s: float = Field(1e-6, ge=ABSOLUTE_MIN_PULSE_WIDTH_S)
    cells: int = Field(16, ge=1, le=4096, description="devices per amplitude and polarity")
    saturate_voltage_v: float = Field(2.0, ge=ABSOLUTE_MIN_VOLTAGE_V,
                                      description="amplitude of the pulses that set the starting state")

    @model_validator(mode="after")
    def _positive(self):
        if any(a < ABSOLUTE_MIN_VOLTAGE_V for a in self.amplitudes_v):
            raise ValueError(f"amplitudes_v are magnitudes and must be at least {ABSOLUTE_MIN_VOLTAGE_V} V")
        return self


class WriteVerifyOptions(_Options):
    """The write-verify settings a protocol may give, declared once for ``program``, ``deploy`` and the
    calibration's programming (see drivers.write_verify.WriteVerifySettings.from_options). SET and RESET
    pulses of ``pulse_width_s`` start at the ``start_*`` amplitude and may grow to the ``max_*`` one (the
    algorithm learns by how much); amplitudes are magnitudes, the driver applies the polarity."""

    max_iterations: int = Field(20, ge=1, le=1000)
    # The maxima come first so that each start can be checked against its maximum at its own field.
    max_set_voltage_v: float = Field(2.0, ge=ABSOLUTE_MIN_VOLTAGE_V)
    start_set_voltage_v: float = Field(0.9, ge=ABSOLUTE_MIN_VOLTAGE_V)
    max_reset_voltage_v: float = Field(2.0, ge=ABSOLUTE_MIN_VOLTAGE_V)
    start_reset_voltage_v: float = Field(0.9, ge=ABSOLUTE_MIN_VOLTAGE_V)
    voltage_step_v: float = Field(0.05, gt=0, le=1, description="smallest amplitude change between pulses (V)")
    pulse_width_s: float = Field(1e-6, ge=ABSOLUTE_MIN_PULSE_WIDTH_S)

    @field_validator("start_set_voltage_v", "start_reset_voltage_v")
    @classmethod
    def _ramp_ordered(cls, value: float, info: ValidationInfo) -> float:
        which = "set" if info.field_name == "start_set_voltage_v" else "reset"
        stop = info.data.get(f"max_{which}_voltage_v")
        if stop is not None and value > stop:
            raise PydanticCustomError("ramp_order", f"exceeds max_{which}_voltage_v ({stop})")
        return value


class ProgrammingOptions(WriteVerifyOptions):
    """Write-verify to random levels, repeated; achieved minus target is the programming error."""

    levels: int = Field(8, ge=2, le=64)
    # None: taken from the window measurement (see calibration.levels); a value given here is kept
    # where it lies inside the measured window and clipped, with a warning, where it does not.
    g_low_s: float | None = Field(None, gt=0, le=1, description="lowest level (S); default from the window")
    g_high_s: float | None = Field(None, gt=0, le=1, description="highest level (S); default from the window")
    repeats: int = Field(2, ge=1, le=100)
    tolerance: float = Field(0.02, gt=0, le=0.5, description="write-verify tolerance, fraction of the level span")
    settle_s: float = Field(1.0, ge=0, le=3600, description="wait between programming and measuring (s)")
    reads: int = Field(8, ge=1, le=1000, description="reads averaged to measure the achieved conductance")

    @model_validator(mode="after")
    def _window(self):
        if self.g_low_s is not None and self.g_high_s is not None and self.g_low_s >= self.g_high_s:
            raise ValueError(f"g_low_s ({self.g_low_s}) must be below g_high_s ({self.g_high_s})")
        return self


class ReadNoiseOptions(_Options):
    """Repeated reads of the programmed levels: read noise against conductance."""

    reads: int = Field(50, ge=3, le=10000)


class DriftOptions(_Options):
    """Reads at a series of times after programming (waits on the instrument's clock: real time on a bench)."""

    # Up to 10^4 s: on a bench the drift stage waits in real time (close to three hours), and the predictive
    # check (CheckOptions) waits the same schedule again on its held-out devices. A protocol that wants the
    # model checked at the horizons a deployed network meets lists them (3600 and 86400 s: instant on the mock).
    times_s: list[float] = Field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0,
                                                          10000.0], min_length=3, max_length=100)
    reads: int = Field(4, ge=1, le=1000, description="reads averaged at each time")

    @model_validator(mode="after")
    def _increasing(self):
        t = self.times_s
        if t[0] <= 0 or any(b <= a for a, b in zip(t, t[1:])):
            raise ValueError("times_s must be positive and strictly increasing")
        return self


class PeripheryOptions(_Options):
    """MVMs with zero and swept inputs: ADC step, ADC full scale and output noise."""

    repeats: int = Field(200, ge=10, le=100000, description="MVMs of the zero input for the output noise")
    sweep_points: int = Field(512, ge=16, le=100000)


class CheckOptions(_Options):
    """The predictive check: devices kept out of every fit, programmed afresh after the other stages,
    read repeatedly and at the drift times, and compared with what the fitted model predicts for them."""

    holdout_fraction: float = Field(0.25, gt=0, lt=1, description="fraction of working devices kept out of the fits")
    max_ks: float = Field(0.1, gt=0, le=1, description="a check passes with a KS distance below this")
    min_spread_ratio: float = Field(0.8, gt=0, description="... and predicted/observed spread at least this")
    max_spread_ratio: float = Field(1.25, gt=0, description="... and at most this")
    samples_per_device: int = Field(20, ge=1, le=1000,
                                    description="model draws per held-out device for the drift predictions")

    @model_validator(mode="after")
    def _ratios(self):
        if self.min_spread_ratio >= self.max_spread_ratio:
            raise ValueError("min_spread_ratio must be below max_spread_ratio")
        return self


class CalibrationOptions(_Options):
    read_voltage_v: float = Field(0.2, ge=ABSOLUTE_MIN_VOLTAGE_V)
    window: WindowOptions | None = Field(default_factory=WindowOptions)
    pulse_response: PulseResponseOptions | None = Field(default_factory=PulseResponseOptions)
    programming: ProgrammingOptions | None = Field(default_factory=ProgrammingOptions)
    read_noise: ReadNoiseOptions | None = Field(default_factory=ReadNoiseOptions)
    drift: DriftOptions | None = Field(default_factory=DriftOptions)
    periphery: PeripheryOptions | None = Field(default_factory=PeripheryOptions)
    check: CheckOptions | None = Field(default_factory=CheckOptions)

    @model_validator(mode="after")
    def _dependencies(self):
        if (self.read_noise or self.drift or self.check) and not self.programming:
            raise ValueError("read_noise, drift and check measure the programmed levels: they need programming")
        if self.programming and not self.window and (self.programming.g_low_s is None
                                                     or self.programming.g_high_s is None):
            raise ValueError("without the window measurement, programming needs both g_low_s and g_high_s: "
                             "the default levels are taken from the measured window")
        return self

    def write_voltages(self) -> Iterator[tuple[tuple, float]]:
        """(field path, amplitude) of every programming pulse amplitude this calibration may use."""
        if self.window:
            yield ("window", "set_voltage_v"), self.window.set_voltage_v
            yield ("window", "reset_voltage_v"), self.window.reset_voltage_v
        if self.pulse_response:
            for i, a in enumerate(self.pulse_response.amplitudes_v):
                yield ("pulse_response", "amplitudes_v", i), a
            yield ("pulse_response", "saturate_voltage_v"), self.pulse_response.saturate_voltage_v
        if self.programming:
            for name in ("start_set_voltage_v", "max_set_voltage_v", "start_reset_voltage_v", "max_reset_voltage_v"):
                yield ("programming", name), getattr(self.programming, name)

    def pulse_widths(self) -> Iterator[tuple[tuple, float]]:
        for part in ("window", "pulse_response", "programming"):
            options = getattr(self, part)
            if options:
                yield (part, "pulse_width_s"), options.pulse_width_s
