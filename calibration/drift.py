"""Drift after programming: reads at a series of times, and the law that describes them.

The power law g(t) = g0 ((t + t0) / t0)^-nu: each device gets its own exponent nu; t0 is shared and
found by a one-dimensional search. The spread of nu across devices is reported with the scatter that
read noise alone would put into the per-device estimates taken out.

The shift law (:func:`calibration.laws.relaxation_shift`), g(t) = g0 + m h(t) + z (b0 a(t) + b1 h(t)):
an absolute relaxation in either direction. Its parameters are fitted by maximum likelihood of each
device's reads after its first one, given that first read, with the read-noise law's noise on every
read; the same conditional likelihood scores every law on held-out devices, so that a multiplicative
and an additive law are compared on the same data (the power law's, Gaussian in log g, with the
Jacobian to siemens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drivers import Crossbar

from . import laws
from .noise_model import ReadNoise
from .options import DriftOptions
from .quality import ReadQuality, assess
from .selection import SELECTION_MARGIN


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


@dataclass
class DriftFit:
    t0_s: float
    nu: np.ndarray            # (rows, cols) per device, NaN where not fitted
    g0_s: np.ndarray          # (rows, cols) conductance at t = 0
    nu_mean: float
    nu_std: float
    nu_std_raw: float         # spread of the estimates before the read-noise scatter is removed
    # "power" (one mean and spread), "power_g" (by conductance), "shift" or "shift_g" (absolute relaxation)
    law: str = "power"
    levels_s: list[float] | None = None
    nu_mean_by_level: list[float] | None = None
    nu_std_by_level: list[float] | None = None
    selection: dict[str, float] | None = None   # held-out log-likelihood per device of each law
    shift: "ShiftFit | None" = None             # the shift law's fit, when a shift law is chosen

    def drift_fields(self) -> dict:
        """The fields of :class:`calibration.noise_model.Drift` for the chosen law."""
        out = dict(law=self.law, nu_mean=self.nu_mean, nu_std=self.nu_std, t0_s=self.t0_s, selection=self.selection)
        if self.law == "power_g":
            out.update(levels_s=self.levels_s, nu_mean_by_level=self.nu_mean_by_level,
                       nu_std_by_level=self.nu_std_by_level)
        elif self.law in ("shift", "shift_g"):
            sh = self.shift
            out.update(t0_s=sh.t0_s, shift_mean_s=sh.mean_s, shift_sigma_s=sh.sigma_s,
                       shift_sigma_early_s=sh.sigma_early_s)
            if self.law == "shift_g":
                out.update(levels_s=sh.levels_s, shift_mean_by_level=sh.mean_by_level,
                           shift_sigma_by_level=sh.sigma_by_level, shift_sigma_early_by_level=sh.sigma_early_by_level)
        return out


@dataclass
class ShiftFit:
    """The shift law g(t) = g0 + m h(t) + z (b0 a(t) + b1 h(t)) (:func:`calibration.laws.relaxation_shift`),
    over all devices and by conductance band."""

    t0_s: float
    mean_s: float             # m (S per unit of h)
    sigma_s: float            # b1 (S per unit of h)
    sigma_early_s: float      # b0 (S)
    levels_s: list[float] | None = None
    mean_by_level: list[float] | None = None
    sigma_by_level: list[float] | None = None
    sigma_early_by_level: list[float] | None = None


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
    # Variance of each mean read, by the read-noise law at the device's first read and each read's time.
    q = np.broadcast_to(read_noise.variance(g[0, ok][None], t[:, None]) / m.reads, g[:, ok].shape)
    return _select_law(fit, nu_dev, g0_dev, noise_var, _Reads(g[:, ok], t, q))


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


def _select_law(fit: DriftFit, nu: np.ndarray, g: np.ndarray, noise_var: np.ndarray, reads: "_Reads") -> DriftFit:
    """Choose among the drift laws by two-fold held-out likelihood: each half of the devices (drawn by a
    fixed seed) is predicted by the laws fitted to the other half, every law scored by the same
    likelihood of a device's later reads given its first (:func:`_mixture_log_likelihood`). A law with
    more parameters is chosen only if it predicts better than the simpler one chosen so far by
    ``SELECTION_MARGIN`` nats per device (order: power, shift, power_g, shift_g). Needs a few devices per
    band; with fewer, the power law stands."""
    if nu.size < 20 * DRIFT_BANDS:
        return fit
    halves = np.array_split(np.random.default_rng(0).permutation(nu.size), 2)
    scores = dict.fromkeys(_LAW_ORDER, 0.0)
    whole = _fit_shift(reads)
    for train, test in (halves, halves[::-1]):
        fitted, held = reads.subset(train), reads.subset(test)
        power = _random_effects(nu[train], noise_var[train])
        banded = _banded(nu[train], g[train], noise_var[train])
        for law, params in (("power", power), ("power_g", banded)):
            def per_device(r: _Reads, params=params) -> np.ndarray:
                return _power_log_likelihoods(r, fit.t0_s, *_power_at(params, r.g[0]))
            noise = _fit_noise(per_device, fitted)
            scores[law] += _mixture_log_likelihood(per_device, held, noise) / 2
        # Started from the fit to every device (the held-out half's score depends only on the optimum).
        pooled, noise = _fit_shift(fitted, start=whole)
        for law, shift in (("shift", pooled), ("shift_g", _fit_shift_banded(fitted, pooled, noise))):
            scores[law] += _mixture_log_likelihood(lambda r, shift=shift: _shift_log_likelihoods(r, shift), held,
                                                   noise) / 2
    fit.selection = scores
    chosen = "power"
    for law in _LAW_ORDER[1:]:
        if scores[law] > scores[chosen] + SELECTION_MARGIN:
            chosen = law
    if chosen == "power_g":
        levels, means, stds = _banded(nu, g, noise_var)
        if all(b > a for a, b in zip(levels, levels[1:])):
            fit.law, fit.levels_s, fit.nu_mean_by_level, fit.nu_std_by_level = "power_g", levels, means, stds
    elif chosen in ("shift", "shift_g"):
        fit.shift, noise = whole
        if chosen == "shift_g":
            banded = _fit_shift_banded(reads, fit.shift, noise)
            if all(b > a for a, b in zip(banded.levels_s, banded.levels_s[1:])):
                fit.shift = banded
            else:
                chosen = "shift"
        fit.law = chosen
    return fit


# Likelihoods change by far less than SELECTION_MARGIN when the optimiser stops.
_OPTIMISER = {"ftol": 1e-7}
# The laws by number of parameters: a later one must predict better than the simpler one chosen.
_LAW_ORDER = ("power", "shift", "power_g", "shift_g")


@dataclass
class _Reads:
    """What every law is scored on: each device's mean reads and their variances, by the read-noise law."""

    g: np.ndarray     # (T, n) mean reads
    t: np.ndarray     # (T,) times after programming
    q: np.ndarray     # (T, n) variance of each mean read

    def subset(self, cells: np.ndarray) -> "_Reads":
        return _Reads(self.g[:, cells], self.t, self.q[:, cells])

    def scaled(self, factor: float) -> "_Reads":
        return _Reads(self.g, self.t, self.q * factor)


@dataclass
class _Noise:
    """How the noise of the mean reads differs from the read-noise law's: all of it by ``scale``, and a
    ``fraction`` of the devices by a further ``factor``. Slow telegraph noise is the reason: a trap that
    holds its state through the reads averaged at one time is not averaged away, and only some devices
    hold one; a Gaussian likelihood without it lets those few devices set the spread of the drift."""

    scale: float = 1.0
    fraction: float = 0.05
    factor: float = 10.0

    def to_vector(self) -> np.ndarray:
        return np.array([np.log(self.scale), np.log(self.fraction / (1 - self.fraction)), np.log(self.factor)])

    @staticmethod
    def from_vector(p: np.ndarray) -> "_Noise":
        return _Noise(float(np.exp(p[0])), float(1 / (1 + np.exp(-p[1]))), float(np.exp(p[2])))


# log scale, logit fraction (at most half the devices are the noisy ones) and log factor
_NOISE_BOUNDS = [(np.log(0.3), np.log(3.0)), (-8.0, 0.0), (0.0, np.log(1e3))]


def _mixture_log_likelihood(per_device: Callable[["_Reads"], np.ndarray], reads: "_Reads", noise: _Noise) -> float:
    """Mean over devices of the log-likelihood of a law (``per_device``: its log-likelihood per device for
    given read variances) when the reads' noise is ``noise``: a mixture over devices of two noise levels."""
    quiet = per_device(reads.scaled(noise.scale))
    noisy = per_device(reads.scaled(noise.scale * noise.factor))
    value = np.mean(np.logaddexp(quiet + np.log1p(-noise.fraction), noisy + np.log(noise.fraction)))
    return float(value) if np.isfinite(value) else -np.inf


def _fit_noise(per_device: Callable[["_Reads"], np.ndarray], reads: "_Reads") -> _Noise:
    """The noise (:class:`_Noise`) that makes a law with fixed parameters most likely on ``reads``."""
    from scipy.optimize import minimize

    def loss(p: np.ndarray) -> float:
        value = -_mixture_log_likelihood(per_device, reads, _Noise.from_vector(p))
        return value if np.isfinite(value) else 1e30

    return _Noise.from_vector(minimize(loss, _Noise().to_vector(), method="L-BFGS-B", bounds=_NOISE_BOUNDS,
                                       options=_OPTIMISER).x)


def _gaussian_rank2(r: np.ndarray, d: np.ndarray, u: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per device (column), log N(r; 0, diag(d) + u u^T + c 1 1^T) (``u`` broadcasting to ``r``, ``c`` one per
    device: the first read's noise, shared by every increment), by the matrix determinant lemma and
    Woodbury's identity (a 2x2 system per device)."""
    w = 1 / d
    uw, rw = u * w, r * w
    k11, k22, k12 = 1 + (u * uw).sum(0), 1 + c * w.sum(0), np.sqrt(c) * uw.sum(0)
    det = k11 * k22 - k12 ** 2
    a1, a2 = (uw * r).sum(0), np.sqrt(c) * rw.sum(0)
    quad = (r * rw).sum(0) - (k22 * a1 ** 2 - 2 * k12 * a1 * a2 + k11 * a2 ** 2) / det
    return -0.5 * (r.shape[0] * np.log(2 * np.pi) - np.log(w).sum(0) + np.log(det) + quad)


def _power_at(params, g: np.ndarray):
    """Exponent mean and spread at conductances ``g`` of a power law (mean, std) or power_g law (levels,
    means, stds)."""
    if len(params) == 2:
        return params
    levels, means, stds = params
    return np.interp(g, levels, means), np.interp(g, levels, stds)


def _power_log_likelihoods(reads: _Reads, t0_s: float, nu_mean, nu_std) -> np.ndarray:
    """Per device, the log-likelihood of its reads after the first, given the first, under the power law
    with exponents Normal(``nu_mean``, ``nu_std``) (scalars or per device): Gaussian in log g (read noise
    relative to g), with the Jacobian to siemens. The first read's noise is shared by every later ratio."""
    g, q = reads.g, reads.q
    x = np.log((reads.t + t0_s) / t0_s)
    dx = (x[1:] - x[0])[:, None]
    rel = q / g[0] ** 2
    r = np.log(g[1:] / g[0]) + nu_mean * dx
    ll = _gaussian_rank2(r, rel[1:], nu_std * dx, rel[0])
    return ll - np.log(g[1:]).sum(0)


def _shift_log_likelihoods(reads: _Reads, shift: "ShiftFit") -> np.ndarray:
    """Per device, the log-likelihood of its reads after the first, given the first, under the shift law
    (:func:`calibration.laws.relaxation_shift`; by conductance band of the first read if ``shift`` has them)."""
    g, q = reads.g, reads.q
    if shift.levels_s is None:
        m, b1, b0 = shift.mean_s, shift.sigma_s, shift.sigma_early_s
    else:
        m, b1, b0 = (np.interp(g[0], shift.levels_s, c) for c in (
            shift.mean_by_level, shift.sigma_by_level, shift.sigma_early_by_level))
    h, a = laws.relaxation_terms(reads.t, shift.t0_s)
    dh, da = (h[1:] - h[0])[:, None], (a[1:] - a[0])[:, None]
    r = g[1:] - g[0] - m * dh
    return _gaussian_rank2(r, q[1:], b1 * dh + b0 * da, q[0])


def _fit_shift(reads: _Reads, t0_s: float | None = None, start: tuple[ShiftFit, _Noise] | None = None,
               noise: _Noise | None = None) -> tuple[ShiftFit, _Noise]:
    """The shift law by maximum likelihood (:func:`_mixture_log_likelihood`) of ``reads``: m, b1, b0 and,
    unless given, t0 and the noise: all jointly from ``start``, or without one from the best t0 of a coarse
    grid over the measured times."""
    from scipy.optimize import minimize

    t = reads.t
    # Parameters in units of the typical read noise, so that the optimiser sees numbers of order 1.
    unit = float(np.sqrt(np.median(reads.q)))
    log_t0_range = (np.log(t[0]) - 4, np.log(t[-1]))

    def law(p: np.ndarray, log_t0: float) -> ShiftFit:
        return ShiftFit(float(np.exp(log_t0)), *(float(v) * unit for v in p[:3]))

    def loss(p: np.ndarray, log_t0: float, n: _Noise) -> float:
        value = -_mixture_log_likelihood(lambda r: _shift_log_likelihoods(r, law(p, log_t0)), reads, n)
        return value if np.isfinite(value) else 1e30

    def initial(log_t0: float) -> np.ndarray:
        if start is not None:
            return np.array([start[0].mean_s, start[0].sigma_s, start[0].sigma_early_s]) / unit
        # The mean increment's slope on h, and the spread the last increment shows beyond read noise.
        h, _ = laws.relaxation_terms(t, float(np.exp(log_t0)))
        d = reads.g[1:] - reads.g[0]
        dh = h[1:] - h[0]
        m = float(np.median(d, axis=1) @ dh / (dh @ dh))
        excess = float(np.var(d[-1]) - np.mean(reads.q[-1] + reads.q[0]))
        return np.array([m, np.sqrt(max(excess, 0.0)) / dh[-1], 0.0]) / unit

    bounds = [(None, None), (0.0, None), (0.0, None)]

    def at(log_t0: float, n: _Noise):
        res = minimize(loss, initial(log_t0), args=(log_t0, n), method="L-BFGS-B", bounds=bounds, options=_OPTIMISER)
        return res.fun, res.x

    if t0_s is not None:
        _, p = at(float(np.log(t0_s)), noise or _Noise())
        return law(p, float(np.log(t0_s))), noise or _Noise()
    if start is None:
        # t0 beyond the middle of the measured times would make h a straight line in t over the reads.
        grid = np.linspace(log_t0_range[0], np.log(np.sqrt(t[0] * t[-1])), 5)
        best = min((at(v, _Noise()) + (v,) for v in grid), key=lambda r: r[0])
        start_vector = np.concatenate([best[1], [best[2]], _Noise().to_vector()])
    else:
        start_vector = np.concatenate([initial(0.0), [np.log(start[0].t0_s)], start[1].to_vector()])
        best = (loss(start_vector[:3], start_vector[3], start[1]),)
    res = minimize(lambda p: loss(p[:3], p[3], _Noise.from_vector(p[4:])), start_vector, method="L-BFGS-B",
                   bounds=bounds + [log_t0_range] + _NOISE_BOUNDS, options=_OPTIMISER)
    p = res.x if res.fun <= best[0] else start_vector
    return law(p[:3], p[3]), _Noise.from_vector(p[4:])


def _fit_shift_banded(reads: _Reads, pooled: ShiftFit, noise: _Noise) -> ShiftFit:
    """The shift law by conductance band of the first read (equal counts), each band's m, b1 and b0 by
    maximum likelihood at the pooled fit's t0 and noise."""
    order = np.argsort(reads.g[0])
    levels, fits = [], []
    for band in np.array_split(order, DRIFT_BANDS):
        levels.append(float(np.median(reads.g[0, band])))
        fits.append(_fit_shift(reads.subset(band), t0_s=pooled.t0_s, start=(pooled, noise), noise=noise)[0])
    return ShiftFit(pooled.t0_s, pooled.mean_s, pooled.sigma_s, pooled.sigma_early_s, levels,
                    [f.mean_s for f in fits], [f.sigma_s for f in fits], [f.sigma_early_s for f in fits])


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
