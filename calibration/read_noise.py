"""Read noise: repeated reads of a programmed array, and the law the data choose for them.

Two laws (written in :mod:`calibration.laws`, carried by :class:`~calibration.noise_model.ReadNoise`):

* "white": sigma(g)^2 = floor^2 + (relative g)^2, the same at every time after programming;
* "flicker": the white part plus 1/f noise, (q g_ref (g / g_ref)^p)^2 L(t), that grows with the time
  t since programming, L(t) = ln((t + t0 + t_read) / (2 t_read)).

* "telegraph": either of them for every device, plus random telegraph noise (RTN) on a fraction of the
  devices, its amplitude log-normal over them: a mixture over devices of the sample variance's
  distribution (:class:`~calibration.noise_model.ReadNoise` gives the parameters).

The white law is fitted to every set of repeated reads. The flicker law needs reads at several
known times after programming (the read-noise stage and the drift stage's reads at each time);
both laws are fitted to half of the devices and scored on the other half by the likelihood of
their sample variances, and the flicker law is kept only if it predicts the held-out devices
better by a margin: a law with more parameters that predicts no better is not taken. The telegraph
law is then fitted on top of the law so chosen and kept, by the same held-out score and margin, if
it predicts better.

What a burst of reads shows of a trap. A two-state trap that switches many times within the burst
(both dwell times well below the burst's length: 50 reads 1 ms apart span 49 ms) adds a variance
(dG/G)^2 p (1 - p) g^2 to every read (p: the fraction of time it is filled), seen in full even when it
switches faster than the reads come. A trap whose dwell times both exceed the burst rarely switches
within it: its state is a static offset of the device's conductance, and the rare burst that catches a
switch shows a step. So the law's fraction is that of devices whose traps switch within the burst,
and its amplitude the rms telegraph fluctuation relative to g, dG/G sqrt(p (1 - p)): a trap's step and
its occupancy are not separable from variances, nor are dwell times, and a device whose telegraph
variance is far below its white variance over ``reads`` reads (relative scatter sqrt(2 / (reads - 1)))
is not told apart from one without: the fraction and the lower part of the amplitude distribution are
identified through the log-normal's shape, from the devices whose telegraph variance is comparable to
or larger than the white part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import digamma, gammainc, gammaln

from drivers import Crossbar

from . import laws
from .noise_model import ReadNoise
from .options import ReadNoiseOptions
from .quality import ReadQuality, assess
from .selection import SELECTION_MARGIN


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
# The telegraph law is fitted to sets of at least this many reads (a sample variance of fewer scatters by
# more than half of itself, and a burst of a few reads is too short for most traps to switch within it),
# over at least this many devices (the fraction and the amplitude distribution are a population's).
TELEGRAPH_MIN_READS = 10
TELEGRAPH_MIN_DEVICES = 200
# Bounds of the telegraph fit: spread of ln amplitude over devices, and beta, its sigma ~ g^beta.
TELEGRAPH_SIGMA_LN = (0.05, 3.0)
TELEGRAPH_EXPONENT = (-1.0, 2.0)
# A part every device has is the white (or flicker) law's: a telegraph part on nearly all devices, with a
# narrow spread of amplitudes, would stand in for the relative white noise (the likelihood has such a
# maximum), so the fraction is held below this.
TELEGRAPH_MAX_FRACTION = 0.5


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


def _gamma_logpdf(var, sigma2, k):
    # log density of a sample variance ``var`` with k = (n - 1) / 2 of reads of variance sigma2
    z = k * var / sigma2
    return k * np.log(z) - z - np.log(var) - gammaln(k)


# The telegraph mixture's quadrature over ln amplitude: the Gamma density of a sample variance of n
# reads is a bump of width about sqrt(2 / (n - 1)) in ln variance, and the trapezoidal rule's relative
# error falls as exp(-2 pi^2 (width / spacing)^2): 1e-4 at a spacing of 1.5 widths.
_SPAN = 5.5
_SPACING = 1.5
_MAX_NODES = 600


def telegraph_nodes(law: ReadNoise, dof) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature amplitudes and weights of ``law``'s telegraph amplitudes, fine enough for sample
    variances of ``dof`` degrees of freedom (the largest counts)."""
    return law.telegraph_nodes(_node_count(law.telegraph_sigma_ln or 0.0, float(np.max(dof))), _SPAN)


def _node_count(sigma_ln: float, dof: float) -> int:
    spacing = _SPACING * np.sqrt(2.0 / max(dof, 1.0)) / (2.0 * max(sigma_ln, 1e-3))
    return int(np.clip(np.ceil(2 * _SPAN / spacing) + 1, 16, _MAX_NODES))


def _mixture_parts(law: ReadNoise, g, dof, age, g_programmed):
    """Each device's base variance (N,), its variance at each telegraph node (N, M) and the node weights."""
    base = law.variance(g, age, g_programmed)
    amp, w = telegraph_nodes(law, dof)
    return base, base[:, None] + law.telegraph_variance(np.asarray(g)[:, None], amp[None, :]), w


def sample_variance_logpdf(law: ReadNoise, g, var, dof, age, g_programmed=None) -> np.ndarray:
    """Log density of each sample variance ``var`` (of ``dof`` + 1 reads) under ``law``: Gamma, shape
    dof / 2 and mean the law's variance, or for a telegraph law the mixture over devices of those
    Gammas, (1 - f) Gamma(base) + f E_a[Gamma(base + telegraph(a))]."""
    g, var, dof = (np.asarray(x, dtype=np.float64) for x in np.broadcast_arrays(g, var, dof))
    k = dof / 2
    if law.law != "telegraph":
        return _gamma_logpdf(var, law.variance(g, age, g_programmed), k)
    base, node_var, w = _mixture_parts(law, g, dof, age, g_programmed)
    lp0 = _gamma_logpdf(var, base, k)
    lp = _gamma_logpdf(var[:, None], node_var, k[:, None]) + np.log(w)[None, :]
    top = np.maximum(lp0, lp.max(axis=1))
    f = law.telegraph_fraction
    mix = (1 - f) * np.exp(lp0 - top) + f * np.exp(lp - top[:, None]).sum(axis=1)
    return top + np.log(np.maximum(mix, 1e-300))


def sample_variance_cdf(law: ReadNoise, g, var, dof, age, g_programmed=None) -> np.ndarray:
    """P(S^2 <= ``var``) for each device under ``law`` (the probability integral transform: uniform on
    0..1 for devices the law describes)."""
    g, var, dof = (np.asarray(x, dtype=np.float64) for x in np.broadcast_arrays(g, var, dof))
    k = dof / 2
    if law.law != "telegraph":
        return gammainc(k, k * var / law.variance(g, age, g_programmed))
    base, node_var, w = _mixture_parts(law, g, dof, age, g_programmed)
    f = law.telegraph_fraction
    return (1 - f) * gammainc(k, k * var / base) + f * (gammainc(k[:, None], k[:, None] * var[:, None] / node_var) @ w)


def expected_log_variance(law: ReadNoise, g, dof, age, g_programmed=None) -> np.ndarray:
    """E[ln S^2] of each device's sample variance under ``law``: ln sigma^2 + psi(k) - ln k for a Gamma
    of shape k = dof / 2, averaged over the telegraph mixture."""
    g, dof = (np.asarray(x, dtype=np.float64) for x in np.broadcast_arrays(g, dof))
    k = dof / 2
    bias = digamma(k) - np.log(k)
    if law.law != "telegraph":
        return np.log(law.variance(g, age, g_programmed)) + bias
    base, node_var, w = _mixture_parts(law, g, dof, age, g_programmed)
    f = law.telegraph_fraction
    return (1 - f) * np.log(base) + f * (np.log(node_var) @ w) + bias


def log_likelihood(law: ReadNoise, g: np.ndarray, var: np.ndarray, dof: np.ndarray, age: np.ndarray,
                   g_programmed: np.ndarray | None = None) -> float:
    """Mean log-likelihood per sample variance under ``law``: a sample variance s^2 of n Gaussian reads
    with variance sigma^2 is Gamma distributed, shape (n - 1) / 2 and mean sigma^2 ((n - 1) s^2 /
    sigma^2 follows chi-square with n - 1 degrees of freedom); under a telegraph law, the mixture of
    :func:`sample_variance_logpdf`."""
    return float(np.mean(sample_variance_logpdf(law, g, var, dof, age, g_programmed)))


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


def _long_bursts(d: _Pooled) -> _Pooled:
    return d.take(d.dof + 1 >= TELEGRAPH_MIN_READS)


def _fit_telegraph(d: _Pooled, base: ReadNoise, reference_age_s: float) -> ReadNoise | None:
    """``base`` plus telegraph noise on a fraction of the devices, by maximum likelihood of the sample
    variances of the sets of at least TELEGRAPH_MIN_READS reads; None with too few devices.

    Every device's variance is floor^2 + relative^2 g^2 (+ the flicker part of a flicker ``base``, kept
    as fitted: at one time after programming it cannot be told from the white part), and a fraction f
    of the devices adds (a g_ref (g / g_ref)^beta)^2 with ln a ~ Normal(ln a_median, s^2). The floor and
    the relative part are refitted with the telegraph part, not taken from ``base``: a white fit to
    devices some of which carry telegraph noise is pulled up by them. The likelihood of each sample
    variance is the mixture of Gammas, the amplitude integrated on a grid of ln a (trapezoidal rule);
    its gradient is analytic."""
    d = _long_bursts(d)
    if np.unique(d.cell).size < TELEGRAPH_MIN_DEVICES // 2:
        return None
    g_ref = float(np.median(d.g))
    v_unit = float(np.median(d.var))
    x, y, k = d.g / g_ref, d.var / v_unit, d.dof / 2
    lnx, x2 = np.log(x), x ** 2
    fixed = 0.0
    if base.base_law == "flicker":
        fixed = base.model_copy(update={"floor_s": 0.0, "relative": 0.0}).variance(d.g, d.age, d.gp) / v_unit
    kc = k[:, None]

    def objective(theta, z, log_w):
        lf2, lr2, eta, la, ls, beta = theta
        f2, r2, s = np.exp(lf2), np.exp(lr2), np.exp(ls)
        phi = 1 / (1 + np.exp(-eta))
        b = f2 + r2 * x2 + fixed
        e = np.exp(2 * la + 2 * s * z[None, :] + 2 * beta * lnx[:, None])
        total = b[:, None] + e
        lp0 = -k * np.log(b) - k * y / b
        lp = -kc * np.log(total) - kc * y[:, None] / total + log_w
        top = np.maximum(lp0, lp.max(axis=1))
        p0, pj = np.exp(lp0 - top), np.exp(lp - top[:, None])
        node_sum = pj.sum(axis=1)
        mix = (1 - phi) * p0 + phi * node_sum
        ll = top + np.log(mix)
        # d log Gamma / d sigma^2 = (k / sigma^2) (y / sigma^2 - 1)
        pd = pj * (kc / total * (y[:, None] / total - 1))
        d_b = ((1 - phi) * p0 * (k / b * (y / b - 1)) + phi * pd.sum(axis=1)) / mix
        pde = 2 * pd * e
        grad = np.array([np.mean(d_b * f2), np.mean(d_b * r2 * x2),
                         np.mean((node_sum - p0) / mix) * phi * (1 - phi),
                         np.mean(phi * pde.sum(axis=1) / mix),
                         np.mean(phi * (pde * (s * z)[None, :]).sum(axis=1) / mix),
                         np.mean(phi * (pde * lnx[:, None]).sum(axis=1) / mix)])
        return -float(np.mean(ll)), -grad

    # Start from the base law's white part and a telegraph part of the size of the median variance.
    f2 = max(base.floor_s ** 2 / v_unit, np.exp(-20))
    r2 = max((base.relative * g_ref) ** 2 / v_unit, np.exp(-20))
    bounds = [(-25, 3), (-25, 3), (-8, float(np.log(TELEGRAPH_MAX_FRACTION / (1 - TELEGRAPH_MAX_FRACTION)))), (-8, 4),
              tuple(np.log(TELEGRAPH_SIGMA_LN)), TELEGRAPH_EXPONENT]
    low, high = np.array(bounds).T

    def grid(cap: float, coarse: float = 1.0):
        z = np.linspace(-_SPAN, _SPAN, max(16, int(_node_count(cap, float(np.max(d.dof))) / coarse)))
        log_w = -0.5 * z ** 2
        return z, log_w - np.log(np.exp(log_w).sum())

    # The likelihood has local maxima (a few devices with large amplitudes, or nearly all devices with a
    # very wide spread of small ones): two starts. One from the data:
    # the devices whose variance is beyond the base law's by four of its standard errors, their fraction
    # doubled (the ones whose telegraph variance is small hide in the scatter) and the median of their
    # excess; the other a tenth of the devices with the median variance.
    b0 = f2 + r2 * x2 + fixed
    tail = y > b0 * (1 + 4 * np.sqrt(2 / d.dof))
    fraction = float(np.clip(2 * tail.mean(), 0.01, 0.5))
    la0 = 0.5 * float(np.median(np.log((y - b0)[tail] / x[tail]))) if tail.sum() >= 5 else 0.0
    starts = [np.clip([np.log(f2), np.log(r2), np.log(fraction / (1 - fraction)), la, 0.0, 0.5], low, high)
              for fraction, la in ((fraction, la0), (0.1, 0.0))]
    # Each start is taken some way on a coarse grid of ln a; the better is fitted in full. The grid is sized
    # for a spread of ln a up to `cap` (its cost grows with it); a fit that comes near the cap is taken up
    # again on a grid for twice the spread.
    theta = min((minimize(objective, start, args=grid(1.5, 3.0), jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": 40}) for start in starts), key=lambda r: r.fun).x
    cap = 1.5
    while True:
        best = minimize(objective, theta, args=grid(cap), jac=True, method="L-BFGS-B", bounds=bounds)
        theta = best.x
        if np.exp(theta[4]) < 0.8 * cap or cap >= TELEGRAPH_SIGMA_LN[1]:
            break
        cap = min(2 * cap, TELEGRAPH_SIGMA_LN[1])
    lf2, lr2, eta, la, ls, beta = best.x
    reads = int(np.median(d.dof)) + 1
    update = {"law": "telegraph", "floor_s": float(np.sqrt(np.exp(lf2) * v_unit)),
              "relative": float(np.sqrt(np.exp(lr2) * v_unit) / g_ref),
              "telegraph_fraction": float(1 / (1 + np.exp(-eta))),
              "telegraph_amplitude": float(np.exp(la) * np.sqrt(v_unit) / g_ref),
              "telegraph_sigma_ln": float(np.exp(ls)), "telegraph_exponent": float(beta),
              "telegraph_g_ref_s": g_ref, "telegraph_reads": reads, "reference_age_s": float(reference_age_s),
              "selection": None}
    return ReadNoise.model_validate({**base.model_dump(), **update})


def _ages_span(age: np.ndarray) -> bool:
    ages = np.unique(age[np.isfinite(age)])
    return ages.size >= MIN_AGES and ages[0] > 0 and np.log10(ages[-1] / ages[0]) >= MIN_AGE_DECADES


def choose_read_noise(white: ReadNoise, timed: Sequence, reference_age_s: float | None = None,
                      seed: int = 0) -> ReadNoise:
    """Among ``white`` (the white law fitted to every set of reads), the flicker law and the telegraph law,
    by two-fold held-out likelihood on ``timed``, the sets of reads taken at known times after programming:
    each half of the devices (drawn by ``seed``) is predicted by each law fitted to the other half, and
    scored by the mean log-likelihood of its sample variances.

    The flicker law (with reads at enough distinct times) replaces the white law only if it scores better
    by SELECTION_MARGIN. The telegraph law, fitted on top of the law so chosen to the sets of at least
    TELEGRAPH_MIN_READS reads (with at least TELEGRAPH_MIN_DEVICES devices), replaces it only if it scores
    better by the margin on every timed set. The laws are refitted to all of ``timed`` and every score is
    recorded in the returned law. With neither reads at enough times nor long enough sets the white law
    stands with no scores. ``reference_age_s``: the time since programming recorded in the law (default:
    the median age of ``timed``)."""
    if reference_age_s is not None:
        white = white.model_copy(update={"reference_age_s": float(reference_age_s)})
    d = _pool(timed) if timed else None
    if d is None:
        return white
    span = _ages_span(d.age)
    telegraph = np.unique(_long_bursts(d).cell).size >= TELEGRAPH_MIN_DEVICES
    if not (span or telegraph):
        return white
    if reference_age_s is None:
        reference_age_s = float(np.median(d.age))
        white = white.model_copy(update={"reference_age_s": reference_age_s})
    devices = np.unique(d.cell)
    if devices.size < 20:
        return white
    halves = np.array_split(np.random.default_rng(seed).permutation(devices), 2)
    folds = [(d.take(np.isin(d.cell, train)), d.take(np.isin(d.cell, test))) for train, test in (halves, halves[::-1])]
    scores = {"white": 0.0, "flicker": 0.0} if span else {"white": 0.0}
    fitted = []
    for fit_part, score_part in folds:
        w = _fit_white(fit_part)
        laws_by_name = {"white": w}
        if span:
            laws_by_name["flicker"] = _fit_flicker(fit_part, reference_age_s) or w
        args = (score_part.g, score_part.var, score_part.dof, score_part.age, score_part.gp)
        for name, law in laws_by_name.items():
            scores[name] += log_likelihood(law, *args) / 2
        fitted.append(laws_by_name)
    chosen = white
    if span and scores["flicker"] > scores["white"] + SELECTION_MARGIN:
        chosen = _fit_flicker(d, reference_age_s) or white
    base = chosen.law
    if telegraph:
        scores["telegraph"] = 0.0
        for (fit_part, score_part), laws_by_name in zip(folds, fitted):
            law = _fit_telegraph(fit_part, laws_by_name[base], reference_age_s)
            args = (score_part.g, score_part.var, score_part.dof, score_part.age, score_part.gp)
            scores["telegraph"] += log_likelihood(law or laws_by_name[base], *args) / 2
        if scores["telegraph"] > scores[base] + SELECTION_MARGIN:
            chosen = _fit_telegraph(d, chosen, reference_age_s) or chosen
    return chosen.model_copy(update={"selection": scores})
