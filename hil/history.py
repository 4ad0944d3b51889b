"""``python -m hil.history [--db URL] [--format table|csv|json] COMMAND ...``: what the database remembers.

Commands::

    arrays                                   every array, its instrument, run count and last run
    runs [--status S] [--protocol P] [--array A] [--since T] [--until T] [--limit N] [--all]
    models [--array A]                       stored noise models, newest first
    model (ID | --latest --array A)          one noise model's parameters, as JSON
    quantities --array A                     the statistics recorded for an array
    trend QUANTITY --array A                 a whole-array statistic over the runs, oldest first
    device ROW COL --array A [--quantity Q]  one device's statistics over the runs
    plot QUANTITY --array A [--out FILE.png] the trend as a figure (default: in reports/history/)
    export (RUN | latest --array A) [STEP] [--format npy|csv] [--out DIR]
                                             a run's raw measurements and per-device maps as files
    compare (RUN_A RUN_B | --array A) [--any-array] [--out FILE.png]
                                             two calibrations side by side, and their distributions
    checks --array A [RUN]                   a calibration's predictive check on held-out devices
                                             (KS distance, spread ratio, verdict per quantity);
                                             default: the newest run that has one

Times are UTC: ``--since``/``--until`` take ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM`` (a
date alone in ``--until`` includes that whole day), and are printed in ISO 8601.
``runs`` hides the runs that ended before reaching an instrument (no array, no step: a
bench that was off or unplugged); ``--all`` lists them, and the table says how many
were hidden. Tables fit the terminal (or ``$COLUMNS``; 120 characters when writing to a
file or pipe): text columns wrap, ids and numbers never do, and when the columns
cannot all fit side by side each row is printed as a block of ``column  value`` lines.

Exit status: 0 done, 2 bad input (unknown array, id or quantity, a bad date, a
database that cannot be opened), with one line ``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import Database, DatabaseError, DatabaseMissing, history, records
from db.jsonable import jsonable
from db.models import STATUSES

EXIT_OK, EXIT_BAD_INPUT = 0, 2
FORMATS = ("table", "csv", "json")

# The columns of each listing, in order, so that an empty result still has a header.
COLUMNS = {
    "arrays": ("array_id", "rows", "cols", "wafer", "die", "backend", "instrument_id", "runs", "last_run_at"),
    "runs": ("id", "protocol_name", "status", "backend", "array_id", "seed", "started_at", "finished_at",
             "duration_s", "error", "code_version", "progress", "operator", "notes"),
    "models": ("id", "array_id", "run_id", "schema_version", "created_at", "source_runs"),
    "quantities": ("quantity", "table", "unit"),
    "trend": ("run_id", "started_at", "step_name", "value", "unit"),
    "device": ("run_id", "started_at", "quantity", "value"),
    "compare": ("source", "quantity", "unit", "a", "b", "change", "relative_change"),
    "checks": ("run_id", "started_at", "step_name", "quantity", "n", "ks", "spread_ratio", "verdict"),
}

# A table is read by a person on a terminal: runs leave out what the other views or
# CSV/JSON give (backend: see `arrays`; finished_at: started_at + duration_s).
TABLE_COLUMNS = {**COLUMNS, "runs": ("id", "protocol_name", "status", "array_id", "seed", "started_at",
                                     "duration_s", "error", "code_version")}
# Added to a table only when a row has a value (a run still running says where it is): room is short.
TABLE_COLUMNS_WHEN_SET = {"runs": ("operator", "progress")}
# Columns whose text may run long; the others keep one line and these fold.
FOLDING = {"error", "source_runs", "instrument_id", "step_name"}

# Beyond this many points a label per point would bury the plot.
MAX_LABELS = 40

# A folding column is not made narrower than this while the table is laid out side by side.
FOLD_MIN_WIDTH = 16

# Figures go here unless --out says otherwise: not into the working directory, where they
# would mix with the user's own files.
PLOT_DIR = Path("reports") / "history"
EXPORT_DIR = Path("exports")
EXPORT_FORMATS = ("npy", "csv")


class BadInput(Exception):
    """Something the user asked for that cannot be answered; reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    # argparse's usage-then-error output is two or more lines; scripts and logs want one.
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message}\n")
        sys.exit(EXIT_BAD_INPUT)


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or time: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") \
            from None


def _parse_until(text: str) -> datetime:
    moment = _parse_time(text)
    # "--until 2025-03-01" reads as "up to and including the 1st".
    return moment + timedelta(days=1) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()) else moment


# Ids and counts are 64-bit signed in the database; a larger number would fail inside the driver.
_MAX_ID = 2**63 - 1


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    if value > _MAX_ID:
        raise argparse.ArgumentTypeError(f"{value} is larger than any id the database holds (2**63 - 1)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m hil.history", description="Query the run database: arrays, runs, "
                     "calibration statistics over time, noise models.")

    def add_common(p: argparse.ArgumentParser, default: Any) -> None:
        # Accepted before or after the command; only the top level sets the defaults.
        p.add_argument("--db", metavar="URL", default=default,
                       help="database URL (default: $HIL_DB_URL, else sqlite:///hil.db)")
        p.add_argument("--create-db", action="store_true", default=False if default is None else default,
                       help="create the database (an empty one) if it does not exist; without this a missing "
                            "SQLite file is refused, since a mistyped path would look like no history")
        p.add_argument("--format", choices=FORMATS, default="table" if default is None else default,
                       help="output format (default: table)")

    add_common(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_common(sub, argparse.SUPPRESS)
        return sub

    command("arrays", "every array with its instrument, number of runs and last run")
    runs = command("runs", "runs, newest first")
    runs.add_argument("--status", choices=STATUSES)
    runs.add_argument("--protocol", metavar="NAME", help="protocol name")
    runs.add_argument("--array", metavar="ARRAY_ID")
    runs.add_argument("--since", type=_parse_time, metavar="TIME", help="started at or after (UTC)")
    runs.add_argument("--until", type=_parse_until, metavar="TIME",
                      help="started before (UTC); a date alone includes that day")
    runs.add_argument("--limit", type=_count, metavar="N")
    runs.add_argument("--all", action="store_true",
                      help="also the runs that ended before reaching an instrument (hidden by default)")
    models = command("models", "stored noise models, newest first")
    models.add_argument("--array", metavar="ARRAY_ID")
    model = command("model", "one noise model's parameters as JSON")
    model.add_argument("id", type=int, nargs="?", metavar="ID")
    model.add_argument("--latest", action="store_true", help="the newest model of --array")
    model.add_argument("--array", metavar="ARRAY_ID")
    quantities = command("quantities", "the statistics recorded for an array")
    quantities.add_argument("--array", metavar="ARRAY_ID", required=True)
    trend = command("trend", "a whole-array statistic over the runs, oldest first")
    trend.add_argument("quantity")
    trend.add_argument("--array", metavar="ARRAY_ID", required=True)
    device = command("device", "one device's statistics over the runs, oldest first")
    device.add_argument("row", type=_count)
    device.add_argument("col", type=_count)
    device.add_argument("--array", metavar="ARRAY_ID", required=True)
    device.add_argument("--quantity")
    plot = command("plot", "a whole-array statistic over the runs, as a PNG figure")
    plot.add_argument("quantity")
    plot.add_argument("--array", metavar="ARRAY_ID", required=True)
    plot.add_argument("--out", metavar="FILE.png", type=Path,
                      help=f"where to write the figure (default: {PLOT_DIR}/QUANTITY-ARRAY.png)")
    about = ("a run's raw measurements and per-device maps as .npy or .csv files, with an index.json naming "
             "each file's step, quantity, unit and shape")
    # "resolve": its own --format below replaces the listing formats the other commands take.
    export = commands.add_parser("export", help=about, description=about, conflict_handler="resolve")
    add_common(export, argparse.SUPPRESS)
    export.add_argument("run", type=_run_ref, metavar="RUN", help="a run id, or 'latest' (with --array)")
    export.add_argument("step", nargs="?", metavar="STEP", help="only this step (its name)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default=argparse.SUPPRESS, dest="file_format",
                        help="npy (exact, any shape; default) or csv (2-D tables, see each file's header)")
    export.add_argument("--array", metavar="ARRAY_ID", help="with RUN 'latest': the newest completed run of this array")
    export.add_argument("--out", metavar="DIR", type=Path,
                        help=f"a new or empty directory (default: {EXPORT_DIR}/run-RUN[-STEP])")
    compare = command("compare", "two calibrations side by side: every statistic and noise-model parameter "
                      "with its change, and a figure of their per-device distributions")
    compare.add_argument("run_a", type=_count, metavar="RUN_A", nargs="?")
    compare.add_argument("run_b", type=_count, metavar="RUN_B", nargs="?")
    compare.add_argument("--array", metavar="ARRAY_ID",
                         help="without run ids: the two newest completed calibrations of this array")
    compare.add_argument("--any-array", action="store_true",
                         help="allow runs that measured different arrays")
    compare.add_argument("--out", metavar="FILE.png", type=Path,
                         help=f"where to write the figure (default: {PLOT_DIR}/compare-run-A-run-B.png)")
    checks = command("checks", "a calibration's predictive check: per quantity, the KS distance and "
                     "predicted/observed spread ratio on held-out devices, and the verdict")
    checks.add_argument("run", type=_count, nargs="?", metavar="RUN",
                        help="a run id (default: the newest run of --array with a check)")
    checks.add_argument("--array", metavar="ARRAY_ID", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "model" and args.id is not None and not 0 <= args.id <= _MAX_ID:
        return _reject(f"model ID must be between 0 and 2**63 - 1, got {args.id}")
    if args.command == "model" and (args.id is None) == (not args.latest):
        return _reject("give a model ID or --latest --array ARRAY_ID")
    if args.command == "model" and args.latest and not args.array:
        return _reject("--latest needs --array ARRAY_ID")
    # Off a terminal rich would assume 80 columns; a file or pipe has room, unless $COLUMNS says otherwise.
    out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 120)
    try:
        database = _open(args.db, create=args.create_db)
        with database, database.session() as session:
            COMMANDS[args.command](session, args, out)
    except (BadInput, LookupError, ValueError, DatabaseError, OSError) as exc:
        return _reject(str(exc))
    except SQLAlchemyError as exc:
        return _reject(f"database query failed: {type(exc).__name__}: {exc}".splitlines()[0])
    return EXIT_OK


def _reject(message: str) -> int:
    # One line even when a driver's message spans several.
    sys.stderr.write("error: " + " ".join(message.split()) + "\n")
    return EXIT_BAD_INPUT


def _open(url: str | None, create: bool = False) -> Database:
    # A reader creates nothing unless asked: a mistyped path would otherwise look like no history.
    try:
        return Database(url, must_exist=not create, create_dirs=create)
    except DatabaseMissing as exc:
        raise BadInput(f"{exc} (give --create-db to create {'an empty one' if exc.kind == 'file' else 'it'})") from None


# --- commands ---------------------------------------------------------------------------------------------


def _arrays(session: Session, args: argparse.Namespace, out: Console) -> None:
    _emit(history.list_arrays(session), "arrays", "arrays", args.format, out)


def _runs(session: Session, args: argparse.Namespace, out: Console) -> None:
    # A run that never reached an instrument holds only its error: kept in the database (when
    # and why the bench refused is worth knowing), left out of the listing unless asked for.
    filters = {"status": args.status, "protocol": args.protocol, "array_id": args.array, "since": args.since,
               "until": args.until}
    rows = history.list_runs(session, **filters, limit=args.limit, unopened=args.all)
    _emit(rows, "runs", "runs (newest first; times UTC)", args.format, out)
    hidden = 0 if args.all else history.count_unopened_runs(session, **filters)
    if hidden and args.format == "table":
        out.print(f"({hidden} run{'s' * (hidden != 1)} that ended before reaching an instrument "
                  f"{'are' if hidden != 1 else 'is'} hidden; --all lists {'them' if hidden != 1 else 'it'})",
                  highlight=False)


def _models(session: Session, args: argparse.Namespace, out: Console) -> None:
    rows = history.list_noise_models(session, array_id=args.array)
    _emit(rows, "models", "noise models (newest first; times UTC)", args.format, out)


def _model(session: Session, args: argparse.Namespace, out: Console) -> None:
    model = (records.latest_noise_model(session, args.array) if args.latest
             else records.get_noise_model(session, args.id))
    sys.stdout.write(json.dumps(model.params, indent=2) + "\n")


def _quantities(session: Session, args: argparse.Namespace, out: Console) -> None:
    rows = history.array_quantities(session, args.array)
    _emit(rows, "quantities", f"statistics recorded for {args.array}", args.format, out)


def _trend(session: Session, args: argparse.Namespace, out: Console) -> None:
    rows = _trend_rows(session, args.array, args.quantity)
    _emit(rows, "trend", f"{args.quantity} of {args.array} (oldest first; times UTC)", args.format, out)


def _device(session: Session, args: argparse.Namespace, out: Console) -> None:
    rows = history.device_history(session, args.array, args.row, args.col, quantity=args.quantity)
    if not rows and args.quantity is not None:
        _check_quantity(session, args.array, args.quantity, "device_stats")
    _emit(rows, "device", f"device ({args.row}, {args.col}) of {args.array} (oldest first; times UTC)",
          args.format, out)


def _plot(session: Session, args: argparse.Namespace, out: Console) -> None:
    rows = _trend_rows(session, args.array, args.quantity)
    path = _figure_path(args.out, f"{_file_safe(args.quantity)}-{_file_safe(args.array)}.png")
    plot_trend(rows, args.quantity, args.array, path)
    sys.stdout.write(f"{path}\n")


def _figure_path(given: Path | None, name: str) -> Path:
    """``given``, whose directory must exist (a mistyped one is not created), or ``name`` in PLOT_DIR."""
    if given is not None:
        if not given.parent.is_dir():
            raise BadInput(f"cannot write {given}: no directory {given.parent}")
        return given
    PLOT_DIR.mkdir(parents=True, exist_ok=True)
    return PLOT_DIR / name


def _run_ref(text: str) -> int | str:
    if text == "latest":
        return text
    return _count(text)


def _export(session: Session, args: argparse.Namespace, out: Console) -> None:
    if args.run == "latest":
        if not args.array:
            raise BadInput("export latest needs --array ARRAY_ID")
        newest = history.latest_runs(session, args.array, 1)
        if not newest:
            raise BadInput(f"array {args.array!r} has no completed run")
        args.run = newest[0]
    elif args.array:
        raise BadInput("--array goes with RUN 'latest'; a run id names its run already")
    run = history.get_run(session, args.run)
    steps = list(dict.fromkeys(step["name"] for step in run["steps"]))
    if args.step is not None and args.step not in steps:
        raise BadInput(f"run {run['id']} has no step {args.step!r}; its steps: {', '.join(steps) or '(none)'}")
    measurements = history.run_measurements(session, run["id"], step=args.step)
    maps = history.run_device_stats(session, run["id"], step=args.step)
    if not measurements and not maps:
        where = f" in step {args.step!r}" if args.step is not None else ""
        raise BadInput(f"run {run['id']} ({run['status']}) stored no measurements{where}: nothing to export")
    directory = args.out or EXPORT_DIR / (f"run-{run['id']}" + (f"-{_file_safe(args.step)}" if args.step else ""))
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        # Writing into an earlier export would mix two sets of files under one index.
        raise BadInput(f"{directory} already exists and is not an empty directory; remove it or give --out DIR")
    directory.mkdir(parents=True, exist_ok=True)
    index = export_run(run, measurements, maps, directory, getattr(args, "file_format", "npy"))
    sys.stdout.write(f"{index}\n")


def _compare(session: Session, args: argparse.Namespace, out: Console) -> None:
    if (args.run_a is None) != (args.run_b is None) or (args.run_a is None) == (args.array is None):
        raise BadInput("give two run ids (RUN_A RUN_B), or --array ARRAY_ID for its two newest calibrations")
    if args.array is not None:
        latest = history.latest_runs(session, args.array, 2, calibrations=True)
        if len(latest) < 2:
            raise BadInput(f"array {args.array!r} has {len(latest)} completed calibration(s); compare needs two")
        args.run_a, args.run_b = latest
    rows = history.compare_runs(session, args.run_a, args.run_b, any_array=args.any_array)
    runs = [history.get_run(session, run_id) for run_id in (args.run_a, args.run_b)]
    maps = [{m["quantity"]: m["values"] for m in history.run_device_stats(session, run["id"])} for run in runs]
    path = _figure_path(args.out, f"compare-run-{runs[0]['id']}-run-{runs[1]['id']}.png")
    labels = [f"run {run['id']} ({run['started_at']:%Y-%m-%d %H:%M})" for run in runs]
    arrays = " and ".join(dict.fromkeys(str(run["array_id"]) for run in runs))
    title = f"A: {labels[0]} against B: {labels[1]} on {arrays}; change = B - A, relative to A"
    if args.format == "table":
        # A person reads "+1.25%" at a glance; CSV and JSON keep the ratio with every digit.
        rows = [{**row, "relative_change": None if row["relative_change"] is None
                 else f"{100 * row['relative_change']:+.3g}%"} for row in rows]
    _emit(rows, "compare", title, args.format, out,
          headers={"a": f"A: run {runs[0]['id']}", "b": f"B: run {runs[1]['id']}", "relative_change": "relative"})
    drawn = plot_compare(maps, labels, arrays, path)
    # Only the rows go to stdout in CSV and JSON, so that a script can read them as they are.
    note = f"figure: {path}" if drawn else "figure: none (neither run recorded per-device statistics)"
    if args.format == "table":
        out.print(note, highlight=False, soft_wrap=True)
    else:
        sys.stderr.write(note + "\n")


def _checks(session: Session, args: argparse.Namespace, out: Console) -> None:
    rows = history.calibration_checks(session, args.array, args.run)
    title = f"predictive check of {args.array}, run {rows[0]['run_id']} (held-out devices; times UTC)"
    _emit(rows, "checks", title, args.format, out)


COMMANDS: dict[str, Callable[[Session, argparse.Namespace, Console], None]] = {
    "arrays": _arrays, "runs": _runs, "models": _models, "model": _model, "quantities": _quantities,
    "trend": _trend, "device": _device, "plot": _plot, "export": _export, "compare": _compare,
    "checks": _checks,
}


def _trend_rows(session: Session, array_id: str, quantity: str) -> list[dict[str, Any]]:
    rows = history.array_trend(session, array_id, quantity)
    if not rows:
        _check_quantity(session, array_id, quantity, "array_stats")
    return rows


def _check_quantity(session: Session, array_id: str, quantity: str, table: str) -> None:
    known = [q["quantity"] for q in history.array_quantities(session, array_id) if q["table"] == table]
    if quantity not in known:
        kind = "whole-array" if table == "array_stats" else "per-device"
        raise BadInput(f"array {array_id!r} has no {kind} statistic {quantity!r}; "
                       f"recorded: {', '.join(known) or '(none)'}")


# --- output -----------------------------------------------------------------------------------------------


def _emit(rows: list[dict[str, Any]], kind: str, title: str, fmt: str, out: Console,
          headers: dict[str, str] | None = None) -> None:
    columns = COLUMNS[kind]
    if fmt == "json":
        sys.stdout.write(json.dumps([{c: jsonable(row[c]) for c in columns} for row in rows], indent=2) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_csv_value(row[c]) for c in columns] for row in rows)
    else:
        columns = TABLE_COLUMNS[kind] + tuple(c for c in TABLE_COLUMNS_WHEN_SET.get(kind, ())
                                              if any(row[c] is not None for row in rows))
        out.print(_table(rows, columns, title, out.width, headers or {}))
        if not rows:
            out.print(f"(no {kind})", highlight=False)


def _table(rows: list[dict[str, Any]], columns: Sequence[str], title: str, width: int,
           headers: dict[str, str]) -> Table:
    """``rows`` as a table ``width`` characters wide at most, in which nothing is cut off.

    Side by side when every column fits at its full width, folding columns (``FOLDING``)
    at no less than ``FOLD_MIN_WIDTH``: rich would otherwise narrow every column alike
    when space runs short, ids included, down to nothing. When they cannot fit, one
    block of ``column  value`` lines per row, whatever the width.
    """
    cells = [[_table_value(row[c]) for c in columns] for row in rows]
    names = [headers.get(c, c) for c in columns]
    full = [max([cell_len(name), *(cell_len(line) for cell in column for line in cell.splitlines() or [""])])
            for name, column in zip(names, zip(*cells) if cells else [()] * len(columns))]
    folding = [c in FOLDING for c in columns]
    fixed = sum(w for w, f in zip(full, folding) if not f)
    chrome = 3 * len(columns) + 1  # a border and a space either side of every column
    room = width - fixed - chrome
    wanted = [min(w, max(FOLD_MIN_WIDTH, cell_len(name))) for w, f, name in zip(full, folding, names) if f]
    if room >= sum(wanted):
        widths = _share(room, full, folding)
        table = Table(title=title, title_justify="left")
        for column, name, w, f in zip(columns, names, widths, folding):
            numeric = bool(rows) and all(isinstance(row[column], (int, float)) or row[column] is None for row in rows)
            table.add_column(name, justify="right" if numeric else "left", overflow="fold", no_wrap=not f, width=w)
        for row_cells in cells:
            table.add_row(*row_cells)
        return table
    label = max(cell_len(name) for name in names)
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(no_wrap=True, style="bold", width=label)
    table.add_column(overflow="fold", width=max(1, width - label - 7))
    if not cells:
        table.add_row("columns", ", ".join(names))  # an empty listing still says what it would hold
    for i, row_cells in enumerate(cells):
        if i:
            table.add_section()
        for name, cell in zip(names, row_cells):
            table.add_row(name, cell)
    return table


def _share(room: int, full: list[int], folding: list[bool]) -> list[int]:
    """Column widths: the fixed columns at ``full``; ``room`` shared among the folding ones, each
    given at most what it needs, the narrow ones first so that what they leave goes to the wide."""
    widths = list(full)
    order = sorted((i for i, f in enumerate(folding) if f), key=lambda i: full[i])
    for n, i in enumerate(order):
        widths[i] = min(full[i], room // (len(order) - n))
        room -= widths[i]
    return widths


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)  # every digit, so a reader gets back the stored number
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _table_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", text)


def export_run(run: dict[str, Any], measurements: list[dict[str, Any]], maps: list[dict[str, Any]], directory: Path,
               fmt: str) -> Path:
    """Write each of a run's stored arrays (rows of :func:`db.history.run_measurements`) and per-device
    maps (rows of :func:`db.history.run_device_stats`) into ``directory`` as ``STEP/NAME.npy`` or
    ``.csv``, and an ``index.json`` naming each file's step, quantity, unit, shape and metadata (the
    times of a drift trace, the amplitudes of a pulse train). Returns the index's path.

    npy keeps the array exactly (dtype and shape). csv is a 2-D table with ``#`` header lines: a
    1-D array is one column, a 2-D one as it is, a higher one has its leading axes flattened into
    rows in C order, which the header spells out; numbers are written with every digit.
    """
    import numpy as np

    files = []

    def folder(step_name: str | None, attempt: int | None) -> Path:
        name = _file_safe(step_name) if step_name is not None else "run"
        # A resumed run may have measured the same step twice; neither attempt overwrites the other.
        return Path(name if (attempt or 1) == 1 else f"{name}.attempt{attempt}")

    entries = [(m, "measurement", m["name"], m["unit"], m["kind"], m["meta"], m["array"]) for m in measurements]
    # Per-device statistics carry their unit in their name (g_max_s: siemens); the map itself is (rows, cols).
    entries += [(m, "device_stats", m["quantity"], None, "device_map", None, (lambda v=m["values"]: v)) for m in maps]
    for row, source, quantity, unit, kind, meta, load in entries:
        array = np.asarray(load())
        prefix = "device_stats." if source == "device_stats" else ""
        relative = folder(row["step_name"], row["attempt"]) / f"{prefix}{_file_safe(quantity)}.{fmt}"
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"file": relative.as_posix(), "step": row["step_name"], "attempt": row["attempt"], "source": source,
                 "quantity": quantity, "kind": kind, "unit": unit, "shape": list(array.shape),
                 "dtype": str(array.dtype), "meta": meta}
        if fmt == "npy":
            np.save(path, array, allow_pickle=False)
        else:
            entry["layout"] = _write_csv(path, array, f"run {run['id']}, step {row['step_name'] or '-'}: {quantity} "
                                         f"({kind}{', ' + unit if unit else ''})")
        files.append(entry)
    index = directory / "index.json"
    header = {"run": run["id"], "protocol": run["protocol_name"], "status": run["status"], "array_id": run["array_id"],
              "started_at": jsonable(run["started_at"]), "format": fmt, "files": files}
    index.write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
    return index


def _write_csv(path: Path, array: Any, what: str) -> str:
    """``array`` as a CSV table in ``path`` under ``#`` lines saying what it is; returns the layout line."""
    import numpy as np

    shape = array.shape
    table = array.reshape(1, 1) if array.ndim == 0 else array.reshape(-1, 1) if array.ndim == 1 \
        else array.reshape(-1, shape[-1])
    if array.ndim <= 2:
        layout = f"shape {tuple(shape)}: {table.shape[0]} rows x {table.shape[1]} columns as stored"
    else:
        lead = ", ".join(f"i{k}" for k in range(array.ndim - 1))
        layout = (f"shape {tuple(shape)} flattened to {table.shape[0]} rows x {table.shape[1]} columns: row r holds "
                  f"({lead}) = numpy.unravel_index(r, {tuple(shape[:-1])}) (C order), column j is index j of the last "
                  f"axis; numpy.loadtxt(file, delimiter=',').reshape{tuple(shape)} gives the array back")
    kind = array.dtype.kind
    # %.17g gives back every float64 exactly; integers and flags are written as integers.
    fmt = "%d" if kind in "biu" else "%.17g" if kind == "f" else "%s"
    data = table.astype(np.int64) if kind == "b" else table
    np.savetxt(path, data, fmt=fmt, delimiter=",", header=f"{what}\n{layout}", comments="# ")
    return layout


def _is_fraction(quantity: str, unit: str) -> bool:
    """A statistic that is a share of the devices (a yield, a stuck rate): it lives in [0, 1]."""
    return unit in ("", "1") and re.search(r"(^|_)(yield|rate|fraction)($|_)", quantity) is not None


def trend_figure(rows: list[dict[str, Any]], quantity: str, array_id: str) -> Any:
    """The matplotlib Figure of ``rows`` of :func:`db.history.array_trend` against run start time."""
    # Imported here: matplotlib takes a while to load and only the figures need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    times = [row["started_at"] for row in rows]
    values = [math.nan if row["value"] is None else row["value"] for row in rows]
    unit = next((row["unit"] for row in rows if row.get("unit")), "")
    fraction = _is_fraction(quantity, unit)

    figure = Figure(figsize=(9, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(times, values, linewidth=1, color="tab:blue", alpha=0.6, zorder=1)
    completed = [(t, v) for row, t, v in zip(rows, times, values) if row.get("status", "completed") == "completed"]
    unfinished = [(t, v) for row, t, v in zip(rows, times, values) if row.get("status", "completed") != "completed"]
    if completed:
        axes.plot(*zip(*completed), "o", markersize=6, color="tab:blue", label="run completed", zorder=2)
    if unfinished:
        # Measured, but the run did not finish: the value stands, with a question mark.
        axes.plot(*zip(*unfinished), "o", markersize=7, markerfacecolor="white", markeredgecolor="tab:red",
                  markeredgewidth=1.5, label="run failed or interrupted later", zorder=2)
    every = max(1, math.ceil(len(rows) / MAX_LABELS))
    for i, (row, when, value) in enumerate(zip(rows, times, values)):
        if i % every == 0 and math.isfinite(value):
            axes.annotate(f"run {row['run_id']}", (when, value), textcoords="offset points", xytext=(0, 8),
                          ha="center", fontsize=8, color="0.3")
    _date_axis(axes, times)
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        pad = (high - low) or max(abs(high) * 0.05, 1e-3 if fraction else 1e-12)
        bottom, top = low - 0.2 * pad, high + 0.35 * pad   # more room above, for the run labels
        if fraction:
            bottom, top = max(0.0, bottom), min(1.0, top)
        axes.set_ylim(bottom, top)
    if fraction:
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.set_ylabel(f"{quantity} (% of devices)")
    else:
        # "1" is the unit of a ratio; a label "[1]" would puzzle more than it tells.
        axes.set_ylabel(f"{quantity} [{unit}]" if unit not in ("", "1") else quantity)
    runs = len({row["run_id"] for row in rows})
    span = f", {times[0]:%Y-%m-%d} to {times[-1]:%Y-%m-%d}" if times else ""
    axes.set_title(f"{quantity} of array {array_id} over {runs} run{'s' * (runs != 1)}{span}", loc="left")
    axes.grid(True, alpha=0.3)
    if unfinished:
        axes.legend(loc="best", fontsize=9)
    return figure


def _date_axis(axes: Any, times: list[datetime]) -> None:
    """Ticks of one kind only: whole days when the runs span days, else clock times (with seconds only
    when they span minutes), so that dates, hours and seconds never share one axis."""
    from matplotlib.dates import AutoDateLocator, DateFormatter, DayLocator

    span = (max(times) - min(times)) if times else timedelta(0)
    axes.margins(x=0.05)
    if span >= timedelta(days=2) or span == timedelta(0):
        days = max(1, span.days)
        axes.xaxis.set_major_locator(DayLocator(interval=max(1, math.ceil(days / 8))))
        axes.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
        axes.set_xlabel("run start (UTC date)")
        return
    axes.xaxis.set_major_locator(AutoDateLocator(minticks=3, maxticks=8))
    seconds = span < timedelta(minutes=10)
    same_day = min(times).date() == max(times).date()
    axes.xaxis.set_major_formatter(DateFormatter(("%H:%M:%S" if seconds else "%H:%M") if same_day
                                                 else "%m-%d %H:%M"))
    day = f" on {min(times):%Y-%m-%d}" if same_day else f", {min(times):%Y-%m-%d} to {max(times):%Y-%m-%d}"
    axes.set_xlabel(f"run start (UTC{day})")


def plot_trend(rows: list[dict[str, Any]], quantity: str, array_id: str, path: Path) -> Any:
    """Draw ``rows`` of :func:`db.history.array_trend` against run start time into the PNG ``path``;
    returns the Figure."""
    figure = trend_figure(rows, quantity, array_id)
    figure.savefig(path)
    return figure


def _flag(values: Any) -> bool:
    import numpy as np

    finite = values[np.isfinite(values)]
    return finite.size > 0 and bool(np.isin(finite, (0.0, 1.0)).all())


def compare_figure(maps: Sequence[dict[str, Any]], labels: Sequence[str], arrays: str) -> Any:
    """Per-device distributions of two runs overlaid, one panel per quantity; None if there are none.

    ``maps``: for each run, quantity -> (rows, cols) values (per-device statistics). Both runs
    share each panel's bins, so that a shift is a shift and not a binning artefact. Flags
    (stuck_on, ...) are counted in the title instead of drawn.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    quantities = list(dict.fromkeys(q for m in maps for q in m))
    flags = [q for q in quantities if all(_flag(m[q]) for m in maps if q in m)]
    drawn = [q for q in quantities if q not in flags]
    if not drawn:
        return None
    cols = min(3, len(drawn))
    rows = math.ceil(len(drawn) / cols)
    figure = Figure(figsize=(4.6 * cols, 3.6 * rows + 0.6), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    colors = ("tab:blue", "tab:orange")
    for k, quantity in enumerate(drawn):
        axes = figure.add_subplot(rows, cols, k + 1)
        # Per-device quantities carry their unit in their name; "_s" is siemens, drawn in µS.
        scale, unit = (1e6, "µS") if quantity.endswith("_s") else (1.0, "")
        samples = [m[quantity][np.isfinite(m[quantity])] * scale if quantity in m else np.array([]) for m in maps]
        pooled = np.concatenate(samples)
        if pooled.size == 0:
            axes.set_title(f"{quantity}: no values", fontsize=10)
            continue
        # The central 99% sets the range: a few stuck devices far out would otherwise squeeze the
        # distribution of all the others into one bar. How many lie outside is said in the title.
        low, high = np.percentile(pooled, [0.5, 99.5])
        central = pooled[(pooled >= low) & (pooled <= high)]
        bins = len(np.histogram_bin_edges(central, bins="fd")) - 1 if high > low else 20
        edges = np.linspace(low, high, int(np.clip(bins, 20, 120)) + 1) if high > low else 20
        medians, outside = [], 0
        for sample, label, color in zip(samples, ("A", "B"), colors):
            if sample.size:
                axes.hist(sample, bins=edges, histtype="step", linewidth=1.5, color=color,
                          label=f"{label}: {sample.size} devices")
                medians.append(float(np.median(sample)))
                axes.axvline(medians[-1], color=color, linestyle="--", linewidth=1)
                outside += int(((sample < low) | (sample > high)).sum())
        change = ""
        if len(medians) == 2 and medians[0]:
            change = f", median {100 * (medians[1] - medians[0]) / abs(medians[0]):+.2f}%"
        beyond = f"\n({outside} values outside the central 99% not drawn)" if outside else ""
        axes.set_title(f"{quantity}{change}{beyond}", fontsize=10, loc="left")
        name = quantity[:-2] if unit else quantity
        axes.set_xlabel(f"{name} ({unit})" if unit else name)
        axes.set_ylabel("devices")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    counts = "; ".join(f"{q}: " + " → ".join(str(int(np.nansum(m[q]))) if q in m else "-" for m in maps)
                       for q in flags)
    figure.suptitle(f"Per-device statistics of {arrays}: A = {labels[0]}, B = {labels[1]} (dashed: medians)"
                    + (f"\n{counts} devices" if counts else ""), fontsize=11)
    return figure


def plot_compare(maps: Sequence[dict[str, Any]], labels: Sequence[str], arrays: str, path: Path) -> bool:
    """Write :func:`compare_figure` to the PNG ``path``; False (nothing written) if there was nothing to draw."""
    figure = compare_figure(maps, labels, arrays)
    if figure is None:
        return False
    figure.savefig(path)
    return True


if __name__ == "__main__":
    sys.exit(main())
