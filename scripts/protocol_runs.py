"""Running a protocol for an experiment script: ``python -m hil.run`` in a subprocess with its own SQLite
database, and a line saying how it ended (the scripts then read the run back from that database)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_protocol(protocol: Path, work: Path, name: str, *extra: str) -> str:
    """Run ``protocol`` with its database at ``work/<name>.db`` (reports under ``work/reports``); returns the
    database URL. ``extra``: further hil.run arguments (``--seed 1``)."""
    url = f"sqlite:///{work / f'{name}.db'}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hil.run", str(protocol), "--db", url,
                           "--report-dir", str(work / "reports"), *extra], cwd=ROOT, capture_output=True, text=True)
    print(f"{name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s", flush=True)
    return url
