"""``python -m hil.run PROTOCOL.yaml [--backend mock|serial|visa|arc2 --resource STRING] [--db URL] [--seed N]``
``python -m hil.run --resume RUN_ID [--db URL] [--resource STRING]``: continue a failed or interrupted run
with the protocol, backend, resource and seed it was started with.

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
from db import records
from db.errors import mask_url
from db.models import Run

from .backends import BACKENDS, BackendError, make_backend
from .protocol_loader import LoadedProtocol, ProtocolError, load_protocol, load_protocol_text
from .runner import execute
from .summary import print_summary

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hil.run",
                                     description="Run a measurement protocol on a crossbar array.")
    parser.add_argument("protocol", nargs="?", help="protocol YAML file (not needed with --resume)")
    parser.add_argument("--backend", default=None, choices=BACKENDS,
                        help="instrument backend (default: mock; with --resume, the run's own)")
    parser.add_argument("--resume", type=int, default=None, metavar="RUN_ID",
                        help="continue this failed or interrupted run from its first unfinished step, with the "
                             "protocol stored with it")
    parser.add_argument("--db", metavar="URL", default=None,
                        help="database URL (default: $HIL_DB_URL, else sqlite:///hil.db)")
    parser.add_argument("--resource", default=None, metavar="STRING",
                        help="where the bench instrument is: for --backend serial a port or pyserial URL "
                             "(socket://127.0.0.1:7000 for python -m drivers.emulate serial); for --backend visa "
                             "the SMU's VISA resource (TCPIP::host::5025::SOCKET; python -m drivers.emulate smu "
                             "prints one); for --backend arc2 "
                             "ID[:FIRMWARE] (board id from pyarc2.find_ids() or auto, firmware file path)")
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

    # Everything that can be wrong with the input is found before the database or an instrument is touched
    # (a resumed run's protocol is in the database, so there the database comes first).
    if args.seed is not None and (args.resume is not None or args.seed < 0):
        return reject("--seed cannot be given with --resume: a resumed run keeps its seed" if args.resume is not None
                      else f"--seed must be non-negative, got {args.seed}")
    if args.resume is None:
        if args.protocol is None:
            return reject("give a protocol file (or --resume RUN_ID)")
        try:
            loaded = load_protocol(args.protocol)
        except ProtocolError as exc:
            return reject(str(exc))
        try:
            xbar, options = make_backend(args.backend or "mock", loaded.protocol, args.seed, args.resource)
        except BackendError as exc:
            return reject(f"{args.protocol}: {exc}")
    try:
        db = Database.open(args.db)
    except DatabaseError as exc:
        return reject(str(exc))
    backend = args.backend or "mock"
    if args.resume is not None:
        try:
            loaded, backend, resource, seed = _resumable(db, args)
            xbar, options = make_backend(backend, loaded.protocol, seed, resource)
        except (ResumeError, records.ResumeRefused, ProtocolError, BackendError) as exc:
            db.close()
            return reject(f"--resume {args.resume}: {exc}")

    with db:
        try:
            outcome = execute(loaded, xbar, db, backend=backend, seed=options.get("seed"), options=options,
                              console=err, report_dir=Path(args.report_dir), resume_run_id=args.resume)
        except records.ResumeRefused as exc:
            return reject(str(exc))
        print_summary(outcome, loaded.protocol.name, mask_url(db.url), out)
    if outcome.status == "completed":
        return EXIT_OK
    return EXIT_INTERRUPTED if outcome.status == "interrupted" else EXIT_FAILED


class ResumeError(Exception):
    """The run named by --resume cannot be resumed as asked."""


def _resumable(db: Database, args) -> tuple[LoadedProtocol, str, str | None, int | None]:
    """The stored protocol, backend, resource and seed of the run to resume, checked against the arguments."""
    with db.session() as session:
        run = session.get(Run, args.resume)
        if run is None:
            raise ResumeError(f"there is no run {args.resume} in this database")
        records.check_resumable(run)
        text, path, backend, seed = run.protocol_text, run.protocol_path, run.backend, run.seed
        stored_resource = (run.options or {}).get("resource")
    if args.protocol is not None:
        try:
            given = Path(args.protocol).read_text(encoding="utf-8")
        except OSError as exc:
            raise ResumeError(f"{args.protocol}: {exc.strerror or exc}") from None
        if given != text:
            raise ResumeError(f"{args.protocol} differs from the protocol run {args.resume} was started with; "
                              "a resumed run keeps its protocol (give no file to use the stored one)")
    if args.backend is not None and args.backend != backend:
        raise ResumeError(f"run {args.resume} ran on the {backend} backend, not {args.backend}")
    loaded = load_protocol_text(text, path or Path.cwd() / "stored-protocol.yaml")
    return loaded, backend, args.resource or stored_resource, seed


if __name__ == "__main__":
    sys.exit(main())
