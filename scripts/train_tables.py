"""The training tables of docs/results.md: the train protocols over several training seeds.

    python scripts/train_tables.py [--tasks digits mnist1d] [--seeds 0 1 2 3 4] [--table-only]
                                   [--results docs/train_tables.json] [--out docs/train_tables.md] [--no-splice]

Each protocol (protocols/train_digits.yaml, protocols/train_mnist1d.yaml) is run as it is with
``python -m hil.run``, once per seed, with every train step's ``seed`` set to that seed; the data split
stays the protocol's (task seed 0), so the seed varies initialisation, dropout and batch order only.
A train step keeps the weights of its best validation epoch and evaluates the test split once, on
those weights (:func:`hil.nn.train.train`); the table gives both. Means over seeds with 95 %
t-intervals; two variants trained from the same seed (float and ternary S4D) are compared paired,
different models with Welch's interval. Each finished run is written to the results file at once, so
an interrupted sweep resumes where it stopped, and two processes may run different tasks in parallel.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db import Database, records  # noqa: E402
from db.models import Run  # noqa: E402
from hil import results_file  # noqa: E402
from hil.intervals import combination_interval, interval, verdict  # noqa: E402

PROTOCOLS = {"digits": "train_digits.yaml", "mnist1d": "train_mnist1d.yaml"}
TITLES = {"digits": "Sequential 8x8 digits (64 steps, 1 feature; 359 test sequences)",
          "mnist1d": "MNIST-1D (40 steps; 1,000 test sequences)"}
# What a reader needs beside a table.
NOTES = {"mnist1d": "Published reference accuracies on MNIST-1D: GRU 91 %, CNN 94 %, human 96 % (Greydanus 2020), "
                    "for that paper's own models, sizes and training budgets: not a like-for-like comparison.",
         "digits": "The ternary rows quantise the dense layers (encoder, output linears, decoder) to three levels and "
                   "keep the S4D recurrence in float; they are evaluated digitally, not on an array."}
# Comparisons each table ends with: (task, a, b, paired). Paired where both come from the same seed's
# initialisation and batch order; otherwise two independent samples.
COMPARISONS = [("digits", "s4d_ternary", "s4d_float", True),
               ("digits", "mgrade_float", "s4d_float", False),
               ("mnist1d", "mgrade", "s4d", False)]


def protocol_text(task: str) -> str:
    return (ROOT / "protocols" / PROTOCOLS[task]).read_text(encoding="utf-8")


def protocol_digest(task: str) -> str:
    """What a stored run was made from: runs of an edited protocol are not mixed with older ones."""
    return hashlib.sha256(protocol_text(task).encode()).hexdigest()[:16]


def variant(task: str, seed: int) -> str:
    protocol = yaml.safe_load(protocol_text(task))
    for step in protocol["steps"]:
        if step["kind"] == "train":
            step["seed"] = seed
    return yaml.safe_dump(protocol, sort_keys=False)


def run_one(task: str, seed: int, work: Path) -> dict:
    """One run of the protocol at one seed; per train step the figures its checkpoint stored."""
    path = work / f"{task}_{seed}.yaml"
    path.write_text(variant(task, seed), encoding="utf-8")
    url = f"sqlite:///{work / f'{task}_{seed}.db'}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hil.run", str(path), "--db", url,
                           "--report-dir", str(work / "reports"), "--log", str(work / f"{task}_{seed}.log")],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"{task} seed {seed}: hil.run exited {proc.returncode}: {tail[0]}")
    protocol = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = {"protocol_digest": protocol_digest(task), "seconds": time.perf_counter() - t0, "steps": {}}
    with Database(url) as db, db.session() as session:
        out["status"] = session.query(Run).one().status
        for step in protocol["steps"]:
            if step["kind"] != "train":
                continue
            checkpoint = records.latest_checkpoint(session, f"{protocol['name']}.{step['name']}")
            m = checkpoint.metrics
            out["steps"][step["name"]] = {
                "test": m["test_accuracy"], "val": m["best_val_accuracy"], "best_epoch": m["best_epoch"] + 1,
                "epochs": step["epochs"], "train_seconds": m["train_seconds"], "parameters": m["parameters"],
                "state_bytes": m["state_bytes"], "reproducible_with": m.get("reproducible_with")}
    return out


def describe(step: dict) -> tuple[str, str]:
    """The model column and the weights column of a train step."""
    m = step["model"]
    if m["kind"] == "s4d":
        model = f"S4D, H={m['d_model']}, N={m['d_state']}, {m['n_layers']} layers"
    else:
        model = (f"mGRADE, d={m['d_model']}, {m['n_layers']} layers, max delay {m['max_delay']}, "
                 f"{m['taps']} taps")
    if m.get("dropout"):
        model += f", dropout {m['dropout']}"
    model += f", {step['epochs']} epochs"
    weights = (step.get("analog") or {}).get("weights", "float")
    if weights == "ternary":
        weights = "ternary dense layers, float recurrence (evaluated digitally)"
    return model, weights


def numerics_label(numerics: dict | None) -> str:
    if not numerics:
        return "unrecorded numerics"
    threads = numerics.get("threads")
    return (f"{threads} thread{'s' if threads != 1 else ''}, torch {numerics.get('torch')}, "
            f"CPU capability {numerics.get('cpu_capability')}")


def pct(values) -> str:
    mean, half = interval(values)
    return f"{100 * mean:.2f}" if np.isnan(half) else f"{100 * mean:.2f} ± {100 * half:.2f}"


def table(task: str, runs: dict[int, dict]) -> list[str]:
    protocol = yaml.safe_load(protocol_text(task))
    seeds = sorted(runs)
    lines = [f"## {TITLES[task]}", "",
             f"`python scripts/train_tables.py --tasks {task} --seeds {' '.join(map(str, seeds))}`: "
             f"protocols/{PROTOCOLS[task]} at training seeds {', '.join(map(str, seeds))} (data split fixed). "
             "Accuracies in %: mean over seeds ± half-width of the 95 % t-interval; validation at the selected "
             "epoch, test once on its weights.", "",
             "| model | weights | parameters | streaming state (B) | validation | test | best epoch | train time |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for step in protocol["steps"]:
        if step["kind"] != "train":
            continue
        got = [runs[s]["steps"][step["name"]] for s in seeds]
        model, weights = describe(step)
        epochs = [g["best_epoch"] for g in got]
        lines.append(f"| {model} | {weights} | {got[0]['parameters']:,} | {got[0]['state_bytes']:,} | "
                     f"{pct([g['val'] for g in got])} | {pct([g['test'] for g in got])} | "
                     f"{min(epochs)}{'' if min(epochs) == max(epochs) else f'-{max(epochs)}'} | {np.mean([g['train_seconds'] for g in got]):.0f} s |")
    lines.append("")
    for task_of, a, b, paired in COMPARISONS:
        if task_of != task:
            continue
        xa = np.array([runs[s]["steps"][a]["test"] for s in seeds])
        xb = np.array([runs[s]["steps"][b]["test"] for s in seeds])
        if paired:
            est, half = interval(xa - xb)
            how = "paired by seed"
        else:
            est, half = combination_interval([(1.0, list(xa)), (-1.0, list(xb))])
            how = "Welch"
        said = verdict(est, half, f"{a} better", f"{b} better")
        spread = "" if np.isnan(half) else f" ± {100 * half:.2f}"
        lines.append(f"* {a} − {b}, test: {100 * est:+.2f}{spread} points ({how}; {said}).")
    if task in NOTES:
        lines.append(f"* {NOTES[task]}")
    numerics = {numerics_label(runs[s]["steps"][n].get("reproducible_with")) for s in seeds for n in runs[s]["steps"]}
    lines.append(f"* Every run trained at {', '.join(sorted(numerics))}.")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "train_tables.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "train_tables.md")
    parser.add_argument("--table-only", action="store_true",
                        help="write the tables from the results file; run nothing")
    parser.add_argument("--no-splice", action="store_true",
                        help="leave docs/results.md alone (by default its section of these tables is rewritten)")
    args = parser.parse_args()
    todo = [(t, s) for t in args.tasks for s in args.seeds]
    stored = results_file.load(args.results)
    pending = [(t, s) for t, s in todo if stored.get(f"{t}/{s}", {}).get("protocol_digest") != protocol_digest(t)]
    if not args.table_only:
        print(f"{len(todo)} runs planned, {len(todo) - len(pending)} already in {args.results}, "
              f"{len(pending)} to run", flush=True)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for n, (task, seed) in enumerate(pending, 1):
                result = run_one(task, seed, Path(tmp))
                stored = results_file.store(args.results, f"{task}/{seed}", result)
                elapsed = time.perf_counter() - started
                tests = ", ".join(f"{k} {100 * v['test']:.2f}" for k, v in result["steps"].items())
                print(f"run {n}/{len(pending)}: {task} seed {seed} in {result['seconds']:.0f} s ({tests}); "
                      f"about {elapsed / n * (len(pending) - n) / 60:.0f} min to go", flush=True)
    # The report covers every task with runs in the file, not only those run now.
    lines = ["# Training tables", ""]
    for task in PROTOCOLS:
        runs = {int(k.split("/")[1]): v for k, v in stored.items()
                if k.split("/")[0] == task and v.get("protocol_digest") == protocol_digest(task)}
        if runs:
            lines += table(task, runs) + [""]
    results_file.publish(lines, args.out, ROOT / "docs" / "results.md", "train_tables", splice_it=not args.no_splice)
    return 0


if __name__ == "__main__":
    sys.exit(main())
