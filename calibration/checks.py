"""The predictive check: does the fitted NoiseModel describe devices it was not fitted to?

A random fraction of the working devices (``CheckOptions.holdout_fraction``) is kept out of every
fit. After the other stages those devices are programmed afresh to the calibration's levels
(write-verify, the others left alone), read repeatedly, and read again at each drift time. Each
observed distribution is compared with the one the model predicts for the same devices:

* programming error: achieved minus target, scaled by the predicted core spread of that level (the
  programming sigma plus what averaging ``reads`` noisy reads adds), against draws of the programming
  law (with its tail, if the model has one) and that read noise, by KS distance and interquartile range;
* read noise: each device's sample variance over ``reads`` reads, scaled by the variance the law
  gives at its conductance and at the time since programming the reads were taken, against the
  chi-square distribution such a variance follows;
* drift at each time: g(t) / g(first time) per device, against draws of the model's drift law
  (:meth:`calibration.noise_model.Drift.sample`) with its device-to-device spread and read noise on
  both reads, each at its own time since programming.

Each comparison gives a KS distance (scipy.stats) and the predicted/observed spread ratio; a
check passes when the distance is below ``max_ks`` and the ratio within
``min_spread_ratio..max_spread_ratio``. Too few devices give no verdict worth having, so a check
with fewer than ``MIN_DEVICES`` usable ones is reported with ``n`` and no figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from drivers import Crossbar, WriteVerifySettings, write_verify

from . import laws
from .drift import DriftMeasurement, measure_drift
from .noise_model import NoiseModel
from .options import CalibrationOptions, CheckOptions
from .quality import assess
from .read_noise import expected_log_variance, sample_variance_cdf
from .window import saturate

# Below this many devices a KS distance of 0.1 is within its own sampling scatter (about
# 0.87 / sqrt(n) on average for a correct model): no verdict.
MIN_DEVICES = 100


def choose_holdout(working: np.ndarray, options: CheckOptions, rng: np.random.Generator) -> np.ndarray:
    """A random ``holdout_fraction`` of the ``working`` devices (at least one, if any work), as a mask."""
    cells = np.flatnonzero(working.ravel())
    n = int(round(options.holdout_fraction * cells.size))
    if cells.size:
        n = min(max(n, 1), cells.size)
    mask = np.zeros(working.size, dtype=bool)
    mask[rng.choice(cells, size=n, replace=False)] = True
    return mask.reshape(working.shape)


@dataclass
class CheckMeasurement:
    """What the held-out devices did after being programmed afresh (as many rounds as the programming
    stage); arrays over the held-out devices only, in the order of ``cells`` (flat indices into the array)."""

    cells: np.ndarray              # (n,) flat indices of the held-out devices
    levels_s: np.ndarray           # (L,) the calibration's levels
    level_index: np.ndarray        # (rounds, n)
    achieved_s: np.ndarray         # (rounds, n) mean of `programming_reads` reads, settle_s after each round
    programming_reads: int
    write_verify: dict
    reads_s: np.ndarray | None = None        # (reads, n) repeated reads
    drift: DriftMeasurement | None = None    # mean_s of shape (T, n)
    # time since programming (s) of the middle of the achieved reads and of the repeated reads; None: the
    # read-noise law's reference time
    achieved_age_s: float | None = None
    reads_age_s: float | None = None

    @property
    def targets_s(self) -> np.ndarray:
        return self.levels_s[self.level_index]


def measure_checks(xbar: Crossbar, options: CalibrationOptions, holdout: np.ndarray, levels_s: np.ndarray,
                   tolerance_s: float, rng: np.random.Generator,
                   on_part: Callable[[float, str], None] | None = None) -> CheckMeasurement:
    """Program the ``holdout`` devices afresh to ``levels_s``, then read them as the read-noise and
    drift stages read the whole array. Only held-out devices are pulsed."""
    def part(done: float, message: str) -> None:
        if on_part is not None:
            on_part(done, message)

    p, v = options.programming, options.read_voltage_v
    cells = np.flatnonzero(holdout.ravel())
    settings = WriteVerifySettings.from_options(p, tolerance_s=tolerance_s, read_voltage_v=v)

    def read() -> np.ndarray:
        return xbar.read(voltage_v=v).ravel()[cells]

    # As many rounds as the programming stage gave the fitted devices, each to a new arrangement (equal
    # counts per level, shuffled) and read as it read them: the held-out devices are programmed as the
    # fitted ones were (a round that starts from programmed states lands differently from one that starts
    # from the window's bottom, and the fit pools the rounds), and all rounds are compared.
    # The fitted devices' first round started from where the window stage left them (SET hard).
    if options.window:
        saturate(xbar, options.window.set_voltage_v, options.window, cells)
    indices, achieved, summaries = [], [], []
    for repeat in range(p.repeats):
        index = rng.permutation(np.arange(cells.size) % len(levels_s))
        targets = np.full(xbar.shape, np.nan)
        targets.ravel()[cells] = levels_s[index]
        part(0.3 * repeat / p.repeats, f"write-verify of {cells.size} held-out devices, "
                                       f"round {repeat + 1}/{p.repeats}")
        result = write_verify(xbar, targets, settings)
        programmed_at = xbar.now()
        xbar.wait(p.settle_s)
        start = xbar.now()
        achieved.append(np.mean([read() for _ in range(p.reads)], axis=0))
        indices.append(index)
        summaries.append(float(result.success.ravel()[cells].mean()) if cells.size else 1.0)

    def age(start: float) -> float:
        return 0.5 * (start + xbar.now()) - programmed_at

    m = CheckMeasurement(cells, np.asarray(levels_s, dtype=np.float64), np.stack(indices), np.stack(achieved),
                         p.reads, {"iterations": result.iterations, "transactions": result.transactions,
                                   "fraction_in_tolerance": float(np.mean(summaries)), "rounds": p.repeats,
                                   "tolerance_s": tolerance_s}, achieved_age_s=age(start))
    if options.read_noise:
        part(0.3, f"{options.read_noise.reads} reads of the held-out devices")
        start = xbar.now()
        m.reads_s = np.stack([read() for _ in range(options.read_noise.reads)])
        m.reads_age_s = age(start)
    if options.drift:
        times = options.drift.times_s

        def on_time(k: int, t: float) -> None:
            part(0.4 + 0.6 * k / len(times), f"held-out devices: waiting until {t:g} s after programming")

        whole = measure_drift(xbar, options.drift, v, programmed_at, on_time=on_time)
        var = None if whole.var_s is None else whole.var_s.reshape(len(times), -1)[:, cells]
        m.drift = DriftMeasurement(whole.times_s, whole.mean_s.reshape(len(times), -1)[:, cells], whole.reads, var)
    return m


@dataclass(frozen=True)
class Check:
    """One quantity's comparison on held-out devices."""

    quantity: str             # "programming", "read_noise", "drift_3600s", ...
    n: int                    # held-out devices compared
    ks: float | None          # KS distance; None with too few devices or nothing predicted
    spread_ratio: float | None   # predicted / observed spread
    passed: bool | None       # None: no verdict
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "warn", None: "n/a"}[self.passed]

    def as_dict(self) -> dict:
        return {"quantity": self.quantity, "n": self.n, "ks": self.ks, "spread_ratio": self.spread_ratio,
                "verdict": self.verdict, "note": self.note}


def drift_label(t_s: float) -> str:
    return f"drift_{t_s:g}s"


def _check(name: str, n: int, ks: float | None, ratio: float | None, options: CheckOptions,
           note: str = "") -> Check:
    if n < MIN_DEVICES or ks is None or ratio is None or not (np.isfinite(ks) and np.isfinite(ratio)):
        why = f"{n} usable held-out devices, fewer than {MIN_DEVICES}" if n < MIN_DEVICES else note
        return Check(name, n, None, None, None, why)
    passed = ks < options.max_ks and options.min_spread_ratio <= ratio <= options.max_spread_ratio
    return Check(name, n, float(ks), float(ratio), bool(passed), note)


def evaluate_checks(m: CheckMeasurement, model: NoiseModel, options: CheckOptions,
                    rng: np.random.Generator, drift_times_s: list[float] | None = None) -> list[Check]:
    """Compare each measured quantity of the held-out devices with ``model``'s prediction for them.

    ``drift_times_s`` names the drift times (the options' nominal ones; the measured times differ by
    the read time). The rng draws the drift exponents of the predictions."""
    out: list[Check] = []
    if model.programming is not None:
        out.append(_programming(m, model, options))
    if m.reads_s is not None:
        out.append(_read_noise(m, model, options))
    if m.drift is not None:
        if model.drift is None:
            out.append(Check("drift", 0, None, None, None, "the model has no drift law"))
        else:
            out += _drift(m, model, options, rng, drift_times_s)
    return out


# Seed of the draws of the programming prediction: the check of a stored calibration gives the same
# figures every time it is evaluated.
PROGRAMMING_DRAWS_SEED = 0


def _programming(m: CheckMeasurement, model: NoiseModel, options: CheckOptions) -> Check:
    """Each held-out device's error (achieved minus target) against the model's prediction for its level:
    the programming law (:func:`calibration.laws.programming_error`, ``samples_per_device`` draws per
    device, the same law noise-aware training samples) plus the read noise left in the mean of the reads
    it took. Both are put in units of the level's core spread (core sigma and that read noise) around its
    bias, where a normal law predicts a standard normal.

    The KS distance is that of the probability integral transform: each device's error is placed in the
    predicted distribution of its level (the draws of that level's devices), and the fractions below it
    are compared with the uniform distribution they follow for a right model; for a normal law this is
    the KS distance of the standardised errors against a standard normal. The spread ratio is of the
    interquartile ranges of all draws and all devices, predicted over observed: a quartile does not move
    with the few devices far out in a heavy tail, which would make up most of a standard deviation (under
    the mixture law, of the prediction's and of the observation's alike, each then measuring how many far
    devices happened to be drawn or held out); for a normal law it is sigma times 1.349 and compares the
    same spread a standard deviation would.
    """
    prog = model.programming
    g = m.achieved_s
    ok = np.isfinite(g) & ~assess(g[None]).saturated
    # Every round of a device is one observation; the verdict needs enough devices, not rounds.
    devices = int(ok.reshape(-1, ok.shape[-1]).any(axis=0).sum())
    level, index = m.targets_s[ok], m.level_index[ok]
    read_var = model.read.variance(g[ok], m.achieved_age_s) / m.programming_reads
    sd = np.sqrt(prog.sigma(level) ** 2 + read_var)
    sd = np.where(sd > 0, sd, np.nan)
    observed = (g[ok] - level - prog.bias(level)) / sd
    keep = np.isfinite(observed)
    observed, level, index, read_var, sd = observed[keep], level[keep], index[keep], read_var[keep], sd[keep]
    if observed.size < 2:
        return _check("programming", min(devices, int(observed.size)), None, None, options)
    rng = np.random.default_rng(PROGRAMMING_DRAWS_SEED)
    shape = (options.samples_per_device, observed.size)
    error = prog.error(level, rng.standard_normal(shape), rng.random(shape))
    predicted = (error - prog.bias(level) + np.sqrt(read_var) * rng.standard_normal(shape)) / sd
    fraction_below = np.empty(observed.size)
    for k in np.unique(index):
        at = index == k
        draws = np.sort(predicted[:, at].ravel())
        fraction_below[at] = np.searchsorted(draws, observed[at]) / draws.size
    ks = stats.kstest(fraction_below, "uniform").statistic
    return _check("programming", devices, ks, _spread(predicted.ravel()) / _spread(observed), options)


def _read_noise(m: CheckMeasurement, model: NoiseModel, options: CheckOptions) -> Check:
    """Each held-out device's sample variance over its ``n`` reads against the distribution the read-noise
    law predicts for that device, at its mean conductance and the time since programming of the reads.

    KS distance: of the probability integral transform u = F_device(s^2), uniform for devices the law
    describes. F is the Gamma distribution of a sample variance ((n - 1) s^2 / sigma^2 chi-square with
    n - 1 degrees of freedom: for the white and flicker laws u is that chi-square's CDF and the distance is
    the KS distance of the scaled variances against it); for the telegraph law, the mixture over devices
    (1 - f) Gamma(sigma^2) + f E_a[Gamma(sigma^2 + telegraph(a))].

    Spread ratio: the predicted over the observed geometric-mean read-noise sigma,
    exp((mean E_law[ln s^2] - mean ln s^2) / 2), E_law[ln s^2] each device's expected log sample variance
    (ln sigma^2 + psi(k) - ln k for a Gamma of shape k = (n - 1) / 2, averaged over a mixture): 1 for a law
    that describes the devices whatever its form, and not carried by the few devices in a heavy
    telegraph tail, as the ratio of mean variances would be."""
    reads = m.reads_s
    n = reads.shape[0]
    ok = ~assess(reads).flagged
    mean, var = reads.mean(axis=0)[ok], reads.var(axis=0, ddof=1)[ok]
    predicted = model.read.variance(mean, m.reads_age_s)
    keep = predicted > 0
    if keep.sum() < 2:
        return _check("read_noise", int(keep.sum()), None, None, options)
    g, var = mean[keep], var[keep]
    dof = np.full(g.shape, n - 1.0)
    u = sample_variance_cdf(model.read, g, var, dof, m.reads_age_s)
    ks = stats.kstest(u, "uniform").statistic
    # A device that read the same value every time has no logarithm; it is in the KS distance (u = 0).
    positive = var > 0
    if positive.sum() < 2:
        return _check("read_noise", int(keep.sum()), None, None, options, "no device with a positive variance")
    log_predicted = expected_log_variance(model.read, g[positive], dof[positive], m.reads_age_s)
    ratio = np.exp(0.5 * (np.mean(log_predicted) - np.mean(np.log(var[positive]))))
    return _check("read_noise", int(keep.sum()), ks, ratio, options)


# The drift check compares within this many bands of conductance (equal numbers of devices; two keep
# each band large enough that a KS distance of 0.1 is far beyond its scatter for a right model): the
# model's exponent does not depend on conductance, and a device family whose drift does (PCM: low
# conductances drift faster) can match the pooled distribution while missing every band.
DRIFT_BANDS = 2


def _spread(x: np.ndarray) -> float:
    # Interquartile range: a ratio of two noisy reads has heavy tails where the first read is
    # small against its noise, and a standard deviation would be their measure, not the drift's.
    q1, q3 = np.percentile(x, [25, 75])
    return float(q3 - q1)


def _drift(m: CheckMeasurement, model: NoiseModel, options: CheckOptions, rng: np.random.Generator,
           names: list[float] | None) -> list[Check]:
    d, law = m.drift, model.drift
    t = d.times_s
    names = list(names) if names is not None else list(t)
    g = d.mean_s
    saturated = assess(g).saturated
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(g) & (g > 0), axis=0) & ~saturated
    g = g[:, ok]
    base = g[0]
    k = options.samples_per_device
    # Per device, `k` draws of its drift (the standard normal of the law: its exponent, or its relaxation),
    # and of the read noise on its first read and on the read at each time; each draw starts from the
    # device's observed first read, taken as its conductance at that time.
    z = rng.standard_normal((k, base.size))
    # Each draw's device may carry telegraph noise (a telegraph read-noise law): its amplitude is the
    # device's, the same at every time, and adds to the read noise of each mean of reads.
    read = model.read
    amplitude = 0.0
    if read.law == "telegraph":     # other laws draw nothing more, so their predictions stay as they were
        amplitude = laws.telegraph_amplitude(rng.random((k, base.size)), rng.standard_normal((k, base.size)),
                                             **read.telegraph_distribution())

    def read_sd(g_s, age_s, g_programmed_s=None):
        var = read.sigma(g_s, age_s, g_programmed_s) ** 2 + read.telegraph_variance(g_s, amplitude)
        return np.sqrt(var / d.reads)

    g_first = base + read_sd(base, t[0]) * rng.standard_normal((k, base.size))
    order = np.argsort(base)
    bands = [order[i] for i in np.array_split(np.arange(base.size), DRIFT_BANDS)]
    out = []
    for j in range(1, len(t)):
        name = drift_label(names[j])
        if base.size < 2 * DRIFT_BANDS:
            out.append(_check(name, int(base.size), None, None, options))
            continue
        observed = g[j] / base
        true_t = law.sample(base, t[j], z, since_s=t[0])
        # Read noise at that time, of a device programmed to about its first read and drifted since.
        g_t = true_t + read_sd(true_t, t[j], base) * rng.standard_normal(true_t.shape)
        # Draws whose reads fall at or below 0 S are dropped, as the observed devices with such reads were.
        usable = (g_first > 0) & (g_t > 0)
        worst = None
        for b, cells in enumerate(bands):
            predicted = (g_t[:, cells] / g_first[:, cells])[usable[:, cells]]
            ks = float(stats.ks_2samp(observed[cells], predicted).statistic)
            ratio = _spread(predicted) / _spread(observed[cells])
            low, high = base[cells].min(), base[cells].max()
            band = (ks, ratio, f"worst of {DRIFT_BANDS} conductance bands: {low * 1e6:.3g}-{high * 1e6:.3g} µS")
            # The band furthest from passing: the larger KS distance, or the spread ratio further from 1.
            if worst is None or _badness(band, options) > _badness(worst, options):
                worst = band
        ks, ratio, note = worst
        out.append(_check(name, int(observed.size), ks, ratio, options, note))
    return out


def _badness(band: tuple[float, float, str], options: CheckOptions) -> float:
    ks, ratio, _ = band
    # Each criterion as a fraction of its limit; above 1 fails.
    log_ratio = np.log(ratio) / (np.log(options.max_spread_ratio) if ratio > 1 else np.log(options.min_spread_ratio))
    return max(ks / options.max_ks, abs(log_ratio))


def check_stats(checks: list[Check]) -> tuple[dict[str, float], dict[str, str]]:
    """Whole-array statistics of the checks: ``check.<quantity>.ks``, ``.spread_ratio``, ``.n`` and
    ``.pass`` (1 pass, 0 warn; NaN where no verdict), dimensionless."""
    values: dict[str, float] = {}
    for c in checks:
        values[f"check.{c.quantity}.ks"] = np.nan if c.ks is None else c.ks
        values[f"check.{c.quantity}.spread_ratio"] = np.nan if c.spread_ratio is None else c.spread_ratio
        values[f"check.{c.quantity}.n"] = float(c.n)
        values[f"check.{c.quantity}.pass"] = np.nan if c.passed is None else float(c.passed)
    return values, {name: "1" for name in values}
