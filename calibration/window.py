"""Conductance window per device, and the devices that do not switch at all."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivers import Crossbar

from .options import WindowOptions


@dataclass
class WindowMeasurement:
    low_reads_s: np.ndarray     # (reads, rows, cols) after saturating RESET pulses
    high_reads_s: np.ndarray    # (reads, rows, cols) after saturating SET pulses
    stuck_fraction: float
    # derived once from the reads (every later stage asks for them)
    g_min_s: np.ndarray = field(init=False)
    g_max_s: np.ndarray = field(init=False)
    stuck_on: np.ndarray = field(init=False)
    stuck_off: np.ndarray = field(init=False)

    def __post_init__(self):
        self.g_min_s = self.low_reads_s.mean(axis=0)
        self.g_max_s = self.high_reads_s.mean(axis=0)
        self.stuck_on, self.stuck_off = classify_stuck(self.g_min_s, self.g_max_s, self.stuck_fraction)

    @property
    def stuck(self) -> np.ndarray:
        return self.stuck_on | self.stuck_off

    @property
    def yield_fraction(self) -> float:
        return float(1.0 - self.stuck.mean())


def classify_stuck(g_min_s: np.ndarray, g_max_s: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(stuck_on, stuck_off) masks: devices whose window is below ``fraction`` of the median window.

    A stuck device sits near one bound whatever it is sent; which bound decides on or off.
    """
    window = g_max_s - g_min_s
    stuck = window < fraction * np.median(window)
    middle = 0.5 * (np.median(g_min_s[~stuck]) + np.median(g_max_s[~stuck])) if (~stuck).any() else np.inf
    level = 0.5 * (g_min_s + g_max_s)
    return stuck & (level >= middle), stuck & (level < middle)


def _saturate(xbar: Crossbar, amplitude_v: float, options: WindowOptions) -> None:
    rows, cols = np.indices(xbar.shape)
    for _ in range(options.pulses):
        xbar.pulse(rows.ravel(), cols.ravel(), amplitude_v, options.pulse_width_s)


def measure_window(xbar: Crossbar, options: WindowOptions, read_voltage_v: float) -> WindowMeasurement:
    """RESET everything hard and read, then SET everything hard and read; leaves the array in SET."""
    _saturate(xbar, -options.reset_voltage_v, options)
    low = np.stack([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)])
    _saturate(xbar, options.set_voltage_v, options)
    high = np.stack([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)])
    return WindowMeasurement(low, high, options.stuck_fraction)
