"""Writing a run's provenance and results: the calls the run engine makes.

Every function takes the caller's ``Session`` and flushes, so new rows have their ids
at once, but never commits: the caller decides what one transaction covers.
Objects from an earlier, closed session may be passed back in; they are re-attached.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db.arrays import decode_array, encode_array, summarize
from db.models import (FINAL_STATUSES, RUNNING, CrossbarArray, DeviceResult, Instrument, Measurement, Run,
                       RunStep)
from db.timestamps import utcnow


def protocol_hash(protocol_text: str) -> str:
    """sha256 (hex) of the protocol text as UTF-8, to find runs of the same protocol."""
    return hashlib.sha256(protocol_text.encode("utf-8")).hexdigest()


def get_or_create_instrument(session: Session, backend: str, instrument_id: str, model: str,
                             firmware: str) -> Instrument:
    """The instrument row for (``backend``, ``instrument_id``), created if new.

    ``model`` and ``firmware`` are refreshed to the values given: the row describes the
    instrument as last seen (a firmware update does not make it a different instrument).
    """
    instrument = session.scalars(
        select(Instrument).where(Instrument.backend == backend, Instrument.instrument_id == instrument_id)
    ).one_or_none()
    if instrument is None:
        instrument = Instrument(backend=backend, instrument_id=instrument_id, model=model, firmware=firmware)
        session.add(instrument)
    else:
        instrument.model = model
        instrument.firmware = firmware
    session.flush()
    return instrument


def get_or_create_array(session: Session, instrument: Instrument, array_id: str, rows: int,
                        cols: int) -> CrossbarArray:
    """The array row for ``array_id``, created on ``instrument`` if new.

    Raises ``ValueError`` if the array is known with another shape: the same id for
    a different array would mix the histories of two devices.
    """
    crossbar_array = session.scalars(select(CrossbarArray).where(CrossbarArray.array_id == array_id)).one_or_none()
    if crossbar_array is None:
        crossbar_array = CrossbarArray(array_id=array_id, instrument_fk=instrument.id, rows=int(rows),
                                       cols=int(cols))
        session.add(crossbar_array)
        session.flush()
    elif (crossbar_array.rows, crossbar_array.cols) != (rows, cols):
        raise ValueError(f"array {array_id!r} is recorded as {crossbar_array.rows}x{crossbar_array.cols}, "
                         f"not {rows}x{cols}")
    return crossbar_array


def start_run(session: Session, *, protocol_name: str, protocol_path: str | None, protocol_text: str,
              backend: str, seed: int | None, code_version: str, options: dict[str, Any] | None = None,
              crossbar_array: CrossbarArray | None = None) -> Run:
    """A new run in status "running", started now."""
    run = Run(protocol_name=protocol_name, protocol_path=protocol_path, protocol_text=protocol_text,
              protocol_hash=protocol_hash(protocol_text), backend=backend,
              seed=None if seed is None else int(seed), status=RUNNING, code_version=code_version,
              started_at=utcnow(), options=_jsonable(options),
              array_fk=None if crossbar_array is None else crossbar_array.id)
    session.add(run)
    session.flush()
    return run


def finish_run(session: Session, run: Run, status: str, error: str | None = None) -> None:
    """Close ``run`` with a final ``status`` ("completed", "failed" or "interrupted")."""
    _check_final(status)
    session.add(run)
    run.status = status
    run.error = error
    run.finished_at = utcnow()
    session.flush()


def start_step(session: Session, run: Run, index: int, name: str, kind: str) -> RunStep:
    """A new step of ``run`` in status "running"; ``index`` is its position in the protocol."""
    step = RunStep(run_fk=run.id, index=int(index), name=name, kind=kind, status=RUNNING, started_at=utcnow())
    session.add(step)
    session.flush()
    return step


def finish_step(session: Session, step: RunStep, status: str, error: str | None = None,
                summary: dict[str, Any] | None = None) -> None:
    """Close ``step`` with a final ``status`` and an optional JSON-able ``summary``."""
    _check_final(status)
    session.add(step)
    step.status = status
    step.error = error
    step.summary = _jsonable(summary)
    step.finished_at = utcnow()
    session.flush()


def add_measurement(session: Session, run: Run, step: RunStep | None, name: str, kind: str, unit: str,
                    array: np.ndarray, *, crossbar_array: CrossbarArray | None = None,
                    meta: dict[str, Any] | None = None) -> Measurement:
    """Store ``array`` (in ``unit``, e.g. "S") as a compressed blob with its summary columns."""
    data = encode_array(array)  # first: it refuses what np.asarray would silently mangle
    array = np.asarray(array)
    measurement = Measurement(
        run_fk=run.id, step_fk=None if step is None else step.id,
        array_fk=None if crossbar_array is None else crossbar_array.id,
        name=name, kind=kind, unit=unit, shape=list(array.shape), dtype=_dtype_label(array.dtype),
        data=data, meta=_jsonable(meta), created_at=utcnow(), **summarize(array))
    session.add(measurement)
    session.flush()
    return measurement


def load_measurement_array(measurement: Measurement) -> np.ndarray:
    """The array stored in ``measurement``, exactly as it was given."""
    return decode_array(measurement.data)


def add_device_results(session: Session, run: Run, step: RunStep, crossbar_array: CrossbarArray, *,
                       target_s: np.ndarray, achieved_s: np.ndarray, iterations: np.ndarray,
                       success: np.ndarray) -> int:
    """One row per device of ``crossbar_array`` from (rows, cols) arrays; returns the number of rows.

    ``error_s`` is ``achieved_s - target_s``. NaN (a cell without a target, or without
    a valid reading) is stored as NULL, which is what SQLite would make of it anyway.
    """
    shape = (crossbar_array.rows, crossbar_array.cols)
    target = _float_grid("target_s", target_s, shape)
    achieved = _float_grid("achieved_s", achieved_s, shape)
    iters = np.asarray(iterations)
    if iters.dtype.kind not in "iu":
        raise ValueError(f"iterations must be integers, not {iters.dtype}")
    _check_shape("iterations", iters, shape)
    ok = np.asarray(success)
    _check_shape("success", ok, shape)

    with np.errstate(invalid="ignore"):
        error = achieved - target
    rows, cols = np.indices(shape)
    columns = zip(rows.ravel().tolist(), cols.ravel().tolist(), _nullable(target), _nullable(achieved),
                  _nullable(error), iters.ravel().tolist(), ok.astype(bool).ravel().tolist())
    base = {"run_fk": run.id, "step_fk": step.id, "array_fk": crossbar_array.id}
    records = [dict(base, row=r, col=c, target_s=t, achieved_s=a, error_s=e, iterations=i, success=s)
               for r, c, t, a, e, i, s in columns]
    if records:
        session.execute(insert(DeviceResult), records)
    return len(records)


def _dtype_label(dtype: np.dtype) -> str:
    # "float64" reads better than "<f8" but can run long for record dtypes; the
    # blob keeps the exact dtype either way.
    label = str(dtype)
    return label if len(label) <= 64 else dtype.str


def _check_final(status: str) -> None:
    if status not in FINAL_STATUSES:
        raise ValueError(f"final status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}")


def _check_shape(name: str, a: np.ndarray, shape: tuple[int, int]) -> None:
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, the array is {shape[0]}x{shape[1]}")


def _float_grid(name: str, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    _check_shape(name, a, shape)
    return a


def _nullable(a: np.ndarray) -> list[float | None]:
    return [None if v != v else v for v in a.ravel().tolist()]  # v != v only for NaN


def _jsonable(value: Any) -> Any:
    """``value`` made fit for a JSON column: numpy scalars and arrays become plain Python,
    and NaN and infinities become ``None``, since JSON has no spelling for them (SQLite
    would accept Python's non-standard ``NaN``, PostgreSQL refuses it)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
