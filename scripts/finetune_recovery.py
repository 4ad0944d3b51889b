"""Fine-tuning on the array: how much of the array's accuracy loss it wins back, against the array passes it
spends, on harsh arrays, for plain and noise-aware mGRADE.

    python scripts/finetune_recovery.py [--families pcm vcm] [--chips 0 1 2] [--split test]
                                        [--set lr=0.01 batch_size=8 ...] [--table-only]

protocols/finetune_recovery.yaml per family and chip (mock seed = training seed = chip; calibration levels
from the measured window, as scripts/families_loop.py does): both models are deployed on the same chip in
turn and each is fine-tuned from its deployment, the accuracy on the array measured before and as the
training passes reach 1, 2, 5, 10 and 20 % of the training split. The gap is the digital accuracy minus
the array's before fine-tuning, on the same sequences; recovered points are the accuracy gained on the
array. The table gives means over chips with 95 % t-intervals, and the recovered share of the gap as the
ratio of the mean gain to the mean gap (with a linearised 95 % interval). ``--split val`` (with ``--set``)
is for choosing settings; ``--split test`` is the report, run once with the chosen settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db import Database  # noqa: E402
from db.models import Finetune, Run  # noqa: E402
from hil import results_file  # noqa: E402
from protocol_runs import run_protocol  # noqa: E402
from hil.intervals import interval, ratio_interval  # noqa: E402

FAMILIES = {"rram": {}, "pcm": {"family": "pcm"}, "vcm": {"family": "vcm"},
            "pessimistic": {"family": "rram", "preset": "pessimistic"}}
PROTOCOL = "finetune_recovery"
MODELS = {"tune_plain": "plain", "tune_aware": "noise-aware"}


def protocol_text(device: dict, chip: int, split: str, settings: dict) -> str:
    protocol = yaml.safe_load((ROOT / "protocols" / f"{PROTOCOL}.yaml").read_text(encoding="utf-8"))
    protocol["mock"] = {"seed": chip, "device": device}
    for step in protocol["steps"]:
        if step["kind"] == "train":
            step["seed"] = chip
        if step["kind"] == "finetune":
            step.update(settings)
            step["seed"] = chip
            step["curve"]["split"] = split
    return yaml.safe_dump(protocol, sort_keys=False)


def settings_key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8] if settings else "default"


def run_one(family: str, chip: int, split: str, settings: dict, work: Path) -> dict:
    path = work / f"{family}_{chip}.yaml"
    path.write_text(protocol_text(FAMILIES[family], chip, split, settings), encoding="utf-8")
    t0 = time.perf_counter()
    url = run_protocol(path, work, f"{family}_{chip}")
    with Database(url) as db, db.session() as session:
        run = session.query(Run).one()
        out = {"status": run.status, "error": run.error, "seconds": time.perf_counter() - t0}
        steps = {s.id: s.name for s in run.steps}
        for tune in session.query(Finetune).all():
            curve = tune.summary["curve"]
            out[steps[tune.step_fk]] = {"digital": curve["digital_accuracy"], "sequences": curve["sequences"],
                                        "train_sequences": tune.summary["train_sequences"],
                                        "points": curve["points"], "mvms": tune.summary["mvms"]}
    return out


def fmt(values, scale: float = 100.0) -> str:
    mean, half = interval(values)
    return f"{scale * mean:.2f}" if np.isnan(half) else f"{scale * mean:.2f} ± {scale * half:.2f}"


def summarise(runs: list[dict], model: str | None) -> dict | None:
    """Means over the runs' fine-tunings of ``model`` (None: of every model, each chip and model a unit)."""
    done = [r[m] for r in runs for m in MODELS if m in r and (model is None or m == model)]
    if not done:
        return None
    shares = [p["share"] for p in done[0]["points"]]
    digital = np.array([r["digital"] for r in done])
    acc = np.array([[p["accuracy"] for p in r["points"]] for r in done])       # (chips, points)
    gap = digital - acc[:, 0]
    gained = acc - acc[:, :1]
    return {"chips": len(done), "shares": shares, "digital": digital, "acc": acc, "gap": gap, "gained": gained,
            "sequences": done[0]["sequences"]}


def shares_of(runs: dict) -> list[float]:
    run = next(iter(runs.values()))
    model = next(m for m in MODELS if m in run)
    return [p["share"] for p in run[model]["points"]][1:]


def table(results: dict, families: list[str], split: str) -> list[str]:
    lines = ["| condition | model | fine-tunings | digital (%) | array before (%) | gap (points) | passes (share of training "
             "split) | array after (%) | recovered (points) | recovered share of the gap |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups = [(family, [r for key, r in sorted(results.items()) if key.split("/")[0] == family]) for family in families]
    groups.append(("all of them", list(results.values())))
    for family, runs in groups:
        for model, label in [*MODELS.items(), (None, "both")]:
            s = summarise(runs, model)
            if s is None:
                continue
            for j, share in enumerate(s["shares"]):
                if j == 0:
                    continue
                ratio, half = ratio_interval(s["gained"][:, j], s["gap"])
                first = j == 1
                lines.append("| " + " | ".join([
                    family if first else "", label if first else "", str(s["chips"]) if first else "",
                    fmt(s["digital"]) if first else "", fmt(s["acc"][:, 0]) if first else "",
                    fmt(s["gap"]) if first else "", f"{100 * share:.0f} %", fmt(s["acc"][:, j]),
                    fmt(s["gained"][:, j]),
                    f"{100 * ratio:.0f} %" + ("" if np.isnan(half) else f" ± {100 * half:.0f}")]) + " |")
    return lines


def figure(results: dict, families: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.6), squeeze=False)
    for ax, family in zip(axes[0], families):
        runs = [r for key, r in sorted(results.items()) if key.split("/")[0] == family]
        for model, label in MODELS.items():
            s = summarise(runs, model)
            if s is None:
                continue
            ratios = [ratio_interval(s["gained"][:, j], s["gap"]) for j in range(len(s["shares"]))]
            x = 100 * np.array(s["shares"])
            ax.errorbar(x, [100 * r for r, _ in ratios], yerr=[100 * np.nan_to_num(h) for _, h in ratios],
                        marker="o", capsize=3, label=f"{label} ({s['chips']} chips)")
        ax.axhline(75, color="grey", lw=0.8, ls="--")
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(0, 25)
        ax.set_xticks([0, 1, 2, 5, 10, 20], ["0", "1", "2", "5", "10", "20"])
        ax.set_xlabel("training passes on the array (% of training split)")
        ax.set_title(family)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gap recovered (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=["pcm", "vcm"], choices=list(FAMILIES))
    parser.add_argument("--chips", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="fine-tuning settings for both finetune steps (YAML values), e.g. lr=0.003 groups=[bias]")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "finetune_recovery.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "finetune_recovery.md")
    parser.add_argument("--dev", type=Path, default=ROOT / "docs" / "finetune_recovery_dev.json",
                        help="runs on the validation split, listed under the test table (--split val --results this)")
    parser.add_argument("--table-only", action="store_true", help="write the table from the results file; run nothing")
    parser.add_argument("--no-splice", action="store_true", help="leave docs/results.md alone")
    args = parser.parse_args()
    settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    # runs are kept per split and settings: development on val never mixes with the report
    block = f"{args.split}/{settings_key(settings)}"
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            for chip in args.chips:
                key = f"{block}/{family}/{chip}"
                if args.table_only or key in (results_file.load(args.results) or {}):
                    continue
                result = run_one(family, chip, args.split, settings, Path(tmp))
                results_file.store(args.results, key, {**result, "settings": settings})
    # family/chip -> run, for this split and these settings
    results = {k[len(block) + 1:]: r for k, r in (results_file.load(args.results) or {}).items()
               if k.startswith(block + "/")}
    if not results:
        print("no runs stored for these settings")
        return 1
    families = [f for f in args.families if any(k.split("/")[0] == f for k in results)]
    chips = " ".join(sorted({k.split("/")[1] for k in results}, key=int))
    sets = " ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
    command = (f"python scripts/finetune_recovery.py --families {' '.join(families)} --chips {chips} "
               f"--split {args.split}" + (f" --set {sets}" if sets else ""))
    png = args.out.with_suffix(".png")
    figure(results, families, png)
    n_seq = next((r[m]["sequences"] for r in results.values() for m in MODELS if m in r), "?")
    lines = ["# Fine-tuning on the array: accuracy won back against array passes", "",
             f"`{command}`: protocols/finetune_recovery.yaml per device family and chip (mock seed = training seed "
             "= chip). Each model is fine-tuned from its deployment (biases, LayerNorms, a gain and offset per "
             "crossbar output unless the settings say otherwise; no cell rewritten; the last epoch kept, so every "
             f"array pass trains); the {args.split} split ({n_seq} sequences) runs on the array before and at each "
             "share of training passes. Means over fine-tunings (one per chip for a model, one per chip and model "
             "for both) ± 95 % t-interval half-widths; the recovered share is mean gain / mean gap, with a "
             "linearised 95 % interval. Measuring passes are not counted.",
             "", f"![recovered share of the gap]({png.name})", ""] + table(results, families, args.split)
    dev = {k: r for k, r in (results_file.load(args.dev) or {}).items() if r.get("status") == "completed"}
    if dev and args.split == "test":
        lines += ["", "Settings tried before, on the validation split (so that the test split above ran once): "
                  f"`{args.dev.relative_to(ROOT) if args.dev.is_relative_to(ROOT) else args.dev}`, recovered share "
                  "of the gap at each share of training passes.", "",
                  "| settings | chip | model | " + " | ".join(f"{100 * s:.0f} %" for s in shares_of(dev)) + " |",
                  "|---|---|---|" + "---:|" * len(shares_of(dev))]
        for key, run in sorted(dev.items()):
            _, _, family, chip = key.split("/")
            for model, label in MODELS.items():
                if model not in run:
                    continue
                s = summarise([run], model)
                cells = [f"{100 * s['gained'][0, j] / s['gap'][0]:.0f} %" for j in range(1, len(s["shares"]))]
                lines.append(f"| {json.dumps(run['settings']) if run['settings'] else 'protocol defaults'} | "
                             f"{family} {chip} | {label} | " + " | ".join(cells) + " |")
    failed = [f"{k}: {r['status']} {r.get('error') or ''}"[:120] for k, r in results.items() if r["status"] != "completed"]
    if failed:
        lines += ["", "Runs that did not complete: " + "; ".join(failed)]
    results_file.publish(lines, args.out, ROOT / "docs" / "results.md", "finetune_recovery",
                         splice_it=args.split == "test" and not args.no_splice)
    return 0


if __name__ == "__main__":
    sys.exit(main())
