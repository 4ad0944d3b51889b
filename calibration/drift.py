"""Drift after programming: reads at a series of times, and the power law g(t) = g0 ((t + t0) / t0)^-nu.

Each device gets its own exponent nu; t0 is shared and found by a one-dimensional search.
The spread of nu across devices is reported with the scatter that read noise alone would
put into the per-device estimates taken out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drivers import Crossbar

from .options import DriftOptions
from .quality import ReadQuality, assess
from .read_noise import ReadNoiseFit


@dataclass
class DriftMeasurement:
    times_s: np.ndarray       # (T,) after the end of programming
    mean_s: np.ndarray        # (T, rows, cols): mean of `reads` reads at each time
    reads: int

    @property
    def quality(self) -> ReadQuality:
        return assess(self.mean_s)


@dataclass
class DriftFit:
    t0_s: float
    nu: np.ndarray            # (rows, cols) per device, NaN where not fitted
    g0_s: np.ndarray          # (rows, cols) conductance at t = 0
    nu_mean: float
    nu_std: float
    nu_std_raw: float         # spread of the estimates before the read-noise scatter is removed


def measure_drift(xbar: Crossbar, options: DriftOptions, read_voltage_v: float, programmed_at_s: float,
                  on_time: Callable[[int, float], None] | None = None) -> DriftMeasurement:
    """Wait on the instrument's clock until each time after ``programmed_at_s``, then read."""
    means, times = [], []
    for k, t in enumerate(options.times_s):
        if on_time is not None:
            on_time(k, t)
        xbar.wait(max(0.0, programmed_at_s + t - xbar.now()))
        actual = xbar.now() - programmed_at_s
        means.append(np.mean([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)], axis=0))
        times.append(actual)
    return DriftMeasurement(np.asarray(times), np.stack(means), options.reads)


def _slopes(x: np.ndarray, y: np.ndarray):
    xc = x - x.mean()
    sxx = float(xc @ xc)
    yc = y - y.mean(axis=0)
    slope = xc @ yc / sxx
    rss = (yc ** 2).sum(axis=0) - slope ** 2 * sxx
    return slope, y.mean(axis=0) - slope * x.mean(), rss, sxx


def fit_drift(m: DriftMeasurement, usable: np.ndarray, read_noise: ReadNoiseFit | None = None) -> DriftFit:
    """Per-device exponents over ``usable`` devices (e.g. not stuck) and the shared t0.

    A device takes part only if every one of its reads is finite, positive (the law is fitted to
    log g) and below a saturated converter's ceiling (a clipped read does not drift)."""
    g = m.mean_s[:, usable]
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(g) & (g > 0), axis=0) & ~m.quality.saturated[usable]
    if ok.sum() < 2:
        raise ValueError(f"drift needs at least two devices with finite, positive reads at every time, "
                         f"got {int(ok.sum())}")
    y = np.log(g[:, ok])
    t = m.times_s

    def total_rss(log_t0: float) -> float:
        return float(_slopes(np.log(t + np.exp(log_t0)), y)[2].sum())

    # Coarse grid over six decades around the measured times, then golden-section refinement.
    grid = np.linspace(np.log(t[0]) - 4, np.log(t[-1]), 61)
    best = int(np.argmin([total_rss(v) for v in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if total_rss(a) < total_rss(b):
            hi = b
        else:
            lo = a
    t0 = float(np.exp(0.5 * (lo + hi)))

    x = np.log(t + t0)
    slope, intercept, _, sxx = _slopes(x, y)
    nu_dev = -slope
    # log g0 = intercept + slope * log(t0): the model evaluated at t = 0.
    g0_dev = np.exp(intercept + slope * np.log(t0))

    nu = np.full(usable.shape, np.nan)
    g0 = np.full(usable.shape, np.nan)
    idx = np.flatnonzero(usable.ravel())[ok]
    nu.ravel()[idx] = nu_dev
    g0.ravel()[idx] = g0_dev

    raw_std = float(np.std(nu_dev, ddof=1)) if nu_dev.size > 1 else 0.0
    if read_noise is None:
        return DriftFit(t0, nu, g0, float(np.mean(nu_dev)), raw_std, raw_std)
    # Scatter of each device's slope from read noise alone, var(log g) / Sxx: large for low
    # conductances where the noise floor dominates.
    g_mean = np.exp(y.mean(axis=0))
    noise_var = (read_noise.sigma(g_mean) / g_mean) ** 2 / m.reads / sxx
    mean, std = _random_effects(nu_dev, noise_var)
    return DriftFit(t0, nu, g0, mean, std, raw_std)


def _random_effects(estimates: np.ndarray, noise_var: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Mean and spread of a quantity measured per device with known, unequal measurement noise.

    Each estimate is the device's value plus noise of variance ``noise_var``; weights
    1 / (spread^2 + noise_var) let precise devices count more, and the spread is the
    moment estimate that makes the weighted residuals match their expected size.
    """
    tau2 = max(float(np.var(estimates) - np.mean(noise_var)), 0.0)
    mean = float(np.mean(estimates))
    for _ in range(iterations):
        w = 1.0 / (tau2 + noise_var)
        mean = float(np.sum(w * estimates) / np.sum(w))
        tau2_new = max(float(np.sum(w ** 2 * ((estimates - mean) ** 2 - noise_var)) / np.sum(w ** 2)), 0.0)
        if abs(tau2_new - tau2) <= 1e-9 * max(tau2, 1e-30):
            tau2 = tau2_new
            break
        tau2 = tau2_new
    return mean, float(np.sqrt(tau2))
