"""A loop protocol (protocols/mgrade_loop.yaml or s4d_loop.yaml) on each device family of the software crossbar,
over several chips.

    python scripts/families_loop.py [--protocol mgrade_loop] [--families rram pcm vcm pessimistic]
                                    [--chips 0 1 2] [--out docs/families_loop.md] [--table-only]

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
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db import Database, records  # noqa: E402
from db.models import Run  # noqa: E402
from hil import results_file  # noqa: E402
from protocol_runs import run_protocol  # noqa: E402
from hil.intervals import interval, verdict  # noqa: E402

# Per protocol: its results file, its report, the section of docs/results.md it rewrites, and its model.
OUTPUTS = {"mgrade_loop": ("families_loop.json", "families_loop.md", "families_loop", "mGRADE"),
           "s4d_loop": ("families_loop_s4d.json", "families_loop_s4d.md", "families_loop_s4d", "S4D")}

FAMILIES = {"rram": {}, "pcm": {"family": "pcm"}, "vcm": {"family": "vcm"},
            "pessimistic": {"family": "rram", "preset": "pessimistic"}}


def load_protocol(name: str) -> dict:
    return yaml.safe_load((ROOT / "protocols" / f"{name}.yaml").read_text(encoding="utf-8"))


def models_of(protocol: dict) -> tuple[str, str]:
    """The names of the protocol's plain and noise-aware train steps, in that order."""
    trained = [step["name"] for step in protocol["steps"] if step["kind"] == "train"]
    plain = [n for n in trained if n.endswith("plain")]
    aware = [n for n in trained if n.endswith("aware")]
    if len(plain) != 1 or len(aware) != 1:
        raise SystemExit(f"{protocol['name']}: expected one train step named *plain and one *aware, found {trained}")
    return plain[0], aware[0]


def how_aware(protocol: dict, plain: str, aware: str) -> str:
    step = next(s for s in protocol["steps"] if s["name"] == aware)
    if (step.get("init") or {}).get("from_step") == plain:
        return f"retrained from the plain one for {step['epochs']} epochs"
    return f"trained, like the plain one, from scratch for {step['epochs']} epochs,"


def variant(protocol_name: str, device: dict, chip: int) -> str:
    protocol = load_protocol(protocol_name)
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


def run_one(protocol_name: str, family: str, chip: int, work: Path) -> dict:
    """One run of the loop; per model: digital accuracy, array accuracy at t = 0 (mean over programmings)
    and after a day with drift compensation."""
    path = work / f"{protocol_name}_{family}_{chip}.yaml"
    path.write_text(variant(protocol_name, FAMILIES[family], chip), encoding="utf-8")
    url = run_protocol(path, work, f"{family}_{chip}")
    with Database(url) as db, db.session() as session:
        run = session.query(Run).one()
        inferences = records.run_inferences(session, run.id)
        out = {"status": run.status, "error": run.error}
    for model in models_of(load_protocol(protocol_name)):
        mine = [r for r in inferences if r["checkpoint"] and r["checkpoint"].endswith(model)]
        at_zero = [r["crossbar_accuracy"] for r in mine if r["time_s"] == 0]
        day = [r["crossbar_accuracy"] for r in mine if r["time_s"] == 86400 and r["drift_compensation"]]
        if at_zero:
            out[model] = {"digital": mine[0]["digital_accuracy"], "array": float(np.mean(at_zero)),
                          "day": day[0] if day else float("nan")}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="mgrade_loop", choices=list(OUTPUTS))
    parser.add_argument("--out", type=Path, default=None, help="the report (default docs/families_loop[_s4d].md)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--chips", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=None,
                        help="(default docs/families_loop[_s4d].json) each run's figures, kept so that an interrupted sweep, or sweeps of different families "
                             "in parallel processes, add up; a run already there is not repeated")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from the results file; run nothing (chips without a run are left out)")
    parser.add_argument("--no-splice", action="store_true",
                        help="leave docs/results.md alone (by default its section of this table is rewritten)")
    args = parser.parse_args()
    results_name, report_name, section, model_label = OUTPUTS[args.protocol]
    args.results = args.results or ROOT / "docs" / results_name
    args.out = args.out or ROOT / "docs" / report_name
    plain_name, aware_name = models_of(load_protocol(args.protocol))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family in args.families:
            runs = []
            for chip in args.chips:
                key = f"{family}/{chip}"
                stored = results_file.load(args.results)
                if key not in stored:
                    if args.table_only:
                        continue
                    result = run_one(args.protocol, family, chip, work)
                    stored = results_file.store(args.results, key, result)
                runs.append((chip, stored[key]))
            if not runs:
                continue
            done = [r for _, r in runs if plain_name in r and aware_name in r]
            failed = [f"chip {c}: {r['status']} {r['error'] or ''}"[:100] for c, r in runs if r not in done]
            if not done:
                rows.append((family, "", "", "", "", "", "", "", "; ".join(failed)))
                continue
            get = {m: {k: [r[m][k] for r in done] for k in ("digital", "array", "day")}
                   for m in (plain_name, aware_name)}
            plain, aware = get[plain_name], get[aware_name]
            paired = np.array(aware["array"]) - np.array(plain["array"])
            said = verdict(*interval(paired), "aware better", "plain better", unit="chip")
            paired_day = np.array(aware["day"]) - np.array(plain["day"])
            said_day = verdict(*interval(paired_day), "aware better", "plain better", unit="chip")
            rows.append((family, f"{len(done)}", f"{fmt(plain['digital'])} / {fmt(aware['digital'])}",
                         fmt(plain["array"]), fmt(aware["array"]), f"{fmt(paired)} ({said})",
                         f"{fmt(plain['day'])} / {fmt(aware['day'])}", f"{fmt(paired_day)} ({said_day})",
                         "; ".join(failed) or "all completed"))
    stored = results_file.load(args.results)
    chips = " ".join(sorted({key.split("/")[1] for key in stored if key.split("/")[0] in args.families}, key=int))
    lines = [f"# The {model_label} loop on each device family", "",
             f"`python scripts/families_loop.py --protocol {args.protocol} --chips {chips}`: "
             f"protocols/{args.protocol}.yaml per family and chip "
             "(mock seed = training seed = chip; calibration levels from the measured window). The noise-aware "
             f"model is {how_aware(load_protocol(args.protocol), plain_name, aware_name)} against the chip's "
             "fitted noise model; both are deployed on the same chip, so their difference is paired. Array accuracies are means over 4 programmings per "
             "chip; the table gives the mean over chips ± the half-width of the 95 % t-interval (test split, "
             "359 sequences).", "",
             "| family | chips | digital plain / aware (%) | array plain (%) | array aware (%) | aware − plain "
             "(points) | after 1 day, compensated: plain / aware (%) | aware − plain after 1 day (points) | runs |",
             "|---|---|---:|---:|---:|---|---:|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    results_file.publish(lines, args.out, ROOT / "docs" / "results.md", section, splice_it=not args.no_splice)
    return 0


if __name__ == "__main__":
    sys.exit(main())
