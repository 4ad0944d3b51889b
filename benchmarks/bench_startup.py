"""Start-up cost of the command-line front ends, in CPU seconds (user + system) of a new process.

    python benchmarks/bench_startup.py [--repeats N]

Each command is run N times (median reported) next to two references measured in the same run: a
bare interpreter (``python -c pass``) and ``import torch``, the cost every command paid before the
front ends stopped importing it. CPU time rather than wall time, so a busy machine changes little.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent

# Refused by every version of the schema (a misspelt key), so that versions can be compared.
BAD_PROTOCOL = """name: bad
array: {rows: 8, cols: 8}
steps:
  - kind: read
    repeat: 3
"""


def cpu_seconds(args: list[str], cwd: Path) -> float:
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "bad.yaml").write_text(BAD_PROTOCOL, encoding="utf-8")
        url = f"sqlite:///{work / 'h.db'}"
        subprocess.run([sys.executable, "-m", "hil.run", str(ROOT / "protocols" / "quickstart.yaml"), "--db", url],
                       cwd=work, check=True, capture_output=True)
        commands = {
            "python -c pass (reference)": ["-c", "pass"],
            "import torch (reference)": ["-c", "import torch"],
            "hil.run --help": ["-m", "hil.run", "--help"],
            "hil.run bad.yaml (rejected)": ["-m", "hil.run", "bad.yaml"],
            "hil.history runs": ["-m", "hil.history", "--db", url, "runs"],
            "hil.history arrays": ["-m", "hil.history", "--db", url, "arrays"],
        }
        times = {name: statistics.median(cpu_seconds(a, work) for _ in range(args.repeats))
                 for name, a in commands.items()}
    torch = times["import torch (reference)"]
    table = Table(title=f"start-up CPU time, median of {args.repeats} (user + system)")
    for column in ("command", "CPU s", "/ import torch"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, seconds in times.items():
        table.add_row(name, f"{seconds:.2f}", f"{seconds / torch:.2f}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
