"""Runs per hour through the lab queue on three emulated benches, against the same runs started by hand.

    python benchmarks/bench_queue.py [--db URL] [--runs 30] [--latency-s 0.02]

Three benches (two serial array boards and an SMU, emulated in this process, each command answered after
``--latency-s``), and ``--runs`` runs of three small 8x8 protocols (a read; read, program to 4 levels and
read; a checkerboard and a read), the same list in every mode:

* by hand, one after another: ``python -m hil.run`` for each run in turn, as one person at one terminal;
* by hand, three at once: one terminal per bench, each running its bench's runs with ``python -m hil.run``
  one after another;
* the queue: three ``python -m hil.worker`` (one per bench) started and waiting, as a lab's are; timed from
  the first ``python -m hil.submit`` (one per run, one after another; their share is printed) to the last
  run completed; and the same with one ``hil.submit`` per bench naming all of its runs;
* the queue's own rate: every run submitted first, then timed from starting the three workers to the last
  run completed.

Everything is recorded in the PostgreSQL database given (``--db``, default ``$HIL_TEST_POSTGRES_URL``);
nothing in it is removed. Processes are what a lab would start; the machine's cores are shared by all three
benches, so the parallel figures say as much about the computer as about the queue.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from db.errors import mask_url  # noqa: E402
from drivers.emulators.faults import Faults  # noqa: E402
from drivers.emulators.keithley2600 import TspInstrument, TspServer  # noqa: E402
from drivers.emulators.serial_board import BoardEmulator, BoardServer  # noqa: E402
from drivers.mock import SoftwareCrossbar  # noqa: E402

# the small 8x8 protocols the queue test runs
PROTOCOLS = {name: (ROOT / "tests" / "data" / "protocols" / f"{name}.yaml").read_text(encoding="utf-8")
             for name in ("read8", "program8", "checker8")}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _hil_run(protocol: Path, backend: str, resource: str, url: str, workdir: Path) -> None:
    subprocess.run([sys.executable, "-m", "hil.run", str(protocol), "--backend", backend, "--resource", resource,
                    "--db", url], check=True, env=_env(), cwd=workdir, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def by_hand_sequential(plan, benches, url, workdir) -> float:
    t = time.perf_counter()
    for bench, protocol in plan:
        _hil_run(protocol, benches[bench][0], benches[bench][1], url, workdir)
    return time.perf_counter() - t


def by_hand_parallel(plan, benches, url, workdir) -> float:
    """One shell per bench running its runs one after another."""
    t = time.perf_counter()
    shells = []
    for bench, (backend, resource) in benches.items():
        lines = [f"{sys.executable} -m hil.run {p} --backend {backend} --resource '{resource}' --db '{url}' "
                 f">/dev/null 2>&1 || exit 1" for b, p in plan if b == bench]
        shells.append(subprocess.Popen(["sh", "-c", "\n".join(lines)], env=_env(), cwd=workdir))
    for shell in shells:
        assert shell.wait() == 0, "a run by hand failed"
    return time.perf_counter() - t


def _submit_all(plan, url, workdir, *, per_bench: bool = False) -> list[int]:
    """Queue the plan's runs: one ``hil.submit`` per run, or (``per_bench``) one per bench naming all of
    that bench's protocols in their order."""
    calls = ([[bench, [str(protocol)]] for bench, protocol in plan] if not per_bench else
             [[bench, [str(p) for b, p in plan if b == bench]] for bench in dict.fromkeys(b for b, _ in plan)])
    jobs = []
    for bench, protocols in calls:
        out = subprocess.run([sys.executable, "-m", "hil.submit", *protocols, "--bench", bench, "--db", url],
                             check=True, env=_env(), cwd=workdir, capture_output=True, text=True).stdout
        jobs += [int(line.split()[2]) for line in out.splitlines() if line.startswith("queued job")]
    return jobs


def through_queue(plan, benches, url, workdir, *, queued_first: bool = False,
                  per_bench: bool = False) -> tuple[float, float]:
    """(seconds from the first submit to the last run completed, seconds the submits took), with the three
    workers started and waiting beforehand, as a lab's are; ``queued_first``: every run submitted first
    (untimed), then seconds from starting the three workers to the last run completed. ``per_bench``: one
    ``hil.submit`` per bench for all its runs, instead of one per run."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    jobs = _submit_all(plan, url, workdir) if queued_first else []
    t = time.perf_counter()
    logs = {bench: workdir / f"{bench}.log" for bench in benches}
    workers = [subprocess.Popen([sys.executable, "-m", "hil.worker", "--bench", bench, "--backend", backend,
                                 "--resource", resource, "--db", url, "--poll", "0.5"],
                                env=_env(), cwd=workdir, stdout=subprocess.DEVNULL, stderr=logs[bench].open("wb"))
               for bench, (backend, resource) in benches.items()]
    engine = create_engine(url, poolclass=NullPool)
    try:
        while not queued_first and not all("waiting for runs" in log.read_text(errors="replace")
                                           for log in logs.values()):
            assert all(w.poll() is None for w in workers), "a worker ended: " + " ".join(
                log.read_text(errors="replace")[-500:] for log in logs.values())
            time.sleep(0.1)
        if not queued_first:
            t = time.perf_counter()
            jobs = _submit_all(plan, url, workdir, per_bench=per_bench)
        submitted = 0.0 if queued_first else time.perf_counter() - t
        while True:
            with engine.connect() as c:
                done = c.execute(text("SELECT count(*) FROM procrastinate_jobs WHERE id = ANY(:ids) AND "
                                      "status IN ('succeeded', 'failed')"), {"ids": jobs}).scalar()
            if done == len(jobs):
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - t
        with engine.connect() as c:
            failed = c.execute(text("SELECT count(*) FROM procrastinate_jobs WHERE id = ANY(:ids) AND "
                                    "status = 'failed'"), {"ids": jobs}).scalar()
        assert failed == 0, f"{failed} queued runs failed"
    finally:
        engine.dispose()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
    return elapsed, submitted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("HIL_TEST_POSTGRES_URL"),
                        help="a PostgreSQL URL (default: $HIL_TEST_POSTGRES_URL)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--latency-s", type=float, default=0.02, help="added before every instrument reply")
    args = parser.parse_args()
    if not args.db:
        parser.error("give --db postgresql://... (or set HIL_TEST_POSTGRES_URL)")
    faults = Faults(latency_s=args.latency_s)
    servers = [BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=1)), faults=faults).start(),
               BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=2)), faults=faults).start(),
               TspServer(TspInstrument(SoftwareCrossbar(8, 8, seed=3)), faults=faults).start()]
    benches = {"bench-serial-1": ("serial", servers[0].url), "bench-serial-2": ("serial", servers[1].url),
               "bench-smu-1": ("visa", servers[2].resource)}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            paths = {}
            for name, content in PROTOCOLS.items():
                paths[name] = workdir / f"{name}.yaml"
                paths[name].write_text(content, encoding="utf-8")
            names = list(benches)
            plan = [(names[i % 3], paths[list(PROTOCOLS)[(i // 3) % 3]]) for i in range(args.runs)]
            queued, submitting = through_queue(plan, benches, args.db, workdir)
            batched, batch_submitting = through_queue(plan, benches, args.db, workdir, per_bench=True)
            drained, _ = through_queue(plan, benches, args.db, workdir, queued_first=True)
            results = [("by hand, one after another (python -m hil.run)", by_hand_sequential(plan, benches, args.db, workdir)),
                       ("by hand, three at once (one shell per bench)", by_hand_parallel(plan, benches, args.db, workdir)),
                       (f"queue: {args.runs} x hil.submit ({submitting:.1f} s of it), three hil.worker waiting", queued),
                       (f"queue: 3 x hil.submit, one per bench ({batch_submitting:.1f} s of it), three hil.worker "
                        "waiting", batched),
                       ("queue: all queued first, three hil.worker started (start-up included)", drained)]
    finally:
        for server in servers:
            server.stop()
    table = Table(title=f"{args.runs} runs on 3 emulated benches ({args.latency_s * 1000:g} ms per instrument reply), "
                        f"{os.cpu_count()} CPU(s), {mask_url(args.db)}")
    for column in ("how", "seconds", "runs per hour", "vs by hand, one after another"):
        table.add_column(column, justify="left" if column == "how" else "right")
    base = results[0][1]
    for how, seconds in results:
        table.add_row(how, f"{seconds:.1f}", f"{args.runs * 3600 / seconds:,.0f}", f"{base / seconds:.2f}x")
    Console(width=140).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
