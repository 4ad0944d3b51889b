"""The measurement store: instruments and arrays, and what a run measured and made (measurements,
per-device results and statistics, noise models, checkpoints, deployments, inferences, fine-tunes).

Every function takes the caller's ``Session`` and flushes, so new rows have their ids
at once, but never commits: the caller decides what one transaction covers.
Objects from an earlier, closed session may be passed back in; they are re-attached.

A run's own lifecycle is in :mod:`db.runs`, the check of its owning process in
:mod:`db.liveness`, and resuming it in :mod:`db.resume`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Table, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.arrays import decode_array, encode_array, summarize
from db.jsonable import jsonable as _jsonable
from db.models import (COMPLETED, ArrayStat, Base, Checkpoint, CrossbarArray, Deployment, DeploymentTile,
                       DeviceResult, DeviceStat, Finetune, Inference, Instrument, Measurement, NoiseModelRecord, Run,
                       RunStep)
from db.timestamps import utcnow


def get_or_create_instrument(session: Session, backend: str, instrument_id: str, model: str,
                             firmware: str) -> Instrument:
    """The instrument row for (``backend``, ``instrument_id``), created if new.

    ``model`` and ``firmware`` are refreshed to the values given: the row describes the
    instrument as last seen (a firmware update does not make it a different instrument).
    """
    which = select(Instrument).where(Instrument.backend == backend, Instrument.instrument_id == instrument_id)
    instrument = session.scalars(which).one_or_none()
    if instrument is None:
        _insert_unless_present(session, Instrument, ("backend", "instrument_id"), {
            "backend": backend, "instrument_id": instrument_id, "model": model, "firmware": firmware,
            "created_at": utcnow()})
        instrument = session.scalars(which).one()
    instrument.model = model
    instrument.firmware = firmware
    session.flush()
    return instrument


def get_or_create_array(session: Session, instrument: Instrument, array_id: str, rows: int,
                        cols: int, *, wafer: str | None = None, die: str | None = None) -> CrossbarArray:
    """The array row for ``array_id``, created on ``instrument`` if new; ``wafer`` and ``die``, where
    given, are recorded the first time they are known.

    Raises ``ValueError`` if the array is known with another shape, wafer or die: the same id for
    a different array would mix the histories of two devices.
    """
    which = select(CrossbarArray).where(CrossbarArray.array_id == array_id)
    crossbar_array = session.scalars(which).one_or_none()
    if crossbar_array is None:
        _insert_unless_present(session, CrossbarArray, ("array_id",), {
            "array_id": array_id, "instrument_fk": instrument.id, "rows": int(rows), "cols": int(cols),
            "created_at": utcnow()})
        crossbar_array = session.scalars(which).one()
    if (crossbar_array.rows, crossbar_array.cols) != (rows, cols):
        raise ValueError(f"array {array_id!r} is recorded as {crossbar_array.rows}x{crossbar_array.cols}, "
                         f"not {rows}x{cols}")
    for field, given in (("wafer", wafer), ("die", die)):
        recorded = getattr(crossbar_array, field)
        if given is not None and recorded is not None and given != recorded:
            raise ValueError(f"array {array_id!r} is recorded on {field} {recorded!r}, not {given!r}: "
                             f"a different die needs a different array name")
        if given is not None and recorded is None:
            setattr(crossbar_array, field, given)
    return crossbar_array


def _insert_unless_present(session: Session, entity: type[Base], unique: tuple[str, ...],
                           values: dict[str, Any]) -> None:
    """Insert a row unless one with the same ``unique`` columns exists, also when another process is inserting it now.

    Two runs starting at once on a new instrument or array would otherwise both find
    nothing and both insert, and the second would fail on the unique constraint.
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert_ = sqlite_insert if dialect == "sqlite" else postgresql_insert
        session.execute(insert_(entity).values(values).on_conflict_do_nothing(index_elements=list(unique)))
        return
    try:
        with session.begin_nested():
            session.execute(insert(entity).values(values))
    except IntegrityError:
        pass  # the other one's row is there now, which is all that was wanted


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
    records = list(zip(rows.ravel().tolist(), cols.ravel().tolist(), _nullable(target), _nullable(achieved),
                       _nullable(error), iters.ravel().tolist(), ok.astype(bool).ravel().tolist()))
    shared = {"run_fk": run.id, "step_fk": step.id, "array_fk": crossbar_array.id}
    _insert_many(session, DeviceResult.__table__, shared,
                 ("row", "col", "target_s", "achieved_s", "error_s", "iterations", "success"), records)
    return len(records)


def add_device_stats(session: Session, run: Run, step: RunStep | None, crossbar_array: CrossbarArray,
                     quantities: Mapping[str, np.ndarray]) -> int:
    """One row per device and quantity from (rows, cols) arrays; returns the number of rows.

    ``quantities`` maps a name ("g_min_s", "stuck", "drift_nu") to its values over
    the whole array. NaN (not estimable for that device) is stored as NULL; booleans
    as 0.0 / 1.0. Every array is checked before anything is written.
    """
    shape = (crossbar_array.rows, crossbar_array.cols)
    grids = {_quantity_name(name): _stat_grid(name, values, shape) for name, values in quantities.items()}
    rows, cols = np.indices(shape)
    rows, cols = rows.ravel().tolist(), cols.ravel().tolist()
    shared = {"run_fk": run.id, "step_fk": None if step is None else step.id, "array_fk": crossbar_array.id,
              "created_at": utcnow()}
    records = [(r, c, name, v) for name, grid in grids.items() for r, c, v in zip(rows, cols, _nullable(grid))]
    _insert_many(session, DeviceStat.__table__, shared, ("row", "col", "quantity", "value"), records)
    return len(records)


def add_array_stats(session: Session, run: Run, step: RunStep | None, crossbar_array: CrossbarArray,
                    stats: Mapping[str, float], units: Mapping[str, str] | None = None) -> int:
    """One row per whole-array statistic ("yield", "read_noise_relative"); returns the number of rows.

    ``units`` gives the unit of some or all of them ("S", "1"); the others get "".
    NaN is stored as NULL, booleans as 0.0 / 1.0.
    """
    units = dict(units or {})
    unknown = sorted(set(units) - set(stats))
    if unknown:
        raise ValueError(f"units given for statistics that are not there: {', '.join(map(repr, unknown))}")
    now = utcnow()
    records = [{"run_fk": run.id, "step_fk": None if step is None else step.id, "array_fk": crossbar_array.id,
                "quantity": _quantity_name(name), "value": _stat_value(name, value),
                "unit": str(units.get(name, "")), "created_at": now}
               for name, value in stats.items()]
    if records:
        session.execute(insert(ArrayStat), records)
    return len(records)


def add_noise_model(session: Session, crossbar_array: CrossbarArray, params: Mapping[str, Any], *,
                    schema_version: int, run: Run | None = None, step: RunStep | None = None,
                    source_runs: Iterable[int] = ()) -> NoiseModelRecord:
    """Store a fitted noise model of ``crossbar_array``.

    ``params`` is the whole model as a JSON-able dict (numpy values are converted;
    NaN and infinities become null), laid out as ``schema_version`` says. ``run`` and
    ``step`` are where it was fitted, ``source_runs`` the runs whose measurements it
    was fitted from.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a dict, not {type(params).__name__}")
    if isinstance(schema_version, (bool, np.bool_)) or not isinstance(schema_version, (int, np.integer)):
        raise ValueError(f"schema_version must be an integer, not {schema_version!r}")
    sources = [_run_id(value) for value in source_runs]
    model = NoiseModelRecord(array_fk=crossbar_array.id, run_fk=None if run is None else run.id,
                             step_fk=None if step is None else step.id, schema_version=int(schema_version),
                             params=_jsonable(dict(params)), source_runs=sources, created_at=utcnow())
    session.add(model)
    session.flush()
    return model


def get_noise_model(session: Session, model_id: int) -> NoiseModelRecord:
    """The noise model with id ``model_id``; ``LookupError`` if there is none."""
    model = session.get(NoiseModelRecord, int(model_id))
    if model is None:
        raise LookupError(f"no noise model with id {model_id}")
    return model


def latest_noise_model(session: Session, array_id: str) -> NoiseModelRecord:
    """The newest noise model of the array named ``array_id`` that a completed step stored (or that was
    stored outside any run); ``LookupError`` if it has none.

    A calibrate step stores its model before it writes its report, so an interrupted or failed step can
    leave a model behind: its calibration was never finished, and nothing should pick it up as "latest".
    """
    crossbar_array = get_array(session, array_id)
    model = session.scalars(
        select(NoiseModelRecord).outerjoin(RunStep, NoiseModelRecord.step_fk == RunStep.id)
        .where(NoiseModelRecord.array_fk == crossbar_array.id,
               or_(NoiseModelRecord.step_fk.is_(None), RunStep.status == COMPLETED))
        .order_by(NoiseModelRecord.created_at.desc(), NoiseModelRecord.id.desc()).limit(1)
    ).one_or_none()
    if model is None:
        raise LookupError(f"array {array_id!r} has no noise model from a completed calibration")
    return model


def get_array(session: Session, array_id: str) -> CrossbarArray:
    """The array named ``array_id``; ``LookupError`` listing the known names if there is none."""
    crossbar_array = session.scalars(select(CrossbarArray).where(CrossbarArray.array_id == array_id)).one_or_none()
    if crossbar_array is None:
        known = session.scalars(select(CrossbarArray.array_id).order_by(CrossbarArray.array_id)).all()
        raise LookupError(f"no array named {array_id!r}; known arrays: {', '.join(known) or '(none)'}")
    return crossbar_array


# Placeholders of the DB-API parameter styles that take a tuple per row.
_POSITIONAL_MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _insert_many(session: Session, table: Table, shared: Mapping[str, Any], columns: Sequence[str],
                 rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (tuples in the order of ``columns``), each with the ``shared`` values, in one executemany.

    SQLAlchemy's own bulk insert passes every value of every row through its column
    type, which for tens of thousands of rows costs more than the database itself.
    Here the values shared by all rows are converted once, and the per-row values,
    which must be what the driver takes as they are (int, float, str, None), go to
    the driver untouched.
    """
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    prefix = []
    for name, value in shared.items():
        processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        prefix.append(value if processor is None or value is None else processor(value))
    names = [*shared, *columns]
    marker = _POSITIONAL_MARKERS.get(dialect.paramstyle)
    if marker is None:  # a driver that only takes named parameters
        session.execute(insert(table), [dict(zip(names, (*shared.values(), *row))) for row in rows])
        return
    head = tuple(prefix)
    quote = dialect.identifier_preparer.quote
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in names)}) "
           f"VALUES ({', '.join([marker] * len(names))})")
    connection.exec_driver_sql(sql, [head + row for row in rows])


def _quantity_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > 128:
        raise ValueError(f"a statistic's name must be a non-empty string of at most 128 characters, not {name!r}")
    return name


def _stat_grid(name: str, values: Any, shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers or booleans, not {a.dtype}")
    _check_shape(name, a, shape)
    return a.astype(np.float64)


def add_checkpoint(session: Session, *, name: str, model_kind: str, task: str, config: Mapping[str, Any],
                   state: bytes, code_version: str, metrics: Mapping[str, Any] | None = None, run: Run | None = None,
                   step: RunStep | None = None, noise_model_id: int | None = None) -> Checkpoint:
    """Store a trained model; ``state`` is the serialised weights exactly as the training code wrote them."""
    checkpoint = Checkpoint(name=name, model_kind=model_kind, task=task, config=_jsonable(dict(config)),
                            metrics=None if metrics is None else _jsonable(dict(metrics)), state=bytes(state),
                            code_version=code_version, run_fk=None if run is None else run.id,
                            step_fk=None if step is None else step.id, noise_model_fk=noise_model_id,
                            created_at=utcnow())
    session.add(checkpoint)
    session.flush()
    return checkpoint


def get_checkpoint(session: Session, checkpoint_id: int) -> Checkpoint:
    checkpoint = session.get(Checkpoint, int(checkpoint_id))
    if checkpoint is None:
        raise LookupError(f"no checkpoint with id {checkpoint_id}")
    return checkpoint


def latest_checkpoint(session: Session, name: str) -> Checkpoint:
    """The newest checkpoint stored under ``name`` (LookupError naming it if there is none)."""
    checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.name == name)
                                 .order_by(Checkpoint.created_at.desc(), Checkpoint.id.desc()).limit(1)).first()
    if checkpoint is None:
        raise LookupError(f"no checkpoint named {name!r}")
    return checkpoint


def _stat_value(name: str, value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, (int, float, np.integer, np.floating)) and not (
            isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "biuf"):
        raise ValueError(f"{name} must be a real number, not {value!r}")
    number = float(value)
    return None if number != number else number


def _run_id(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"source_runs must hold run ids (integers), not {value!r}")
    return int(value)


def _dtype_label(dtype: np.dtype) -> str:
    # "float64" reads better than "<f8" but can run long for record dtypes; the
    # blob keeps the exact dtype either way.
    label = str(dtype)
    return label if len(label) <= 64 else dtype.str


def _check_shape(name: str, a: np.ndarray, shape: tuple[int, int]) -> None:
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, the array is {shape[0]}x{shape[1]}")


def _float_grid(name: str, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    _check_shape(name, a, shape)
    return a


def _nullable(a: np.ndarray) -> list[float | None]:
    return [None if v != v else v for v in a.ravel().tolist()]  # v != v only for NaN


def latest_device_map(session: Session, array_id: str, quantities: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
    """Per-device ``quantities`` of ``array_id`` from the newest run step that recorded the first of them,
    as (rows, cols) float arrays (NaN where a device has no value), and that step's run id.
    LookupError if no run recorded them."""
    crossbar_array = get_array(session, array_id)
    step_fk = session.scalars(
        select(DeviceStat.step_fk).where(DeviceStat.array_fk == crossbar_array.id, DeviceStat.quantity == quantities[0])
        .order_by(DeviceStat.created_at.desc(), DeviceStat.id.desc()).limit(1)).first()
    if step_fk is None:
        raise LookupError(f"array {array_id!r} has no recorded {quantities[0]!r}: calibrate it first")
    shape = (crossbar_array.rows, crossbar_array.cols)
    out: dict[str, np.ndarray] = {}
    run_id = None
    for quantity in quantities:
        grid = np.full(shape, np.nan)
        rows = session.execute(select(DeviceStat.row, DeviceStat.col, DeviceStat.value, DeviceStat.run_fk).where(
            DeviceStat.step_fk == step_fk, DeviceStat.quantity == quantity)).all()
        for r, c, v, run_fk in rows:
            grid[r, c] = np.nan if v is None else v
            run_id = run_fk
        out[quantity] = grid
    return out, int(run_id)


def add_deployment(session: Session, *, run: Run, step: RunStep | None, crossbar_array: CrossbarArray, mapping: bytes,
                   checkpoint_id: int | None, noise_model_id: int | None, summary: Mapping[str, Any],
                   tiles: Sequence[Mapping[str, Any]]) -> Deployment:
    """Store a deployment with one row per programmed tile."""
    deployment = Deployment(run_fk=run.id, step_fk=None if step is None else step.id, array_fk=crossbar_array.id,
                            checkpoint_fk=checkpoint_id, noise_model_fk=noise_model_id, mapping=bytes(mapping),
                            summary=_jsonable(dict(summary)), created_at=utcnow())
    session.add(deployment)
    session.flush()
    session.add_all(DeploymentTile(deployment_fk=deployment.id, **{k: _jsonable(v) for k, v in t.items()})
                    for t in tiles)
    session.flush()
    return deployment


def add_inference(session: Session, *, run: Run, step: RunStep | None, deployment_id: int, **values: Any) -> Inference:
    inference = Inference(run_fk=run.id, step_fk=None if step is None else step.id, deployment_fk=deployment_id,
                          created_at=utcnow(), **{k: _jsonable(v) for k, v in values.items()})
    session.add(inference)
    session.flush()
    return inference


def add_finetune(session: Session, *, run: Run, step: RunStep | None, deployment_id: int,
                 base_checkpoint_id: int | None, checkpoint_id: int | None, groups: Sequence[str],
                 history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None,
                 corrections: bytes | None = None) -> Finetune:
    """Record a deployment fine-tuned on the array: its epochs, the checkpoint it produced and the
    per-column corrections it learnt."""
    finetune = Finetune(run_fk=run.id, step_fk=None if step is None else step.id, deployment_fk=deployment_id,
                        base_checkpoint_fk=base_checkpoint_id, checkpoint_fk=checkpoint_id, groups=list(groups),
                        history=_jsonable([dict(h) for h in history]),
                        summary=None if summary is None else _jsonable(dict(summary)),
                        corrections=corrections, created_at=utcnow())
    session.add(finetune)
    session.flush()
    return finetune


def run_inferences(session: Session, run_id: int) -> list[dict]:
    """Every inference of a run with the name of the checkpoint deployed, in the order recorded."""
    rows = session.execute(
        select(Inference, Checkpoint.name).join(Deployment, Inference.deployment_fk == Deployment.id)
        .outerjoin(Checkpoint, Deployment.checkpoint_fk == Checkpoint.id)
        .where(Inference.run_fk == run_id).order_by(Inference.id)).all()
    return [{"deployment_id": inf.deployment_fk, "step_id": inf.step_fk, "checkpoint": name, "time_s": inf.time_s,
             "drift_compensation": inf.drift_compensation, "split": inf.split, "samples": inf.samples,
             "crossbar_accuracy": inf.crossbar_accuracy, "digital_accuracy": inf.digital_accuracy,
             "finetune_id": inf.finetune_fk}
            for inf, name in rows]
