"""A toy bench behind memristor-hil's Crossbar contract: linear resistive cells that move a fixed
fraction of their window per volt above threshold, read exactly, and an ideal MVM.

A real plug-in talks to its instrument in ``_open``/``_read``/``_pulse``/``_mvm``; the base class has
already checked every request against the safety limits before these are called.
"""

from __future__ import annotations

import numpy as np

from drivers.interface import Crossbar, CrossbarIdentity
from drivers.limits import SafetyLimits

__all__ = ["LabBench", "factory"]


class LabBench(Crossbar):
    def __init__(self, rows: int, cols: int, *, g_min_s: float, g_max_s: float, threshold_v: float):
        super().__init__(CrossbarIdentity(backend="labbench", instrument_id="labbench-1", array_id="lab-die-7",
                                          rows=rows, cols=cols, model="LabBench", firmware="0.1"),
                         SafetyLimits(max_write_voltage_v=3.0))
        self.g_min_s, self.g_max_s, self.threshold_v = g_min_s, g_max_s, threshold_v
        self.g = np.full((rows, cols), g_min_s)
        self.largest_pulse_v = 0.0

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _read(self, rows, cols, voltage_v):
        return self.g[np.ix_(rows, cols)].copy()

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        self.largest_pulse_v = max(self.largest_pulse_v, float(np.max(np.abs(amplitude_v))))
        drive = np.clip(np.abs(amplitude_v) - self.threshold_v, 0, None) * 0.3
        window = self.g_max_s - self.g_min_s
        step = np.sign(amplitude_v) * drive * window
        self.g[rows, cols] = np.clip(self.g[rows, cols] + step, self.g_min_s, self.g_max_s)

    def _mvm(self, voltages_v, adc_range_a=None):
        return voltages_v.astype(np.float64) @ self.g

    def settings(self) -> dict:
        return {"threshold_v": self.threshold_v}


def factory(*, rows, cols, seed, resource, options):
    """memristor-hil calls this with the protocol's backend_options; unknown or bad options are refused."""
    allowed = {"g_min_s", "g_max_s", "threshold_v"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown backend_options {sorted(unknown)}; this bench takes {sorted(allowed)}")
    g_min, g_max = float(options.get("g_min_s", 1e-6)), float(options.get("g_max_s", 1e-4))
    if not 0 < g_min < g_max:
        raise ValueError(f"backend_options: need 0 < g_min_s < g_max_s, got {g_min} and {g_max}")
    return LabBench(rows, cols, g_min_s=g_min, g_max_s=g_max, threshold_v=float(options.get("threshold_v", 0.5)))
