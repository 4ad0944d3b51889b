"""30 days of drift, kept in check by the maintain step: accuracy on the array over time, and the cells rewritten.

    python scripts/maintenance_30days.py [--programmings 0 1 2] [--table-only]

protocols/maintain_30days.yaml (the default array, mock seed 0) run once per programming (``--seed`` of the
run: the same chip, another draw of programming and read noise). Each run calibrates, trains, deploys and
maintains the deployment for 30 days, running the test split on the array weekly and at day 30. The table
gives, per day, the accuracy averaged over the programmings (each over the whole test split), its paired
difference from day 0 with a 95 % t-interval over programmings, and the share of the deployment's cells
rewritten in the week before.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db import Database  # noqa: E402
from db.models import Run  # noqa: E402
from hil import results_file  # noqa: E402
from protocol_runs import run_protocol  # noqa: E402
from hil.intervals import interval, verdict  # noqa: E402

PROTOCOL = ROOT / "protocols" / "maintain_30days.yaml"


def run_one(seed: int, work: Path) -> dict:
    t0 = time.perf_counter()
    url = run_protocol(PROTOCOL, work, f"maintain_{seed}", "--seed", str(seed))
    with Database(url) as db, db.session() as session:
        run = session.query(Run).one()
        out = {"status": run.status, "error": run.error, "seconds": time.perf_counter() - t0}
        maintain = next((s for s in run.steps if s.kind == "maintain" and s.summary), None)
        if maintain is not None:
            summary = maintain.summary
            out.update(evaluations=[{k: e[k] for k in ("time_s", "crossbar_accuracy", "digital_accuracy", "samples")
                                     if k in e} for e in summary["evaluations"]],
                       rewritten_per_week=summary["cells_rewritten_per_week"], cells=summary["cells"],
                       cost=summary["cost"],
                       actions={kind: sum(a["kind"] == kind for a in summary["actions"])
                                for kind in ("compensate", "rewrite")})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programmings", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "maintenance_30days.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "maintenance_30days.md")
    parser.add_argument("--table-only", action="store_true", help="write the table from the results file; run nothing")
    parser.add_argument("--no-splice", action="store_true", help="leave docs/results.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.programmings:
            if args.table_only or str(seed) in (results_file.load(args.results) or {}):
                continue
            results_file.store(args.results, str(seed), run_one(seed, Path(tmp)))
    stored = results_file.load(args.results) or {}
    done = {k: r for k, r in sorted(stored.items(), key=lambda kv: int(kv[0])) if r.get("evaluations")}
    if not done:
        print("no completed runs")
        return 1
    days = [round(e["time_s"] / 86400, 2) for e in next(iter(done.values()))["evaluations"]]
    acc = np.array([[e["crossbar_accuracy"] for e in r["evaluations"]] for r in done.values()])   # (runs, days)
    samples = next(iter(done.values()))["evaluations"][0].get("samples", 0)
    weekly = np.array([r["rewritten_per_week"] for r in done.values()])
    lines = ["# Thirty days of drift with the maintain step", "",
             f"`python scripts/maintenance_30days.py --programmings {' '.join(done)}`: protocols/maintain_30days.yaml "
             f"on the default array (chip 0), {len(done)} programmings (run seeds {', '.join(done)}); the test split "
             f"({samples} sequences) on the array at each day, so each row averages {len(done) * samples:,} "
             "sequence evaluations. Differences from day 0 are paired per programming (95 % t-intervals).", "",
             "| day | accuracy on the array (%) | − day 0 (points) | cells rewritten in the week before (% of the "
             "deployment) |", "|---:|---:|---:|---:|"]
    for j, day in enumerate(days):
        mean, half = interval(acc[:, j])
        diff = acc[:, j] - acc[:, 0]
        d_mean, d_half = interval(diff)
        week = int(np.ceil(day / 7)) - 1
        rewritten = "" if j == 0 or week >= weekly.shape[1] else f"{100 * weekly[:, week].mean():.2f}"
        said = "" if j == 0 else f" ({verdict(d_mean, d_half, 'better', 'worse', unit='programming')})"
        lines.append(f"| {day:g} | {100 * mean:.2f} ± {100 * half:.2f} | "
                     f"{'' if j == 0 else f'{100 * d_mean:+.2f} ± {100 * d_half:.2f}{said}'} | {rewritten} |")
    actions = {k: sum(r["actions"][k] for r in done.values()) for k in ("compensate", "rewrite")}
    lines += ["", f"Over the {len(done)} runs: {actions['compensate']} re-compensations and {actions['rewrite']} "
              f"rewrites; {np.mean([r['cost']['cells_written'] for r in done.values()]):,.0f} cells written per run "
              f"of {next(iter(done.values()))['cells']:,}."]
    failed = [f"seed {k}: {r['status']} {r.get('error') or ''}"[:120] for k, r in stored.items() if k not in done]
    if failed:
        lines += ["", "Runs without results: " + "; ".join(failed)]
    results_file.publish(lines, args.out, ROOT / "docs" / "results.md", "maintenance_30days",
                         splice_it=not args.no_splice)
    return 0


if __name__ == "__main__":
    sys.exit(main())
