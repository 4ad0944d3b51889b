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

from .noise_model import ReadNoise
from .options import DriftOptions
from .quality import ReadQuality, assess


@dataclass
class DriftMeasurement:
    times_s: np.ndarray       # (T,) after the end of programming
    mean_s: np.ndarray        # (T, rows, cols): mean of `reads` reads at each time
    reads: int
    # (T, rows, cols): sample variance of the `reads` reads at each time (reads >= 2), NaN where one of a
    # device's reads at that time was non-finite, at or below 0 S or clipped. Read noise at each time
    # since programming: what shows whether it grows with time (1/f noise) or not.
    var_s: np.ndarray | None = None

    @property
    def quality(self) -> ReadQuality:
        return assess(self.mean_s)


# Conductance bands of the "power_g" law: enough to follow a trend over two decades of conductance, few
# enough that each band holds hundreds of devices on a 64x64 array.
DRIFT_BANDS = 6
# The conductance-dependent law is chosen only if it predicts held-out devices better than this many
# nats per device: a simpler law that predicts as well is preferred.
SELECTION_MARGIN = 0.01


@dataclass
class DriftFit:
    t0_s: float
    nu: np.ndarray            # (rows, cols) per device, NaN where not fitted
    g0_s: np.ndarray          # (rows, cols) conductance at t = 0
    nu_mean: float
    nu_std: float
    nu_std_raw: float         # spread of the estimates before the read-noise scatter is removed
    law: str = "power"        # "power" (one mean and spread) or "power_g" (by conductance)
    levels_s: list[float] | None = None
    nu_mean_by_level: list[float] | None = None
    nu_std_by_level: list[float] | None = None
    selection: dict[str, float] | None = None   # held-out log-likelihood per device of each law


def measure_drift(xbar: Crossbar, options: DriftOptions, read_voltage_v: float, programmed_at_s: float,
                  on_time: Callable[[int, float], None] | None = None) -> DriftMeasurement:
    """Wait on the instrument's clock until each time after ``programmed_at_s``, then read."""
    means, variances, times = [], [], []
    for k, t in enumerate(options.times_s):
        if on_time is not None:
            on_time(k, t)
        xbar.wait(max(0.0, programmed_at_s + t - xbar.now()))
        actual = xbar.now() - programmed_at_s
        reads = np.stack([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)])
        means.append(reads.mean(axis=0))
        if options.reads >= 2:
            with np.errstate(invalid="ignore"):
                variances.append(np.where(assess(reads).flagged, np.nan, reads.var(axis=0, ddof=1)))
        times.append(actual)
    return DriftMeasurement(np.asarray(times), np.stack(means), options.reads,
                            np.stack(variances) if variances else None)


def _slopes(x: np.ndarray, y: np.ndarray):
    xc = x - x.mean()
    sxx = float(xc @ xc)
    yc = y - y.mean(axis=0)
    slope = xc @ yc / sxx
    rss = (yc ** 2).sum(axis=0) - slope ** 2 * sxx
    return slope, y.mean(axis=0) - slope * x.mean(), rss, sxx


def fit_drift(m: DriftMeasurement, usable: np.ndarray, read_noise: ReadNoise | None = None) -> DriftFit:
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
    # conductances where the noise floor dominates. Read noise that grows with time since programming
    # enters with its mean over the measured times.
    g_mean = np.exp(y.mean(axis=0))
    rel_var = np.mean(read_noise.variance(g_mean[None], t[:, None]), axis=0) / g_mean ** 2
    noise_var = rel_var / m.reads / sxx
    mean, std = _random_effects(nu_dev, noise_var)
    fit = DriftFit(t0, nu, g0, mean, std, raw_std)
    return _select_law(fit, nu_dev, g0_dev, noise_var)


def _banded(nu: np.ndarray, g: np.ndarray, noise_var: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """The power_g law fitted to devices (exponent, conductance, estimate variance): per conductance band
    (equal counts), the band's median conductance and the random-effects mean and spread of its exponents."""
    order = np.argsort(g)
    levels, means, stds = [], [], []
    for band in np.array_split(order, DRIFT_BANDS):
        mean, std = _random_effects(nu[band], noise_var[band])
        levels.append(float(np.median(g[band])))
        means.append(mean)
        stds.append(std)
    return levels, means, stds


def _log_likelihood(nu: np.ndarray, mean: np.ndarray, std: np.ndarray, noise_var: np.ndarray) -> float:
    """Mean Gaussian log-likelihood per device of exponents ``nu`` estimated with variance ``noise_var``."""
    var = std ** 2 + noise_var
    return float(np.mean(-0.5 * (np.log(2 * np.pi * var) + (nu - mean) ** 2 / var)))


def _select_law(fit: DriftFit, nu: np.ndarray, g: np.ndarray, noise_var: np.ndarray) -> DriftFit:
    """Choose between one exponent distribution for all devices and one by conductance, by two-fold
    held-out likelihood: each half of the devices (drawn by a fixed seed) is predicted by the laws fitted
    to the other half. Needs a few devices per band; with fewer, the single law stands."""
    if nu.size < 20 * DRIFT_BANDS:
        return fit
    halves = np.array_split(np.random.default_rng(0).permutation(nu.size), 2)
    scores = {"power": 0.0, "power_g": 0.0}
    for train, test in (halves, halves[::-1]):
        mean, std = _random_effects(nu[train], noise_var[train])
        scores["power"] += _log_likelihood(nu[test], mean, std, noise_var[test]) / 2
        levels, means, stds = _banded(nu[train], g[train], noise_var[train])
        scores["power_g"] += _log_likelihood(nu[test], np.interp(g[test], levels, means),
                                             np.interp(g[test], levels, stds), noise_var[test]) / 2
    fit.selection = scores
    if scores["power_g"] > scores["power"] + SELECTION_MARGIN:
        levels, means, stds = _banded(nu, g, noise_var)
        if all(b > a for a, b in zip(levels, levels[1:])):
            fit.law, fit.levels_s, fit.nu_mean_by_level, fit.nu_std_by_level = "power_g", levels, means, stds
    return fit


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
