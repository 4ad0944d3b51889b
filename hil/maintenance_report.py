"""The report of a ``maintain`` step: its checks, actions and evaluations as Markdown, and a figure of
accuracy and the worst group's error against days since programming."""

from __future__ import annotations

from pathlib import Path


def write_report(out: Path, model_name: str, summary: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    cost = summary["cost"]
    lines = [f"# Maintenance of {model_name} on the array", "",
             f"{summary['days']:g} days; a group is acted on when its relative rms error on {summary['probes']} random "
             f"inputs passes {100 * summary['bound']:g} % (right after programming the worst group showed "
             f"{100 * max(summary['baseline_errors']):.2f} %). Checks cost {cost['check_mvms']:,} MVMs; actions "
             f"{cost['mvms']:,} MVMs, {cost['write_calls']:,} write-verify instrument calls and "
             f"{cost['cells_written']:,} cells written (of {summary['cells']:,}).", "",
             "| day | worst group before (%) | groups out of bound | worst group after (%) |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {c['time_s'] / 86400:g} | {100 * c['worst_before']:.2f} | {c['groups_out']} | "
              f"{100 * c['worst_after']:.2f} |" for c in summary["checks"]]
    if summary["actions"]:
        lines += ["", "| day | action | groups | MVMs | write-verify calls | cells written |", "|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {a['time_s'] / 86400:g} | {a['kind']} | {len(a['groups'])} | {a['mvms']} | {a['write_calls']} | "
                  f"{a['cells']} |" for a in summary["actions"]]
    lines += ["", "Cells rewritten per week (share of the deployment's cells): "
              + ", ".join(f"week {w + 1}: {100 * f:.2f} %" for w, f in enumerate(summary["cells_rewritten_per_week"]))
              + "."]
    if summary["evaluations"]:
        e0 = summary["evaluations"][0]
        lines += ["", f"Accuracy on the array ({e0['samples']} {e0['split']} sequences, drift-compensated; digital "
                  f"{100 * e0['digital_accuracy']:.2f} %):", "", "| day | accuracy (%) | change from the first (points) |",
                  "|---:|---:|---:|"]
        lines += [f"| {e['time_s'] / 86400:g} | {100 * e['crossbar_accuracy']:.2f} | "
                  f"{100 * (e['crossbar_accuracy'] - e0['crossbar_accuracy']):+.2f} |" for e in summary["evaluations"]]
    figure(summary, model_name).savefig(out / "maintenance.png")
    lines += ["", "![accuracy and group error against days](maintenance.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def figure(summary: dict, model_name: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    evaluations = summary["evaluations"]
    if evaluations:
        top.plot([e["time_s"] / 86400 for e in evaluations], [100 * e["crossbar_accuracy"] for e in evaluations],
                 "o-", label="on the array")
        top.axhline(100 * evaluations[0]["digital_accuracy"], color="k", linestyle="--", linewidth=1, label="digital")
        top.legend(fontsize=8)
    top.set_ylabel("accuracy (%)")
    top.set_title(f"{model_name}: maintenance", fontsize=10)
    days = [c["time_s"] / 86400 for c in summary["checks"]]
    bottom.plot(days, [100 * c["worst_before"] for c in summary["checks"]], "o", color="tab:red", label="before action")
    bottom.plot(days, [100 * c["worst_after"] for c in summary["checks"]], "s-", color="tab:green", label="after")
    bottom.axhline(100 * summary["bound"], color="gray", linestyle=":", label="bound")
    for a in summary["actions"]:
        if a["kind"] == "rewrite":
            bottom.axvline(a["time_s"] / 86400, color="tab:purple", alpha=0.3)
    bottom.set_xlabel("days since programming (purple: cells rewritten)")
    bottom.set_ylabel("worst group error (%)")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    return fig
