"""A whole calibration over the Crossbar interface: measure each part, then fit the NoiseModel.

Order matters: the window pass finds the stuck devices that later parts leave out, the
pulse trains disturb only a few devices and come before programming, and read noise and
drift are measured on the state the last programming round left behind. The devices held
out for the predictive check (calibration.checks) are drawn once the working ones are
known; every fit leaves them out, and they are programmed afresh after the drift stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from drivers import Crossbar

from . import programming_fit
from .checks import CheckMeasurement, choose_holdout, measure_checks
from .drift import DriftFit, DriftMeasurement, fit_drift, measure_drift
from .levels import LevelRange, level_range, measured_window
from .noise_model import (ConductanceWindow, Defects, Drift, NoiseModel, Periphery, ProgrammingNoise, ReadNoise)
from .options import CalibrationOptions
from .periphery import PeripheryFit, PeripheryMeasurement, fit_periphery, measure_periphery
from .programming import ProgrammingMeasurement, measure_programming
from .pulse_response import PulseResponseMeasurement, measure_pulse_response
from .quality import KINDS, MAX_NON_FINITE_FRACTION, ReadQuality, assess, saturation_ceiling
from .read_noise import ReadNoiseMeasurement, ReadSamples, choose_read_noise, fit_read_noise, measure_read_noise
from .window import WindowMeasurement, measure_window

# (stage, fraction of that stage done, message) for progress displays
Progress = Callable[[str, float, str], None]
_US = 1e6


class CalibrationFailed(RuntimeError):
    """Too little of a measurement is usable to go on; ``calibration`` holds everything measured until then."""

    def __init__(self, reason: str, calibration: "Calibration"):
        super().__init__(reason)
        self.calibration = calibration


@dataclass
class Calibration:
    """Every raw measurement of one calibration, and what was fitted to it."""

    options: CalibrationOptions
    window: WindowMeasurement | None = None
    pulse_response: PulseResponseMeasurement | None = None
    programming: ProgrammingMeasurement | None = None
    read_noise: ReadNoiseMeasurement | None = None
    drift: DriftMeasurement | None = None
    periphery: PeripheryMeasurement | None = None
    read_fit: ReadNoise | None = None
    drift_fit: DriftFit | None = None
    periphery_fit: PeripheryFit | None = None
    stuck_on: np.ndarray | None = None
    stuck_off: np.ndarray | None = None
    unreadable: np.ndarray | None = None      # devices with a non-finite window read: neither working nor stuck
    levels: LevelRange | None = None          # the range the programming levels were placed over, and why
    holdout: np.ndarray | None = None         # devices kept out of every fit, for the predictive check
    check: CheckMeasurement | None = None     # what the held-out devices did, programmed afresh
    warnings: list[str] = field(default_factory=list)   # one line each: what was clipped, left out or not fitted

    @property
    def working(self) -> np.ndarray | None:
        if self.stuck_on is None:
            return None
        working = ~(self.stuck_on | self.stuck_off)
        return working if self.unreadable is None else working & ~self.unreadable

    @property
    def fitted(self) -> np.ndarray | None:
        """The working devices the fits use: all but the held-out ones."""
        working = self.working
        if working is None or self.holdout is None:
            return working
        return working & ~self.holdout

    def fit_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """Devices a fit may use irrespective of being stuck: not held out."""
        return np.ones(shape, dtype=bool) if self.holdout is None else ~self.holdout

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def read_quality(self) -> dict[str, dict[str, int]]:
        """Per measurement, how many devices (pulse trains for pulse_response, values for the periphery's
        MVM outputs) showed each kind of read a fit cannot take as it is (see calibration.quality)."""
        out: dict[str, dict[str, int]] = {}
        if self.window is not None:
            out["window.after_reset"] = self.window.low_quality.counts()
            out["window.after_set"] = self.window.high_quality.counts()
        if self.pulse_response is not None:
            pr = self.pulse_response
            set_q, reset_q = assess(pr.set_curves_s, axis=1), assess(pr.reset_curves_s, axis=1)
            out["pulse_response"] = {k: set_q.counts()[k] + reset_q.counts()[k] for k in KINDS}
        if self.programming is not None:
            out["programming"] = self.programming.quality.counts()
        if self.read_noise is not None:
            out["read_noise"] = self.read_noise.quality.counts()
        if self.drift is not None:
            out["drift"] = self.drift.quality.counts()
        if self.check is not None:
            out["check.programming"] = assess(self.check.achieved_s).counts()
            if self.check.reads_s is not None:
                out["check.read_noise"] = assess(self.check.reads_s).counts()
            if self.check.drift is not None:
                out["check.drift"] = self.check.drift.quality.counts()
        if self.periphery is not None:
            values = np.concatenate([self.periphery.zero_outputs_a.ravel(), self.periphery.sweep_outputs_a.ravel()])
            out["periphery"] = {"non_finite": int((~np.isfinite(values)).sum())}
        return out


def stages(options: CalibrationOptions) -> list[str]:
    return [name for name in ("window", "pulse_response", "programming", "read_noise", "drift", "check",
                              "periphery") if getattr(options, name) is not None]


def _check_readable(cal: Calibration, stage: str, quality: ReadQuality) -> None:
    """Fail the calibration when more than MAX_NON_FINITE_FRACTION of the array read NaN or infinity;
    otherwise record how many devices read what, and go on without them."""
    counts = quality.counts()
    n = quality.non_finite.size
    if counts["non_finite"] > MAX_NON_FINITE_FRACTION * n:
        raise CalibrationFailed(
            f"{stage}: {counts['non_finite']} of {n} devices read NaN or infinite values, more than "
            f"{MAX_NON_FINITE_FRACTION:.0%} of the array: too little is usable to calibrate it (the "
            f"instrument or its connection is the likely cause); the reads are stored as measured", cal)
    found = [f"{counts[k]} {k.replace('_', '-')}" for k in KINDS if counts[k]]
    if found:
        cal.warn(f"{stage}: devices with {', '.join(found)} reads, stored as measured and left out of the fits "
                 f"that cannot use them")


def run_calibration(xbar: Crossbar, options: CalibrationOptions, rng: np.random.Generator,
                    progress: Progress | None = None, *, into: Calibration | None = None) -> Calibration:
    """Measure every part ``options`` asks for, and fit what can be fitted as it goes.

    ``into`` (a fresh Calibration of ``options``) is filled stage by stage, so a caller holds what was
    measured even when a later stage raises. Raises :class:`CalibrationFailed` when a measurement is
    mostly NaN or infinite, or leaves no window to program levels in.
    """
    def report(stage: str, done: float, message: str = "") -> None:
        if progress is not None:
            progress(stage, done, message)

    cal = into if into is not None else Calibration(options)
    v = options.read_voltage_v
    if options.window:
        report("window", 0.0, "saturating RESET and SET")
        cal.window = measure_window(xbar, options.window, v)
        cal.stuck_on, cal.stuck_off = cal.window.stuck_on, cal.window.stuck_off
        cal.unreadable = cal.window.unreadable
        _check_readable(cal, "window.after_reset", cal.window.low_quality)
        _check_readable(cal, "window.after_set", cal.window.high_quality)
        report("window", 1.0, f"yield {100 * cal.window.yield_fraction:.2f}%")
    if options.check:
        working = cal.working if cal.working is not None else np.ones(xbar.shape, dtype=bool)
        cal.holdout = choose_holdout(working, options.check, rng)
    if options.pulse_response:
        report("pulse_response", 0.0, "pulse trains")
        cal.pulse_response = measure_pulse_response(xbar, options.pulse_response, v, rng, usable=cal.working)
        report("pulse_response", 1.0)
    if options.programming:
        p = options.programming
        window = None
        if cal.window is not None:
            try:
                window = measured_window(cal.window.g_min_s, cal.window.g_max_s, cal.working)
            except ValueError as exc:
                raise CalibrationFailed(f"programming: {exc}", cal) from exc
        cal.levels = level_range(p, window)
        for warning in cal.levels.warnings:
            cal.warn(warning)

        def on_iteration(repeat: int, iteration: int, out: int, total: int) -> None:
            done = (repeat + iteration / p.max_iterations) / p.repeats
            report("programming", done, f"round {repeat + 1}/{p.repeats}: {total - out}/{total} in tolerance")

        cal.programming = measure_programming(xbar, p, v, rng, on_iteration=on_iteration,
                                              g_low_s=cal.levels.g_low_s, g_high_s=cal.levels.g_high_s)
        _check_readable(cal, "programming", cal.programming.quality)
    if options.read_noise:
        report("read_noise", 0.0, f"{options.read_noise.reads} reads")
        programmed_at = cal.programming.programmed_at_s if cal.programming is not None else None
        cal.read_noise = measure_read_noise(xbar, options.read_noise, v, programmed_at)
        _check_readable(cal, "read_noise", cal.read_noise.quality)
        report("read_noise", 1.0)
    cal.read_fit = _fit_read_noise(cal)
    if options.drift:
        times = options.drift.times_s

        def on_time(k: int, t: float) -> None:
            report("drift", k / len(times), f"waiting until {t:g} s after programming (instrument clock)")

        cal.drift = measure_drift(xbar, options.drift, v, cal.programming.programmed_at_s, on_time=on_time)
        _check_readable(cal, "drift", cal.drift.quality)
        # The reads at each drift time show read noise at that time since programming: the law is
        # chosen again with them.
        cal.read_fit = _fit_read_noise(cal)
        usable = cal.fitted if cal.fitted is not None else cal.fit_mask(xbar.shape)
        try:
            cal.drift_fit = fit_drift(cal.drift, usable, cal.read_fit)
        except ValueError as exc:
            cal.warn(f"drift not fitted: {exc}")
        report("drift", 1.0)
    if options.check:
        n = int(cal.holdout.sum())
        report("check", 0.0, f"{n} held-out devices")

        def on_part(done: float, message: str) -> None:
            report("check", done, message)

        cal.check = measure_checks(xbar, options, cal.holdout, cal.programming.levels_s,
                                   cal.programming.write_verify[-1]["tolerance_s"], rng, on_part=on_part)
        report("check", 1.0)
    if options.periphery:
        report("periphery", 0.0, "MVM sweeps")
        cal.periphery = measure_periphery(xbar, options.periphery)
        cal.periphery_fit = fit_periphery(cal.periphery)
        bad = cal.read_quality()["periphery"]["non_finite"]
        if bad:
            cal.warn(f"periphery: {bad} MVM outputs NaN or infinite, stored as measured and left out of the fit")
        report("periphery", 1.0)
    return cal


def fit_measured(cal: Calibration) -> Calibration:
    """What :func:`run_calibration` derives as it measures, for measurements it did not take (imported from
    a file, or read back from the database): the stuck and unreadable devices from the window, the
    read-noise law, and the drift law. Nothing is held out. Reads a fit cannot take are counted in
    ``cal.warnings``; a stage mostly NaN is a warning here, not a failure (a file may cover part of the
    array only). Returns ``cal``."""
    if cal.window is not None:
        cal.stuck_on, cal.stuck_off = cal.window.stuck_on, cal.window.stuck_off
        cal.unreadable = cal.window.unreadable
    for stage, quality in _qualities(cal):
        counts = quality.counts()
        found = [f"{counts[k]} {k.replace('_', '-')}" for k in KINDS if counts[k]]
        if found:
            cal.warn(f"{stage}: devices with {', '.join(found)} reads (of {quality.non_finite.size}), stored as "
                     f"measured and left out of the fits that cannot use them")
    cal.read_fit = _fit_read_noise(cal)
    if cal.drift is not None:
        usable = cal.fitted if cal.fitted is not None else cal.fit_mask(cal.drift.mean_s.shape[1:])
        try:
            cal.drift_fit = fit_drift(cal.drift, usable, cal.read_fit)
        except ValueError as exc:
            cal.warn(f"drift not fitted: {exc}")
    return cal


def _qualities(cal: Calibration):
    if cal.window is not None:
        yield "window.after_reset", cal.window.low_quality
        yield "window.after_set", cal.window.high_quality
    if cal.programming is not None:
        yield "programming", cal.programming.quality
    if cal.read_noise is not None:
        yield "read_noise", cal.read_noise.quality
    if cal.drift is not None:
        yield "drift", cal.drift.quality


def _fit_read_noise(cal: Calibration) -> ReadNoise | None:
    """The read-noise law, each device taken only where all its reads are finite, positive and below a
    converter's ceiling: a clipped or offset read does not show the device's noise.

    The white law is fitted to every set of repeated reads (the read-noise stage, and the window's reads
    when there are three or more). The sets taken at a known time since programming (the read-noise
    stage and the drift stage's reads at each time, on the working devices this calibration programmed)
    then choose between it and the 1/f law that grows with that time, and whether telegraph noise on a
    fraction of the devices adds to the law so chosen (calibration.read_noise)."""
    samples, timed = [], []
    sets = []
    if cal.read_noise is not None:
        sets.append((cal.read_noise.reads_s, cal.read_noise.quality, cal.read_noise.age_s))
    if cal.window is not None and cal.window.low_reads_s.shape[0] >= 3:
        # Read right after saturating pulses: the time since those is not recorded.
        sets += [(cal.window.low_reads_s, cal.window.low_quality, None),
                 (cal.window.high_reads_s, cal.window.high_quality, None)]
    # Stuck devices were not programmed by this calibration: their time since programming is unknown.
    programmed = cal.fitted if cal.fitted is not None else None
    for reads, quality, age in sets:
        keep = ~quality.flagged & cal.fit_mask(quality.flagged.shape)
        mean, var = reads.mean(axis=0), reads.var(axis=0, ddof=1)
        samples.append((mean[keep], var[keep], reads.shape[0]))
        if age is not None:
            used = keep if programmed is None else keep & programmed
            timed.append(ReadSamples(mean[used], var[used], reads.shape[0], age, np.flatnonzero(used)))
    if cal.drift is not None and cal.drift.var_s is not None:
        d = cal.drift
        # The conductance each device was programmed to, as read soonest after programming: the
        # read-noise stage's mean of many reads, or the first drift time's.
        g_prog = d.mean_s[0]
        if cal.read_noise is not None and cal.read_noise.age_s is not None and cal.read_noise.age_s <= d.times_s[0]:
            g_prog = cal.read_noise.mean_s
        for t, mean, var in zip(d.times_s, d.mean_s, d.var_s):
            used = np.isfinite(var) & cal.fit_mask(var.shape)
            if programmed is not None:
                used &= programmed
            timed.append(ReadSamples(mean[used], var[used], d.reads, float(t), np.flatnonzero(used), g_prog[used]))
    if not samples:
        return None
    try:
        white = fit_read_noise(samples)
    except ValueError as exc:
        cal.warn(f"read noise not fitted: {exc}")
        return None
    reference = cal.read_noise.age_s if cal.read_noise is not None else None
    return choose_read_noise(white, timed, reference)


def fit_noise_model(cal: Calibration, *, array_id: str, rows: int, cols: int,
                    source_runs: list[int] | None = None) -> NoiseModel:
    """The NoiseModel of what ``cal`` measured; needs at least the window and some repeated reads.

    Values outside their physical bounds are clipped or left out, never stored silently: each such
    decision is a line of ``cal.warnings``. Raises ValueError, with the reason, when no model can be made.
    """
    if cal.window is None or cal.read_fit is None:
        raise ValueError("a noise model needs the window measurement and repeated reads (read_noise, "
                         "or window.reads >= 3) with at least two finite, unclipped devices")
    # The fits see the working devices that were not held out for the predictive check.
    working = cal.fitted
    if not working.any():
        raise ValueError("no working device: every device is stuck or unreadable")
    read = cal.read_fit

    def spread(reads: np.ndarray, quality: ReadQuality, name: str) -> float:
        # ln g needs g > 0: devices with a zero, negative, non-finite or clipped read are left out.
        g = reads.mean(axis=0)[working & ~quality.flagged]
        if g.size < 2:
            cal.warn(f"window: spread of ln {name} not estimable ({g.size} devices with positive, unclipped "
                     f"reads): stored as 0")
            return 0.0
        # Take out what averaging `n` noisy reads adds to the device-to-device scatter of ln g.
        noise = np.mean((read.sigma(g) / g) ** 2) / reads.shape[0]
        return float(np.sqrt(max(np.var(np.log(g), ddof=1) - noise, 0.0)))

    def bound(values: np.ndarray, name: str) -> float:
        g = values[working]
        median = float(np.median(g))
        if median > 0:
            return median
        positive = g[g > 0]
        if not positive.size:
            raise ValueError(f"window: no working device read a positive {name}: the conductance window is "
                             f"below what the instrument resolves")
        clipped = float(np.median(positive))
        cal.warn(f"window: median {name} of working devices is {median * _US:.3g} µS (reads at or below 0 S); "
                 f"stored as {clipped * _US:.3g} µS, the median of the {positive.size} devices that read a "
                 f"positive value (an upper estimate)")
        return clipped

    g_min, g_max = bound(cal.window.g_min_s, "g_min"), bound(cal.window.g_max_s, "g_max")
    if not g_max > g_min:
        raise ValueError(f"window: median g_max {g_max * _US:.3g} µS is not above median g_min "
                         f"{g_min * _US:.3g} µS")
    window = ConductanceWindow(
        g_min_s=g_min, g_max_s=g_max,
        g_min_spread=spread(cal.window.low_reads_s, cal.window.low_quality, "g_min"),
        g_max_spread=spread(cal.window.high_reads_s, cal.window.high_quality, "g_max"))

    programming = _programming_noise(cal, working, read)

    drift = None
    if cal.drift_fit is not None:
        d = cal.drift_fit
        fields = d.drift_fields()
        numbers = [v for k, v in fields.items() if k not in ("law", "selection") and v is not None]
        if all(np.all(np.isfinite(v)) for v in numbers) and fields["t0_s"] > 0:
            drift = Drift(**fields)
        else:
            cal.warn(f"drift: fit not finite (nu {d.nu_mean:.3g} ± {d.nu_std:.3g}, t0 {d.t0_s:.3g} s): "
                     f"left out of the noise model")

    pf = cal.periphery_fit
    periphery = Periphery(read_voltage_v=cal.options.read_voltage_v,
                          dac_bits=pf.dac_bits if pf else None, adc_bits=pf.adc_bits if pf else None,
                          adc_step_a=pf.adc_step_a if pf else None,
                          adc_full_scale_a=pf.adc_full_scale_a if pf else None,
                          output_noise_a=pf.output_noise_a if pf else None,
                          output_noise_upper_a=pf.output_noise_upper_a if pf else None,
                          iv_cubic_per_v2=pf.iv_cubic_per_v2 if pf else None)
    # Rates over the devices whose window could be read: an unreadable device is neither.
    readable = int((~cal.unreadable).sum()) if cal.unreadable is not None else working.size
    return NoiseModel(array_id=array_id, rows=rows, cols=cols, window=window, programming=programming,
                      read=read, drift=drift,
                      defects=Defects(stuck_on_rate=float(cal.stuck_on.sum() / readable),
                                      stuck_off_rate=float(cal.stuck_off.sum() / readable),
                                      stuck_levels_s=stuck_levels(cal)),
                      periphery=periphery, source_runs=list(source_runs or []))


# Quantiles kept of the stuck devices' conductances: the distribution's shape (ends, middle, clusters) at a
# few hundred bytes of JSON, whatever the array's size.
STUCK_QUANTILES = 16


def stuck_levels(cal: Calibration) -> list[float] | None:
    """Where the stuck devices sit: quantiles of the mean of their two window reads (a device that does not
    switch reads the same after RESET and SET), over those with finite reads; None without any."""
    if cal.window is None or cal.stuck_on is None:
        return None
    value = 0.5 * (cal.window.g_min_s + cal.window.g_max_s)
    values = np.sort(value[(cal.stuck_on | cal.stuck_off) & np.isfinite(value)])
    if not values.size:
        return None
    if values.size > STUCK_QUANTILES:
        values = np.quantile(values, (np.arange(STUCK_QUANTILES) + 0.5) / STUCK_QUANTILES)
    return [float(v) for v in values]


def _programming_noise(cal: Calibration, working: np.ndarray, read: ReadNoise) -> ProgrammingNoise | None:
    """Error against target per level over working devices with finite, unclipped achieved reads, by the
    law (normal, or a Gaussian core with a heavy tail) that predicts held-out devices better
    (calibration.programming_fit); the read noise left in each mean of reads is taken out of the spreads.

    A level with fewer than two such devices is left out. A bias that would put the mean achieved
    conductance below 0 S is clipped to -level; a bias beyond the write-verify tolerance is kept (it
    is what was measured: most devices did not reach the level) and reported.
    """
    if cal.programming is None:
        return None
    m = cal.programming
    tolerance = m.write_verify[0]["tolerance_s"]
    achieved = m.achieved_s
    ceiling = saturation_ceiling(achieved)
    usable = np.isfinite(achieved) & working[None]
    if ceiling is not None:
        usable &= achieved != ceiling
    # The achieved conductances were read settle_s after programming: read noise at that time.
    age = cal.options.programming.settle_s if cal.options.programming is not None else None
    # Per level: errors and the read-noise variance of each mean of reads, in units of the tolerance, and
    # the device each error belongs to (the law is chosen by predicting devices held out of its fit).
    device = np.broadcast_to(np.arange(working.size).reshape(working.shape)[None], achieved.shape)
    levels, data = [], []
    for k, level in enumerate(m.levels_s):
        sel = (m.level_index == k) & usable
        err = achieved[sel] - level
        if err.size < 2:
            cal.warn(f"programming: level {level * _US:.3g} µS has {err.size} usable devices: left out of the "
                     f"noise model")
            continue
        read_var = read.variance(achieved[sel], age) / m.reads
        levels.append(float(level))
        data.append((err / tolerance, read_var / tolerance ** 2, device[sel]))
    if not levels:
        cal.warn("programming: no level had two usable devices: no programming noise in the model")
        return None
    selection = programming_fit.select_law(data)
    law = programming_fit.chosen_law(selection)
    fit = programming_fit.LAWS[law]
    sigma, bias, fraction, width, up, width_down = [], [], [], [], [], []
    for level, (err, read_var, _) in zip(levels, data):
        f = fit(err, read_var)
        b = f.bias * tolerance
        if level + b < 0:
            cal.warn(f"programming: level {level * _US:.3g} µS has mean achieved {(level + b) * _US:.3g} µS, below "
                     f"0 S: bias clipped from {b * _US:.3g} to {-level * _US:.3g} µS")
            b = -float(level)
        elif abs(b) > tolerance:
            cal.warn(f"programming: level {level * _US:.3g} µS has bias {b * _US:.3g} µS, beyond the write-verify "
                     f"tolerance {tolerance * _US:.3g} µS: most devices did not reach it")
        sigma.append(f.sigma * tolerance)
        bias.append(b)
        fraction.append(f.tail_fraction)
        width.append(f.tail_width * tolerance)
        up.append(f.tail_up)
        width_down.append((f.tail_width if f.tail_width_down is None else f.tail_width_down) * tolerance)
    if law == "normal":
        return ProgrammingNoise(levels_s=levels, sigma_s=sigma, bias_s=bias, tolerance_s=tolerance,
                                selection=selection)
    skew = {"tail_up": up, "tail_width_down_s": width_down} if law == "skewed" else {}
    return ProgrammingNoise(law=law, levels_s=levels, sigma_s=sigma, bias_s=bias, tolerance_s=tolerance,
                            tail_fraction=fraction, tail_width_s=width, selection=selection, **skew)
