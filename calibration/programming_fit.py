"""The programming-error law of one calibration: a Gaussian per level, or a Gaussian core with a heavy tail.

Write-verify brings most devices within its tolerance of the level; on some device families it leaves a
fraction far from it (cells that stalled, froze mid-window or switched abruptly past the target), and the
errors are a sharp core plus a heavy tail that one Gaussian fits neither part of. Two laws are fitted per
level to the errors (achieved minus target, each the mean of ``reads`` reads) with the read noise left in
those means taken out, and the calibration keeps the one that predicts held-out devices better (see
:func:`calibration.laws.programming_error` for the laws):

* "normal": mean and standard deviation of the errors, as moments;
* "mixture": a Gaussian core and a Laplace tail around the same bias, by maximum likelihood (EM). Each
  error's likelihood is that of the law plus the Gaussian read noise of its own mean of reads, so the
  fitted sigma and tail width are those of the devices, not of the reads.
* "skewed": the mixture with a tail whose two sides have a share and a mean distance of their own, by EM
  likewise. A polarity that switches abruptly leaves most of the devices it misses on one side: on VCM
  arrays 60-90 % of the tail lies above the level, where the SET left it, and the symmetric tail, which
  puts half of it below, failed the predictive check on held-out devices that this one passes.

The tail is a Laplace distribution centred on the core: its exponential flanks follow the continuum of
errors PCM programming leaves between the tolerance and tens of tolerances, and the rare far devices of
pessimistic RRAM, better than a wide Gaussian does (held-out likelihood higher by 0.04 to 0.17 nats per
device on 64x64 arrays). A tail spread uniformly over the window fits PCM and VCM worse. A tail with a
location of its own chases the cluster VCM devices form at the window's upper bound and misses the
shoulder next to the level: a slightly higher likelihood, but held-out VCM devices then fail the
predictive check; the skewed tail, centred with its two sides apart, passes it.

Each wider law is kept only where it predicts held-out devices better by the selection margin.
Errors are handled in units of the write-verify tolerance, so that the likelihoods (``selection``) are
dimensionless and comparable between arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from .selection import SELECTION_MARGIN

# The tail's Laplace scale is at least this many standard deviations of the core (with read noise): the
# tail is the wide component by definition, and without the bound EM may swap the two.
MIN_TAIL_WIDTH = 3.0
# The core's sigma is at most this many write-verify tolerances: the core is the devices write-verify
# brought within its tolerance. Where most of a level's devices are in the tail and read noise is as wide as
# the core, the likelihood hardly tells a wide core with a small tail from a narrow core with a large one;
# the bound keeps the fit at the end of that ridge that describes what write-verify did.
MAX_CORE_SIGMA = 1.0
# A level with fewer devices has the normal law under either law: a tail of a few per cent needs hundreds
# of devices to be seen at all.
MIN_MIXTURE_DEVICES = 50
_EM_ITERATIONS = 500
_EM_TOLERANCE = 1e-9
# Variances (in tolerance units squared) below this count as this: errors of exactly equal value and no
# read noise would otherwise give a zero variance.
_MIN_VARIANCE = 1e-12


@dataclass(frozen=True)
class LevelFit:
    """One level's law, errors in units of the tolerance."""

    bias: float
    sigma: float
    tail_fraction: float = 0.0
    tail_width: float = 0.0            # the tail's Laplace scale; skewed: its mean distance above the bias
    tail_up: float = 0.5               # share of the tail above the bias (skewed)
    tail_width_down: float | None = None   # mean distance of the tail below the bias (skewed); None: tail_width


def fit_normal(err: np.ndarray, read_var: np.ndarray) -> LevelFit:
    """Mean and standard deviation of the errors, the read-noise variance taken out of the latter."""
    var = float(np.var(err, ddof=1)) if err.size > 1 else 0.0
    return LevelFit(float(np.mean(err)), float(np.sqrt(max(var - float(np.mean(read_var)), 0.0))))


def _core_log_pdf(y: np.ndarray, sigma: float, read_var: np.ndarray) -> np.ndarray:
    var = np.maximum(sigma ** 2 + read_var, _MIN_VARIANCE)
    return -0.5 * (np.log(2 * np.pi * var) + y ** 2 / var)


def _side_log_pdf(y: np.ndarray, width: float, read_var: np.ndarray, sign: float) -> np.ndarray:
    """Log density of ``sign`` times an exponential variable of mean ``width`` plus Gaussian read noise
    (the exponentially modified Gaussian, in closed form)."""
    r = np.sqrt(np.maximum(read_var, _MIN_VARIANCE))
    b = max(width, 1e-6)
    return r ** 2 / (2 * b * b) - np.log(b) - sign * y / b + log_ndtr(sign * y / r - r / b)


def _tail_log_pdf(y: np.ndarray, width: float, read_var: np.ndarray, up: float = 0.5,
                  width_down: float | None = None) -> np.ndarray:
    """Log density of the tail plus Gaussian read noise: a share ``up`` above, of mean ``width``, the rest
    below, of mean ``width_down`` (default ``width``: a Laplace variable of scale ``width``, the
    normal-Laplace distribution of Reed and Jorgensen)."""
    down = width if width_down is None else width_down
    return np.logaddexp(np.log(max(up, 1e-300)) + _side_log_pdf(y, width, read_var, 1.0),
                        np.log(max(1.0 - up, 1e-300)) + _side_log_pdf(y, down, read_var, -1.0))


def log_likelihood(err: np.ndarray, read_var: np.ndarray, fit: LevelFit) -> np.ndarray:
    """Log-likelihood of each error (plus its read noise, variance ``read_var``) under ``fit``."""
    y = err - fit.bias
    core = _core_log_pdf(y, fit.sigma, read_var)
    if fit.tail_fraction <= 0:
        return core
    return np.logaddexp(np.log1p(-fit.tail_fraction) + core,
                        np.log(fit.tail_fraction) + _tail_log_pdf(y, fit.tail_width, read_var, fit.tail_up,
                                                                  fit.tail_width_down))


def _em_start(err: np.ndarray, read_var: np.ndarray) -> tuple[float, np.ndarray, float, float, float]:
    """Where EM starts: the devices within the tolerance (|error| <= 1) as the core, the rest as the tail.
    Returns the mean read variance, that mask, the core's median and sigma (read noise out), and the
    tail fraction."""
    mean_read = float(np.mean(read_var))
    inside = np.abs(err) <= 1.0
    core = err[inside] if inside.sum() >= 3 else err
    sigma = float(np.sqrt(max(float(np.var(core)) - mean_read, 0.0)))
    return mean_read, inside, float(np.median(core)), sigma, float(np.clip(np.mean(~inside), 0.01, 0.9))


def fit_mixture(err: np.ndarray, read_var: np.ndarray) -> LevelFit:
    """Gaussian core and centred Laplace tail by EM, errors and read variances in units of the tolerance.

    The start takes the devices within the tolerance (|error| <= 1) as the core and the rest as the
    tail. The M-step is exact for the tail fraction; the bias and core sigma are the read-noise weighted
    moments of the core's share of each error (as a random-effects fit takes out known measurement noise),
    and the tail scale is the mean absolute deviation of its share less what read noise adds to it,
    r^2 / (2 w) to first order in r / w (the tail is at least MIN_TAIL_WIDTH core spreads wide). The core
    sigma is held at or below MAX_CORE_SIGMA.
    """
    if err.size < MIN_MIXTURE_DEVICES:
        return fit_normal(err, read_var)
    mean_read, inside, bias, sigma, fraction = _em_start(err, read_var)
    outside = err[~inside]
    width = max(float(np.mean(np.abs(outside - bias))) if outside.size else 0.0,
                MIN_TAIL_WIDTH * np.sqrt(sigma ** 2 + mean_read))
    previous = -np.inf
    for _ in range(_EM_ITERATIONS):
        y = err - bias
        a = np.log1p(-fraction) + _core_log_pdf(y, sigma, read_var)
        b = np.log(fraction) + _tail_log_pdf(y, width, read_var)
        total = np.logaddexp(a, b)
        score = float(np.mean(total))
        tail = np.exp(b - total)
        core_w = 1.0 - tail
        fraction = float(np.clip(np.mean(tail), 1e-9, 1 - 1e-9))
        var = np.maximum(sigma ** 2 + read_var, _MIN_VARIANCE)
        bias = float(np.sum(core_w * err / var) / max(np.sum(core_w / var), 1e-300))
        y = err - bias
        share = max(float(np.sum(core_w)), 1e-300)
        sigma = float(np.sqrt(max(float(np.sum(core_w * (y ** 2 - read_var))) / share, 0.0)))
        sigma = min(sigma, MAX_CORE_SIGMA)
        tail_share = max(float(np.sum(tail)), 1e-300)
        mad = float(np.sum(tail * np.abs(y))) / tail_share
        read_in_tail = float(np.sum(tail * read_var)) / tail_share
        width = max(mad - read_in_tail / (2 * mad) if mad > 0 else 0.0,
                    MIN_TAIL_WIDTH * np.sqrt(sigma ** 2 + mean_read))
        if score - previous < _EM_TOLERANCE:
            break
        previous = score
    return LevelFit(bias, sigma, fraction, float(width))


def fit_skewed(err: np.ndarray, read_var: np.ndarray) -> LevelFit:
    """Gaussian core and a tail with a side of its own above and below the bias, by EM, errors and read
    variances in units of the tolerance.

    Three components: the core, the tail above (bias plus an exponential of mean w_up) and the tail below
    (bias minus one of mean w_down), each with the read noise of its error. Starts as :func:`fit_mixture`
    does, the devices outside the tolerance split by side. The M-step is exact for the tail fraction and
    its share above; each side's mean distance is the mean of its share of the errors, which read noise
    (mean zero) leaves unbiased; bias and core sigma as in :func:`fit_mixture`, with its bounds.
    """
    if err.size < MIN_MIXTURE_DEVICES:
        return fit_normal(err, read_var)
    mean_read, inside, bias, sigma, fraction = _em_start(err, read_var)
    floor = MIN_TAIL_WIDTH * np.sqrt(sigma ** 2 + mean_read)
    above, below = err[~inside & (err > bias)] - bias, bias - err[~inside & (err <= bias)]
    up = float(np.clip(above.size / max(above.size + below.size, 1), 0.05, 0.95))
    w_up = max(float(np.mean(above)) if above.size else 0.0, floor)
    w_down = max(float(np.mean(below)) if below.size else 0.0, floor)
    previous = -np.inf
    for _ in range(_EM_ITERATIONS):
        y = err - bias
        a = np.log1p(-fraction) + _core_log_pdf(y, sigma, read_var)
        b_up = np.log(fraction * up) + _side_log_pdf(y, w_up, read_var, 1.0)
        b_down = np.log(fraction * (1 - up)) + _side_log_pdf(y, w_down, read_var, -1.0)
        total = np.logaddexp(a, np.logaddexp(b_up, b_down))
        score = float(np.mean(total))
        r_up, r_down = np.exp(b_up - total), np.exp(b_down - total)
        core_w = np.clip(1.0 - r_up - r_down, 0.0, 1.0)
        tail = max(float(np.sum(r_up + r_down)), 1e-300)
        fraction = float(np.clip(tail / err.size, 1e-9, 1 - 1e-9))
        up = float(np.clip(np.sum(r_up) / tail, 1e-6, 1 - 1e-6))
        var = np.maximum(sigma ** 2 + read_var, _MIN_VARIANCE)
        bias = float(np.sum(core_w * err / var) / max(np.sum(core_w / var), 1e-300))
        y = err - bias
        share = max(float(np.sum(core_w)), 1e-300)
        sigma = min(float(np.sqrt(max(float(np.sum(core_w * (y ** 2 - read_var))) / share, 0.0))), MAX_CORE_SIGMA)
        floor = MIN_TAIL_WIDTH * np.sqrt(sigma ** 2 + mean_read)
        w_up = max(float(np.sum(r_up * y)) / max(float(np.sum(r_up)), 1e-300), floor)
        w_down = max(-float(np.sum(r_down * y)) / max(float(np.sum(r_down)), 1e-300), floor)
        if score - previous < _EM_TOLERANCE:
            break
        previous = score
    return LevelFit(bias, sigma, fraction, float(w_up), up, float(w_down))


LAWS = {"normal": fit_normal, "mixture": fit_mixture, "skewed": fit_skewed}


def select_law(levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Held-out log-likelihood of each law per programmed device (a device programmed in two rounds counts
    twice), by two-fold cross-validation over devices.

    ``levels`` holds per level (errors, read variances, device ids), errors in units of the tolerance; a
    device programmed in several rounds falls in one half with all its errors. The halves are drawn by
    a fixed seed; each is predicted by the laws fitted, level by level, to the other."""
    devices = np.unique(np.concatenate([d for _, _, d in levels]))
    halves = np.array_split(np.random.default_rng(0).permutation(devices), 2)
    scores = dict.fromkeys(LAWS, 0.0)
    n = sum(e.size for e, _, _ in levels)
    for train_devices, test_devices in (halves, halves[::-1]):
        for err, read_var, device in levels:
            train, test = np.isin(device, train_devices), np.isin(device, test_devices)
            if train.sum() < 2 or not test.any():
                continue
            for law, fit in LAWS.items():
                fitted = fit(err[train], read_var[train])
                scores[law] += float(np.sum(log_likelihood(err[test], read_var[test], fitted))) / n
    return scores


def chosen_law(scores: dict[str, float]) -> str:
    """Each wider law must beat the one before it by the selection margin: normal, mixture (a symmetric
    tail), skewed (a tail with a side of its own). Scores from before the skewed law have no entry for it."""
    law = "mixture" if scores["mixture"] > scores["normal"] + SELECTION_MARGIN else "normal"
    if "skewed" in scores and scores["skewed"] > scores[law] + SELECTION_MARGIN:
        law = "skewed"
    return law


__all__ = ["LAWS", "LevelFit", "MIN_MIXTURE_DEVICES", "SELECTION_MARGIN", "chosen_law", "fit_mixture",
           "fit_normal", "fit_skewed", "log_likelihood", "select_law"]
