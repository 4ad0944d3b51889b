"""Confidence intervals for the results scripts: a mean over seeds or chips, a difference of means,
and the words a comparison may use.

95 % t-intervals; ``scipy.special.stdtrit`` gives the t quantile without the slow import of
``scipy.stats``.
"""

from __future__ import annotations

import math

import numpy as np


def interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (NaN half-width for a single value)."""
    from scipy.special import stdtrit

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float(x.mean()), float("nan")
    return float(x.mean()), float(stdtrit(x.size - 1, 0.975) * x.std(ddof=1) / math.sqrt(x.size))


def combination_interval(terms: list[tuple[float, list[float]]]) -> tuple[float, float]:
    """Σ c_i·mean(x_i) over independent samples x_i, and the half-width of its 95 % Welch interval
    (Welch-Satterthwaite degrees of freedom). A difference of two groups is [(1, a), (-1, b)]."""
    from scipy.special import stdtrit

    samples = [(c, np.asarray(values, dtype=float)) for c, values in terms]
    estimate = sum(c * float(x.mean()) for c, x in samples)
    if any(x.size < 2 for _, x in samples):
        return estimate, float("nan")
    variance, dof_denominator = 0.0, 0.0
    for c, x in samples:
        v = c * c * float(x.var(ddof=1)) / x.size
        variance += v
        dof_denominator += v * v / (x.size - 1)
    if variance == 0.0:
        return estimate, 0.0
    dof = variance * variance / dof_denominator
    return estimate, float(stdtrit(dof, 0.975) * math.sqrt(variance))


def ratio_interval(numerators, denominators) -> tuple[float, float]:
    """Σx/Σy over paired samples (x_i, y_i) and the half-width of its 95 % interval by linearisation
    (the ratio estimator's delta method: the t-interval of x_i - R y_i, divided by the mean of y)."""
    from scipy.special import stdtrit

    x, y = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    ratio = float(x.sum() / y.sum())
    if x.size < 2:
        return ratio, float("nan")
    residual = x - ratio * y
    half = stdtrit(x.size - 1, 0.975) * residual.std(ddof=1) / math.sqrt(x.size) / abs(float(y.mean()))
    return ratio, float(half)


def verdict(estimate: float, half: float, better: str, worse: str, unit: str = "seed") -> str:
    """How strongly a difference and its interval half-width may be stated: no interval from one
    ``unit``, "no measurable difference" where the interval contains zero, else ``better`` or ``worse``."""
    if math.isnan(half):
        return f"one {unit}: no interval"
    if abs(estimate) <= half:
        return "no measurable difference"
    return better if estimate > 0 else worse


__all__ = ["combination_interval", "interval", "ratio_interval", "verdict"]
