"""Conductance window per device, and the devices that do not switch at all."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivers import Crossbar

from .options import WindowOptions
from .quality import ReadQuality, assess


@dataclass
class WindowMeasurement:
    low_reads_s: np.ndarray     # (reads, rows, cols) after saturating RESET pulses
    high_reads_s: np.ndarray    # (reads, rows, cols) after saturating SET pulses
    stuck_fraction: float
    # derived once from the reads (every later stage asks for them)
    g_min_s: np.ndarray = field(init=False)    # NaN where a read at that bound was not finite
    g_max_s: np.ndarray = field(init=False)
    low_quality: ReadQuality = field(init=False)
    high_quality: ReadQuality = field(init=False)
    stuck_on: np.ndarray = field(init=False)
    stuck_off: np.ndarray = field(init=False)

    def __post_init__(self):
        self.low_quality = assess(self.low_reads_s)
        self.high_quality = assess(self.high_reads_s)
        # A mean over reads of which one is NaN or infinite says nothing of the device: NaN, so
        # that no statistic takes it by accident (the reads themselves are kept as measured).
        self.g_min_s = np.where(self.low_quality.non_finite, np.nan, _finite_mean(self.low_reads_s))
        self.g_max_s = np.where(self.high_quality.non_finite, np.nan, _finite_mean(self.high_reads_s))
        self.stuck_on, self.stuck_off = classify_stuck(self.g_min_s, self.g_max_s, self.stuck_fraction)

    @property
    def unreadable(self) -> np.ndarray:
        """Devices with a non-finite read at either bound: neither working nor stuck, left out of every fit."""
        return self.low_quality.non_finite | self.high_quality.non_finite

    @property
    def quality(self) -> ReadQuality:
        return self.low_quality | self.high_quality

    @property
    def stuck(self) -> np.ndarray:
        return self.stuck_on | self.stuck_off

    @property
    def working(self) -> np.ndarray:
        return ~(self.stuck | self.unreadable)

    @property
    def yield_fraction(self) -> float:
        """Working devices over all devices: an unreadable device is no more use than a stuck one."""
        return float(self.working.mean())


def _finite_mean(reads: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(reads), reads, 0.0).mean(axis=0)


def classify_stuck(g_min_s: np.ndarray, g_max_s: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(stuck_on, stuck_off) masks: devices whose window is below ``fraction`` of the median window.

    A stuck device sits near one bound whatever it is sent; which bound decides on or off.
    Devices without a finite bound (NaN) are neither, and take no part in the medians.
    """
    g_min_s, g_max_s = np.asarray(g_min_s, np.float64), np.asarray(g_max_s, np.float64)
    known = np.isfinite(g_min_s) & np.isfinite(g_max_s)
    if not known.any():
        none = np.zeros(g_min_s.shape, dtype=bool)
        return none, none.copy()
    window = g_max_s - g_min_s
    stuck = known & (np.where(known, window, np.inf) < fraction * np.median(window[known]))
    moving = known & ~stuck
    middle = 0.5 * (np.median(g_min_s[moving]) + np.median(g_max_s[moving])) if moving.any() else np.inf
    level = np.where(known, 0.5 * (g_min_s + g_max_s), 0.0)
    return stuck & (level >= middle), stuck & (level < middle)


def saturate(xbar: Crossbar, amplitude_v: float, options: WindowOptions, cells: np.ndarray | None = None) -> None:
    """The window stage's hard pulses at ``amplitude_v`` (negative: RESET) on every device, or on the
    devices at the flat indices ``cells``."""
    rows, cols = np.indices(xbar.shape)
    rows, cols = rows.ravel(), cols.ravel()
    if cells is not None:
        rows, cols = rows[cells], cols[cells]
    for _ in range(options.pulses):
        xbar.pulse(rows, cols, amplitude_v, options.pulse_width_s)


def measure_window(xbar: Crossbar, options: WindowOptions, read_voltage_v: float) -> WindowMeasurement:
    """RESET everything hard and read, then SET everything hard and read; leaves the array in SET."""
    saturate(xbar, -options.reset_voltage_v, options)
    low = np.stack([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)])
    saturate(xbar, options.set_voltage_v, options)
    high = np.stack([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)])
    return WindowMeasurement(low, high, options.stuck_fraction)
