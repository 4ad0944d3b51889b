"""``python -m hil.run PROTOCOL.yaml [--backend mock|serial|visa|arc2 --resource STRING] [--db URL [--create-db]] [--seed N]``
``python -m hil.run --resume RUN_ID [--db URL] [--resource STRING]``: continue a failed or interrupted run
with the protocol, backend, resource and seed it was started with.

Progress goes to stderr: bars on a terminal, plain timestamped lines otherwise (``2>run.log``, nohup, CI);
``--log FILE`` appends those lines to FILE as well. The run's current step and progress are also kept in
its database row, for ``python -m hil.history runs`` and other processes to follow.

Exit status: 0 completed, 1 the run failed (recorded in the database),
2 bad input (protocol, backend or database URL; nothing was run or recorded),
130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from rich.console import Console

from .backends import BackendError, make_backend, make_extra_backends, names
from .cli import OneLineParser
from .protocol import ARRAY_NAME_PATTERN, MAX_SEED
from .memory import BUDGET_ENV, DEFAULT_BUDGET_BYTES, budget_bytes, estimate, format_bytes
from .protocol_loader import LoadedProtocol, ProtocolError, check_within, load_protocol, load_protocol_text, step_error

if TYPE_CHECKING:
    from db import Database

    from .runner import RunOutcome

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m hil.run",
                                     description="Run a measurement protocol on a crossbar array.")
    parser.add_argument("protocol", nargs="?", help="protocol YAML file (not needed with --resume)")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help=f"instrument backend: {', '.join(names())}, or a plug-in's name (default: mock; with "
                             f"--resume, the run's own)")
    parser.add_argument("--resume", type=int, default=None, metavar="RUN_ID",
                        help="continue this failed or interrupted run from its first unfinished step, with the "
                             "protocol stored with it")
    parser.add_argument("--db", metavar="URL", default=None,
                        help="database URL (default: $HIL_DB_URL, else sqlite:///hil.db)")
    parser.add_argument("--create-db", action="store_true",
                        help="create the SQLite file's directory if it does not exist (without this a missing "
                             "directory is refused: a mistyped path would start a second history)")
    parser.add_argument("--resource", default=None, metavar="STRING",
                        help="where the bench instrument is: for --backend serial a port or pyserial URL "
                             "(socket://127.0.0.1:7000 for python -m drivers.emulate serial); for --backend visa "
                             "the SMU's VISA resource (TCPIP::host::5025::SOCKET; python -m drivers.emulate smu "
                             "prints one); for --backend arc2 "
                             "ID[:FIRMWARE] (board id from pyarc2.find_ids() or auto, firmware file path)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the run: random patterns and the mock's noise (the simulated chip is the "
                             "protocol's mock.seed)")
    parser.add_argument("--array", default=None, metavar="NAME",
                        help="file the run under this array name (default: the protocol's array.name, else the id "
                             "the instrument reports)")
    parser.add_argument("--operator", default=None, metavar="NAME", help="who runs it (default: the protocol's)")
    parser.add_argument("--notes", default=None, metavar="TEXT", help="kept with the run")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                        help=f"refuse a protocol a step of which would need more memory than this (default: "
                             f"${BUDGET_ENV}, else {DEFAULT_BUDGET_BYTES >> 30} GiB)")
    parser.add_argument("--report-dir", default="reports", metavar="DIR",
                        help="where calibration reports are written (default: ./reports)")
    parser.add_argument("--log", default=None, metavar="FILE",
                        help="also append the run's progress to FILE as plain timestamped lines (the terminal "
                             "keeps its progress bars)")
    return parser


class BadInput(ValueError):
    """The input (arguments, protocol, backend, database) cannot be used; nothing was run or recorded."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs and CI are not terminals; give them room for the table instead of rich's 80 columns.
    out = Console(width=None if sys.stdout.isatty() else 120)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    try:
        outcome, db_url = _run(args, err)
    except BadInput as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    from .summary import print_summary
    print_summary(outcome, outcome.protocol_name, db_url, out)
    if outcome.status == "completed":
        return EXIT_OK
    return EXIT_INTERRUPTED if outcome.status == "interrupted" else EXIT_FAILED


def run_protocol(protocol: str | Path | None = None, **options) -> RunOutcome:
    """Run a protocol file from Python as ``python -m hil.run`` would, and return its outcome.

    Keywords are the command line's options: ``backend``, ``db``, ``seed``, ``resource``, ``array``,
    ``operator``, ``notes``, ``memory_budget`` (GiB), ``create_db``, ``report_dir``, ``log``, ``resume``.
    Raises :class:`BadInput` (one line, nothing run or recorded) where the command would exit 2; a run
    that fails or is interrupted is returned with its status, as the command records it.
    """
    args = build_parser().parse_args([] if protocol is None else [str(protocol)])
    unknown = sorted(set(options) - set(vars(args)) - {"protocol"})
    if unknown:
        raise TypeError(f"run_protocol() got unknown option(s): {', '.join(unknown)}")
    vars(args).update(options)
    outcome, _ = _run(args, Console(stderr=True))
    return outcome


def run_loaded(loaded: LoadedProtocol | None, *, console: Console | None = None,
               run_options: dict | None = None, **options) -> RunOutcome:
    """:func:`run_protocol` for a protocol already loaded and validated (from text kept elsewhere, such as
    a queued job), or, with ``loaded=None`` and ``resume=RUN_ID``, the continuation of that run.

    ``run_options`` are kept in the run's ``options`` beside the backend's (what started it, such as a
    queue's job); ``console`` receives the progress (default: stderr).
    """
    args = build_parser().parse_args([])
    unknown = sorted(set(options) - set(vars(args)) - {"protocol"})
    if unknown:
        raise TypeError(f"run_loaded() got unknown option(s): {', '.join(unknown)}")
    vars(args).update(options)
    outcome, _ = _run(args, console or Console(stderr=True), loaded, run_options)
    return outcome


def _run(args: argparse.Namespace, err: Console, loaded: LoadedProtocol | None = None,
         run_options: dict | None = None) -> tuple[RunOutcome, str]:
    """Check everything, then run (``loaded``, else the file ``args.protocol``); (outcome, database URL
    with its password masked). BadInput if refused."""
    # Everything that can be wrong with the input is found before the database or an instrument is touched
    # (a resumed run's protocol is in the database, so there the database comes first).
    if args.seed is not None and (args.resume is not None or not 0 <= args.seed <= MAX_SEED):
        raise BadInput("--seed cannot be given with --resume: a resumed run keeps its seed" if args.resume is not None
                       else f"--seed must be between 0 and {MAX_SEED} (2**63 - 1, what the database stores), "
                            f"got {args.seed}")
    if args.resume is not None and not 1 <= args.resume <= MAX_SEED:
        raise BadInput(f"--resume takes a run id between 1 and {MAX_SEED}, got {args.resume}")
    try:
        budget = budget_bytes(args.memory_budget)
        labels = _labels(args)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if args.resume is None:
        if loaded is None and args.protocol is None:
            raise BadInput("give a protocol file (or --resume RUN_ID)")
        try:
            loaded = loaded or load_protocol(args.protocol)
            xbar, options = make_backend(args.backend or "mock", loaded.protocol, args.seed, args.resource)
            check_within(loaded, xbar.limits, f"the {args.backend or 'mock'} backend's")
            extras = _extra_arrays(loaded, args.backend or "mock", args.seed, options)
            check_memory(loaded, budget)
            options.update(labels)
            options.update(run_options or {})
        except BackendError as exc:
            raise BadInput(f"{args.protocol or loaded.path}: {exc}") from None
        except ProtocolError as exc:
            raise BadInput(str(exc)) from None
    # Imported only once the input is known to be good: the database layer and the run engine take
    # most of a second to load, which a refused protocol or --help should not wait for.
    from db import Database, DatabaseError, DatabaseMissing
    from db.errors import mask_url
    from db.resume import ResumeRefused

    from .progress import log_file_handler
    from .runner import execute
    try:
        db = Database(args.db, create_dirs=args.create_db)
    except DatabaseMissing as exc:
        raise BadInput(f"{exc} (give --create-db to create it)") from None
    except DatabaseError as exc:
        raise BadInput(str(exc)) from None
    with db:
        backend = args.backend or "mock"
        if args.resume is not None:
            try:
                loaded, backend, resource, seed = _resumable(db, args)
                xbar, options = make_backend(backend, loaded.protocol, seed, resource)
                check_within(loaded, xbar.limits, f"the {backend} backend's")
                extras = _extra_arrays(loaded, backend, seed, options)
                check_memory(loaded, budget)
                options.update(run_options or {})
            except (ResumeError, ResumeRefused, ProtocolError, BackendError) as exc:
                raise BadInput(f"--resume {args.resume}: {exc}") from None
        try:
            log_handler = log_file_handler(args.log) if args.log else None
        except OSError as exc:
            raise BadInput(f"--log {args.log}: {exc.strerror or exc}") from None
        try:
            outcome = execute(loaded, xbar, db, backend=backend, seed=options.get("seed"), options=options,
                              console=err, report_dir=Path(args.report_dir), resume_run_id=args.resume,
                              log_handler=log_handler, extra_crossbars=extras)
        except ResumeRefused as exc:
            raise BadInput(str(exc)) from None
        finally:
            if log_handler is not None:
                log_handler.close()
        return outcome, mask_url(db.url)


def _extra_arrays(loaded, backend: str, seed: int | None, options: dict) -> dict:
    """The crossbars of the protocol's further arrays, each checked against its backend's limits; their
    settings go into the run's ``options`` under ``arrays``."""
    extras = make_extra_backends(loaded.protocol, backend, seed)
    for name, (extra, settings) in extras.items():
        check_within(loaded, extra.limits, f"array {name}'s backend's")
        options.setdefault("arrays", {})[name] = settings
    return {name: extra for name, (extra, _) in extras.items()}


def _labels(args) -> dict[str, str]:
    """What --array, --operator and --notes say, checked as the protocol's fields are; recorded in the run's
    options, where they override the protocol (and a resumed run finds them again)."""
    given = {k: v for k, v in (("array", args.array), ("operator", args.operator), ("notes", args.notes))
             if v is not None}
    if given and args.resume is not None:
        raise ValueError(f"--{next(iter(given))} cannot be given with --resume: a resumed run keeps its labels")
    if "array" in given and not re.fullmatch(ARRAY_NAME_PATTERN, given["array"]):
        raise ValueError(f"--array {given['array']!r}: use letters, digits and _ . : + - only")
    if "operator" in given and (not given["operator"] or not given["operator"].isprintable()):
        raise ValueError("--operator must be printable text on one line")
    return given


def check_memory(loaded: LoadedProtocol, budget: int) -> None:
    """Refuse, before anything runs, a protocol one of whose steps would need more memory than ``budget``."""
    for step in estimate(loaded.protocol):
        if step.bytes > budget:
            raise step_error(loaded, step.index, f"{step.name} needs about {format_bytes(step.bytes)} of memory ({step.detail}), "
                                                 f"more than the budget of {format_bytes(budget)} (--memory-budget "
                                                 f"GIB or ${BUDGET_ENV} to change it)")


class ResumeError(Exception):
    """The run named by --resume cannot be resumed as asked."""


def _resumable(db: Database, args) -> tuple[LoadedProtocol, str, str | None, int | None]:
    """The stored protocol, backend, resource and seed of the run to resume, checked against the arguments."""
    from db.models import Run
    from db.resume import check_resumable

    with db.session() as session:
        run = session.get(Run, args.resume)
        if run is None:
            raise ResumeError(f"there is no run {args.resume} in this database")
        check_resumable(run)
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
