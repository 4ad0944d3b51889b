"""Equal-memory sweep on sequential digits: mGRADE against its pure delay-conv and pure minGRU counterparts.

    python scripts/memory_sweep.py [--epochs 30] [--seeds 0 1 2] [--threads 1] [--table-only]
                                   [--results docs/memory_sweep.json] [--out docs/memory_sweep.md]

Each budget fixes d_model = d and a delay span D, and every family spends exactly the same
streaming state, d·(2D + 1) numbers (float32), in its own kind of memory (two layers each):

* mGRADE: delay convolutions of span D (D - 1 past inputs per channel) plus a minGRU of d_hidden = d;
* pure delay convolution: span D + 1, the minGRU's d numbers per layer spent on one more delay;
* pure minGRU: d_hidden = d·D, the delay buffers spent on a wider recurrent state.

Taps of the delay convolutions grow with the span (about one per four delays). Memory is counted two
ways: the streaming state alone (``streaming_state_bytes``: delay buffers, minGRU states and the
pooled features a step form carries from one step to the next) and float32 weights plus that state.

Every run trains with :func:`hil.nn.train.train`, which keeps the weights of the epoch with the best
validation accuracy (model selection on the validation split) and then evaluates the test split once,
on those weights. The data split is fixed (task seed 0); the seed varies initialisation, dropout and
batch order. Each finished run is written to the results file at once, so an interrupted sweep
resumes where it stopped; ``--table-only`` writes the Markdown table and the figure from that file.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hil import results_file  # noqa: E402
from hil.intervals import combination_interval, interval, verdict  # noqa: E402

LOG = logging.getLogger("memory_sweep")

FAMILIES = {"mgrade": "mGRADE (delay conv + minGRU)",
            "conv": "pure delay conv",
            "recurrent": "pure minGRU"}
N_LAYERS = 2
DROPOUT = 0.1
TASK = "digits"
# The paper's claim: better than both baselines with about 20 % less memory, i.e. the baseline is
# given 1 / 0.8 = 1.25 times mGRADE's memory.
CLAIM_RATIO = 1.25


@dataclass(frozen=True)
class Budget:
    name: str
    d_model: int
    span: int            # mGRADE's max_delay; the conv baseline gets span + 1

    def state_numbers(self) -> int:
        return N_LAYERS * self.d_model * self.span + self.d_model


# Widths and spans grow together, so that no family is pushed to a degenerate shape (a span of 1,
# or a width of 4) at either end. The pure minGRU stops at b3: its training time grows with its
# state (the log-space scan over d_hidden = d·D channels); at b4 one of its runs costs about as much
# as all the other runs of a seed together, at b5 twice that.
BUDGETS = (Budget("b1", 8, 6), Budget("b2", 16, 8), Budget("b3", 24, 12), Budget("b4", 40, 16),
           Budget("b5", 48, 24))
SKIP = {("recurrent", "b4"), ("recurrent", "b5")}


def taps_for(span: int) -> int:
    return max(2, round(span / 4))


def config(family: str, budget: Budget):
    """The model configuration of ``family`` at ``budget`` (all three hold the same streaming state)."""
    from hil.nn.zoo import ConvConfig, MGradeConfig, RecurrentConfig

    d, span = budget.d_model, budget.span
    if family == "mgrade":
        return MGradeConfig(d_model=d, n_layers=N_LAYERS, max_delay=span, taps=taps_for(span), dropout=DROPOUT)
    if family == "conv":
        return ConvConfig(d_model=d, n_layers=N_LAYERS, max_delay=span + 1, taps=taps_for(span + 1), dropout=DROPOUT)
    if family == "recurrent":
        return RecurrentConfig(d_model=d, n_layers=N_LAYERS, d_hidden=d * span, dropout=DROPOUT)
    raise ValueError(f"unknown family {family!r}")


def plan(families=None, budgets=None) -> list[tuple[str, Budget]]:
    """(family, budget) pairs of the sweep, optionally only some families or budgets."""
    return [(f, b) for b in BUDGETS for f in FAMILIES if (f, b.name) not in SKIP
            and (families is None or f in families) and (budgets is None or b.name in budgets)]


# ---------------------------------------------------------------- memory


def state_bytes(model) -> int:
    """Bytes of streaming state per sequence (batch 1, float32), as the model counts it."""
    return int(model.streaming_state_bytes())


def weight_bytes(model) -> int:
    """Bytes of the parameters stored as float32."""
    return 4 * int(model.parameter_count())


def memory(model) -> dict:
    s, w = state_bytes(model), weight_bytes(model)
    return {"parameters": int(model.parameter_count()), "state_bytes": s, "weight_bytes": w, "total_bytes": s + w}


# ---------------------------------------------------------------- statistics


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (memory, accuracy) no other point dominates: none has at most the memory
    and at least the accuracy, with one of the two strictly. Equal points do not dominate each other."""
    front = []
    for i, (m_i, a_i) in enumerate(points):
        dominated = any(m_j <= m_i and a_j >= a_i and (m_j < m_i or a_j > a_i)
                        for j, (m_j, a_j) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def at_memory(curve: list[tuple[float, list[float]]], memory_bytes: float) -> list[tuple[float, list[float]]] | None:
    """A family's accuracy at ``memory_bytes`` as terms for :func:`combination_interval`: the measured
    point itself, or the straight line in log memory between the two measured points around it.
    None outside the measured range (no extrapolation). ``curve`` is (memory, per-seed accuracies)."""
    curve = sorted(curve, key=lambda p: p[0])
    for (m0, a0), (m1, a1) in zip(curve, curve[1:]):
        if m0 <= memory_bytes <= m1:
            if m1 == m0:
                return [(1.0, a0)]
            w = (math.log(memory_bytes) - math.log(m0)) / (math.log(m1) - math.log(m0))
            return [(1.0 - w, a0), (w, a1)]
    if len(curve) == 1 and curve[0][0] == memory_bytes:
        return [(1.0, curve[0][1])]
    return None


# ---------------------------------------------------------------- results file


def load_results(path: Path) -> dict:
    return results_file.load(path, {"runs": {}})


def run_key(family: str, budget: str, seed: int) -> str:
    return f"{family}/{budget}/{seed}"


def train_one(family: str, budget: Budget, seed: int, epochs: int, data, on_epoch=None) -> dict:
    import torch

    from hil.nn.train import TrainConfig, train
    from hil.nn.zoo import build_model

    cfg = config(family, budget)
    torch.manual_seed(seed)
    model = build_model(cfg, data.d_input, data.n_classes, pool=data.pool)
    t0 = time.perf_counter()
    result = train(model, data, TrainConfig(epochs=epochs, seed=seed), on_epoch=on_epoch)
    return {"family": family, "budget": budget.name, "seed": seed, "epochs": epochs,
            "config": cfg.model_dump(), **memory(model),
            "best_epoch": result.best_epoch, "val_accuracy": result.best_val_accuracy,
            "test_accuracy": result.test_accuracy, "seconds": time.perf_counter() - t0,
            "val_history": [round(h.val_accuracy, 4) for h in result.history]}


def sweep(args) -> dict:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hil.nn.tasks import load_task

    torch.set_num_threads(args.threads)
    results = load_results(args.results)
    meta = {"task": TASK, "task_seed": 0, "epochs": args.epochs, "n_layers": N_LAYERS, "dropout": DROPOUT}
    if results.get("meta", meta) != meta:
        raise SystemExit(f"{args.results} holds runs of another setting ({results['meta']}); "
                         f"use another --results file for {meta}")
    results["meta"] = meta
    data = load_task(TASK, 0)
    # Seed-major order: an interrupted sweep has every family and budget at some seeds, not some at all.
    todo = [(f, b, s) for s in args.seeds for f, b in plan(args.families, args.budgets)]
    pending = []
    for family, budget, seed in todo:
        stored = results["runs"].get(run_key(family, budget.name, seed))
        if stored is None:
            pending.append((family, budget, seed))
        elif stored["config"] != config(family, budget).model_dump():
            raise SystemExit(f"{run_key(family, budget.name, seed)} in {args.results} was run with another "
                             "configuration; remove it or use another --results file")
    LOG.info("%d runs planned, %d already done, %d to run (%d epochs each)", len(todo), len(todo) - len(pending),
             len(pending), args.epochs)
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not sys.stderr.isatty()) as progress:
        overall = progress.add_task("sweep", total=len(pending))
        for n, (family, budget, seed) in enumerate(pending, 1):
            epochs_bar = progress.add_task(f"  {family} {budget.name} seed {seed}", total=args.epochs)
            record = train_one(family, budget, seed, args.epochs, data,
                               on_epoch=lambda stats, t=epochs_bar: progress.advance(t))
            progress.remove_task(epochs_bar)
            results["runs"][run_key(family, budget.name, seed)] = record
            results_file.save(args.results, results)
            progress.advance(overall)
            elapsed = time.perf_counter() - started
            LOG.info("run %d/%d: %s %s (state %d B, weights+state %d B) seed %d: test %.2f %% (val %.2f %%, "
                     "epoch %d) in %.0f s; %.0f s elapsed, about %.0f s to go", n, len(pending), family,
                     budget.name, record["state_bytes"], record["total_bytes"], seed,
                     100 * record["test_accuracy"], 100 * record["val_accuracy"], record["best_epoch"] + 1,
                     record["seconds"], elapsed, elapsed / n * (len(pending) - n))
    return results


# ---------------------------------------------------------------- report


@dataclass
class Cell:
    family: str
    budget: str
    state_bytes: int
    total_bytes: int
    parameters: int
    test: list[float]
    val: list[float]
    seconds: list[float]
    seeds: list[int]
    best_epochs: list[int]      # 1-based
    epochs: int
    histories: list[list[float]]    # validation accuracy per epoch, per seed

    def memory(self, axis: str) -> int:
        return self.state_bytes if axis == "state" else self.total_bytes


def cells(results: dict) -> list[Cell]:
    grouped: dict[tuple[str, str], list[dict]] = {}
    for record in results["runs"].values():
        grouped.setdefault((record["family"], record["budget"]), []).append(record)
    out = []
    order = {b.name: i for i, b in enumerate(BUDGETS)}
    for (family, budget), records in sorted(grouped.items(), key=lambda kv: (list(FAMILIES).index(kv[0][0]),
                                                                           order.get(kv[0][1], 99))):
        records.sort(key=lambda r: r["seed"])
        first = records[0]
        out.append(Cell(family, budget, first["state_bytes"], first["total_bytes"], first["parameters"],
                        [r["test_accuracy"] for r in records], [r["val_accuracy"] for r in records],
                        [r["seconds"] for r in records], [r["seed"] for r in records],
                        [r["best_epoch"] + 1 for r in records], first["epochs"],
                        [r["val_history"] for r in records]))
    return out


AXES = {"state": "streaming state", "total": "weights + state"}


def pct(mean: float, half: float) -> str:
    return f"{100 * mean:.1f}" if math.isnan(half) else f"{100 * mean:.1f} ± {100 * half:.1f}"


def points(group: list[Cell], axis: str) -> list[tuple[float, float]]:
    return [(c.memory(axis), float(np.mean(c.test))) for c in group]


def claim_verdict(equal: tuple[float, float] | None, more: tuple[float, float] | None) -> str:
    """The claim "better with 20 % less memory" at one mGRADE point against one baseline, from the
    differences (mGRADE minus baseline, 95 % half-width) at equal memory and at 1.25 times it.

    It holds when mGRADE is measurably better than the baseline given 25 % more memory. It fails when
    the baseline is measurably better at either memory (the baseline's best model within 1.25 times
    mGRADE's memory includes the one at equal memory). Otherwise the difference is not measurable."""
    said = {name: verdict(*d, "better", "worse") for name, d in (("equal", equal), ("more", more)) if d is not None}
    if not said:
        return "not covered (outside the baseline's measured range)"
    if any(v == "one seed: no interval" for v in said.values()):
        return "one seed: no interval"
    if said.get("more") == "better":
        return "holds" + ("" if "equal" in said else " (equal memory outside the baseline's range)")
    if said.get("equal") == "worse":
        return "fails: the baseline is better at equal memory"
    if said.get("more") == "worse":
        return "fails: the baseline with 25 % more memory is better"
    if "more" not in said:
        return ("better at equal memory; 1.25x is outside the baseline's range" if said["equal"] == "better"
                else "no measurable difference at equal memory; 1.25x is outside the baseline's range")
    if said.get("equal") == "better":
        return "no measurable difference (better at equal memory, not measurably against 25 % more)"
    return "no measurable difference"


def claim_rows(all_cells: list[Cell], axis: str) -> tuple[list[str], dict]:
    """Per mGRADE point and baseline: the difference at equal memory and against the baseline given
    1.25 times mGRADE's memory (log-linear between its measured points), with the claim's verdict."""
    rows, verdicts = [], {}
    for m in (c for c in all_cells if c.family == "mgrade"):
        memory_bytes = m.memory(axis)
        for base in ("conv", "recurrent"):
            curve = [(c.memory(axis), c.test) for c in all_cells if c.family == base]
            diffs = []
            for ratio in (1.0, CLAIM_RATIO):
                terms = at_memory(curve, ratio * memory_bytes)
                diffs.append(None if terms is None else
                             combination_interval([(1.0, m.test)] + [(-c, a) for c, a in terms]))
            word = verdicts[(m.budget, base)] = claim_verdict(*diffs)
            show = lambda d: "—" if d is None else f"{100 * d[0]:+.1f} ± {100 * d[1]:.1f}"  # noqa: E731
            rows.append(f"| {m.budget} | {memory_bytes:,} | {FAMILIES[base]} | {show(diffs[0])} | {show(diffs[1])} "
                        f"| {word} |")
    return rows, verdicts


def front_summary(all_cells: list[Cell], axis: str) -> tuple[list[int], list[str]]:
    """The Pareto front over every (family, budget) point by mean accuracy, and per mGRADE point off
    it, which point dominates it and whether the accuracy gap is measurable."""
    front = pareto_front(points(all_cells, axis))
    notes = []
    for i, c in enumerate(all_cells):
        if c.family != "mgrade":
            continue
        if i in front:
            # how firmly: against the most accurate baseline point that needs no more memory
            rivals = [d for d in all_cells if d.family != "mgrade" and d.memory(axis) <= c.memory(axis)]
            if not rivals:
                notes.append(f"{c.budget} on the front (no baseline point at or below its memory)")
                continue
            d = max(rivals, key=lambda r: np.mean(r.test))
            est, half = combination_interval([(1.0, c.test), (-1.0, d.test)])
            gap = verdict(est, half, "measurable", "measurable")
            notes.append(f"{c.budget} on the front (ahead of the best baseline at or below its memory, "
                         f"{FAMILIES[d.family]} {d.budget}, by {100 * est:+.1f} ± {100 * half:.1f} points: {gap})")
            continue
        dominators = [j for j, d in enumerate(all_cells) if j != i and d.memory(axis) <= c.memory(axis)
                      and np.mean(d.test) >= np.mean(c.test)]
        best = max(dominators, key=lambda j: np.mean(all_cells[j].test))
        d = all_cells[best]
        est, half = combination_interval([(1.0, d.test), (-1.0, c.test)])
        gap = verdict(est, half, "a measurable gap", "a measurable gap")
        notes.append(f"{c.budget} dominated by {FAMILIES[d.family]} {d.budget} "
                     f"({d.memory(axis):,} B, {100 * est:+.1f} ± {100 * half:.1f} points: {gap})")
    return front, notes


def short_verdict(word: str) -> str:
    """A verdict of :func:`claim_verdict` as the summary groups it."""
    if word.startswith(("holds", "fails", "not covered", "one seed")):
        return word.split(" (")[0].split(":")[0]
    if word.startswith("no measurable difference (better at equal memory"):
        return "better at equal memory only (no measurable difference against 25 % more)"
    return word.replace("; 1.25x is outside the baseline's range", " (1.25x not covered)")


def summary_sentences(all_cells: list[Cell], verdicts: dict, fronts: dict) -> list[str]:
    out = []
    budgets = [c.budget for c in all_cells if c.family == "mgrade"]
    for axis, label in AXES.items():
        front, _ = fronts[axis]
        on = [all_cells[i].budget for i in front if all_cells[i].family == "mgrade"]
        by_memory = sorted(front, key=lambda i: all_cells[i].memory(axis))
        members = ", ".join(f"{FAMILIES[all_cells[i].family]} {all_cells[i].budget} ({all_cells[i].memory(axis):,} B, "
                            f"{100 * np.mean(all_cells[i].test):.1f} %)" for i in by_memory)
        out.append(f"* Counting {label}: {len(on)} of {len(budgets)} mGRADE points lie on the Pareto front by "
                   f"mean accuracy ({', '.join(on) or 'none'}); the front is {members}.")
    for axis, label in AXES.items():
        both = [b for b in budgets if verdicts[axis].get((b, "conv"), "").startswith("holds")
                and verdicts[axis].get((b, "recurrent"), "").startswith("holds")]
        parts = []
        for base in ("conv", "recurrent"):
            by_word: dict[str, list[str]] = {}
            for b in budgets:
                by_word.setdefault(short_verdict(verdicts[axis][(b, base)]), []).append(b)
            parts.append(f"against the {FAMILIES[base]}: " + "; ".join(f"{w} at {', '.join(v)}"
                                                                     for w, v in by_word.items()))
        out.append(f"* \"Better than both with about 20 % less memory\", counting {label}: holds against both "
                   f"baselines at {', '.join(both) or 'no budget'}; " + "; ".join(parts) + ".")
    return out


def training_note(all_cells: list[Cell]) -> str:
    """How far from converged the runs are: a run whose last two epochs beat every earlier epoch on
    validation was still improving when training stopped, so its accuracy says how fast it learns as
    much as what its memory can hold."""
    parts = []
    for family, name in FAMILIES.items():
        group = [c for c in all_cells if c.family == family]
        late = sum(len(h) > 2 and max(h[-2:]) > max(h[:-2]) for c in group for h in c.histories)
        runs = sum(len(c.histories) for c in group)
        # 10 classes: chance is 10 %; a run whose best validation epoch stays under twice that never learned
        stuck = sum(max(h) < 0.2 for c in group for h in c.histories)
        if runs:
            best = max(float(np.mean(c.test)) for c in group)
            parts.append(f"{name} {late} of {runs} still improving, {stuck} of {runs} never above 20 % on validation "
                         f"(best mean test accuracy {100 * best:.1f} %)")
    return ("* Training budget: runs still improving when training stopped (their last two epochs beat every "
            "earlier one on validation), and runs that never learned (chance is 10 %): " + "; ".join(parts)
            + ". Where those are many, the accuracies compare how far each family gets in this many epochs, "
            "not what its memory could hold once converged, and every verdict above is conditional on that budget.")


def write_report(results: dict, md_path: Path, png_path: Path, command: str, results_path: Path) -> list[str]:
    """Write the report and its figure; return the summary that docs/results.md carries."""
    all_cells = cells(results)
    meta = results.get("meta", {})
    seeds = sorted({r["seed"] for r in results["runs"].values()})
    lines = ["# Equal-memory sweep: mGRADE against pure delay convolution and pure minGRU", "",
             f"Generated by `{command}` from `{results_path.name}` "
             f"({len(results['runs'])} runs). Task `{meta.get('task', TASK)}` (scikit-learn 8x8 digits read "
             "pixel by pixel: 64 steps, 1 feature), fixed split of task seed 0: 1,259 train / 179 validation / "
             "359 test sequences (one test sequence is 0.28 points). "
             f"Seeds {', '.join(map(str, seeds))} (initialisation, dropout and batch order); "
             f"{meta.get('epochs', '?')} epochs of AdamW (lr 1e-2, cosine, batch 64), {N_LAYERS} layers, dropout "
             f"{DROPOUT}. Each run keeps the weights of its best validation epoch (model selection on the "
             "validation split) and is evaluated once on the test split; the accuracies below are test "
             "accuracies, mean over seeds ± half-width of the 95 % t-interval.", "",
             "Budgets: d_model d and span D per budget; mGRADE has delay convolutions of span D and a minGRU "
             "of d_hidden = d, the pure delay conv a span of D + 1, the pure minGRU d_hidden = d·D, so all "
             "three carry exactly d·(2D + 1) numbers of streaming state. Streaming state: the bytes a step "
             "form keeps between steps (float32, batch 1): delay buffers, minGRU states, pooled features. "
             "Weights + state adds the parameters as float32.", "",
             "| family | budget (d, D) | parameters | streaming state (B) | weights + state (B) | "
             "test accuracy (%) | best validation (%) | best epoch per seed | train time per run |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    spans = {b.name: b for b in BUDGETS}
    for c in all_cells:
        b = spans.get(c.budget)
        shape = f"{c.budget} ({b.d_model}, {b.span})" if b else c.budget
        lines.append(f"| {FAMILIES[c.family]} | {shape} | {c.parameters:,} | {c.state_bytes:,} | "
                     f"{c.total_bytes:,} | {pct(*interval(c.test))} | {pct(*interval(c.val))} | "
                     f"{', '.join(map(str, c.best_epochs))} of {c.epochs} | "
                     f"{np.mean(c.seconds):.0f} s |")
    skipped = [f"{FAMILIES[f]} {b}" for f, b in sorted(SKIP)]
    if skipped:
        lines += ["", f"Not run: {', '.join(skipped)} (its training time grows with its recurrent state: at b4 one "
                  "run costs about as much as all the other runs of a seed together)."]
    verdicts, fronts = {}, {}
    for axis, label in AXES.items():
        fronts[axis] = front_summary(all_cells, axis)
        rows, verdicts[axis] = claim_rows(all_cells, axis)
        lines += ["", f"## mGRADE against each baseline, memory counted as {label}", "",
                  "Differences in test accuracy (points, mGRADE minus baseline, 95 % Welch interval) against the "
                  "baseline at mGRADE's memory and at 1.25 times it (mGRADE with 20 % less memory). Between "
                  "measured points a baseline's accuracy is interpolated linearly in log memory (its interval "
                  "from both points); outside its measured range nothing is claimed. Intervals are per "
                  "comparison, not corrected for the number of comparisons."
                  + (" All families share the budgets, so the equal-memory column compares measured points."
                     if axis == "state" else ""), "",
                  "| mGRADE point | its memory (B) | baseline | at equal memory | baseline at 1.25x | verdict |",
                  "|---|---:|---|---:|---:|---|", *rows, "",
                  f"Pareto front ({label}, by mean accuracy): "
                  + "; ".join(fronts[axis][1]) + "."]
    reading = [*summary_sentences(all_cells, verdicts, fronts), training_note(all_cells), "",
               f"![accuracy against memory]({png_path.name})", ""]
    lines += ["", "## Reading", "", *reading]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines), encoding="utf-8")
    plot(all_cells, fronts, png_path)
    seeds_said = ", ".join(map(str, seeds))
    return [f"`{command}` ([{md_path.name}]({md_path.name}): every run, the differences per budget and the Pareto "
            f"fronts): mGRADE, the pure delay convolution and the pure minGRU at five equal budgets of streaming "
            f"state, {meta.get('epochs', '?')} epochs, seeds {seeds_said}, test split once after selection on "
            "validation.", "", *reading]


DODGE = {"mgrade": 1.0, "conv": 0.95, "recurrent": 1.05}


def byte_label(value: float, _position=None) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g} MB"
    return f"{value / 1e3:g} kB" if value >= 1e3 else f"{value:g} B"


def plot(all_cells: list[Cell], fronts: dict, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    style = {"mgrade": ("tab:red", "o"), "conv": ("tab:blue", "s"), "recurrent": ("tab:green", "^")}
    fig, panels = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, (axis, label) in zip(panels, AXES.items()):
        for family, name in FAMILIES.items():
            group = [c for c in all_cells if c.family == family]
            if not group:
                continue
            stats = [interval(c.test) for c in group]
            # the families share the state budgets: spread them a little sideways so none hides another
            x = [c.memory(axis) * (DODGE[family] if axis == "state" else 1.0) for c in group]
            y = [100 * s[0] for s in stats]
            err = [0 if math.isnan(s[1]) else 100 * s[1] for s in stats]
            color, marker = style[family]
            ax.errorbar(x, y, yerr=err, color=color, marker=marker, capsize=3, label=name, lw=1.2)
            for c, xi, yi in zip(group, x, y):
                ax.annotate(c.budget, (xi, yi), textcoords="offset points", xytext=(4, -11), fontsize=7, color=color)
        front = sorted(fronts[axis][0], key=lambda i: all_cells[i].memory(axis))
        fx = [all_cells[i].memory(axis) * (DODGE[all_cells[i].family] if axis == "state" else 1.0) for i in front]
        fy = [100 * float(np.mean(all_cells[i].test)) for i in front]
        ax.step(fx, fy, where="post", color="black", ls="--", lw=1, label="Pareto front (means)")
        ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1.2, zorder=5)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(byte_label))
        ax.xaxis.set_minor_formatter(NullFormatter())
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.0), min(high, 100.0))
        offset = ": families offset sideways by 5 %" if axis == "state" else ""
        ax.set_xlabel(f"{label} (float32, log scale){offset}")
        ax.set_title(f"test accuracy against {label}")
        ax.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel("test accuracy (%), mean ± 95 % t-interval")
    panels[1].legend(loc="lower right", fontsize=8)    # the one corner both panels leave empty
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=130)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), help="run only these families")
    parser.add_argument("--budgets", nargs="+", choices=[b.name for b in BUDGETS], help="run only these budgets")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "memory_sweep.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "memory_sweep.md")
    parser.add_argument("--figure", type=Path, default=None, help="default: --out with .png")
    parser.add_argument("--table-only", action="store_true", help="write the table and figure from the results file")
    parser.add_argument("--no-splice", action="store_true",
                        help="leave docs/results.md alone (by default its section of this sweep is rewritten)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
                        stream=sys.stdout)
    if args.table_only:
        results = load_results(args.results)
        if not results["runs"]:
            raise SystemExit(f"no runs in {args.results}")
    else:
        results = sweep(args)
    epochs = results.get("meta", {}).get("epochs", args.epochs)
    seeds = " ".join(map(str, sorted({r["seed"] for r in results["runs"].values()})))
    command = f"python scripts/memory_sweep.py --epochs {epochs} --seeds {seeds}"
    figure = args.figure or args.out.with_suffix(".png")
    summary = write_report(results, args.out, figure, command, args.results)
    if not args.no_splice:
        results_file.splice(ROOT / "docs" / "results.md", "memory_sweep", "\n".join(summary))
    LOG.info("wrote %s and %s", args.out, figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
