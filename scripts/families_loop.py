"""The mGRADE loop (protocols/mgrade_loop.yaml) on each device family of the software crossbar.

    python scripts/families_loop.py [--out docs/families_loop.md] [--families rram pcm vcm pessimistic]

For each family the shipped protocol is run as it is, except for its ``mock.device`` (the family, and
the pessimistic preset of the default family) and its calibration levels, which are left to the
measured window (the protocol's 5-80 uS do not fit a 25 uS PCM window). One chip (mock seed 0), one
training seed, the test split: a first look at where the loop holds and where it breaks, not a
comparison with intervals (that needs several seeds and programmings; see docs/results.md).
"""

from __future__ import annotations

import argparse
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

FAMILIES = {"rram": {}, "pcm": {"family": "pcm"}, "vcm": {"family": "vcm"},
            "pessimistic": {"family": "rram", "preset": "pessimistic"}}


def variant(device: dict) -> str:
    protocol = yaml.safe_load((ROOT / "protocols" / "mgrade_loop.yaml").read_text(encoding="utf-8"))
    protocol["mock"]["device"] = device
    programming = protocol["steps"][0]["programming"]
    programming.pop("g_low_s", None)
    programming.pop("g_high_s", None)
    return yaml.safe_dump(protocol, sort_keys=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "families_loop.md")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family in args.families:
            path = work / f"mgrade_loop_{family}.yaml"
            path.write_text(variant(FAMILIES[family]), encoding="utf-8")
            url = f"sqlite:///{work / (family + '.db')}"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "hil.run", str(path), "--db", url,
                                   "--report-dir", str(work / "reports")], cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            print(f"{family}: exit {proc.returncode} in {seconds:.0f} s", flush=True)
            with Database(url) as db, db.session() as session:
                run = session.query(Run).one()
                inferences = records.run_inferences(session, run.id)
                status, error = run.status, run.error
            for model in ("mgrade_plain", "mgrade_aware"):
                at_zero = [r for r in inferences if r["checkpoint"] and r["checkpoint"].endswith(model)
                           and r["time_s"] == 0]
                day = [r for r in inferences if r["checkpoint"] and r["checkpoint"].endswith(model)
                       and r["time_s"] == 86400]
                if not at_zero:
                    rows.append((family, model, "", "", "", "", f"{status}: {error or ''}"[:120]))
                    continue
                array = np.array([r["crossbar_accuracy"] for r in at_zero])
                digital = at_zero[0]["digital_accuracy"]
                comp = [r["crossbar_accuracy"] for r in day if r["drift_compensation"]]
                rows.append((family, model.split("_")[1], f"{100 * digital:.2f}",
                             f"{100 * array.mean():.2f} ± {100 * array.std(ddof=1):.2f}" if array.size > 1
                             else f"{100 * array.mean():.2f}",
                             f"{100 * (digital - array.mean()):+.2f}",
                             f"{100 * comp[0]:.2f}" if comp else "", status))
    lines = ["# The mGRADE loop on each device family", "",
             "`python scripts/families_loop.py` (protocols/mgrade_loop.yaml with `mock.device` set per family and "
             "the calibration levels taken from the measured window; mock seed 0, one training seed, test split, "
             "359 sequences: one sequence is 0.28 points). Array accuracy at t = 0 is the mean ± sd over the "
             "protocol's 4 programmings; one chip and one training seed, so differences of a point or two between "
             "rows are within what another seed could give.", "",
             "| family | model | digital (%) | array at t = 0 (%) | gap (points) | array after 1 day, compensated (%) "
             "| run |", "|---|---|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
