"""The ``calibrate`` step: measure the array, store raw data and statistics, fit and store its noise model."""

from __future__ import annotations

import numpy as np

from calibration.checks import check_stats, evaluate_checks
from calibration.pipeline import Calibration, fit_noise_model, run_calibration, stages
from calibration.report import write_report
from db import records
from db.models import RunStep

from ..context import RunContext, StepReport
from ..protocol import CalibrateStep


def restore_calibrate(ctx: RunContext, step: CalibrateStep, summary: dict) -> None:
    if "noise_model_id" in summary:
        ctx.noise_models[step.name] = int(summary["noise_model_id"])


def run_calibrate(ctx: RunContext, step: CalibrateStep, row: RunStep) -> StepReport:
    names = stages(step)
    cal = Calibration(step)
    try:
        with ctx.progress.task("calibration", total=len(names), unit="stages") as task:
            def progress(stage: str, done: float, message: str) -> None:
                task.update(names.index(stage) + done, label=stage, note=message)

            run_calibration(ctx.xbar, step, ctx.rng, progress=progress, into=cal)
    except BaseException as exc:
        # Whatever was measured before the failure is evidence: store it, then let the step fail.
        try:
            _save_raw(ctx, row, cal)
        except Exception as save_error:  # noqa: BLE001 - the original failure is the one to report
            exc.add_note(f"the raw data measured before it could not be stored: {save_error}")
        raise

    _save_raw(ctx, row, cal)
    ident = ctx.xbar.identity
    summary: dict = {"stages": names, "read_quality": cal.read_quality()}
    if cal.levels is not None:
        summary["programming_levels"] = {"g_low_s": cal.levels.g_low_s, "g_high_s": cal.levels.g_high_s,
                                         "source": cal.levels.source}
    report = StepReport(detail="")
    model = None
    checks = []
    if cal.holdout is not None:
        summary["holdout"] = {"fraction": step.check.holdout_fraction, "devices": int(cal.holdout.sum())}
    if step.fit:
        try:
            model = fit_noise_model(cal, array_id=ctx.array.array_id, rows=ident.rows, cols=ident.cols,
                                    source_runs=[ctx.run.id])
        except ValueError as exc:
            raise ValueError(f"noise model not fitted ({'; '.join(cal.warnings) or 'no warning'}): {exc}") from exc
        if cal.check is not None:
            checks = evaluate_checks(cal.check, model, step.check, ctx.rng,
                                     step.drift.times_s if step.drift else None)
        stats, units = _array_stats(cal, model)
        for name, value in zip(("values", "units"), check_stats(checks)):
            (stats if name == "values" else units).update(value)
        with ctx.db.session() as session:
            stored = records.add_noise_model(session, ctx.array, model.to_json_dict(),
                                             schema_version=model.schema_version, run=ctx.run, step=row,
                                             source_runs=[ctx.run.id])
            records.add_array_stats(session, ctx.run, row, ctx.array, stats, units)
        ctx.noise_models[step.name] = stored.id
        summary["noise_model_id"] = stored.id
        report.detail = (f"noise model {stored.id}: read noise {model.read.floor_s * 1e6:.3f} µS + "
                         f"{100 * model.read.relative:.2f}%")
        if model.read.flicker:
            report.detail += (f" + 1/f {100 * model.read.flicker:.2f}% at {model.read.flicker_g_ref_s * 1e6:.3g} µS "
                              f"(g^{model.read.flicker_exponent:.2f}, growing with time since programming)")
        if model.read.law == "telegraph":
            report.detail += (f" + telegraph noise on {100 * model.read.telegraph_fraction:.1f}% of devices "
                              f"(median {100 * model.read.telegraph_amplitude:.2f}%)")
        d = model.drift
        if d and d.law in ("shift", "shift_g"):
            report.detail += (f", relaxation {d.shift_mean_s * 1e6:+.3f} ± {d.shift_sigma_s * 1e6:.3f} µS per ln t"
                              f"{' (by conductance)' if d.law == 'shift_g' else ''}")
        elif d:
            report.detail += f", drift ν {d.nu_mean:.4f}±{d.nu_std:.4f}"
            if d.law == "power_g":
                report.detail += " (by conductance)"
        if checks:
            summary["checks"] = [c.as_dict() for c in checks]
            warned = [c.quantity for c in checks if c.passed is False]
            judged = [c for c in checks if c.passed is not None]
            report.detail += (f"; held-out check {len(judged) - len(warned)}/{len(judged)} pass"
                              + (f" (warn: {', '.join(warned)})" if warned else ""))
    if cal.window is not None:
        n = cal.stuck_on.size
        working = int(cal.working.sum())
        report.cells = f"{working}/{n} working ({100 * working / n:.1f}%)"
        summary.update(yield_fraction=working / n, stuck_on=int(cal.stuck_on.sum()),
                       stuck_off=int(cal.stuck_off.sum()), unreadable=int(cal.unreadable.sum()))
    summary["warnings"] = list(cal.warnings)
    if cal.warnings:
        # The summary table has one line per step: the first warning, and where to read the others.
        more = f" (and {len(cal.warnings) - 1} more in the step summary)" if len(cal.warnings) > 1 else ""
        report.detail = "; ".join(filter(None, [report.detail, f"warning: {cal.warnings[0]}{more}"]))
    if step.report and model is not None:
        out = ctx.report_dir / f"run-{ctx.run.id}-{step.name}"
        path = write_report(cal, model, out, checks=checks, title=f"Calibration of {ctx.array.array_id} (run {ctx.run.id}, "
                                                    f"step {step.name})")
        summary["report"] = str(path)
        report.detail += f"; report {path}"
    report.summary = summary
    return report


def _finite_or_nan(values: np.ndarray) -> np.ndarray:
    """Per-device statistics as stored: an infinite value estimates nothing, like NaN (stored as NULL)."""
    a = np.asarray(values)
    return np.where(np.isfinite(a), a, np.nan) if a.dtype.kind == "f" else a


def _save_raw(ctx: RunContext, row: RunStep, cal: Calibration) -> None:
    """Every raw array of the calibration, as measured (NaN and infinities included), and the per-device
    statistics, with the step."""
    def save(*args, **meta):
        # A cell that reads NaN is an observation of that cell: the calibration decides how much it can use.
        ctx.save(*args, finite=False, **meta)

    devices: dict[str, np.ndarray] = {}
    if cal.window is not None:
        save(row, "window.after_reset", "conductance", "S", cal.window.low_reads_s)
        save(row, "window.after_set", "conductance", "S", cal.window.high_reads_s)
        devices.update(g_min_s=cal.window.g_min_s, g_max_s=cal.window.g_max_s, stuck_on=cal.stuck_on,
                       stuck_off=cal.stuck_off, unreadable=cal.window.unreadable)
    if cal.pulse_response is not None:
        pr = cal.pulse_response
        save(row, "pulse_response.set", "conductance", "S", pr.set_curves_s, amplitudes_v=pr.amplitudes_v.tolist())
        save(row, "pulse_response.reset", "conductance", "S", pr.reset_curves_s,
             amplitudes_v=(-pr.amplitudes_v).tolist())
        save(row, "pulse_response.set_cells", "cell_index", "1", pr.set_cells)
        save(row, "pulse_response.reset_cells", "cell_index", "1", pr.reset_cells)
    if cal.programming is not None:
        p = cal.programming
        save(row, "programming.targets", "target_conductance", "S", p.targets_s, levels_s=p.levels_s.tolist(),
             level_source=cal.levels.source if cal.levels else None)
        save(row, "programming.achieved", "conductance", "S", p.achieved_s, reads=p.reads,
             write_verify=p.write_verify)
        devices["programming_error_s"] = p.error_s[-1]
    if cal.read_noise is not None:
        save(row, "read_noise.reads", "conductance", "S", cal.read_noise.reads_s)
        devices["read_sigma_s"] = cal.read_noise.std_s
    if cal.drift is not None:
        save(row, "drift.mean", "conductance", "S", cal.drift.mean_s, times_s=cal.drift.times_s.tolist(),
             reads=cal.drift.reads)
        if cal.drift.var_s is not None:
            # read noise at each drift time: what the read-noise law's time dependence was chosen from
            save(row, "drift.variance", "conductance_variance", "S^2", cal.drift.var_s,
                 times_s=cal.drift.times_s.tolist(), reads=cal.drift.reads)
        if cal.drift_fit is not None:
            devices["drift_nu"] = cal.drift_fit.nu
    if cal.check is not None:
        c = cal.check
        save(row, "check.cells", "cell_index", "1", c.cells)
        save(row, "check.targets", "target_conductance", "S", c.targets_s, levels_s=c.levels_s.tolist())
        save(row, "check.achieved", "conductance", "S", c.achieved_s, reads=c.programming_reads,
             write_verify=c.write_verify)
        if c.reads_s is not None:
            save(row, "check.reads", "conductance", "S", c.reads_s)
        if c.drift is not None:
            save(row, "check.drift", "conductance", "S", c.drift.mean_s, times_s=c.drift.times_s.tolist(),
                 reads=c.drift.reads)
    if cal.periphery is not None:
        save(row, "periphery.zero_input", "current", "A", cal.periphery.zero_outputs_a)
        save(row, "periphery.sweep", "current", "A", cal.periphery.sweep_outputs_a,
             sweep_v=cal.periphery.sweep_v.tolist())
    if devices:
        with ctx.db.session() as session:
            records.add_device_stats(session, ctx.run, row, ctx.array,
                                     {k: _finite_or_nan(v) for k, v in devices.items()})


def _array_stats(cal: Calibration, model) -> tuple[dict[str, float], dict[str, str]]:
    stats: dict[str, float] = {}
    units: dict[str, str] = {}

    def put(name: str, value, unit: str) -> None:
        if value is not None:
            stats[name] = float(value)
            units[name] = unit

    if cal.window is not None:
        put("yield", cal.window.yield_fraction, "1")
    put("stuck_on_rate", model.defects.stuck_on_rate, "1")
    put("stuck_off_rate", model.defects.stuck_off_rate, "1")
    put("g_min_s", model.window.g_min_s, "S")
    put("g_max_s", model.window.g_max_s, "S")
    put("g_max_spread", model.window.g_max_spread, "1")
    put("read_noise_floor_s", model.read.floor_s, "S")
    put("read_noise_relative", model.read.relative, "1")
    if model.read.law == "flicker":
        put("read_noise_flicker", model.read.flicker, "1")
        put("read_noise_flicker_exponent", model.read.flicker_exponent, "1")
        put("read_noise_flicker_g_ref_s", model.read.flicker_g_ref_s, "S")
    if model.drift:
        put("drift_nu_mean", model.drift.nu_mean, "1")
        put("drift_nu_std", model.drift.nu_std, "1")
        put("drift_t0_s", model.drift.t0_s, "s")
    if model.programming:
        for k, sigma in enumerate(model.programming.sigma_s):
            put(f"programming_sigma_s[{k}]", sigma, "S")
        put("programming_sigma_s_mean", np.mean(model.programming.sigma_s), "S")
    put("adc_step_a", model.periphery.adc_step_a, "A")
    put("output_noise_a", model.periphery.output_noise_a, "A")
    put("iv_cubic_per_v2", model.periphery.iv_cubic_per_v2, "V^-2")
    return stats, units
