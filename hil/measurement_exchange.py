"""Measurements recorded elsewhere, into the database as a calibration; a calibration's raw measurements out.

An import is a run of its own (backend ``import``) with one ``calibrate`` step whose raw arrays are the
files' measurements, stored under the names a live calibration uses, each with its provenance in its
``meta["source"]`` (file name, sha256, format, dataset or columns, the file's timestamps); the run keeps
the files' list in its options and a protocol text that describes the import. The same fits as for a
live calibration then make its noise model (:func:`hil.steps.calibrate.conclude`).

Nothing is written for a file that cannot be read: files are read in full before the database is opened
(:func:`calibration.measurement_files.read_measurements`). The raw arrays of an import are stored in one
transaction; a failure after them marks the run and its step failed with the reason, as any run.

An export writes a stored calibration's raw measurements as an arc2control HDF5 file
(:func:`calibration.arc2_h5.write_arc2`), which imports back into the same measurements.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from calibration.measurement_files import Imported
from calibration.raw import calibration_from_raw, device_stats, raw_arrays
from db import Database, records, runs
from db.models import COMPLETED, FAILED, CrossbarArray, Measurement, Run, RunStep

from .protocol import CalibrateStep, MeasurementSource
from .version import code_version

BACKEND = "import"


def _origin(imported: Imported, name: str) -> dict[str, Any] | None:
    part = name.split(".")[0]
    origin = imported.origins.get(part)
    if origin is None:
        return None
    if part == "window" and "file" not in origin:
        # the reads after RESET and after SET from different files
        return origin.get(name.split(".")[1])
    return origin


def store_imported(db: Database, run: Run, step: RunStep, array: CrossbarArray, imported: Imported) -> None:
    """Every raw array of ``imported`` (fits of ``fit_measured`` made) and the records no fit uses, each
    with its provenance, and the per-device statistics, in one transaction."""
    from .steps.calibrate import finite_or_nan

    cal = imported.calibration
    with db.session() as session:
        for raw in raw_arrays(cal):
            meta = {**raw.meta, "source": _origin(imported, raw.name)}
            records.add_measurement(session, run, step, raw.name, raw.kind, raw.unit, raw.values,
                                    crossbar_array=array, meta=meta)
        for raw in imported.extra:
            records.add_measurement(session, run, step, raw.name, raw.kind, raw.unit, raw.values,
                                    crossbar_array=array, meta=raw.meta)
        devices = device_stats(cal)
        if devices:
            records.add_device_stats(session, run, step, array, {k: finite_or_nan(v) for k, v in devices.items()})


def describe_import(imported: Imported) -> dict[str, Any]:
    """The start of an imported calibration's step summary: the files, the parts found, what was noted."""
    return {"stages": imported.parts, "source": imported.sources, "origins": imported.origins,
            "notes": imported.notes}


def import_protocol_text(name: str, array: str, shape: tuple[int, int], source: MeasurementSource,
                         fit: bool, report: bool) -> str:
    """A protocol equivalent to an import from the command line, stored as the run's protocol."""
    doc = {"name": name, "array": {"rows": shape[0], "cols": shape[1], "name": array},
           "steps": [{"kind": "calibrate", "name": "import", "fit": fit, "report": report,
                      "source": source.model_dump(exclude_defaults=True)}]}
    return json.dumps(doc, indent=2) + "\n"


@dataclass
class ImportOutcome:
    run_id: int
    step_id: int
    status: str
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    detail: str = ""


def import_files(db: Database, imported: Imported, source: MeasurementSource, *, array: str, fit: bool = True,
                 report: bool = False, report_dir: Path = Path("reports"), operator: str | None = None,
                 notes: str | None = None, rng: np.random.Generator | None = None) -> ImportOutcome:
    """Store ``imported`` (read from ``source``) as a calibration of the array named ``array`` in a run of its
    own, and fit its noise model. Raises ValueError, with nothing written, if the array is recorded with
    another shape; a failure after the run is started is recorded in it (status "failed") and returned."""
    from calibration.pipeline import fit_measured

    from .steps.calibrate import conclude

    step_options = CalibrateStep(name="import", source=source, fit=fit, report=report)
    text = import_protocol_text("import", array, imported.shape, source, fit, report)
    formats = sorted({s["format"] for s in imported.sources})
    with db.session() as session:
        instrument = records.get_or_create_instrument(session, BACKEND, "file:" + "+".join(formats),
                                                      model=", ".join(formats), firmware="")
        crossbar_array = records.get_or_create_array(session, instrument, array, *imported.shape)
        run = runs.start_run(session, protocol_name="import", protocol_path=None, protocol_text=text,
                                backend=BACKEND, seed=None, code_version=code_version(),
                                options={"array": array, "import": imported.sources},
                                crossbar_array=crossbar_array, operator=operator, notes=notes)
        row = runs.start_step(session, run, 0, "import", "calibrate")
    outcome = ImportOutcome(run.id, row.id, "running")
    try:
        fit_measured(imported.calibration)
        store_imported(db, run, row, crossbar_array, imported)
        step_report = conclude(db, run, row, crossbar_array, imported.calibration, step_options,
                               rng=rng or np.random.default_rng(0), report_dir=report_dir,
                               summary=describe_import(imported), missing=imported.missing())
    except Exception as exc:  # the import's failure is recorded with it, as a run's would be
        error = f"{type(exc).__name__}: {exc}"
        with db.session() as session:
            runs.finish_step(session, row, FAILED, error=error, summary=describe_import(imported))
            runs.finish_run(session, run, FAILED, error)
        outcome.status, outcome.error = FAILED, error
        return outcome
    with db.session() as session:
        runs.finish_step(session, row, COMPLETED, summary=step_report.summary)
        runs.finish_run(session, run, COMPLETED)
    outcome.status, outcome.summary, outcome.detail = COMPLETED, step_report.summary, step_report.detail
    return outcome


# --------------------------------------------------------------------------- export

class ExportError(LookupError):
    """The run has no calibration to export (or not the one asked for)."""


def calibration_step(session, run_id: int, step_name: str | None = None) -> RunStep:
    """The calibrate step of run ``run_id`` whose measurements to export: the one named ``step_name``, or
    the run's only one (its last attempt)."""
    run = session.get(Run, int(run_id))
    if run is None:
        raise ExportError(f"there is no run {run_id} in this database")
    latest = runs.latest_attempts(session, run)
    steps = [s for s in latest.values() if s.kind == "calibrate"]
    if step_name is not None:
        steps = [s for s in steps if s.name == step_name]
    with_data = [s for s in steps if session.scalar(select(Measurement.id).where(Measurement.step_fk == s.id)
                                                    .limit(1)) is not None]
    if not with_data:
        what = f"a calibrate step named {step_name!r}" if step_name else "a calibrate step"
        raise ExportError(f"run {run_id} has no {what} with stored measurements")
    if len(with_data) > 1:
        raise ExportError(f"run {run_id} has {len(with_data)} calibrate steps ({', '.join(s.name for s in with_data)}): "
                          f"name one with --step")
    return with_data[0]


def load_calibration(session, step: RunStep):
    """The Calibration of a stored calibrate step's raw measurements (calibration.raw.calibration_from_raw)."""
    arrays = {}
    for m in session.scalars(select(Measurement).where(Measurement.step_fk == step.id).order_by(Measurement.id)):
        arrays[m.name] = (records.load_measurement_array(m), m.meta)
    return calibration_from_raw(arrays)


def export_run(db: Database, run_id: int, out: str | os.PathLike, step_name: str | None = None) -> dict[str, Any]:
    """Write run ``run_id``'s calibration (raw measurements) to ``out`` as an arc2control HDF5 file; returns
    what was written (tables, array, step)."""
    from calibration.arc2_h5 import write_arc2

    with db.session() as session:
        step = calibration_step(session, run_id, step_name)
        run = session.get(Run, int(run_id))
        array = runs.array_id_of(session, run)
        cal = load_calibration(session, step)
        attrs = {"hil_array": array, "hil_run": int(run_id), "hil_step": step.name,
                 "hil_protocol_sha256": run.protocol_hash, "hil_code_version": run.code_version,
                 "hil_started_at": run.started_at.isoformat() if run.started_at else None}
    if cal.window is None and cal.read_noise is None and cal.programming is None and cal.drift is None:
        raise ExportError(f"run {run_id}, step {step.name}: no window, programming, read-noise or drift measurement "
                          f"to export")
    tables = write_arc2(out, cal, title=f"{array or 'array'} run {run_id} {step.name}", attrs=attrs)
    return {"file": str(out), "tables": tables, "array": array, "step": step.name, "run": int(run_id)}
