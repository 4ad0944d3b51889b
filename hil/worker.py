"""``python -m hil.worker --bench NAME [--backend NAME] [--resource STRING] [--db URL] [--report-dir DIR]``:
run a bench's queued runs, one at a time, on the lab's PostgreSQL queue (``python -m hil.submit``).

Run it on the bench's computer, with the backend and resource ``python -m hil.run`` would be given there.
It first takes the bench's lease (:mod:`hil.lab_queue`; a second worker of the same bench waits for it),
puts back in the queue any run a worker of this bench left behind when it died, then runs the bench's jobs
in order of priority, each as ``python -m hil.run`` runs a protocol, recorded in the same runs table (the
run's options name its job). A job whose run was interrupted (its worker killed, its computer gone) is
resumed, with ``--resume``'s semantics, by the next worker of the bench; one whose run had completed is
closed without running anything again.

Ctrl-C (or SIGTERM) once: finish the running run, then stop. Twice: stop now; the run stays interrupted and
the bench's next worker resumes it. Exit status 0 stopped, 2 bad input, 3 the lease was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cli import OneLineParser
from .lab_queue import QueueError, check_bench, postgres_url

EXIT_OK, EXIT_BAD_INPUT, EXIT_LEASE_LOST, EXIT_INTERRUPTED = 0, 2, 3, 130

logger = logging.getLogger("hil.worker")


def build_parser() -> argparse.ArgumentParser:
    from .backends import names

    parser = OneLineParser(prog="python -m hil.worker", description="Run a bench's queued runs, one at a time.")
    parser.add_argument("--bench", required=True, metavar="NAME", help="the bench this computer drives")
    parser.add_argument("--backend", default="mock", metavar="NAME",
                        help=f"instrument backend: {', '.join(names())}, or a plug-in's name (default: mock)")
    parser.add_argument("--resource", default=None, metavar="STRING",
                        help="where the bench instrument is, as for python -m hil.run --resource")
    parser.add_argument("--db", metavar="URL", default=None, help="the lab's PostgreSQL (default: $HIL_DB_URL)")
    parser.add_argument("--report-dir", default="reports", metavar="DIR",
                        help="where calibration reports are written (default: ./reports)")
    parser.add_argument("--poll", type=float, default=2.0, metavar="S",
                        help="seconds between looks at the queue besides its notifications (default: 2)")
    return parser


@dataclass
class Bench:
    """What every run of this worker is given: the bench, its instrument, the database."""

    name: str
    backend: str
    resource: str | None
    url: str
    report_dir: Path


class JobNotCompleted(Exception):
    """The job's run did not complete (it failed, or was refused); the job fails with this reason."""


def run_job(bench: Bench, job_id: int, *, protocol_text: str, protocol_path: str, protocol_name: str,
            seed: int | None = None) -> int:
    """Run (or resume, or merely close) job ``job_id``'s run on ``bench``; its run id. Called only by the
    holder of the bench's lease, so a run of this job still marked running has lost its worker."""
    from rich.console import Console

    from db import Database
    from db.liveness import mark_interrupted
    from db.models import COMPLETED, RUNNING
    from db.runs import QUEUE_JOB_OPTION, run_of_job

    from .protocol_loader import ProtocolError, load_protocol_text
    from .run import BadInput, run_loaded

    with Database(bench.url) as db, db.session() as session:    # opening it closes this host's orphans
        run = run_of_job(session, job_id)
        if run is not None and run.status == RUNNING:
            mark_interrupted(session, run, f"the worker running it (pid {run.owner_pid} on {run.owner_host}) "
                                           f"stopped; bench {bench.name}'s lease passed to pid {os.getpid()} on "
                                           f"{socket.gethostname()}")
        previous = None if run is None else (run.id, run.status)
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    common = dict(backend=bench.backend, resource=bench.resource, db=bench.url, report_dir=str(bench.report_dir))
    try:
        if previous is None:
            logger.info("job %d: %s, a new run", job_id, protocol_name)
            try:
                loaded = load_protocol_text(protocol_text, protocol_path)
            except ProtocolError as exc:      # queued around hil.submit: refused here, nothing recorded
                raise JobNotCompleted(f"refused: {exc}") from None
            outcome = run_loaded(loaded, console=console, seed=seed, **common,
                                 run_options={QUEUE_JOB_OPTION: job_id, "bench": bench.name})
        elif previous[1] == COMPLETED:
            logger.info("job %d: its run %d had completed; nothing to run again", job_id, previous[0])
            return previous[0]
        else:
            logger.info("job %d: resuming its run %d (%s)", job_id, previous[0], previous[1])
            outcome = run_loaded(None, console=console, resume=previous[0], **common)
    except BadInput as exc:
        raise JobNotCompleted(f"refused: {exc}") from None
    if outcome.status != COMPLETED:
        raise JobNotCompleted(f"run {outcome.run_id} {outcome.status}: {outcome.error}")
    logger.info("job %d: run %d completed in %.1f s", job_id, outcome.run_id, outcome.seconds)
    return outcome.run_id


class _QuietJobErrors(logging.Filter):
    # The queue logs a failed job with its whole call (the protocol's text) and a traceback; the worker
    # has said in one line why it failed.
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "action", None) not in ("job_error", "finish_task")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    logging.getLogger("procrastinate").addFilter(_QuietJobErrors())
    try:
        check_bench(args.bench)
        url = postgres_url(args.db)
        from .backends import names
        if args.backend not in names():
            raise QueueError(f"--backend {args.backend!r}: not a backend here (known: {', '.join(names())})")
        if not args.poll > 0:
            raise QueueError(f"--poll must be a positive number of seconds, got {args.poll}")
        return serve(Bench(args.bench, args.backend, args.resource, url, Path(args.report_dir)), args.poll)
    except QueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def serve(bench: Bench, poll_s: float) -> int:
    from db import Database, DatabaseError

    from .lab_queue import (TASK, BenchLease, describe_error, ensure_schema, make_app, queue_name,
                            reclaim_orphaned_jobs)
    try:
        Database(bench.url).close()            # the run records' schema first, then the queue's beside it
        ensure_schema(bench.url)
    except DatabaseError as exc:
        raise QueueError(str(exc)) from None
    except Exception as exc:
        raise QueueError(describe_error(exc, bench.url)) from None

    lease = BenchLease(bench.url, bench.name)

    def waiting() -> None:
        logger.info("bench %s: another worker holds its lease (%s); waiting for it", bench.name,
                    lease.holder() or "gone meanwhile")
    try:
        lease.acquire(on_wait=waiting)
    except Exception as exc:
        raise QueueError(describe_error(exc, bench.url)) from None

    def lost(reason: str) -> None:
        # Another worker may take the bench as soon as the server lets the lease go: stop before it can.
        logger.error("bench %s: lost the lease (%s); stopping now, the bench's next worker resumes its run",
                     bench.name, reason)
        os._exit(EXIT_LEASE_LOST)
    lease.watch(lost)
    try:
        with make_app(bench.url).open() as sync_app:
            reclaimed = reclaim_orphaned_jobs(sync_app, bench.url, bench.name)
        if reclaimed:
            logger.info("bench %s: back in the queue from a worker that died: job(s) %s", bench.name,
                        ", ".join(map(str, reclaimed)))
        app = make_app(bench.url, asynchronous=True)

        @app.task(name=TASK, pass_context=True)
        def _task(context, **kwargs) -> int:
            return run_job(bench, context.job.id, **kwargs)

        logger.info("bench %s: worker pid %d on %s, %s backend%s; waiting for runs", bench.name, os.getpid(),
                    socket.gethostname(), bench.backend, f" at {bench.resource}" if bench.resource else "")
        return asyncio.run(_work(app, queue_name(bench.name), poll_s, bench.name))
    finally:
        lease.release()


async def _work(app, queue: str, poll_s: float, bench: str) -> int:
    async with app.open_async():
        worker = asyncio.create_task(app.run_worker_async(
            queues=[queue], concurrency=1, wait=True, name=f"{bench}@{socket.gethostname()}",
            fetch_job_polling_interval=poll_s, install_signal_handlers=False, delete_jobs="never"))
        signals = 0

        def stop() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                logger.info("bench %s: stopping after the running run (again to stop now)", bench)
                worker.cancel()
            else:
                logger.info("bench %s: stopping now; the bench's next worker resumes the run", bench)
                sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        started = time.monotonic()
        try:
            await worker
        except asyncio.CancelledError:
            pass
        logger.info("bench %s: worker stopped after %.0f s", bench, time.monotonic() - started)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
