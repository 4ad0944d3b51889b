"""The ``infer`` step: a deployed model's validation or test split, streamed step by step with every weight
product on the array, next to the digital model on the same samples; optionally again after waiting (drift),
with and without global drift compensation. Results go to the database and a Markdown report (the work is in
:mod:`hil.inference` and :mod:`hil.inference_report`)."""

from __future__ import annotations

import numpy as np
import torch

from db import records
from db.models import RunStep

from ..context import RunContext, StepReport
from ..deployment import Deployed, program
from ..inference import by_condition, evaluate
from ..inference_report import write_report
from ..nn.matvec import digital_matvec, set_matvec
from ..nn.tasks import load_task
from ..protocol import InferStep


def run_infer(ctx: RunContext, step: InferStep, row: RunStep) -> StepReport:
    dep: Deployed = ctx.deployments[step.deployment]
    data = load_task(dep.task.name, dep.task.seed)
    split = data.val if step.split == "val" else data.test
    x, y = split.x, split.y.numpy()
    if step.samples is not None:
        x, y = x[:step.samples], y[:step.samples]
    model = dep.model

    set_matvec(model, digital_matvec)
    with torch.no_grad():
        digital = model(x).argmax(dim=-1).numpy()
    digital_accuracy = float((digital == y).mean())

    conditions = [(t, False) for t in step.times_s]
    if step.drift_compensation:
        conditions += [(t, True) for t in step.times_s if t > 0]
    conditions.sort()
    results: list[dict] = []
    deployments: list[int] = []
    for k in range(step.programmings):
        if k:
            program(ctx, row, dep, f"programming {k + 1}/{step.programmings}", erase_first=True)
        deployments.append(dep.deployment_id)
        results += evaluate(ctx, step, row, dep, x, y, data.n_classes, conditions, digital_accuracy,
                             f" (programming {k + 1}/{step.programmings})" if step.programmings > 1 else "")

    with ctx.db.session() as session:
        others = [r for r in records.run_inferences(session, ctx.run.id) if r["step_id"] != row.id]
    report_path = write_report(ctx.report_dir / f"run-{ctx.run.id}-{step.name}", step, dep, results, data.n_classes,
                               others)
    first = [r for r in results if (r["time_s"], r["drift_compensation"]) == conditions[0]]
    gaps = 100 * (digital_accuracy - np.array([r["crossbar_accuracy"] for r in first]))
    crossbar = float(np.mean([r["crossbar_accuracy"] for r in first]))
    spread = f" ± {gaps.std(ddof=1):.2f} over {len(gaps)} programmings" if len(gaps) > 1 else ""
    detail = (f"{dep.checkpoint_name}: crossbar {100 * crossbar:.2f}% vs digital {100 * digital_accuracy:.2f}% "
              f"(gap {gaps.mean():+.2f}{spread} points) on {len(y)} {step.split} sequences at "
              f"t = {conditions[0][0]:g} s; "
              f"{first[0]['transactions_per_step']:.0f} MVMs and {1e3 * first[0]['step_latency_s']:.1f} ms per step "
              f"(batch {min(step.batch_size, len(y))})")
    for (t, compensated), rs in by_condition(results)[1:]:
        detail += (f"; t = {t:g} s{' compensated' if compensated else ''}: "
                   f"{100 * np.mean([r['crossbar_accuracy'] for r in rs]):.2f}%")
    detail += f"; report {report_path}"
    summary = {"deployment_id": deployments[0], "deployment_ids": deployments, "checkpoint_id": dep.checkpoint_id,
               "split": step.split,
               "digital_accuracy": digital_accuracy, "crossbar_accuracy": crossbar, "gap_points": float(gaps.mean()),
               "gap_points_sd": float(gaps.std(ddof=1)) if len(gaps) > 1 else None,
               "programmings": step.programmings,
               "results": [{k: v for k, v in r.items() if k != "confusion"} for r in results],
               "report": str(report_path)}
    return StepReport(cells=f"{len(y)} {step.split} sequences", iterations="", detail=detail, summary=summary)
