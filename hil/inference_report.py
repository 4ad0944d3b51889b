"""The report of an ``infer`` step: Markdown with the accuracy tables and confusion matrix, and the figure of
accuracy against time after programming."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .deployment import Deployed
from .inference import by_condition
from .protocol import InferStep


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
        lines += [f"| {_mean_cells(rs)} |" for _, rs in by_condition(results)]
    if others:
        lines += ["", "Models inferred earlier in this run, for comparison (gap: digital minus crossbar, mean ± sd "
                  "over their programmings):", "",
                  "| model | time after programming | drift compensation | crossbar accuracy | digital accuracy | "
                  "gap (points) | programmings |", "|---|---:|:---:|---:|---:|---:|---:|"]
        lines += [f"| **{dep.checkpoint_name}** (this step) | {_mean_cells(rs)} |" for _, rs in by_condition(results)]
        by_model: dict[str, list[dict]] = {}
        for r in others:
            by_model.setdefault(r["checkpoint"] or f"deployment {r['deployment_id']}", []).append(r)
        for name, rs in by_model.items():
            lines += [f"| {name} | {_mean_cells(group)} |" for _, group in by_condition(rs)]
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

    groups = by_condition(results)
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
