"""The ``read`` step: read the whole array, optionally several times, and compare with the last programmed pattern."""

from __future__ import annotations

import numpy as np
from db.models import RunStep

from ..context import RunContext, StepReport
from ..protocol import ReadStep


def run_read(ctx: RunContext, step: ReadStep, row: RunStep) -> StepReport:
    reads: list[np.ndarray] = []
    try:
        with ctx.progress.task("reading the array", total=step.repeats, unit="reads") as task:
            for _ in range(step.repeats):
                reads.append(ctx.xbar.read(voltage_v=step.read_voltage_v))
                task.update(advance=1)
    finally:
        # Whatever was read before a fault is kept.
        if reads:
            ctx.save(row, "conductance", "conductance", "S", np.stack(reads),
                     read_voltage_v=step.read_voltage_v, complete=len(reads) == step.repeats)
    mean = np.mean(reads, axis=0)
    summary = {"repeats": step.repeats, "mean_s": float(mean.mean()), "min_s": float(mean.min()),
               "max_s": float(mean.max())}
    if step.repeats > 1:
        summary["median_read_std_s"] = float(np.median(np.std(reads, axis=0, ddof=1)))
    report = StepReport(detail=f"mean {mean.mean() * 1e6:.2f} µS, range {mean.min() * 1e6:.2f}–"
                               f"{mean.max() * 1e6:.2f} µS over {step.repeats} read(s)")
    last = ctx.last_program
    if last is not None:
        wanted = np.isfinite(last.targets_s)
        inside = int((np.abs(mean - last.targets_s) <= last.tolerance_s)[wanted].sum())
        n = int(wanted.sum())
        summary.update(compared_with=last.step_name, in_tolerance=inside, cells=n,
                       rms_error_s=float(np.sqrt(np.mean((mean - last.targets_s)[wanted] ** 2))))
        report.cells = f"{inside}/{n} ({100 * inside / max(n, 1):.1f}%)"
        report.detail += f"; vs {last.step_name}: rms error {summary['rms_error_s'] * 1e6:.2f} µS"
    report.summary = summary
    return report
