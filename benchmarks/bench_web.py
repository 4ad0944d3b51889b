"""The web view on a 1,000-run history: how long its pages take, and how long a bench's writes wait while
people look.

    python benchmarks/bench_web.py [--postgres URL] [--repeats 9] [--seconds 10] [--readers 4]

The history is bench_db.py's: 1,000 calibrations of a 64x64 array (4 array statistics each, every 50th with
6 per-device maps). ``python -m hil.web`` serves it from a process of its own. (a) Each page, fetched over
HTTP, median and worst of ``--repeats``. (b) A bench writing its run's progress (one short transaction
every 20 ms, as a run reports) for ``--seconds``, first alone, then while ``--readers`` threads load the
runs list, an array page and a trend as fast as the view answers them: the writer's commit time, median,
99th percentile and longest, and the ratio against writing alone.

With ``--postgres URL`` (default: ``$HIL_TEST_POSTGRES_URL``) the same against that PostgreSQL database as
well, after dropping and recreating its ``public`` schema: give it a scratch database only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_db import _emptied, build_history  # noqa: E402

from db import Database, runs  # noqa: E402
from db.errors import mask_url  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARRAY = "bench-64x64"
WRITE_EVERY_S = 0.02


def serve(url: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "hil.web", "--db", url, "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    found = re.search(r"at (http://\S+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"hil.web did not start: {line}{proc.stdout.read()}")
    return proc, found.group(1).rstrip("/")


def fetch(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as reply:
        reply.read()
        if reply.status != 200:
            raise SystemExit(f"{url}: HTTP {reply.status}")
    return time.perf_counter() - t0


def pages(base: str, run_id: int) -> dict[str, str]:
    return {"runs list (first 50 of 1,000)": f"{base}/runs",
            "runs list, page 20": f"{base}/runs?page=20",
            "one run": f"{base}/runs/{run_id}",
            "array (64x64 device maps)": f"{base}/arrays/{ARRAY}",
            "trend over 1,000 runs": f"{base}/arrays/{ARRAY}/trend?quantity=yield",
            "trend as PNG": f"{base}/arrays/{ARRAY}/trend.png?quantity=yield"}


def writer(url: str, run_id: int, seconds: float) -> list[float]:
    """Commit times of a run's progress writes, one every WRITE_EVERY_S for ``seconds``."""
    waits = []
    with Database(url) as db:
        end = time.perf_counter() + seconds
        k = 0
        while time.perf_counter() < end:
            k += 1
            t0 = time.perf_counter()
            with db.session() as session:
                runs.set_run_progress(session, run_id, step_index=0, step_name="calibrate",
                                      progress={"stage": "reads", "done": k, "total": 10 ** 6})
            waits.append(time.perf_counter() - t0)
            time.sleep(WRITE_EVERY_S)
    return waits


def readers(base: str, n: int, stop: threading.Event, counts: list[int]) -> list[threading.Thread]:
    urls = [f"{base}/runs", f"{base}/arrays/{ARRAY}", f"{base}/arrays/{ARRAY}/trend?quantity=yield"]

    def load(k: int) -> None:
        while not stop.is_set():
            fetch(urls[k % len(urls)])
            counts[k] += 1

    return [threading.Thread(target=load, args=(k,)) for k in range(n)]


def bench(name: str, url: str, args: argparse.Namespace, table: Table, waits_table: Table) -> None:
    with Database(url) as db:
        build_history(db)
        with db.session() as session:
            run = runs.start_run(session, protocol_name="calibrate", protocol_path=None, protocol_text="bench",
                                 backend="mock", seed=0, code_version="bench")
            runs.start_step(session, run, 0, "calibrate", "calibrate")
            run_id = run.id
    proc, base = serve(url)
    try:
        for label, page in pages(base, run_id).items():
            fetch(page)                                   # first load: imports, caches
            times = [fetch(page) for _ in range(args.repeats)]
            table.add_row(name, label, f"{1e3 * statistics.median(times):.0f}", f"{1e3 * max(times):.0f}")
        alone = writer(url, run_id, args.seconds)
        stop, counts = threading.Event(), [0] * args.readers
        threads = readers(base, args.readers, stop, counts)
        for t in threads:
            t.start()
        busy = writer(url, run_id, args.seconds)
        stop.set()
        for t in threads:
            t.join()
        for label, waits in (("alone", alone), (f"{args.readers} readers, {sum(counts)} pages", busy)):
            q99 = statistics.quantiles(waits, n=100)[98]
            waits_table.add_row(name, label, str(len(waits)), f"{1e3 * statistics.median(waits):.1f}",
                                f"{1e3 * q99:.1f}", f"{1e3 * max(waits):.1f}",
                                f"{max(waits) / max(alone):.1f}x" if waits is busy else "1.0x")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("HIL_TEST_POSTGRES_URL"))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=4)
    args = parser.parse_args()
    table = Table(title="(a) pages of the web view over HTTP, 1,000-run history (ms)")
    for col in ("database", "page", "median", "worst"):
        table.add_column(col, justify="left" if col in ("database", "page") else "right")
    waits = Table(title=f"(b) a bench's progress write (one every {WRITE_EVERY_S * 1e3:g} ms): commit time (ms)")
    for col in ("database", "while", "writes", "median", "99th percentile", "longest", "longest / alone"):
        waits.add_column(col, justify="left" if col in ("database", "while") else "right")
    with tempfile.TemporaryDirectory() as folder:
        bench("SQLite (WAL)", f"sqlite:///{Path(folder) / 'history.db'}", args, table, waits)
    if args.postgres:
        print(f"PostgreSQL: {mask_url(args.postgres)}")
        bench("PostgreSQL", _emptied(args.postgres), args, table, waits)
    console = Console(width=150)
    console.print(table)
    console.print(waits)


if __name__ == "__main__":
    main()
