"""The predictive check: does the fitted NoiseModel describe devices it was not fitted to?

A random fraction of the working devices (``CheckOptions.holdout_fraction``) is kept out of every
fit. After the other stages those devices are programmed afresh to the calibration's levels
(write-verify, the others left alone), read repeatedly, and read again at each drift time. Each
observed distribution is compared with the one the model predicts for the same devices:

* programming error: achieved minus target, scaled by the predicted spread of that level (the
  programming sigma plus what averaging ``reads`` noisy reads adds), against a standard normal;
* read noise: each device's sample variance over ``reads`` reads, scaled by the variance the law
  gives at its conductance and at the time since programming the reads were taken, against the
  chi-square distribution such a variance follows;
* drift at each time: g(t) / g(first time) per device, against draws of the power law with the
  model's device-to-device spread of the exponent and read noise on both reads, each at its own
  time since programming.

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

from .drift import DriftMeasurement, measure_drift
from .noise_model import NoiseModel
from .options import CalibrationOptions, CheckOptions
from .quality import assess

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
    """What the held-out devices did after being programmed afresh; arrays over the held-out devices
    only, in the order of ``cells`` (flat indices into the array)."""

    cells: np.ndarray              # (n,) flat indices of the held-out devices
    levels_s: np.ndarray           # (L,) the calibration's levels
    level_index: np.ndarray        # (n,)
    achieved_s: np.ndarray         # (n,) mean of `programming_reads` reads, settle_s after programming
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
    # Equal counts per level, shuffled, as in the programming stage.
    index = rng.permutation(np.arange(cells.size) % len(levels_s))
    targets = np.full(xbar.shape, np.nan)
    targets.ravel()[cells] = levels_s[index]
    part(0.0, f"write-verify of {cells.size} held-out devices")
    settings = WriteVerifySettings.from_options(p, tolerance_s=tolerance_s, read_voltage_v=v)
    result = write_verify(xbar, targets, settings)
    programmed_at = xbar.now()
    xbar.wait(p.settle_s)

    def read() -> np.ndarray:
        return xbar.read(voltage_v=v).ravel()[cells]

    def age(start: float) -> float:
        return 0.5 * (start + xbar.now()) - programmed_at

    start = xbar.now()
    achieved = np.mean([read() for _ in range(p.reads)], axis=0)
    m = CheckMeasurement(cells, np.asarray(levels_s, dtype=np.float64), index, achieved, p.reads,
                         {"iterations": result.iterations, "transactions": result.transactions,
                          "fraction_in_tolerance": float(result.success.ravel()[cells].mean()) if cells.size else 1.0,
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


def _programming(m: CheckMeasurement, model: NoiseModel, options: CheckOptions) -> Check:
    prog = model.programming
    g = m.achieved_s
    ok = np.isfinite(g) & ~assess(g[None]).saturated
    level = m.targets_s[ok]
    # The model's spread of a programmed device, plus the read noise left in the mean of `reads` reads.
    sd = np.sqrt(prog.sigma(level) ** 2 + model.read.variance(g[ok], m.achieved_age_s) / m.programming_reads)
    z = (g[ok] - level - prog.bias(level)) / np.where(sd > 0, sd, np.nan)
    z = z[np.isfinite(z)]
    if z.size < 2:
        return _check("programming", int(z.size), None, None, options)
    return _check("programming", int(z.size), stats.kstest(z, "norm").statistic, 1.0 / np.std(z, ddof=1), options)


def _read_noise(m: CheckMeasurement, model: NoiseModel, options: CheckOptions) -> Check:
    reads = m.reads_s
    n = reads.shape[0]
    ok = ~assess(reads).flagged
    mean, var = reads.mean(axis=0)[ok], reads.var(axis=0, ddof=1)[ok]
    predicted = model.read.variance(mean, m.reads_age_s)
    keep = predicted > 0
    if keep.sum() < 2:
        return _check("read_noise", int(keep.sum()), None, None, options)
    # (n - 1) s^2 / sigma^2 follows chi-square with n - 1 degrees of freedom for Gaussian reads.
    q = (n - 1) * var[keep] / predicted[keep]
    ks = stats.kstest(q, stats.chi2(df=n - 1).cdf).statistic
    ratio = np.sqrt(np.mean(predicted[keep]) / np.mean(var[keep]))
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
    # Per device, `k` draws of its exponent, and of the read noise on its first read and on the read
    # at each time; each draw starts from the device's observed first read, taken as its conductance.
    nu = law.nu_mean_at(base) + law.nu_std_at(base) * rng.standard_normal((k, base.size))
    g_first = base + model.read.sigma(base, t[0]) / np.sqrt(d.reads) * rng.standard_normal((k, base.size))
    order = np.argsort(base)
    bands = [order[i] for i in np.array_split(np.arange(base.size), DRIFT_BANDS)]
    out = []
    for j in range(1, len(t)):
        name = drift_label(names[j])
        if base.size < 2 * DRIFT_BANDS:
            out.append(_check(name, int(base.size), None, None, options))
            continue
        observed = g[j] / base
        true_t = base * law.factor(t[j], nu) / law.factor(t[0], nu)
        # Read noise at that time, of a device programmed to about its first read and drifted since.
        g_t = true_t + model.read.sigma(true_t, t[j], base) / np.sqrt(d.reads) * rng.standard_normal(true_t.shape)
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
