"""``python -m hil.run PROTOCOL.yaml [--backend mock|serial --resource STRING] [--db URL] [--seed N]``

Exit status: 0 completed, 1 the run failed (recorded in the database),
2 bad input (protocol, backend or database URL; nothing was run or recorded),
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from db import Database, DatabaseError
from db.errors import mask_url

from .backends import BACKENDS, BackendError, make_backend
from .protocol_loader import ProtocolError, load_protocol
from .runner import execute
from .summary import print_summary

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hil.run",
                                     description="Run a measurement protocol on a crossbar array.")
    parser.add_argument("protocol", help="protocol YAML file")
    parser.add_argument("--backend", default="mock", choices=BACKENDS, help="instrument backend (default: mock)")
    parser.add_argument("--db", metavar="URL", default=None,
                        help="database URL (default: $HIL_DB_URL, else sqlite:///hil.db)")
    parser.add_argument("--resource", default=None, metavar="STRING",
                        help="where the bench instrument is: for --backend serial a port or pyserial URL "
                             "(socket://127.0.0.1:7000 for python -m drivers.emulate serial)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the run: random patterns and the mock's noise (the simulated chip is the "
                             "protocol's mock.seed)")
    parser.add_argument("--report-dir", default="reports", metavar="DIR",
                        help="where calibration reports are written (default: ./reports)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs and CI are not terminals; give them room for the table instead of rich's 80 columns.
    out = Console(width=None if sys.stdout.isatty() else 120)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

    def reject(message: str) -> int:
        err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT

    # Everything that can be wrong with the input is found before the database or an instrument is touched.
    try:
        loaded = load_protocol(args.protocol)
    except ProtocolError as exc:
        return reject(str(exc))
    if args.seed is not None and args.seed < 0:
        return reject(f"--seed must be non-negative, got {args.seed}")
    try:
        xbar, options = make_backend(args.backend, loaded.protocol, args.seed, args.resource)
    except BackendError as exc:
        return reject(f"{args.protocol}: {exc}")
    try:
        db = Database.open(args.db)
    except DatabaseError as exc:
        return reject(str(exc))

    with db:
        outcome = execute(loaded, xbar, db, backend=args.backend, seed=options.get("seed"), options=options,
                          console=err, report_dir=Path(args.report_dir))
        print_summary(outcome, loaded.protocol.name, mask_url(db.url), out)
    if outcome.status == "completed":
        return EXIT_OK
    return EXIT_INTERRUPTED if outcome.status == "interrupted" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
