"""The ``infer`` step: a deployed model's validation or test split, streamed step by step with every weight
product on the array, next to the digital model on the same samples; optionally again after waiting (drift),
with and without global drift compensation. Results go to the database and a Markdown report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from db import records
from db.models import RunStep

from ..context import RunContext, StepReport
from ..nn.matvec import digital_matvec, set_matvec
from ..nn.tasks import load_task
from ..protocol import InferStep
from .deploy import Deployed, program


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
    split = data.val if step.split == "val" else data.test
    x, y = split.x, split.y.numpy()
    if step.samples is not None:
        x, y = x[:step.samples], y[:step.samples]
    model = dep.model
    dep.executor.set_voltage(step.read_voltage_v)

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
        results += _evaluate(ctx, step, row, dep, x, y, data.n_classes, conditions, digital_accuracy,
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
    for (t, compensated), rs in _by_condition(results)[1:]:
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


def _evaluate(ctx: RunContext, step: InferStep, row: RunStep, dep: Deployed, x, y, classes: int, conditions,
              digital_accuracy: float, label: str) -> list[dict]:
    """The split on the array as now programmed, at each (time, compensated) condition."""
    model, executor, xbar = dep.model, dep.executor, ctx.xbar
    results = []
    try:
        set_matvec(model, executor)
        with ctx.progress.task(f"inference{label}", total=len(y) * len(conditions), unit="sequences") as task:
            for t, compensated in conditions:
                wait = dep.programmed_at_s + t - xbar.now()
                if wait > 0:
                    xbar.wait(wait)
                executor.drift_compensation = compensated
                gains = executor.compensate() if compensated else None
                task.update(note=f"t = {t:g} s{' compensated' if compensated else ''}")
                before = executor.stats.transactions
                predicted, seconds, steps = _stream(model, x, step.batch_size, lambda n: task.update(advance=n))
                per_step = (executor.stats.transactions - before) / max(steps, 1)
                results.append({"time_s": t, "drift_compensation": compensated, "split": step.split,
                                "samples": len(y),
                                "crossbar_accuracy": float((predicted == y).mean()),
                                "digital_accuracy": digital_accuracy,
                                "confusion": confusion(y, predicted, classes).tolist(),
                                "step_latency_s": seconds / max(steps, 1), "transactions_per_step": per_step,
                                "gain": None if gains is None else float(np.mean(gains)),
                                "deployment_id": dep.deployment_id})
                with ctx.db.session() as session:
                    records.add_inference(session, run=ctx.run, step=row, deployment_id=dep.deployment_id,
                                          **{k: v for k, v in results[-1].items()
                                             if k not in ("gain", "deployment_id")})
    finally:
        set_matvec(model, digital_matvec)
        executor.drift_compensation = False
    return results


def _by_condition(results: list[dict]) -> list[tuple[tuple[float, bool], list[dict]]]:
    """Results grouped by (time, compensated), in order of first appearance."""
    groups: dict[tuple[float, bool], list[dict]] = {}
    for r in results:
        groups.setdefault((r["time_s"], r["drift_compensation"]), []).append(r)
    return list(groups.items())


def _gap_cells(r: dict) -> str:
    """time | compensation | crossbar | digital | gap, the columns every accuracy row shares."""
    return (f"{r['time_s']:g} s | {'yes' if r['drift_compensation'] else 'no'} | "
            f"{100 * r['crossbar_accuracy']:.2f}% | {100 * r['digital_accuracy']:.2f}% | "
            f"{100 * (r['digital_accuracy'] - r['crossbar_accuracy']):+.2f}")


def _mean_cells(rs: list[dict]) -> str:
    """time | compensation | crossbar | digital | gap ± sd | n, over the programmings in ``rs``."""
    crossbar = 100 * np.array([r["crossbar_accuracy"] for r in rs])
    gaps = 100 * np.array([r["digital_accuracy"] for r in rs]) - crossbar
    sd = f" ± {gaps.std(ddof=1):.2f}" if len(rs) > 1 else ""
    r = rs[0]
    return (f"{r['time_s']:g} s | {'yes' if r['drift_compensation'] else 'no'} | {crossbar.mean():.2f}% | "
            f"{100 * r['digital_accuracy']:.2f}% | {gaps.mean():+.2f}{sd} | {len(rs)}")


def write_report(out: Path, step: InferStep, dep: Deployed, results: list[dict], classes: int,
                 others: list[dict] | None = None) -> Path:
    """Markdown with the accuracy table (each programming, and their mean when there are several), the
    confusion matrix at the first time, and a drift figure; ``others``: earlier inferences of the run
    (other models on the same array), for comparison, averaged over their programmings."""
    out.mkdir(parents=True, exist_ok=True)
    several = len({r.get("deployment_id") for r in results}) > 1
    lines = [f"# Inference of {dep.checkpoint_name} on the array", "",
             f"Split: {step.split} ({results[0]['samples']} sequences)"
             + (": the validation split, for choosing settings; report the test split once." if step.split == "val"
                else "."), "",
             "| deployment | time after programming | drift compensation | crossbar accuracy | digital accuracy | "
             "gap (points) | MVMs per step | latency per step |", "|---:|---:|:---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.get('deployment_id', '')} | {_gap_cells(r)} | {r['transactions_per_step']:.0f} | "
              f"{1e3 * r['step_latency_s']:.2f} ms |" for r in results]
    if several:
        lines += ["", "Over the programmings (each erased and written again; gap: mean ± sd):", "",
                  "| time after programming | drift compensation | crossbar accuracy | digital accuracy | "
                  "gap (points) | programmings |", "|---:|:---:|---:|---:|---:|---:|"]
        lines += [f"| {_mean_cells(rs)} |" for _, rs in _by_condition(results)]
    if others:
        lines += ["", "Models inferred earlier in this run, for comparison (gap: digital minus crossbar, mean ± sd "
                  "over their programmings):", "",
                  "| model | time after programming | drift compensation | crossbar accuracy | digital accuracy | "
                  "gap (points) | programmings |", "|---|---:|:---:|---:|---:|---:|---:|"]
        lines += [f"| **{dep.checkpoint_name}** (this step) | {_mean_cells(rs)} |" for _, rs in _by_condition(results)]
        by_model: dict[str, list[dict]] = {}
        for r in others:
            by_model.setdefault(r["checkpoint"] or f"deployment {r['deployment_id']}", []).append(r)
        for name, rs in by_model.items():
            lines += [f"| {name} | {_mean_cells(group)} |" for _, group in _by_condition(rs)]
    cm = np.array(results[0]["confusion"])
    lines += ["", f"Confusion matrix at t = {results[0]['time_s']:g} s (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(str(c) for c in range(classes)) + " |", "|---" * (classes + 1) + "|"]
    lines += [f"| **{i}** | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(cm)]
    drawn = figure_rows(results, others)
    if len({r["time_s"] for r in drawn}) > 1:
        figure = accuracy_figure(drawn, f"{dep.checkpoint_name} on the array: accuracy after programming")
        figure.savefig(out / "accuracy_vs_time.png")
        lines += ["", "![accuracy against time after programming](accuracy_vs_time.png)"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def figure_rows(results: list[dict], others: list[dict]) -> list[dict]:
    """What the accuracy figure draws: this step's results, and where it measured no t = 0 (a drift step on
    a deployment an earlier step evaluated as programmed), that earlier t = 0 of the same programming."""
    if any(r["time_s"] == 0 for r in results):
        return results
    programmed = {r.get("deployment_id") for r in results}
    start = [{**r, "samples": results[0].get("samples")} for r in others
             if r["deployment_id"] in programmed and r["time_s"] == 0 and not r["drift_compensation"]]
    return start + results


def _duration(seconds: float) -> str:
    """A time after programming as a person says it: 0, 30 s, 1 h, 1 d."""
    if seconds == 0:
        return "0"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def accuracy_figure(results: list[dict], title: str):
    """Accuracy against time after programming (a matplotlib Figure): each programming as a faint
    point, their mean with ± sd error bars, without and with drift compensation, and the digital
    model as a line. The time axis is linear up to the first wait and logarithmic beyond
    (symlog), so that t = 0, the accuracy as programmed, is drawn where it belongs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    groups = _by_condition(results)
    programmings = max(len(rs) for _, rs in groups)
    figure = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for compensated, color, marker, name in ((False, "tab:blue", "o", "uncompensated"),
                                             (True, "tab:orange", "s", "drift-compensated")):
        # Compensation starts from the accuracy as programmed: both lines share the t = 0 point.
        series = sorted(((t, rs) for (t, comp), rs in groups if comp == compensated or (compensated and t == 0)),
                        key=lambda item: item[0])
        if len(series) < 2:
            continue
        t_s = [t for t, _ in series]
        accuracy = [100 * np.array([r["crossbar_accuracy"] for r in rs]) for _, rs in series]
        if programmings > 1:
            for t, a in zip(t_s, accuracy):
                ax.plot([t] * a.size, a, marker, color=color, alpha=0.3, markersize=3, linestyle="none")
        label = name + (f": mean ± sd over {programmings} programmings" if programmings > 1 else "")
        ax.errorbar(t_s, [a.mean() for a in accuracy],
                    yerr=[a.std(ddof=1) if a.size > 1 else 0.0 for a in accuracy] if programmings > 1 else None,
                    fmt=f"{marker}-", color=color, capsize=3, markersize=5, label=label)
    digital = 100 * results[0]["digital_accuracy"]
    ax.axhline(digital, color="k", linestyle="--", linewidth=1, label=f"digital model ({digital:.2f}%)")
    times = sorted({r["time_s"] for r in results})
    first = min((t for t in times if t > 0), default=1.0)
    ax.set_xscale("symlog", linthresh=first, linscale=0.6)
    # Ticks at the times measured, named as a person would: the axis is the protocol's schedule.
    ax.xaxis.set_major_locator(FixedLocator(times))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _duration(x)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(-0.25 * first, times[-1] * 2)
    ax.set_xlabel("time after programming (linear to the first wait, logarithmic beyond)")
    ax.set_ylabel("test accuracy (%)")
    samples = results[0].get("samples")
    # The resolution of the axis: a narrow range can make one sequence look like a trend.
    ax.set_title(title + (f"\n{samples} test sequences (one sequence = {100 / samples:.2g} points)" if samples else ""),
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return figure
