"""The memory estimate against the measured peak: each protocol run in its own process on the mock.

    python benchmarks/bench_memory.py [--only NAME ...]

For each protocol, ``hil.memory.estimate`` (the largest step, baseline included) next to the peak
resident set size of the process that ran it (``ru_maxrss`` from ``os.wait4``), and their ratio. The
protocols: the shipped quickstart and calibration, a read-heavy one (a 512x512 array read 100 times:
200 MiB of conductance maps), a calibration of a 256x256 array, and a short training run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hil.memory import estimate, format_bytes  # noqa: E402
from hil.protocol_loader import load_protocol  # noqa: E402

SYNTHETIC = {
    "read_512x512_x100": """name: read_heavy
array: {rows: 512, cols: 512}
steps:
  - kind: read
    repeats: 100
""",
    "calibrate_256x256": """name: calibrate_large
array: {rows: 256, cols: 256}
steps:
  - kind: calibrate
    report: false
    pulse_response: null
    periphery: null
""",
    "train_period_2_epochs": """name: train_short
array: {rows: 8, cols: 8}
steps:
  - kind: train
    task: {name: period}
    model: {kind: s4d, d_model: 32, d_state: 16, n_layers: 2}
    epochs: 2
    noise_draws: 0
""",
}
SHIPPED = {"quickstart": ROOT / "protocols" / "quickstart.yaml", "calibrate": ROOT / "protocols" / "calibrate.yaml"}


def peak_rss(protocol: Path, workdir: Path) -> tuple[int, int]:
    """(exit status, peak resident bytes) of ``python -m hil.run protocol`` in a new process."""
    proc = subprocess.Popen([sys.executable, "-m", "hil.run", str(protocol), "--db", f"sqlite:///{workdir / 'b.db'}",
                             "--report-dir", str(workdir / "reports")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024    # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these protocols")
    args = parser.parse_args()
    table = Table(title="memory estimate against measured peak (one process per protocol)")
    for column in ("protocol", "largest step", "estimate", "measured peak", "estimate / measured"):
        table.add_column(column, justify="left" if column in ("protocol", "largest step") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = dict(SHIPPED)
        for name, text in SYNTHETIC.items():
            paths[name] = work / f"{name}.yaml"
            paths[name].write_text(text, encoding="utf-8")
        for name, path in paths.items():
            if args.only and name not in args.only:
                continue
            steps = estimate(load_protocol(path).protocol)
            top = max(steps, key=lambda s: s.bytes)
            code, peak = peak_rss(path, work)
            if code != 0:
                table.add_row(name, top.name, format_bytes(top.bytes), f"exit {code}", "")
                continue
            table.add_row(name, f"{top.name} ({top.kind})", format_bytes(top.bytes), format_bytes(peak),
                          f"{top.bytes / peak:.2f}")
    Console(width=140).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
