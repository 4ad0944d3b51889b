"""The ``calibrate`` step: measure the array, store raw data and statistics, fit and store its noise model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.checks import check_stats, evaluate_checks
from calibration.pipeline import Calibration, fit_measured, fit_noise_model, run_calibration, stages
from calibration.raw import device_stats, raw_arrays
from calibration.report import write_report
from db import Database, records
from db.models import CrossbarArray, Run, RunStep

from ..context import RunContext, StepReport
from ..protocol import CalibrateStep


def restore_calibrate(ctx: RunContext, step: CalibrateStep, summary: dict) -> None:
    if "noise_model_id" in summary:
        ctx.noise_models[step.name] = int(summary["noise_model_id"])


def run_calibrate(ctx: RunContext, step: CalibrateStep, row: RunStep) -> StepReport:
    if step.source is not None:
        return _run_from_files(ctx, step, row)
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
    summary: dict = {"stages": names}
    report = conclude(ctx.db, ctx.run, row, ctx.array, cal, step, rng=ctx.rng, report_dir=ctx.report_dir,
                      summary=summary)
    if "noise_model_id" in report.summary:
        ctx.noise_models[step.name] = report.summary["noise_model_id"]
    return report


def _run_from_files(ctx: RunContext, step: CalibrateStep, row: RunStep) -> StepReport:
    """The step's measurements from its source files, stored with their provenance, then fitted as a
    live calibration's (hil.measurement_exchange)."""
    from ..measurement_exchange import describe_import, store_imported

    ident = ctx.xbar.identity
    imported = step.source.read(ctx.base_dir, (ident.rows, ident.cols))
    fit_measured(imported.calibration)
    store_imported(ctx.db, ctx.run, row, ctx.array, imported)
    summary = describe_import(imported)
    report = conclude(ctx.db, ctx.run, row, ctx.array, imported.calibration, step, rng=ctx.rng,
                      report_dir=ctx.report_dir, summary=summary, missing=imported.missing())
    if "noise_model_id" in report.summary:
        ctx.noise_models[step.name] = report.summary["noise_model_id"]
    return report


def conclude(db: Database, run: Run, row: RunStep, array: CrossbarArray, cal: Calibration, step: CalibrateStep, *,
             rng: np.random.Generator, report_dir: Path, summary: dict, missing: list[str] = ()) -> StepReport:
    """Fit and store the noise model of ``cal`` (its raw arrays already stored with ``row``), evaluate the
    predictive check if there was one, store the per-array statistics and write the report. ``summary``
    starts the step's summary; ``missing`` says which measurements were not there to fit (a calibration
    from files). Raises ValueError when no noise model can be fitted and ``step.fit`` asks for one."""
    rows, cols = array.rows, array.cols
    summary["read_quality"] = cal.read_quality()
    if cal.levels is not None:
        summary["programming_levels"] = {"g_low_s": cal.levels.g_low_s, "g_high_s": cal.levels.g_high_s,
                                         "source": cal.levels.source}
    for line in missing:
        cal.warn(line)
    report = StepReport(detail="")
    model = None
    checks = []
    if cal.holdout is not None:
        summary["holdout"] = {"fraction": step.check.holdout_fraction, "devices": int(cal.holdout.sum())}
    if step.fit:
        try:
            model = fit_noise_model(cal, array_id=array.array_id, rows=rows, cols=cols, source_runs=[run.id])
        except ValueError as exc:
            raise ValueError(f"noise model not fitted ({'; '.join(cal.warnings) or 'no warning'}): {exc}") from exc
        if cal.check is not None:
            checks = evaluate_checks(cal.check, model, step.check, rng, step.drift.times_s if step.drift else None)
        stats, units = _array_stats(cal, model)
        for name, value in zip(("values", "units"), check_stats(checks)):
            (stats if name == "values" else units).update(value)
        with db.session() as session:
            stored = records.add_noise_model(session, array, model.to_json_dict(),
                                             schema_version=model.schema_version, run=run, step=row,
                                             source_runs=[run.id])
            records.add_array_stats(session, run, row, array, stats, units)
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
        out = Path(report_dir) / f"run-{run.id}-{step.name}"
        path = write_report(cal, model, out, checks=checks, title=f"Calibration of {array.array_id} (run {run.id}, "
                                                    f"step {step.name})")
        summary["report"] = str(path)
        report.detail += f"; report {path}"
    report.summary = summary
    return report


def finite_or_nan(values: np.ndarray) -> np.ndarray:
    """Per-device statistics as stored: an infinite value estimates nothing, like NaN (stored as NULL)."""
    a = np.asarray(values)
    return np.where(np.isfinite(a), a, np.nan) if a.dtype.kind == "f" else a


def _save_raw(ctx: RunContext, row: RunStep, cal: Calibration) -> None:
    """Every raw array of the calibration, as measured (NaN and infinities included), and the per-device
    statistics, with the step; each array in a transaction of its own, so that what was stored before a
    failure stays."""
    for raw in raw_arrays(cal):
        # A cell that reads NaN is an observation of that cell: the calibration decides how much it can use.
        ctx.save(row, raw.name, raw.kind, raw.unit, raw.values, finite=False, **raw.meta)
    devices = device_stats(cal)
    if devices:
        with ctx.db.session() as session:
            records.add_device_stats(session, ctx.run, row, ctx.array,
                                     {k: finite_or_nan(v) for k, v in devices.items()})


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
