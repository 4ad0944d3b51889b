"""``python -m hil.submit PROTOCOL.yaml [PROTOCOL.yaml ...] --bench NAME [--priority N] [--seed N] [--db URL]``:
queue a run of each protocol on a bench of the lab, in the order given, for that bench's worker
(``python -m hil.worker``) to run. Several in one command share its start-up (about a second).

Every protocol is validated first, as ``python -m hil.run`` validates it (file, line and field of the first
problem, exit status 2), and nothing is queued unless it passes; the bench's own limits and the memory
budget of its computer are checked by its worker before the run starts. The queue is on the lab's
PostgreSQL (``--db`` or ``$HIL_DB_URL``).

Prints each job's id; exit status 0 queued, 2 refused (nothing queued: one bad protocol of several
refuses them all).
"""

from __future__ import annotations

import argparse
import sys

from .cli import OneLineParser
from .lab_queue import MAX_PRIORITY, MIN_PRIORITY, QueueError, check_bench, postgres_url
from .protocol import MAX_SEED
from .protocol_loader import ProtocolError, load_protocol

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m hil.submit", description="Queue a run of a protocol on a bench of the lab.")
    parser.add_argument("protocol", nargs="+", help="protocol YAML file(s), one run each")
    parser.add_argument("--bench", required=True, metavar="NAME", help="the bench to run it on (its worker's --bench)")
    parser.add_argument("--priority", type=int, default=0, metavar="N",
                        help=f"higher runs first among the bench's queued runs ({MIN_PRIORITY} to {MAX_PRIORITY}; "
                             "default 0; equal priorities run in the order queued)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run (as python -m hil.run --seed)")
    parser.add_argument("--db", metavar="URL", default=None,
                        help="the lab's PostgreSQL (default: $HIL_DB_URL)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job_ids, bench = submit(args)
    except (QueueError, ProtocolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for job_id in job_ids:
        print(f"queued job {job_id} on bench {bench}")
    return EXIT_OK


def submit(args: argparse.Namespace) -> tuple[list[int], str]:
    """Validate every protocol, then queue them; (job ids, bench). QueueError or ProtocolError, with nothing
    queued, if any is refused."""
    check_bench(args.bench)
    if not MIN_PRIORITY <= args.priority <= MAX_PRIORITY:
        raise QueueError(f"--priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {args.priority}")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise QueueError(f"--seed must be between 0 and {MAX_SEED}, got {args.seed}")
    url = postgres_url(args.db)
    protocols = [args.protocol] if isinstance(args.protocol, str) else list(args.protocol)
    loaded = [load_protocol(path) for path in protocols]      # ProtocolError: the existing one-line refusal

    from db import Database, DatabaseError

    from .lab_queue import defer, describe_error, ensure_schema, make_app
    try:
        Database(url).close()                      # the run records' schema first, then the queue's beside it
        ensure_schema(url)
        with make_app(url).open() as app:
            job_ids = [defer(app, bench=args.bench, protocol_text=one.text, protocol_path=str(one.path),
                             protocol_name=one.protocol.name, seed=args.seed, priority=args.priority)
                       for one in loaded]
    except DatabaseError as exc:
        raise QueueError(str(exc)) from None
    except Exception as exc:                       # the driver's or the queue's: one line, no credentials
        if isinstance(exc, (QueueError, ProtocolError)):
            raise
        raise QueueError(describe_error(exc, url)) from None
    return job_ids, args.bench


if __name__ == "__main__":
    sys.exit(main())
