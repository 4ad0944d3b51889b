"""Calibrations from measurements recorded elsewhere, and a calibration's measurements out to a file.

``python -m hil.calibrate import FILE [FILE ...] --array NAME [--db URL]``: read arc2control HDF5 data files,
CSV or .npy files of measurements, store them as a calibration of the array NAME (a run of its own, with
the files' names, sha256 and metadata) and fit its noise model as a live calibration's would be fitted.
A .npy file is given as ``KIND=FILE`` (KIND one of reads, drift, after_reset, after_set; plain FILE: reads).

``python -m hil.calibrate export --run ID OUT.h5 [--step NAME] [--db URL]``: write a run's calibration (its
raw measurements) as an arc2control HDF5 file, which imports back into the same measurements.

Exit status: 0 done; 1 the import was stored but its noise model could not be fitted (the run says why);
2 bad input (a file, an argument, the database), with nothing written.
"""

from __future__ import annotations

import argparse
import re
import sys
from functools import partial
from pathlib import Path

from .cli import OneLineParser

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
NPY_KINDS = ("reads", "drift", "after_reset", "after_set")


class BadInput(ValueError):
    """Nothing was written."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m hil.calibrate",
                           description="Calibrations from measurement files, and out to arc2control HDF5 files.")
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=partial(OneLineParser, help_prog=parser.prog))
    imp = sub.add_parser("import", help="store measurement files as a calibration of an array and fit its noise "
                                        "model")
    imp.add_argument("files", nargs="+", metavar="FILE",
                     help="arc2control .h5/.hdf5, .csv, or .npy (as KIND=FILE.npy: reads, drift, after_reset, "
                          "after_set)")
    imp.add_argument("--array", required=True, metavar="NAME", help="the array's name in the history")
    imp.add_argument("--shape", default=None, metavar="ROWSxCOLS",
                     help="the array's size (default: what the files say; CSV files only bound it)")
    imp.add_argument("--times-s", default=None, metavar="T,T,...",
                     help="times after programming (s) of a .npy drift series")
    imp.add_argument("--read-voltage-v", type=float, default=None, metavar="V",
                     help="read voltage to record where the files give conductances without one")
    imp.add_argument("--retention-start-s", type=float, default=None, metavar="S",
                     help="time after programming of the first read of arc2control retention runs (default: one "
                          "read interval)")
    imp.add_argument("--no-fit", action="store_true", help="store the measurements only")
    imp.add_argument("--report", action="store_true", help="write the calibration report with figures")
    imp.add_argument("--report-dir", default="reports", metavar="DIR")
    imp.add_argument("--operator", default=None, metavar="NAME")
    imp.add_argument("--notes", default=None, metavar="TEXT")
    _db_options(imp)
    exp = sub.add_parser("export", help="write a run's calibration measurements as an arc2control HDF5 file")
    exp.add_argument("--run", type=int, required=True, metavar="ID", help="the run whose calibration to export")
    exp.add_argument("--step", default=None, metavar="NAME", help="its calibrate step (when it has several)")
    exp.add_argument("out", metavar="OUT.h5", help="the file to write")
    exp.add_argument("--force", action="store_true", help="overwrite OUT.h5 if it exists")
    _db_options(exp, create=False)
    return parser


def _db_options(parser, create: bool = True) -> None:
    parser.add_argument("--db", metavar="URL", default=None,
                        help="database URL (default: $HIL_DB_URL, else sqlite:///hil.db)")
    if create:
        parser.add_argument("--create-db", action="store_true",
                            help="create the SQLite file's directory if it does not exist")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "import":
            return _import(args)
        return _export(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _source(args):
    from pydantic import ValidationError

    from .protocol import MeasurementSource

    files = []
    for given in args.files:
        kind, sep, path = given.partition("=")
        if sep and kind in NPY_KINDS:
            files.append({"path": str(Path(path).resolve()), "kind": kind})
        else:
            files.append(str(Path(given).resolve()))
    times = None
    if args.times_s is not None:
        try:
            times = [float(t) for t in args.times_s.split(",")]
        except ValueError:
            raise BadInput(f"--times-s {args.times_s!r}: give times in seconds separated by commas") from None
        files = [dict(f, times_s=times) if isinstance(f, dict) and f["kind"] == "drift" else f for f in files]
        if not any(isinstance(f, dict) and f["kind"] == "drift" for f in files):
            raise BadInput("--times-s is for a .npy drift series, given as drift=FILE.npy")
    for f in files:
        if isinstance(f, dict) and f["kind"] == "drift" and "times_s" not in f:
            raise BadInput(f"{f['path']}: a .npy drift series needs its times after programming (--times-s T,T,...)")
    try:
        return MeasurementSource.model_validate({
            "files": files,
            **({"retention_start_s": float(args.retention_start_s)} if args.retention_start_s is not None else {}),
            **({"read_voltage_v": float(args.read_voltage_v)} if args.read_voltage_v is not None else {})})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadInput(f"{where}: {first['msg']}" if where else first["msg"]) from None


def _shape(text: str | None):
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or not (1 <= int(m.group(1)) <= 4096 and 1 <= int(m.group(2)) <= 4096):
        raise BadInput(f"--shape {text!r}: give ROWSxCOLS, e.g. 32x32 (each 1 to 4096)")
    return int(m.group(1)), int(m.group(2))


def _open_db(args):
    from db import Database, DatabaseError, DatabaseMissing

    try:
        return Database(args.db, create_dirs=getattr(args, "create_db", False))
    except DatabaseMissing as exc:
        raise BadInput(f"{exc} (give --create-db to create it)") from None
    except DatabaseError as exc:
        raise BadInput(str(exc)) from None


def _import(args) -> int:
    from .protocol import ARRAY_NAME_PATTERN

    if not re.fullmatch(ARRAY_NAME_PATTERN, args.array) or len(args.array) > 100:
        raise BadInput(f"--array {args.array!r}: use letters, digits and _ . : + - only")
    source = _source(args)
    shape = _shape(args.shape)
    try:
        imported = source.read(Path.cwd(), shape)
    except ValueError as exc:           # MeasurementFileError: the file and the place
        raise BadInput(str(exc)) from None
    from .measurement_exchange import import_files

    with _open_db(args) as db:
        try:
            outcome = import_files(db, imported, source, array=args.array, fit=not args.no_fit, report=args.report,
                                   report_dir=Path(args.report_dir), operator=args.operator, notes=args.notes)
        except ValueError as exc:       # the array is recorded with another shape: nothing written
            raise BadInput(str(exc)) from None
    names = ", ".join(s["file"] for s in imported.sources)
    print(f"run {outcome.run_id}: {names} imported as a calibration of {args.array} "
          f"({imported.shape[0]}x{imported.shape[1]}; {', '.join(imported.parts) or 'no part'})")
    for note in imported.notes:
        print(f"  note: {note}")
    if outcome.status != "completed":
        print(f"error: {outcome.error}", file=sys.stderr)
        return EXIT_FAILED
    for warning in outcome.summary.get("warnings", []):
        print(f"  warning: {warning}")
    if "noise_model_id" in outcome.summary:
        print(f"  {outcome.detail.split('; warning:')[0]}")
    return EXIT_OK


def _export(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise BadInput(f"{out}: the output is an HDF5 file (.h5 or .hdf5)")
    if out.exists() and not args.force:
        raise BadInput(f"{out} exists (give --force to overwrite it)")
    if not out.parent.is_dir():
        raise BadInput(f"{out}: directory {out.parent} does not exist")
    from .measurement_exchange import ExportError, export_run

    with _open_db(args) as db:
        try:
            written = export_run(db, args.run, out, args.step)
        except ExportError as exc:
            raise BadInput(str(exc)) from None
    tables = ", ".join(t.split("/")[-1].split("_")[0] for t in written["tables"])
    print(f"run {written['run']} ({written['array']}, step {written['step']}) written to {out}: {tables}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
