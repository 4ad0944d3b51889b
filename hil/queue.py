"""``python -m hil.queue [list] [--bench NAME] [--db URL]``: the lab queue's runs, queued, running and finished
(job id, bench, protocol, priority, run id and its status, times); ``python -m hil.queue cancel JOB [--db URL]``:
take a queued run out of the queue (a running or finished one is refused, with nothing changed);
``python -m hil.queue retry JOB [--db URL]``: queue a failed run again, for its bench's worker to resume
it where it stopped (once the bench is fixed).

The queue is on the lab's PostgreSQL (``--db`` or ``$HIL_DB_URL``); see ``python -m hil.submit``.
Exit status 0, 1 the job could not be cancelled or retried, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from functools import partial

from .cli import OneLineParser
from .lab_queue import QueueError, postgres_url

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m hil.queue",
                           description="The lab queue's runs; cancel a queued one, retry a failed one.")
    parser.add_argument("--db", metavar="URL", default=None, help="the lab's PostgreSQL (default: $HIL_DB_URL)")
    sub = parser.add_subparsers(dest="command", parser_class=partial(OneLineParser, help_prog=parser.prog))
    listing = sub.add_parser("list", help="queued, running and finished runs (the default)")
    listing.add_argument("--bench", default=None, metavar="NAME", help="only this bench's")
    listing.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    cancel = sub.add_parser("cancel", help="take a queued run out of the queue")
    cancel.add_argument("job", type=int, metavar="JOB", help="the job id, as listed")
    cancel.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    again = sub.add_parser("retry", help="queue a failed run again, to be resumed where it stopped")
    again.add_argument("job", type=int, metavar="JOB", help="the job id, as listed")
    again.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        url = postgres_url(args.db)
        if args.command in ("cancel", "retry"):
            return _change(url, args.job, args.command)
        return _list(url, getattr(args, "bench", None))
    except QueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _when(at: datetime | None) -> str:
    return "" if at is None else at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _list(url: str, bench: str | None) -> int:
    from rich.console import Console
    from rich.table import Table

    from db import Database, DatabaseError

    from .lab_queue import attach_runs, describe_error, list_work
    try:
        work = [w for w in list_work(url) if bench is None or w.bench == bench]
        with Database(url) as db, db.session() as session:
            attach_runs(session, work)
    except DatabaseError as exc:
        raise QueueError(str(exc)) from None
    except Exception as exc:
        raise QueueError(describe_error(exc, url)) from None
    console = Console(width=None if sys.stdout.isatty() else 140)
    if not work:
        console.print("the queue is empty" + (f" for bench {bench}" if bench else ""), markup=False)
        return EXIT_OK
    table = Table(box=None, header_style="bold")
    for column in ("job", "bench", "protocol", "priority", "status", "run", "run status", "queued", "started",
                   "finished"):
        table.add_column(column, no_wrap=column not in ("protocol",))
    for w in work:
        table.add_row(str(w.job_id), w.bench, w.protocol, str(w.priority), w.status,
                      "" if w.run_id is None else str(w.run_id), w.run_status or "", _when(w.queued_at),
                      _when(w.started_at), _when(w.finished_at))
    console.print(table)
    counts: dict[str, int] = {}
    for w in work:
        counts[w.status] = counts.get(w.status, 0) + 1
    console.print(", ".join(f"{n} {status}" for status, n in counts.items()), markup=False)
    return EXIT_OK


def _change(url: str, job_id: int, command: str) -> int:
    """Cancel a queued job, or retry a failed one."""
    from . import lab_queue
    try:
        with lab_queue.make_app(url).open() as app:
            work = getattr(lab_queue, command)(app, url, job_id)
    except QueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as exc:
        raise QueueError(lab_queue.describe_error(exc, url)) from None
    done = f"cancelled job {work.job_id}" if command == "cancel" else f"queued job {work.job_id} again"
    print(f"{done} ({work.protocol} on bench {work.bench})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
