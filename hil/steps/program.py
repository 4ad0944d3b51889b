"""The ``program`` step: write-verify a target pattern and record every cell's outcome."""

from __future__ import annotations

import numpy as np
from db import records
from db.models import RunStep
from drivers import WriteVerifySettings, write_verify

from ..context import ProgrammedPattern, RunContext, StepReport
from ..protocol import ProgramStep


def run_program(ctx: RunContext, step: ProgramStep, row: RunStep) -> StepReport:
    rows, cols = ctx.xbar.shape
    targets = step.pattern.targets(rows, cols, ctx.rng, ctx.base_dir)
    span = float(np.nanmax(targets) - np.nanmin(targets))
    # A uniform pattern has no span; fall back to its level so the tolerance stays meaningful.
    tolerance_s = step.tolerance * (span if span > 0 else float(np.nanmax(targets)))
    settings = WriteVerifySettings.from_options(step, tolerance_s=tolerance_s, read_voltage_v=step.read_voltage_v)
    ctx.save(row, "target", "target_conductance", "S", targets)

    n_cells = int(np.isfinite(targets).sum())
    with ctx.progress.task("write-verify", total=step.max_iterations, unit="iterations") as task:
        def on_iteration(iteration: int, outside: int, total: int) -> None:
            task.update(iteration, note=f"{total - outside}/{total} cells in tolerance")

        result = write_verify(ctx.xbar, targets, settings, on_iteration=on_iteration)

    ctx.save(row, "achieved", "conductance", "S", result.achieved_s, read_voltage_v=step.read_voltage_v)
    ctx.save(row, "pulses", "pulse_count", "1", result.pulses)
    ctx.save(row, "gave_up", "unresponsive_mask", "1", result.gave_up)
    with ctx.db.session() as session:
        records.add_device_results(session, ctx.run, row, ctx.array, target_s=targets,
                                   achieved_s=result.achieved_s, iterations=result.pulses,
                                   success=result.success)
    ctx.last_program = ProgrammedPattern(step.name, targets, tolerance_s)

    inside = int(result.success.sum())
    responsive = np.isfinite(targets) & ~result.gave_up
    summary = {
        "cells": n_cells, "in_tolerance": inside, "fraction_in_tolerance": inside / max(n_cells, 1),
        "fraction_of_responsive_in_tolerance": result.success_rate(responsive),
        "unresponsive": int(result.gave_up.sum()), "tolerance_s": tolerance_s, "iterations": result.iterations,
        "transactions": result.transactions, "write_verify_seconds": result.elapsed_s,
        "out_of_tolerance_per_iteration": result.remaining_per_iteration,
        "rms_error_s": float(np.sqrt(np.nanmean(result.error_s ** 2))),
    }
    return StepReport(
        cells=f"{inside}/{n_cells} ({100 * inside / max(n_cells, 1):.1f}%)",
        iterations=f"{result.iterations}/{step.max_iterations}",
        detail=(f"tol ±{tolerance_s * 1e6:.2f} µS; {int(result.gave_up.sum())} unresponsive; "
                f"{100 * summary['fraction_of_responsive_in_tolerance']:.1f}% of responsive cells in tolerance"),
        summary=summary)
