"""The ``infer`` step: a deployed model's test split, streamed step by step with every weight product on
the array, next to the digital model on the same samples; optionally again after waiting (drift),
with and without global drift compensation. Results go to the database and a Markdown report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from db import records
from db.models import RunStep

from ..context import RunContext, StepReport
from ..nn.matvec import digital_matvec, set_matvec
from ..nn.tasks import load_task
from ..protocol import InferStep
from .deploy import Deployed


def _stream(model, x: torch.Tensor, batch_size: int, on_batch) -> tuple[np.ndarray, float, int]:
    """Predictions over ``x`` (N, L, d) by the model's step form; (predictions, seconds in steps, steps)."""
    predictions, seconds, steps = [], 0.0, 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            state = model.init_state(xb.shape[0])
            for t in range(xb.shape[1]):
                t0 = time.perf_counter()
                state = model.step(xb[:, t], state)
                seconds += time.perf_counter() - t0
                steps += 1
            predictions.append(model.readout(state).argmax(dim=-1).numpy())
            on_batch(xb.shape[0])
    return np.concatenate(predictions), seconds, steps


def confusion(y: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(out, (y, predicted), 1)
    return out


def run_infer(ctx: RunContext, step: InferStep, row: RunStep) -> StepReport:
    dep: Deployed = ctx.deployments[step.deployment]
    data = load_task(dep.task.name, dep.task.seed)
    x, y = data.test.x, data.test.y.numpy()
    if step.samples is not None:
        x, y = x[:step.samples], y[:step.samples]
    model, executor, xbar = dep.model, dep.executor, ctx.xbar
    executor.set_voltage(step.read_voltage_v)

    set_matvec(model, digital_matvec)
    with torch.no_grad():
        digital = model(x).argmax(dim=-1).numpy()
    digital_accuracy = float((digital == y).mean())

    conditions = [(t, False) for t in step.times_s]
    if step.drift_compensation:
        conditions += [(t, True) for t in step.times_s if t > 0]
    conditions.sort()
    results = []
    try:
        set_matvec(model, executor)
        with Progress(TextColumn(f"[bold]{step.name}[/] {{task.fields[cond]}}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("sequences"), TimeElapsedColumn(), console=ctx.console, transient=True) as bar:
            task = bar.add_task("infer", total=len(y) * len(conditions), cond="")
            for t, compensated in conditions:
                wait = dep.programmed_at_s + t - xbar.now()
                if wait > 0:
                    xbar.wait(wait)
                executor.drift_compensation = compensated
                gains = executor.compensate() if compensated else None
                bar.update(task, cond=f"t = {t:g} s{' compensated' if compensated else ''}")
                before = executor.stats.transactions
                predicted, seconds, steps = _stream(model, x, step.batch_size, lambda n: bar.advance(task, n))
                per_step = (executor.stats.transactions - before) / max(steps, 1)
                accuracy = float((predicted == y).mean())
                cm = confusion(y, predicted, data.n_classes)
                results.append({"time_s": t, "drift_compensation": compensated, "samples": len(y),
                                "crossbar_accuracy": accuracy, "digital_accuracy": digital_accuracy,
                                "confusion": cm.tolist(), "step_latency_s": seconds / max(steps, 1),
                                "transactions_per_step": per_step,
                                "gain": None if gains is None else float(np.mean(gains))})
                with ctx.db.session() as session:
                    records.add_inference(session, run=ctx.run, step=row, deployment_id=dep.deployment_id,
                                          **{k: v for k, v in results[-1].items() if k != "gain"})
    finally:
        set_matvec(model, digital_matvec)
        executor.drift_compensation = False

    first = results[0]
    with ctx.db.session() as session:
        others = [r for r in records.run_inferences(session, ctx.run.id) if r["deployment_id"] != dep.deployment_id]
    report_path = write_report(ctx.report_dir / f"run-{ctx.run.id}-{step.name}", step, dep, results, data.n_classes,
                               others)
    gap = 100 * (first["digital_accuracy"] - first["crossbar_accuracy"])
    detail = (f"{dep.checkpoint_name}: crossbar {100 * first['crossbar_accuracy']:.2f}% vs digital "
              f"{100 * digital_accuracy:.2f}% (gap {gap:+.2f} points) on {len(y)} sequences at t = "
              f"{first['time_s']:g} s; {first['transactions_per_step']:.0f} MVMs and "
              f"{1e3 * first['step_latency_s']:.1f} ms per step (batch {min(step.batch_size, len(y))})")
    for r in results[1:]:
        detail += (f"; t = {r['time_s']:g} s{' compensated' if r['drift_compensation'] else ''}: "
                   f"{100 * r['crossbar_accuracy']:.2f}%")
    detail += f"; report {report_path}"
    summary = {"deployment_id": dep.deployment_id, "checkpoint_id": dep.checkpoint_id,
               "digital_accuracy": digital_accuracy, "crossbar_accuracy": first["crossbar_accuracy"],
               "gap_points": gap, "results": [{k: v for k, v in r.items() if k != "confusion"} for r in results],
               "report": str(report_path)}
    return StepReport(cells=f"{len(y)} sequences", iterations="", detail=detail, summary=summary)


def _gap_cells(r: dict) -> str:
    """time | compensation | crossbar | digital | gap, the columns every accuracy row shares."""
    return (f"{r['time_s']:g} s | {'yes' if r['drift_compensation'] else 'no'} | "
            f"{100 * r['crossbar_accuracy']:.2f}% | {100 * r['digital_accuracy']:.2f}% | "
            f"{100 * (r['digital_accuracy'] - r['crossbar_accuracy']):+.2f}")


def write_report(out: Path, step: InferStep, dep: Deployed, results: list[dict], classes: int,
                 others: list[dict] | None = None) -> Path:
    """Markdown with the accuracy table, the confusion matrix at the first time, and a drift figure;
    ``others``: earlier inferences of the run (other models on the same array), for comparison."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Inference of {dep.checkpoint_name} on the array (deployment {dep.deployment_id})", "",
             "| time after programming | drift compensation | crossbar accuracy | digital accuracy | gap (points) | "
             "MVMs per step | latency per step |", "|---:|:---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {_gap_cells(r)} | {r['transactions_per_step']:.0f} | {1e3 * r['step_latency_s']:.2f} ms |"
              for r in results]
    if others:
        lines += ["", "Models inferred earlier in this run, for comparison (gap: digital minus crossbar):", "",
                  "| model | time after programming | drift compensation | crossbar accuracy | digital accuracy | "
                  "gap (points) |", "|---|---:|:---:|---:|---:|---:|"]
        lines += [f"| **{dep.checkpoint_name}** (this step) | {_gap_cells(r)} |" for r in results]
        for r in others:
            name = r["checkpoint"] or f"deployment {r['deployment_id']}"
            lines.append(f"| {name} | {_gap_cells(r)} |")
    cm = np.array(results[0]["confusion"])
    lines += ["", f"Confusion matrix at t = {results[0]['time_s']:g} s (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(str(c) for c in range(classes)) + " |", "|---" * (classes + 1) + "|"]
    lines += [f"| **{i}** | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(cm)]
    times = sorted({r["time_s"] for r in results})
    if len(times) > 1:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for compensated, style in ((False, "o-"), (True, "s--")):
            pts = [(max(r["time_s"], 1.0), 100 * r["crossbar_accuracy"]) for r in results
                   if r["drift_compensation"] == compensated or (compensated and r["time_s"] == 0)]
            if len(pts) > 1:
                ax.plot(*zip(*pts), style, label="compensated" if compensated else "uncompensated")
        ax.axhline(100 * results[0]["digital_accuracy"], color="grey", lw=1, label="digital")
        ax.set_xscale("log")
        ax.set_xlabel("time after programming (s; 0 drawn at 1 s)")
        ax.set_ylabel("accuracy (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "accuracy_vs_time.png", dpi=120)
        plt.close(fig)
        lines += ["", "![accuracy against time after programming](accuracy_vs_time.png)"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
