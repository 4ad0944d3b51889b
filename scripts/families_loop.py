"""The mGRADE loop (protocols/mgrade_loop.yaml) on each device family of the software crossbar, over several chips.

    python scripts/families_loop.py [--out docs/families_loop.md] [--families rram pcm vcm pessimistic]
                                    [--chips 0 1 2]

For each family and chip the shipped protocol is run as it is, except for its ``mock`` seed (the chip),
the training seed of both models (the same as the chip's, so chips and training seeds vary together),
its ``mock.device`` (the family, and the pessimistic preset of the default family) and its calibration
levels, which are left to the measured window (the protocol's 5-80 uS do not fit a 25 uS PCM window).
Both models are deployed on the same chip in one run, so the noise-aware minus plain difference is
paired per chip. Each chip's array accuracy is the mean over the protocol's 4 programmings; the table
gives means over chips with 95 % t-intervals, on the test split (359 sequences: one is 0.28 points).
"""

from __future__ import annotations

import argparse
import fcntl
import json
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
from hil.intervals import interval, verdict  # noqa: E402
from db.models import Run  # noqa: E402

FAMILIES = {"rram": {}, "pcm": {"family": "pcm"}, "vcm": {"family": "vcm"},
            "pessimistic": {"family": "rram", "preset": "pessimistic"}}


def variant(device: dict, chip: int) -> str:
    protocol = yaml.safe_load((ROOT / "protocols" / "mgrade_loop.yaml").read_text(encoding="utf-8"))
    protocol["mock"] = {"seed": chip, "device": device}
    programming = protocol["steps"][0]["programming"]
    programming.pop("g_low_s", None)
    programming.pop("g_high_s", None)
    for step in protocol["steps"]:
        if step["kind"] == "train":
            step["seed"] = chip
    return yaml.safe_dump(protocol, sort_keys=False)


def fmt(values, scale: float = 100.0) -> str:
    mean, half = interval(values)
    return f"{scale * mean:.2f}" if np.isnan(half) else f"{scale * mean:.2f} ± {scale * half:.2f}"


def run_one(family: str, chip: int, work: Path) -> dict:
    """One run of the loop; per model: digital accuracy, array accuracy at t = 0 (mean over programmings)
    and after a day with drift compensation."""
    path = work / f"mgrade_loop_{family}_{chip}.yaml"
    path.write_text(variant(FAMILIES[family], chip), encoding="utf-8")
    url = f"sqlite:///{work / f'{family}_{chip}.db'}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hil.run", str(path), "--db", url,
                           "--report-dir", str(work / "reports")], cwd=ROOT, capture_output=True, text=True)
    print(f"{family} chip {chip}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s", flush=True)
    with Database(url) as db, db.session() as session:
        run = session.query(Run).one()
        inferences = records.run_inferences(session, run.id)
        out = {"status": run.status, "error": run.error}
    for model in ("mgrade_plain", "mgrade_aware"):
        mine = [r for r in inferences if r["checkpoint"] and r["checkpoint"].endswith(model)]
        at_zero = [r["crossbar_accuracy"] for r in mine if r["time_s"] == 0]
        day = [r["crossbar_accuracy"] for r in mine if r["time_s"] == 86400 and r["drift_compensation"]]
        if at_zero:
            out[model] = {"digital": mine[0]["digital_accuracy"], "array": float(np.mean(at_zero)),
                          "day": day[0] if day else float("nan")}
    return out


def load_results(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def store_result(path: Path, key: str, result: dict) -> dict:
    """Add one run to the results file under a lock: sweeps of other families may write it meanwhile."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = load_results(path)
        stored[key] = result
        path.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "families_loop.md")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--chips", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "families_loop.json",
                        help="each run's figures, kept so that an interrupted sweep, or sweeps of different families "
                             "in parallel processes, add up; a run already there is not repeated")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from the results file; run nothing (chips without a run are left out)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family in args.families:
            runs = []
            for chip in args.chips:
                key = f"{family}/{chip}"
                stored = load_results(args.results)
                if key not in stored:
                    if args.table_only:
                        continue
                    result = run_one(family, chip, work)
                    stored = store_result(args.results, key, result)
                runs.append((chip, stored[key]))
            if not runs:
                continue
            done = [r for _, r in runs if "mgrade_plain" in r and "mgrade_aware" in r]
            failed = [f"chip {c}: {r['status']} {r['error'] or ''}"[:100] for c, r in runs if r not in done]
            if not done:
                rows.append((family, "", "", "", "", "", "", "; ".join(failed)))
                continue
            get = {m: {k: [r[m][k] for r in done] for k in ("digital", "array", "day")}
                   for m in ("mgrade_plain", "mgrade_aware")}
            plain, aware = get["mgrade_plain"], get["mgrade_aware"]
            paired = np.array(aware["array"]) - np.array(plain["array"])
            said = verdict(*interval(paired), "aware better", "plain better", unit="chip")
            rows.append((family, f"{len(done)}", f"{fmt(plain['digital'])} / {fmt(aware['digital'])}",
                         fmt(plain["array"]), fmt(aware["array"]), f"{fmt(paired)} ({said})",
                         f"{fmt(plain['day'])} / {fmt(aware['day'])}", "; ".join(failed) or "all completed"))
    stored = load_results(args.results)
    chips = ", ".join(sorted({key.split("/")[1] for key in stored if key.split("/")[0] in args.families}))
    lines = ["# The mGRADE loop on each device family", "",
             f"`python scripts/families_loop.py --chips {chips}`: protocols/mgrade_loop.yaml per family and chip "
             "(mock seed = training seed = chip; calibration levels from the measured window). The noise-aware "
             "model is retrained from the plain one against the chip's fitted noise model; both are deployed on "
             "the same chip, so their difference is paired. Array accuracies are means over 4 programmings per "
             "chip; the table gives the mean over chips ± the half-width of the 95 % t-interval (test split, "
             "359 sequences).", "",
             "| family | chips | digital plain / aware (%) | array plain (%) | array aware (%) | aware − plain "
             "(points) | after 1 day, compensated: plain / aware (%) | runs |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
