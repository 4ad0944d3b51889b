"""Safety limits: the envelope no command may leave.

Defaults follow common RRAM practice (read at 0.1-0.2 V, SET/RESET within
+-2.5 V, compliance at most 1 mA, pulse widths 10 ns to 1 ms). A driver holds
its own hard limits; a protocol may only tighten them (:meth:`SafetyLimits.tightened`).
Values beyond a limit are rejected, never clamped.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The framework refuses to be configured beyond these, whatever a driver or protocol says.
ABSOLUTE_MAX_VOLTAGE_V = 10.0
ABSOLUTE_MAX_CURRENT_A = 0.1
# ...nor below these: a bound under them is a typo (a unit slip, 1e-300 for 1e-3), not a limit anyone
# measures with. The fastest switching pulses reported on memristive devices are about 100 ps; no
# source-measure unit resolves a compliance under a nanoampere; a millivolt is below any read.
ABSOLUTE_MIN_VOLTAGE_V = 1e-3
ABSOLUTE_MIN_CURRENT_A = 1e-9
ABSOLUTE_MIN_PULSE_WIDTH_S = 1e-11
ABSOLUTE_MAX_PULSE_WIDTH_S = 1.0


class SafetyLimits(BaseModel):
    """Voltage, current and pulse-width envelope, in SI units."""

    # Strict and finite: "2.0" is not a voltage, true is not a pulse width (it would become 1 s),
    # and an infinite bound is no bound.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    max_read_voltage_v: float = Field(0.3, ge=ABSOLUTE_MIN_VOLTAGE_V, le=ABSOLUTE_MAX_VOLTAGE_V,
                                      description="largest |V| applied to read or for an MVM input (V)")
    max_write_voltage_v: float = Field(2.5, ge=ABSOLUTE_MIN_VOLTAGE_V, le=ABSOLUTE_MAX_VOLTAGE_V,
                                       description="largest |V| of a programming pulse (V)")
    compliance_current_a: float = Field(1e-3, ge=ABSOLUTE_MIN_CURRENT_A, le=ABSOLUTE_MAX_CURRENT_A,
                                        description="largest current compliance a pulse may set (A)")
    min_pulse_width_s: float = Field(10e-9, ge=ABSOLUTE_MIN_PULSE_WIDTH_S, le=ABSOLUTE_MAX_PULSE_WIDTH_S,
                                     description="shortest pulse (s)")
    max_pulse_width_s: float = Field(1e-3, ge=ABSOLUTE_MIN_PULSE_WIDTH_S, le=ABSOLUTE_MAX_PULSE_WIDTH_S,
                                     description="longest pulse (s)")

    @model_validator(mode="after")
    def _ordered(self) -> "SafetyLimits":
        if self.min_pulse_width_s > self.max_pulse_width_s:
            raise ValueError(
                f"min_pulse_width_s ({self.min_pulse_width_s}) exceeds max_pulse_width_s ({self.max_pulse_width_s})")
        if self.max_read_voltage_v > self.max_write_voltage_v:
            raise ValueError(
                f"max_read_voltage_v ({self.max_read_voltage_v}) exceeds max_write_voltage_v ({self.max_write_voltage_v})")
        return self

    def violations_against(self, hard: "SafetyLimits") -> list[str]:
        """Names of the fields of ``self`` that are looser than ``hard``."""
        bad = []
        for name in ("max_read_voltage_v", "max_write_voltage_v", "compliance_current_a", "max_pulse_width_s"):
            if getattr(self, name) > getattr(hard, name):
                bad.append(f"{name}={getattr(self, name)} exceeds the instrument's {getattr(hard, name)}")
        if self.min_pulse_width_s < hard.min_pulse_width_s:
            bad.append(f"min_pulse_width_s={self.min_pulse_width_s} is below the instrument's {hard.min_pulse_width_s}")
        return bad

    def tightened(self, other: "SafetyLimits") -> "SafetyLimits":
        """The intersection of two envelopes: every bound at its stricter value."""
        return SafetyLimits(
            max_read_voltage_v=min(self.max_read_voltage_v, other.max_read_voltage_v),
            max_write_voltage_v=min(self.max_write_voltage_v, other.max_write_voltage_v),
            compliance_current_a=min(self.compliance_current_a, other.compliance_current_a),
            min_pulse_width_s=max(self.min_pulse_width_s, other.min_pulse_width_s),
            max_pulse_width_s=min(self.max_pulse_width_s, other.max_pulse_width_s),
        )
