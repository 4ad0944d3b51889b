"""Read noise: repeated reads of a programmed array, and the law the data choose for them.

Two laws (written in :mod:`calibration.laws`, carried by :class:`~calibration.noise_model.ReadNoise`):

* "white": sigma(g)^2 = floor^2 + (relative g)^2, the same at every time after programming;
* "flicker": the white part plus 1/f noise, (q g_ref (g / g_ref)^p)^2 L(t), that grows with the time
  t since programming, L(t) = ln((t + t0 + t_read) / (2 t_read)).

The white law is fitted to every set of repeated reads. The flicker law needs reads at several
known times after programming (the read-noise stage and the drift stage's reads at each time);
both laws are fitted to half of the devices and scored on the other half by the likelihood of
their sample variances, and the flicker law is kept only if it predicts the held-out devices
better by a margin: a law with more parameters that predicts no better is not taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls
from scipy.special import gammaln

from drivers import Crossbar

from . import laws
from .noise_model import ReadNoise
from .options import ReadNoiseOptions
from .quality import ReadQuality, assess

# The fitted parameters are carried by the noise model's own ReadNoise: one class, one law.
ReadNoiseFit = ReadNoise

# The flicker law is chosen only if it predicts held-out sample variances better than this many nats
# per sample variance: on a device without 1/f noise its extra parameters fit the training half's
# scatter and gain nothing (a few 1e-4 nats) on the other half.
SELECTION_MARGIN = 0.01
# Grids of the flicker law's nonlinear parameters; each point is a weighted linear fit. p: sigma of
# the 1/f part against conductance, from constant (0) past proportional (1). t0: from "the age as
# measured" (0) to an offset beyond the longest drift schedule.
FLICKER_EXPONENTS = np.round(np.arange(0.0, 1.51, 0.05), 2)
FLICKER_T0_S = np.array([0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4])
# Reads at fewer distinct times, or over less than a decade of time, cannot separate 1/f noise that
# grows with time from noise that does not.
MIN_AGES, MIN_AGE_DECADES = 3, 1.0
_IRLS_ITERATIONS = 6
# The shortest read duration the 1/f law may take (s).
T_READ_MIN_S = 1e-12


@dataclass
class ReadNoiseMeasurement:
    reads_s: np.ndarray           # (reads, rows, cols)
    age_s: float | None = None    # time since the end of programming, at the middle of the reads

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
class ReadSamples:
    """One set of repeated reads, per device: mean conductance, sample variance over ``reads`` reads,
    the time since programming they were taken at (None: not known), the devices' flat indices (None:
    the same devices in the same order as every other set) and the conductance each device was
    programmed to, as read soon after programming (None: the mean, as for reads soon after programming)."""

    mean_s: np.ndarray
    var_s: np.ndarray
    reads: int
    age_s: float | None = None
    cells: np.ndarray | None = None
    programmed_s: np.ndarray | None = None


def measure_read_noise(xbar: Crossbar, options: ReadNoiseOptions, read_voltage_v: float,
                       programmed_at_s: float | None = None) -> ReadNoiseMeasurement:
    """``options.reads`` reads of the whole array; with ``programmed_at_s`` (instrument clock), the time
    since programming they were taken at."""
    start = xbar.now()
    reads = np.stack([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)])
    age = None if programmed_at_s is None else 0.5 * (start + xbar.now()) - programmed_at_s
    return ReadNoiseMeasurement(reads, age)


@dataclass
class _Pooled:
    g: np.ndarray
    var: np.ndarray
    dof: np.ndarray
    age: np.ndarray           # NaN where not known
    cell: np.ndarray
    gp: np.ndarray            # programmed conductance

    def take(self, keep: np.ndarray) -> "_Pooled":
        return _Pooled(self.g[keep], self.var[keep], self.dof[keep], self.age[keep], self.cell[keep], self.gp[keep])


def _pool(samples: Sequence) -> _Pooled:
    """Every set flattened into one list of sample variances, keeping what a fit can use: finite, a
    positive conductance and a positive variance (an exactly repeated read says nothing of its spread)."""
    parts = []
    for s in samples:
        s = s if isinstance(s, ReadSamples) else ReadSamples(*s)
        g, var = np.ravel(s.mean_s).astype(np.float64), np.ravel(s.var_s).astype(np.float64)
        cell = np.arange(g.size) if s.cells is None else np.ravel(s.cells)
        age = np.full(g.size, np.nan if s.age_s is None else float(s.age_s))
        gp = g if s.programmed_s is None else np.ravel(s.programmed_s).astype(np.float64)
        parts.append((g, var, np.full(g.size, s.reads - 1.0), age, cell, gp))
    if not parts:
        raise ValueError("read noise needs at least one set of repeated reads")
    pooled = _Pooled(*(np.concatenate(column) for column in zip(*parts)))
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(pooled.g) & np.isfinite(pooled.var) & (pooled.var > 0) & (pooled.g > 0) & (pooled.dof > 0)
        keep &= np.isfinite(pooled.gp) & (pooled.gp > 0)
    return pooled.take(keep)


def log_likelihood(law: ReadNoise, g: np.ndarray, var: np.ndarray, dof: np.ndarray, age: np.ndarray,
                   g_programmed: np.ndarray | None = None) -> float:
    """Mean log-likelihood per sample variance under ``law``: a sample variance s^2 of n Gaussian reads
    with variance sigma^2 is Gamma distributed, shape (n - 1) / 2 and mean sigma^2 ((n - 1) s^2 /
    sigma^2 follows chi-square with n - 1 degrees of freedom)."""
    sigma2 = law.variance(g, age, g_programmed)
    k = dof / 2
    z = k * var / sigma2
    return float(np.mean(k * np.log(z) - z - np.log(var) - gammaln(k)))


def _weighted_nnls(design: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Non-negative least squares of ``y`` on ``design`` with row weights, through the normal equations
    (a few columns, many rows: the small Cholesky system is solved instead of the tall one)."""
    a = design.T * weights
    gram = a @ design
    rhs = a @ y
    scale = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    gram = gram / np.outer(scale, scale) + 1e-12 * np.eye(len(gram))
    rhs = rhs / scale
    try:
        # Most fits have every coefficient positive: then the unconstrained solution is the answer.
        coef = np.linalg.solve(gram, rhs)
        if np.all(coef >= 0):
            return coef / scale
        upper = np.linalg.cholesky(gram).T
    except np.linalg.LinAlgError:
        return np.zeros(design.shape[1])
    coef, _ = nnls(upper, np.linalg.solve(upper.T, rhs))
    return coef / scale


def _irls(design: np.ndarray, y: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """The variance law linear in its coefficients (non-negative), fitted by the Gamma likelihood of the
    sample variances: a sample variance of n reads scatters around sigma^2 with variance
    2 sigma^4 / (n - 1), so the least-squares fit is weighted by (n - 1) / sigma^4, iterated from an
    unweighted start (the iteration's fixed point is the maximum-likelihood fit)."""
    weights = dof
    coef = np.zeros(design.shape[1])
    for _ in range(_IRLS_ITERATIONS):
        coef = _weighted_nnls(design, y, weights)
        model = np.maximum(design @ coef, 1e-12)
        weights = dof / model ** 2
    return coef


def _fit_white(d: _Pooled) -> ReadNoise:
    if d.g.size < 2:
        raise ValueError(f"read noise needs at least two devices with finite repeated reads, got {d.g.size}")
    # Work in units of the largest conductance and variance so both columns are of order one.
    g_unit = float(np.max(d.g))
    v_unit = float(np.max(d.var))
    x, y = d.g / g_unit, d.var / v_unit
    coef = _irls(np.stack([np.ones_like(x), x ** 2], axis=1), y, d.dof)
    return ReadNoise(floor_s=float(np.sqrt(coef[0] * v_unit)), relative=float(np.sqrt(coef[1] * v_unit) / g_unit))


def fit_read_noise(samples: Sequence) -> ReadNoise:
    """The white law fitted to (mean conductance, sample variance, reads[, age, cells]) per device, pooled
    over several measurements (tuples or :class:`ReadSamples`)."""
    return _fit_white(_pool(samples))


def _flicker_law(coef: np.ndarray, v_unit: float, g_ref: float, p: float, t0: float, t_read: float,
                 reference_age_s: float) -> ReadNoise:
    return ReadNoise(law="flicker", floor_s=float(np.sqrt(coef[0] * v_unit)),
                     relative=float(np.sqrt(coef[1] * v_unit) / g_ref),
                     flicker=float(np.sqrt(coef[2] * v_unit) / g_ref),
                     flicker_exponent=float(p), flicker_g_ref_s=g_ref, flicker_t0_s=float(t0), t_read_s=float(t_read),
                     reference_age_s=float(reference_age_s))


def _fit_flicker(d: _Pooled, reference_age_s: float) -> ReadNoise | None:
    """The flicker law fitted to sample variances at known ages; None if no 1/f part grows with time.

    For fixed p and t0 the law is linear in its coefficients once L is split as
    ln(t + t0) - ln(2 t_read) (t_read is far below t + t0 at any age a calibration reads at):
    sigma^2 = floor^2 + relative^2 g^2 + q^2 g_ref^2 a ln(t + t0) + c a, with the 1/f shape
    a = (g_p / g_ref)^2p (g / g_p)^2 and c = -q^2 g_ref^2 ln(2 t_read) >= 0 (a read shorter than a
    second). p and t0 are taken from grids by likelihood; the chosen law is refitted with its exact
    time term."""
    if d.g.size < 4:
        return None
    g_ref = float(np.median(d.g))
    v_unit = float(np.median(d.var))
    x, y = d.g / g_ref, d.var / v_unit
    ones, x2 = np.ones_like(x), x ** 2
    drifted = (d.g / d.gp) ** 2
    xp_ref = d.gp / g_ref
    k = d.dof / 2
    log_y = np.log(y)

    def grid_point(p: float, t0: float):
        lt = np.log(d.age + t0)
        xp = xp_ref ** (2 * p) * drifted
        design = np.stack([ones, x2, xp * lt, xp], axis=1)
        coef = _irls(design, y, d.dof)
        if coef[2] <= 0:
            return None
        model = np.maximum(design @ coef, 1e-300)
        return float(np.mean(k * np.log(k * y / model) - k * y / model - log_y)), float(p), float(t0), coef

    def better(a, b):
        return b if a is None or (b is not None and b[0] > a[0]) else a

    # Every other exponent of the grid first, then the neighbours of the best one.
    best = None
    for t0 in FLICKER_T0_S:
        if np.all(d.age + t0 > 0):
            for p in FLICKER_EXPONENTS[::2]:
                best = better(best, grid_point(p, t0))
    if best is None:
        return None
    i = int(np.argmin(np.abs(FLICKER_EXPONENTS - best[1])))
    for j in (i - 1, i + 1):
        if 0 <= j < len(FLICKER_EXPONENTS):
            best = better(best, grid_point(FLICKER_EXPONENTS[j], best[2]))
    _, p, t0, coef = best
    # A time-independent part far larger than the growing one stands for a read shorter than any instrument
    # makes; it is held at T_READ_MIN_S, where L changes by a few percent per decade of time.
    t_read = max(0.5 * float(np.exp(-min(coef[3] / coef[2], 700.0))), T_READ_MIN_S)
    # Refit the amplitudes with the time term exactly as the law has it.
    lt = laws.log_age(d.age, t0, t_read)
    coef = _irls(np.stack([ones, x2, xp_ref ** (2 * p) * drifted * lt], axis=1), y, d.dof)
    if coef[2] <= 0:
        return None
    return _flicker_law(coef, v_unit, g_ref, p, t0, t_read, reference_age_s)


def _ages_span(age: np.ndarray) -> bool:
    ages = np.unique(age[np.isfinite(age)])
    return ages.size >= MIN_AGES and ages[0] > 0 and np.log10(ages[-1] / ages[0]) >= MIN_AGE_DECADES


def choose_read_noise(white: ReadNoise, timed: Sequence, reference_age_s: float | None = None,
                      seed: int = 0) -> ReadNoise:
    """Between ``white`` (the white law fitted to every set of reads) and the flicker law, by two-fold
    held-out likelihood on ``timed``, the sets of reads taken at known times after programming: each half
    of the devices (drawn by ``seed``) is predicted by both laws fitted to the other half. The flicker law,
    fitted to all of ``timed``, replaces ``white`` only if it scores better by SELECTION_MARGIN; both
    scores are recorded in the returned law. Without reads at enough distinct times the white law stands
    with no scores. ``reference_age_s``: the time since programming recorded in the law (default: the
    median age of ``timed``)."""
    if reference_age_s is not None:
        white = white.model_copy(update={"reference_age_s": float(reference_age_s)})
    d = _pool(timed) if timed else None
    if d is None or not _ages_span(d.age):
        return white
    if reference_age_s is None:
        reference_age_s = float(np.median(d.age))
        white = white.model_copy(update={"reference_age_s": reference_age_s})
    devices = np.unique(d.cell)
    if devices.size < 20:
        return white
    halves = np.array_split(np.random.default_rng(seed).permutation(devices), 2)
    scores = {"white": 0.0, "flicker": 0.0}
    for train, test in (halves, halves[::-1]):
        fit_part, score_part = d.take(np.isin(d.cell, train)), d.take(np.isin(d.cell, test))
        w = _fit_white(fit_part)
        f = _fit_flicker(fit_part, reference_age_s) or w
        args = (score_part.g, score_part.var, score_part.dof, score_part.age, score_part.gp)
        scores["white"] += log_likelihood(w, *args) / 2
        scores["flicker"] += log_likelihood(f, *args) / 2
    if scores["flicker"] > scores["white"] + SELECTION_MARGIN:
        chosen = _fit_flicker(d, reference_age_s)
        if chosen is not None:
            return chosen.model_copy(update={"selection": scores})
    return white.model_copy(update={"selection": scores})
