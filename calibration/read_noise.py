"""Read noise: repeated reads of a programmed array, and the law sigma(g) = sqrt(floor^2 + (relative * g)^2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers import Crossbar

from .options import ReadNoiseOptions
from .quality import ReadQuality, assess


@dataclass
class ReadNoiseMeasurement:
    reads_s: np.ndarray           # (reads, rows, cols)

    @property
    def quality(self) -> ReadQuality:
        return assess(self.reads_s)

    @property
    def mean_s(self) -> np.ndarray:
        return self.reads_s.mean(axis=0)

    @property
    def std_s(self) -> np.ndarray:
        return self.reads_s.std(axis=0, ddof=1)


@dataclass(frozen=True)
class ReadNoiseFit:
    floor_s: float
    relative: float

    def sigma(self, g_s) -> np.ndarray:
        g = np.asarray(g_s, dtype=np.float64)
        return np.sqrt(self.floor_s ** 2 + (self.relative * g) ** 2)


def measure_read_noise(xbar: Crossbar, options: ReadNoiseOptions, read_voltage_v: float) -> ReadNoiseMeasurement:
    return ReadNoiseMeasurement(np.stack([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)]))


def fit_read_noise(samples: list[tuple[np.ndarray, np.ndarray, int]]) -> ReadNoiseFit:
    """Fit the law to (mean conductance, sample variance, reads) per device, pooled over several measurements.

    The sample variance of n reads scatters around sigma^2 with variance 2 sigma^4 / (n - 1), so the
    linear least-squares fit of variance on [1, g^2] is weighted by 1 / sigma^4, iterated from an
    unweighted start.
    """
    g = np.concatenate([np.ravel(m) for m, _, _ in samples])
    var = np.concatenate([np.ravel(v) for _, v, _ in samples])
    dof = np.concatenate([np.full(np.size(m), n - 1.0) for m, _, n in samples])
    keep = np.isfinite(g) & np.isfinite(var)
    g, var, dof = g[keep], var[keep], dof[keep]
    if g.size < 2:
        raise ValueError(f"read noise needs at least two devices with finite repeated reads, got {g.size}")
    # Work in units of the largest conductance and variance so both columns are of order one.
    g_unit = float(np.max(np.abs(g))) or 1.0
    v_unit = float(np.max(var)) or 1.0
    x, y = g / g_unit, var / v_unit
    design = np.stack([np.ones_like(x), x ** 2], axis=1)
    weights = dof
    coef = np.zeros(2)
    for _ in range(5):
        sw = np.sqrt(weights)
        coef, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
        coef = np.maximum(coef, 0.0)
        model = np.maximum(design @ coef, 1e-12)
        weights = dof / model ** 2
    return ReadNoiseFit(float(np.sqrt(coef[0] * v_unit)), float(np.sqrt(coef[1] * v_unit) / g_unit))
