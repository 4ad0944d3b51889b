"""``python -m hil.history [--db URL] [--format table|csv|json] COMMAND ...``: what the database remembers.

Commands::

    arrays                                   every array, its instrument, run count and last run
    runs [--status S] [--protocol P] [--array A] [--since T] [--until T] [--limit N]
    models [--array A]                       stored noise models, newest first
    model (ID | --latest --array A)          one noise model's parameters, as JSON
    quantities --array A                     the statistics recorded for an array
    trend QUANTITY --array A                 a whole-array statistic over the runs, oldest first
    device ROW COL --array A [--quantity Q]  one device's statistics over the runs
    plot QUANTITY --array A [--out FILE.png] the trend as a figure

Times are UTC: ``--since``/``--until`` take ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM`` (a
date alone in ``--until`` includes that whole day), and are printed in ISO 8601.
Exit status: 0 done, 2 bad input (unknown array, id or quantity, a bad date, a
database that cannot be opened), with one line ``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from db import Database, DatabaseError, history, records
from db.engine import resolve_url
from db.models import STATUSES

EXIT_OK, EXIT_BAD_INPUT = 0, 2
FORMATS = ("table", "csv", "json")

# The columns of each listing, in order, so that an empty result still has a header.
COLUMNS = {
    "arrays": ("array_id", "rows", "cols", "backend", "instrument_id", "runs", "last_run_at"),
    "runs": ("id", "protocol_name", "status", "backend", "array_id", "seed", "started_at", "finished_at",
             "duration_s", "error", "code_version"),
    "models": ("id", "array_id", "run_id", "schema_version", "created_at", "source_runs"),
    "quantities": ("quantity", "table", "unit"),
    "trend": ("run_id", "started_at", "step_name", "value", "unit"),
    "device": ("run_id", "started_at", "quantity", "value"),
}

# A table is read by a person on a terminal: runs leave out what the other views or
# CSV/JSON give (backend: see `arrays`; finished_at: started_at + duration_s).
TABLE_COLUMNS = {**COLUMNS, "runs": ("id", "protocol_name", "status", "array_id", "seed", "started_at",
                                     "duration_s", "error", "code_version")}
# Columns whose text may run long; the others keep one line and these fold.
FOLDING = {"error", "source_runs", "instrument_id", "step_name"}

# Beyond this many points a label per point would bury the plot.
MAX_LABELS = 40


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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m hil.history", description="Query the run database: arrays, runs, "
                     "calibration statistics over time, noise models.")

    def add_common(p: argparse.ArgumentParser, default: Any) -> None:
        # Accepted before or after the command; only the top level sets the defaults.
        p.add_argument("--db", metavar="URL", default=default,
                       help="database URL (default: $HIL_DB_URL, else sqlite:///hil.db)")
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
    device.add_argument("row", type=int)
    device.add_argument("col", type=int)
    device.add_argument("--array", metavar="ARRAY_ID", required=True)
    device.add_argument("--quantity")
    plot = command("plot", "a whole-array statistic over the runs, as a PNG figure")
    plot.add_argument("quantity")
    plot.add_argument("--array", metavar="ARRAY_ID", required=True)
    plot.add_argument("--out", metavar="FILE.png", type=Path,
                      help="where to write the figure (default: QUANTITY-ARRAY.png here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "model" and (args.id is None) == (not args.latest):
        return _reject("give a model ID or --latest --array ARRAY_ID")
    if args.command == "model" and args.latest and not args.array:
        return _reject("--latest needs --array ARRAY_ID")
    out = Console(width=None if sys.stdout.isatty() else 120)
    try:
        database = _open(args.db)
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


def _open(url: str | None) -> Database:
    resolved = resolve_url(url)
    try:
        parsed = make_url(resolved)
    except ArgumentError:
        parsed = None  # Database.open reports it, naming the URL
    if (parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
            and parsed.query.get("mode") != "memory" and not Path(parsed.database).exists()):
        # Opening would create an empty database: a mistyped path would then look like no history.
        raise BadInput(f"no database at {parsed.database} (give one with --db URL or $HIL_DB_URL)")
    return Database.open(resolved)


# --- commands ---------------------------------------------------------------------------------------------


def _arrays(session: Session, args: argparse.Namespace, out: Console) -> None:
    _emit(history.list_arrays(session), "arrays", "arrays", args.format, out)


def _runs(session: Session, args: argparse.Namespace, out: Console) -> None:
    rows = history.list_runs(session, status=args.status, protocol=args.protocol, array_id=args.array,
                             since=args.since, until=args.until, limit=args.limit)
    _emit(rows, "runs", "runs (newest first; times UTC)", args.format, out)


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
    path = args.out or Path(f"{_file_safe(args.quantity)}-{_file_safe(args.array)}.png")
    if not path.parent.is_dir():
        raise BadInput(f"cannot write {path}: no directory {path.parent}")
    plot_trend(rows, args.quantity, args.array, path)
    sys.stdout.write(f"{path}\n")


COMMANDS: dict[str, Callable[[Session, argparse.Namespace, Console], None]] = {
    "arrays": _arrays, "runs": _runs, "models": _models, "model": _model, "quantities": _quantities,
    "trend": _trend, "device": _device, "plot": _plot,
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


def _emit(rows: list[dict[str, Any]], kind: str, title: str, fmt: str, out: Console) -> None:
    columns = COLUMNS[kind]
    if fmt == "json":
        sys.stdout.write(json.dumps([{c: _json_value(row[c]) for c in columns} for row in rows], indent=2) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_csv_value(row[c]) for c in columns] for row in rows)
    else:
        columns = TABLE_COLUMNS[kind]
        table = Table(title=title, title_justify="left")
        for column in columns:
            numeric = bool(rows) and all(isinstance(row[column], (int, float)) or row[column] is None for row in rows)
            table.add_column(column, justify="right" if numeric else "left", overflow="fold",
                             no_wrap=column not in FOLDING)
        for row in rows:
            table.add_row(*(_table_value(row[c]) for c in columns))
        out.print(table)
        if not rows:
            out.print(f"(no {kind})", highlight=False)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no spelling for NaN or infinity
    return value


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


def plot_trend(rows: list[dict[str, Any]], quantity: str, array_id: str, path: Path) -> None:
    """Draw ``rows`` of :func:`db.history.array_trend` against run start time into the PNG ``path``."""
    # Imported here: matplotlib takes a while to load and only this command needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    times = [row["started_at"] for row in rows]
    values = [math.nan if row["value"] is None else row["value"] for row in rows]
    unit = next((row["unit"] for row in rows if row.get("unit")), "")

    figure = Figure(figsize=(9, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(times, values, marker="o", markersize=5, linewidth=1.2, color="tab:blue")
    every = max(1, math.ceil(len(rows) / MAX_LABELS))
    for i, (row, when, value) in enumerate(zip(rows, times, values)):
        if i % every == 0 and math.isfinite(value):
            axes.annotate(f"run {row['run_id']}", (when, value), textcoords="offset points", xytext=(0, 8),
                          ha="center", fontsize=7, color="0.3")
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.set_xlabel("run start (UTC)")
    # "1" is the unit of a ratio; a label "[1]" would puzzle more than it tells.
    axes.set_ylabel(f"{quantity} [{unit}]" if unit not in ("", "1") else quantity)
    runs = len({row["run_id"] for row in rows})
    span = f", {times[0]:%Y-%m-%d} to {times[-1]:%Y-%m-%d}" if times else ""
    axes.set_title(f"{quantity} of array {array_id} over {runs} run{'s' * (runs != 1)}{span}", loc="left")
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.05, y=0.15)
    figure.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
