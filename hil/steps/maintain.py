"""The ``maintain`` step: watch a deployment over time, probing its MVM groups at a schedule and acting on
those out of bound, cheapest first (the work is in :mod:`hil.maintenance`); accuracy on the array at its
own schedule. Every check and action goes into the step's summary, every evaluation into ``inferences``,
and a report with a figure into the report directory."""

from __future__ import annotations

import numpy as np
import torch

from db import records
from db.models import RunStep

from ..context import RunContext, StepReport
from ..deployment import Deployed
from ..inference import confusion, stream
from ..maintenance import Maintainer
from ..maintenance_report import write_report
from ..nn.matvec import digital_matvec, set_matvec
from ..nn.tasks import load_task
from ..protocol import MaintainStep


def run_maintain(ctx: RunContext, step: MaintainStep, row: RunStep) -> StepReport:
    dep: Deployed = ctx.deployments[step.deployment]
    keeper = Maintainer(dep.model, dep.executor, dep.settings, probes=step.probes, bound=step.bound,
                        actions=tuple(step.actions), seed=step.seed)
    xbar, end_s = ctx.xbar, step.days * 86400.0
    checks_at = list(np.arange(0.0, end_s + 1e-9, step.every_s))
    evaluations_at: list[float] = []
    x = y = None
    classes = 0
    digital_accuracy = float("nan")
    if step.evaluate is not None:
        data = load_task(dep.task.name, dep.task.seed)
        split = data.val if step.evaluate.split == "val" else data.test
        classes = data.n_classes
        x, y = split.x, split.y.numpy()
        if step.evaluate.samples is not None:
            x, y = x[:step.evaluate.samples], y[:step.evaluate.samples]
        evaluations_at = list(np.arange(0.0, end_s + 1e-9, step.evaluate.every_s))
        if evaluations_at[-1] < end_s - 1e-9:
            evaluations_at.append(end_s)          # and at the end, whatever the schedule
        set_matvec(dep.model, digital_matvec)
        with torch.no_grad():
            digital_accuracy = float((dep.model(x).argmax(dim=-1).numpy() == y).mean())
    # Times since programming. Whatever ran since (an evaluation, a fine-tuning) took the instrument's time:
    # the first check and evaluation are now, the rest on the schedule after it.
    start = max(0.0, xbar.now() - dep.programmed_at_s)

    def after_start(times: list[float]) -> list[float]:
        return [start] + [t for t in times if t > start] if times else []

    schedule = sorted([(t, "check") for t in after_start(checks_at)]
                      + [(t, "evaluate") for t in after_start(evaluations_at)])
    checks, evaluations = [], []
    cells_total = sum(int(np.isfinite(dep.mapping.targets(a)).sum()) for a in range(len(dep.mapping.arrays)))
    with ctx.progress.task(f"maintaining {dep.checkpoint_name} for {step.days:g} days", total=len(schedule),
                           unit="checks and evaluations") as task:
        for t, what in schedule:
            wait = dep.programmed_at_s + t - xbar.now()
            if wait > 0:
                ctx.wait(wait)
            if what == "check":
                check = keeper.check(t)
                checks.append(check)
                acted = ", ".join(f"{a.kind} {len(a.groups)}" for a in check.actions) or "nothing to do"
                task.update(advance=1, note=f"day {t / 86400:g}: worst group {100 * max(check.errors_before):.1f}% "
                            f"-> {100 * max(check.errors):.1f}% ({acted})")
            else:
                evaluations.append(_evaluate(ctx, row, dep, x, y, classes, t, digital_accuracy,
                                             step.evaluate.batch_size, step.evaluate.split))
                task.update(advance=1, note=f"day {t / 86400:g}: {100 * evaluations[-1]['crossbar_accuracy']:.2f}%")

    actions = [a for c in checks for a in c.actions]
    weeks = max(1, int(np.ceil(end_s / (7 * 86400.0))))
    rewritten = [sum(a.cells for a in actions if a.kind == "rewrite" and w * 7 * 86400 <= a.time_s < (w + 1) * 7 * 86400)
                 for w in range(weeks)]
    summary = {"deployment_id": dep.deployment_id, "days": step.days, "bound": step.bound, "probes": step.probes,
               "baseline_errors": keeper.baseline, "cells": cells_total,
               "checks": [{"time_s": c.time_s, "worst_before": max(c.errors_before), "worst_after": max(c.errors),
                           "groups_out": sum(e > step.bound for e in c.errors_before)} for c in checks],
               "actions": [vars(a) for a in actions],
               "cost": {"mvms": sum(a.mvms for a in actions), "write_calls": sum(a.write_calls for a in actions),
                        "cells_written": sum(a.cells for a in actions),
                        "check_mvms": keeper.check_mvms},
               "cells_rewritten_per_week": [c / max(cells_total, 1) for c in rewritten],
               "evaluations": [{k: v for k, v in e.items() if k != "confusion"} for e in evaluations]}
    report = write_report(ctx.report_dir / f"run-{ctx.run.id}-{step.name}", dep.checkpoint_name, summary)
    summary["report"] = str(report)
    detail = (f"{dep.checkpoint_name}: {len(checks)} checks over {step.days:g} days, "
              f"{sum(a.kind == 'compensate' for a in actions)} re-compensations, "
              f"{sum(a.kind == 'rewrite' for a in actions)} rewrites ({summary['cost']['cells_written']:,} cells)")
    if evaluations:
        detail += (f"; accuracy on the array {100 * evaluations[0]['crossbar_accuracy']:.2f}% at day "
                   f"{evaluations[0]['time_s'] / 86400:g}, {100 * evaluations[-1]['crossbar_accuracy']:.2f}% at day "
                   f"{evaluations[-1]['time_s'] / 86400:g} ({len(y)} {step.evaluate.split} sequences)")
    detail += f"; report {report}"
    return StepReport(cells=f"{summary['cost']['cells_written']:,} cells rewritten", iterations=f"{len(checks)} checks",
                      detail=detail, summary=summary)


def _evaluate(ctx: RunContext, row: RunStep, dep: Deployed, x, y, classes: int, t: float, digital_accuracy: float,
              batch_size: int, split: str) -> dict:
    """The split on the array as maintenance keeps it (drift-compensated), recorded as an inference."""
    try:
        set_matvec(dep.model, dep.executor)
        before = dep.executor.stats.transactions
        predicted, seconds, steps = stream(dep.model, x, batch_size, lambda n: None)
        per_step = (dep.executor.stats.transactions - before) / max(steps, 1)
    finally:
        set_matvec(dep.model, digital_matvec)
    result = {"time_s": t, "drift_compensation": True, "split": split, "samples": len(y),
              "crossbar_accuracy": float((predicted == y).mean()), "digital_accuracy": digital_accuracy,
              "confusion": confusion(y, predicted, classes).tolist(),
              "step_latency_s": seconds / max(steps, 1), "transactions_per_step": per_step}
    with ctx.db.session() as session:
        records.add_inference(session, run=ctx.run, step=row, deployment_id=dep.deployment_id,
                              finetune_fk=dep.finetune_id, **result)
    return result
