"""Questions about the past: which arrays and runs there are, and how a statistic moved over runs.

Every query takes the caller's ``Session`` and returns a list of plain dicts (column
name -> value, timestamps as timezone-aware UTC datetimes), ready for a table, CSV,
JSON or :func:`to_frame`. An array is named by its ``array_id``; an unknown one raises
``LookupError`` listing the known names.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.models import (COMPLETED, FINAL_STATUSES, RUNNING, STATUSES, ArrayStat, CrossbarArray, Deployment, DeviceStat,
                       Finetune, Inference, Instrument, Measurement, NoiseModelRecord, Run, RunStep)
from db.records import get_array, load_measurement_array

if TYPE_CHECKING:
    import pandas

__all__ = ["array_inferences", "array_quantities", "array_trend", "calibration_checks", "compare_noise_models", "compare_runs",
           "count_runs", "count_unopened_runs", "device_history", "get_run", "list_arrays", "list_noise_models",
           "list_runs", "progress_text", "run_device_stats", "run_finetunes", "run_live", "run_measurements", "run_steps",
           "to_frame"]


def list_arrays(session: Session) -> list[dict[str, Any]]:
    """Every array with its instrument, how many runs it had and when the last one started."""
    statement = (
        select(CrossbarArray.array_id, CrossbarArray.rows, CrossbarArray.cols, CrossbarArray.wafer,
               CrossbarArray.die, Instrument.backend, Instrument.instrument_id, func.count(Run.id).label("runs"),
               func.max(Run.started_at).label("last_run_at"))
        .join(Instrument, CrossbarArray.instrument_fk == Instrument.id)
        .outerjoin(Run, Run.array_fk == CrossbarArray.id)
        .group_by(CrossbarArray.id, CrossbarArray.array_id, CrossbarArray.rows, CrossbarArray.cols,
                  CrossbarArray.wafer, CrossbarArray.die, Instrument.backend, Instrument.instrument_id)
        .order_by(CrossbarArray.array_id))
    return _rows(session, statement)


def list_runs(session: Session, *, status: str | None = None, protocol: str | None = None,
              array_id: str | None = None, since: datetime | None = None, until: datetime | None = None,
              limit: int | None = None, unopened: bool = True, offset: int = 0) -> list[dict[str, Any]]:
    """Runs, newest first, optionally only those with ``status``, of ``protocol`` (its name), on
    ``array_id``, started at or after ``since`` and before ``until`` (naive datetimes are UTC),
    at most ``limit`` of them after skipping ``offset``. ``duration_s`` is None for a run that has not finished.
    ``unopened=False`` leaves out the runs that ended before reaching an instrument (see
    :func:`count_unopened_runs`)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    statement = _filter_runs(
        session, select(Run.id, Run.protocol_name, Run.status, Run.backend, CrossbarArray.array_id, Run.seed,
                        Run.started_at, Run.finished_at, Run.error, Run.code_version, Run.current_step_index,
                        Run.current_step, Run.progress, Run.operator, Run.notes)
        .outerjoin(CrossbarArray, Run.array_fk == CrossbarArray.id)
        .order_by(Run.started_at.desc(), Run.id.desc()),
        status=status, protocol=protocol, array_id=array_id, since=since, until=until)
    if not unopened:
        statement = statement.where(~_unopened())
    if limit is not None:
        statement = statement.limit(limit)
    if offset:
        statement = statement.offset(int(offset))
    keys = ("id", "protocol_name", "status", "backend", "array_id", "seed", "started_at", "finished_at",
            "duration_s", "error", "code_version", "progress", "operator", "notes")
    runs = []
    for row in _rows(session, statement):
        finished = row["finished_at"]
        row["duration_s"] = None if finished is None else (finished - row["started_at"]).total_seconds()
        row["progress"] = (progress_text(row["current_step_index"], row["current_step"], row["progress"])
                           if row["status"] == RUNNING else None)
        runs.append({key: row[key] for key in keys})
    return runs


def progress_text(step_index: int | None, step_name: str | None, progress: dict[str, Any] | None) -> str | None:
    """Where a running run is, in a few words: "2/3 noisy: training 4/30 epochs" (None if it has not said)."""
    if step_index is None:
        return None
    progress = progress or {}
    steps = progress.get("steps")
    text = f"{step_index + 1}{f'/{steps}' if steps else ''} {step_name}"
    if progress.get("stage") and progress.get("total"):
        done = progress.get("epoch") if progress.get("epoch") is not None else progress.get("done", 0)
        done = f"{done:g}" if isinstance(done, (int, float)) else done
        text += f": {progress['stage']} {done}/{progress['total']:g} {progress.get('unit') or ''}".rstrip()
    return text


def count_unopened_runs(session: Session, *, status: str | None = None, protocol: str | None = None,
                        array_id: str | None = None, since: datetime | None = None,
                        until: datetime | None = None) -> int:
    """How many of the runs :func:`list_runs` would give with these filters ended before reaching an
    instrument: finished (failed or interrupted) with no array and no step, e.g. a bench that was off.

    They hold nothing but the error, so listings may hide them; they are kept because
    "when did the bench refuse, and why" is part of a lab's record.
    """
    statement = _filter_runs(session, select(func.count(Run.id)).where(_unopened()), status=status,
                             protocol=protocol, array_id=array_id, since=since, until=until)
    return int(session.scalar(statement) or 0)


def _unopened() -> Any:
    has_step = select(RunStep.id).where(RunStep.run_fk == Run.id).exists()
    # A run still "running" without an array may be opening its instrument right now: not hidden.
    return Run.array_fk.is_(None) & Run.status.in_(FINAL_STATUSES) & ~has_step


def _filter_runs(session: Session, statement: Any, *, status: str | None, protocol: str | None,
                 array_id: str | None, since: datetime | None, until: datetime | None) -> Any:
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; one of: {', '.join(STATUSES)}")
    if status is not None:
        statement = statement.where(Run.status == status)
    if protocol is not None:
        statement = statement.where(Run.protocol_name == protocol)
    if array_id is not None:
        statement = statement.where(Run.array_fk == get_array(session, array_id).id)
    if since is not None:
        statement = statement.where(Run.started_at >= as_utc(since))
    if until is not None:
        statement = statement.where(Run.started_at < as_utc(until))
    return statement


def list_noise_models(session: Session, *, array_id: str | None = None) -> list[dict[str, Any]]:
    """Stored noise models, newest first, optionally of one array only (without their params)."""
    statement = (
        select(NoiseModelRecord.id, CrossbarArray.array_id, NoiseModelRecord.run_fk.label("run_id"),
               NoiseModelRecord.schema_version, NoiseModelRecord.created_at, NoiseModelRecord.source_runs)
        .join(CrossbarArray, NoiseModelRecord.array_fk == CrossbarArray.id)
        .order_by(NoiseModelRecord.created_at.desc(), NoiseModelRecord.id.desc()))
    if array_id is not None:
        statement = statement.where(NoiseModelRecord.array_fk == get_array(session, array_id).id)
    return _rows(session, statement)


def compare_noise_models(session: Session, model_a: int, model_b: int) -> list[dict[str, Any]]:
    """Two stored noise models side by side: one row per parameter (flattened: ``read.floor_s``,
    ``programming.sigma_s[1]``) with ``a``, ``b``, ``change`` and ``relative_change`` (None where not
    numbers); provenance keys left out. ``LookupError`` if either is missing."""
    params = []
    for model_id in (model_a, model_b):
        record = session.get(NoiseModelRecord, int(model_id))
        if record is None:
            raise LookupError(f"there is no noise model {model_id} in this database")
        params.append({k: v for k, (v, _) in _flatten(record.params).items()
                       if k.split(".", 1)[0].split("[", 1)[0] not in _MODEL_PROVENANCE})
    a, b = params
    return [{"parameter": key, "a": a.get(key), "b": b.get(key), **_change(a.get(key), b.get(key))}
            for key in dict.fromkeys([*a, *b])]


def count_runs(session: Session, *, status: str | None = None, protocol: str | None = None,
               array_id: str | None = None) -> int:
    """How many runs :func:`list_runs` would give with these filters and no limit."""
    statement = _filter_runs(session, select(func.count(Run.id)).select_from(Run)
                             .outerjoin(CrossbarArray, Run.array_fk == CrossbarArray.id),
                             status=status, protocol=protocol, array_id=array_id, since=None, until=None)
    return int(session.scalar(statement) or 0)


def run_live(session: Session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Where each of ``run_ids`` is, for someone watching: ``status``, ``started_at``, ``finished_at``,
    ``error``, the step running or where it stopped (``step_index`` 0-based, ``step_name``), that step's
    raw ``progress`` (stage, done, total, unit, epoch, epochs, steps, updated_at) and when its latest
    attempt started (``step_started_at``). Two queries however many runs."""
    if not run_ids:
        return {}
    ids = [int(i) for i in run_ids]
    out = {row["id"]: row for row in _rows(session, select(
        Run.id, Run.status, Run.started_at, Run.finished_at, Run.error, Run.current_step_index.label("step_index"),
        Run.current_step.label("step_name"), Run.progress).where(Run.id.in_(ids)))}
    for row in out.values():
        row["step_started_at"] = None
    latest = (select(RunStep.run_fk, RunStep.index, func.max(RunStep.attempt).label("attempt"))
              .where(RunStep.run_fk.in_(ids)).group_by(RunStep.run_fk, RunStep.index).subquery())
    for r in session.execute(select(RunStep.run_fk, RunStep.index, RunStep.started_at).join(
            latest, (RunStep.run_fk == latest.c.run_fk) & (RunStep.index == latest.c.index)
            & (RunStep.attempt == latest.c.attempt))):
        row = out.get(r.run_fk)
        if row is not None and row["step_index"] == r.index:
            row["step_started_at"] = r.started_at
    return out


def run_steps(session: Session, run_id: int) -> list[dict[str, Any]]:
    """Every attempt at every step of a run, in protocol order: ``index``, ``attempt``, ``name``, ``kind``,
    ``status``, ``error``, ``started_at``, ``finished_at``, ``duration_s`` (None while running) and the
    step's ``summary``."""
    rows = _rows(session, select(RunStep.index, RunStep.attempt, RunStep.name, RunStep.kind, RunStep.status,
                                 RunStep.error, RunStep.started_at, RunStep.finished_at, RunStep.summary)
                 .where(RunStep.run_fk == int(run_id)).order_by(RunStep.index, RunStep.attempt))
    for row in rows:
        done = row["finished_at"]
        row["duration_s"] = None if done is None else (done - row["started_at"]).total_seconds()
    return rows


def array_inferences(session: Session, array_id: str) -> list[dict[str, Any]]:
    """Every evaluation of a model deployed on ``array_id``, oldest first: ``run_id``, ``started_at`` (the
    run's), ``recorded_at``, ``deployment_id``, ``time_s`` after programming, ``split``, ``samples``,
    ``digital_accuracy``, ``crossbar_accuracy``, ``drift_compensation`` and ``finetuned`` (whether a
    fine-tuning was in effect). ``LookupError`` for an unknown array."""
    array = get_array(session, array_id)
    rows = _rows(session, select(
        Inference.run_fk.label("run_id"), Run.started_at, Inference.created_at.label("recorded_at"),
        Inference.deployment_fk.label("deployment_id"), Inference.time_s, Inference.split, Inference.samples,
        Inference.digital_accuracy, Inference.crossbar_accuracy, Inference.drift_compensation,
        Inference.finetune_fk)
        .join(Deployment, Inference.deployment_fk == Deployment.id).join(Run, Inference.run_fk == Run.id)
        .where(Deployment.array_fk == array.id).order_by(Inference.created_at, Inference.id))
    for row in rows:
        row["finetuned"] = row.pop("finetune_fk") is not None
    return rows


def run_finetunes(session: Session, run_id: int) -> list[dict[str, Any]]:
    """The fine-tunings of a run: ``id``, ``deployment_id``, ``groups`` trained, per-epoch ``history`` and
    ``summary``."""
    return _rows(session, select(Finetune.id, Finetune.deployment_fk.label("deployment_id"), Finetune.groups,
                                 Finetune.history, Finetune.summary)
                 .where(Finetune.run_fk == int(run_id)).order_by(Finetune.id))


def array_trend(session: Session, array_id: str, quantity: str) -> list[dict[str, Any]]:
    """The whole-array statistic ``quantity`` of ``array_id`` over its runs, oldest first.

    One row per run and step that recorded it, with the run's start time, the step's
    name (None if recorded outside a step), the value, its unit and the run's status
    (a value from a run that failed later may deserve less trust). An array that
    never recorded ``quantity`` gives an empty list.
    """
    crossbar_array = get_array(session, array_id)
    statement = (
        select(ArrayStat.run_fk.label("run_id"), Run.started_at, RunStep.name.label("step_name"), ArrayStat.value,
               ArrayStat.unit, Run.status)
        .join(Run, ArrayStat.run_fk == Run.id)
        .outerjoin(RunStep, ArrayStat.step_fk == RunStep.id)
        .where(ArrayStat.array_fk == crossbar_array.id, ArrayStat.quantity == quantity)
        .order_by(Run.started_at, Run.id, RunStep.index, ArrayStat.id))
    return _rows(session, statement)


def array_quantities(session: Session, array_id: str) -> list[dict[str, Any]]:
    """The statistics recorded for ``array_id``: ``quantity``, ``table`` ("array_stats" for
    whole-array values, "device_stats" for per-device ones) and ``unit`` (None for per-device
    quantities, whose names carry it), sorted by table and name."""
    crossbar_array = get_array(session, array_id)
    whole = (select(ArrayStat.quantity, func.max(ArrayStat.unit).label("unit"))
             .where(ArrayStat.array_fk == crossbar_array.id).group_by(ArrayStat.quantity).order_by(ArrayStat.quantity))
    found = [{"quantity": row.quantity, "table": "array_stats", "unit": row.unit} for row in session.execute(whole)]
    found += [{"quantity": quantity, "table": "device_stats", "unit": None}
              for quantity in _device_quantities(session, crossbar_array.id)]
    return found


def device_history(session: Session, array_id: str, row: int, col: int, *,
                   quantity: str | None = None) -> list[dict[str, Any]]:
    """The per-device statistics of cell (``row``, ``col``) of ``array_id`` over its runs, oldest
    first, optionally of one ``quantity`` only. ``ValueError`` if the cell is outside the array."""
    crossbar_array = get_array(session, array_id)
    if not (0 <= row < crossbar_array.rows and 0 <= col < crossbar_array.cols):
        raise ValueError(f"device ({row}, {col}) is outside array {array_id!r}, which is "
                         f"{crossbar_array.rows}x{crossbar_array.cols}")
    # Naming the quantities lets the (array, quantity, row, col) index find the device's
    # rows directly instead of reading the whole history of the array.
    wanted = [quantity] if quantity is not None else _device_quantities(session, crossbar_array.id)
    statement = (
        select(DeviceStat.run_fk.label("run_id"), Run.started_at, DeviceStat.quantity, DeviceStat.value)
        .join(Run, DeviceStat.run_fk == Run.id)
        .where(DeviceStat.array_fk == crossbar_array.id, DeviceStat.quantity.in_(wanted),
               DeviceStat.row == row, DeviceStat.col == col)
        .order_by(Run.started_at, Run.id, DeviceStat.quantity, DeviceStat.id))
    return _rows(session, statement) if wanted else []


def get_run(session: Session, run_id: int) -> dict[str, Any]:
    """One run as :func:`list_runs` gives it, with its ``steps`` (name, index, attempt, kind, status)
    in protocol order; ``LookupError`` if there is none."""
    statement = (
        select(Run.id, Run.protocol_name, Run.status, Run.backend, CrossbarArray.array_id, Run.seed,
               Run.started_at, Run.finished_at, Run.error, Run.code_version)
        .outerjoin(CrossbarArray, Run.array_fk == CrossbarArray.id).where(Run.id == int(run_id)))
    found = _rows(session, statement)
    if not found:
        raise LookupError(f"there is no run {run_id} in this database")
    run = found[0]
    run["steps"] = _rows(session, select(RunStep.name, RunStep.index, RunStep.attempt, RunStep.kind, RunStep.status)
                         .where(RunStep.run_fk == run["id"]).order_by(RunStep.index, RunStep.attempt))
    return run


def run_measurements(session: Session, run_id: int, *, step: str | None = None) -> list[dict[str, Any]]:
    """The raw arrays a run stored, in the order recorded, optionally of the step named ``step``.

    Each row: ``id``, ``step_name`` (None if stored outside a step), ``step_index``, ``attempt``,
    ``name``, ``kind``, ``unit``, ``shape``, ``dtype``, ``meta`` (e.g. the times of a drift trace)
    and ``array``, a callable that decodes the blob when asked: a run can hold hundreds of
    megabytes, so only what is used is decoded.
    """
    statement = (
        select(Measurement.id, RunStep.name.label("step_name"), RunStep.index.label("step_index"),
               RunStep.attempt, Measurement.name, Measurement.kind, Measurement.unit, Measurement.shape,
               Measurement.dtype, Measurement.meta)
        .outerjoin(RunStep, Measurement.step_fk == RunStep.id)
        .where(Measurement.run_fk == int(run_id)).order_by(Measurement.id))
    if step is not None:
        statement = statement.where(RunStep.name == step)
    rows = _rows(session, statement)
    for row in rows:
        row["array"] = _loader(session, row["id"])
    return rows


def _loader(session: Session, measurement_id: int) -> Any:
    def load() -> Any:
        return load_measurement_array(session.get(Measurement, measurement_id))
    return load


def run_device_stats(session: Session, run_id: int, *, step: str | None = None) -> list[dict[str, Any]]:
    """The per-device statistics a run recorded, one row per step and quantity, optionally of the
    step named ``step``: ``step_name``, ``step_index``, ``attempt``, ``quantity``, and ``values``, a
    (rows, cols) float array of the whole array (NaN where not estimable or not recorded)."""
    import numpy as np  # the other queries return plain Python; these values are maps

    statement = (
        select(DeviceStat.step_fk, RunStep.name.label("step_name"), RunStep.index.label("step_index"),
               RunStep.attempt, DeviceStat.quantity, CrossbarArray.rows, CrossbarArray.cols)
        .join(CrossbarArray, DeviceStat.array_fk == CrossbarArray.id)
        .outerjoin(RunStep, DeviceStat.step_fk == RunStep.id)
        .where(DeviceStat.run_fk == int(run_id))
        .group_by(DeviceStat.step_fk, RunStep.name, RunStep.index, RunStep.attempt, DeviceStat.quantity,
                  CrossbarArray.rows, CrossbarArray.cols)
        .order_by(RunStep.index, RunStep.attempt, DeviceStat.quantity))
    if step is not None:
        statement = statement.where(RunStep.name == step)
    out = []
    for group in _rows(session, statement):
        grid = np.full((group["rows"], group["cols"]), np.nan)
        which = (DeviceStat.step_fk.is_(None) if group["step_fk"] is None
                 else DeviceStat.step_fk == group["step_fk"])
        cells = session.execute(select(DeviceStat.row, DeviceStat.col, DeviceStat.value).where(
            DeviceStat.run_fk == int(run_id), which, DeviceStat.quantity == group["quantity"])).all()
        if cells:
            r, c, v = zip(*cells)
            grid[list(r), list(c)] = [np.nan if x is None else x for x in v]
        out.append({"step_name": group["step_name"], "step_index": group["step_index"], "attempt": group["attempt"],
                    "quantity": group["quantity"], "values": grid})
    return out


# Keys of a stored noise model that say where it came from, not what it found.
_MODEL_PROVENANCE = {"schema_version", "array_id", "rows", "cols", "created_at", "source_runs"}


def compare_runs(session: Session, run_a: int, run_b: int, *, any_array: bool = False) -> list[dict[str, Any]]:
    """Two calibrations side by side: every whole-array statistic and noise-model parameter (those
    not already among the statistics) either run recorded, with ``a``, ``b``, ``change`` (b - a) and ``relative_change`` ((b - a) / |a|).

    Rows: ``source`` ("statistic" or "noise model"), ``quantity`` (a model parameter as its
    dotted path, list items indexed: "programming.sigma_s[3]"), ``unit``, ``a``, ``b``,
    ``change``, ``relative_change`` (None where a side is missing or not a number, or a is 0).
    Where a run recorded a statistic in several steps, its last step's value is taken.

    ``LookupError`` for an unknown run; ``ValueError`` if a run has no calibration or the two
    measured different arrays (unless ``any_array``: comparing two arrays is a question
    too, but it must be asked on purpose, not by a mistyped id).
    """
    runs = [get_run(session, run_id) for run_id in (run_a, run_b)]
    sides = []
    for run in runs:
        stats = _run_stats(session, run["id"])
        model = session.scalars(select(NoiseModelRecord.params).where(NoiseModelRecord.run_fk == run["id"])
                                .order_by(NoiseModelRecord.created_at.desc(), NoiseModelRecord.id.desc())
                                .limit(1)).first()
        if not stats and model is None:
            raise ValueError(f"run {run['id']} ({run['protocol_name']}, {run['status']}) has no calibration: "
                             "no whole-array statistics or noise model recorded")
        sides.append((stats, {} if model is None else _flatten(
            {k: v for k, v in model.items() if k not in _MODEL_PROVENANCE})))
    if runs[0]["array_id"] != runs[1]["array_id"] and not any_array:
        raise ValueError(f"run {runs[0]['id']} measured array {runs[0]['array_id']!r} and run {runs[1]['id']} "
                         f"{runs[1]['array_id']!r}; add --any-array to compare different arrays")
    rows: list[dict[str, Any]] = []
    for source, index in (("statistic", 0), ("noise model", 1)):
        a, b = sides[0][index], sides[1][index]
        for quantity in list(a) + [q for q in b if q not in a]:
            (value_a, unit_a), (value_b, unit_b) = a.get(quantity, (None, None)), b.get(quantity, (None, None))
            if source == "noise model" and value_a is not None and any(
                    (row["a"], row["b"]) == (value_a, value_b) for row in rows):
                continue  # a model parameter also stored as a statistic (g_max_s): said once, with its unit
            rows.append({"source": source, "quantity": quantity, "unit": unit_a if unit_a is not None else unit_b,
                         "a": value_a, "b": value_b, **_change(value_a, value_b)})
    return rows


def calibration_checks(session: Session, array_id: str, run_id: int | None = None) -> list[dict[str, Any]]:
    """The predictive checks of one calibration of ``array_id`` (its newest run that stored any, unless
    ``run_id`` names one): a row per checked quantity with its devices, KS distance, predicted/observed
    spread ratio and verdict ("pass", "warn", or "n/a" where too few devices gave none), from the
    ``check.<quantity>.<figure>`` statistics. ``LookupError`` for an unknown array or a run without checks."""
    array = get_array(session, array_id)
    checks = (select(ArrayStat.run_fk).where(ArrayStat.array_fk == array.id, ArrayStat.quantity.like("check.%")))
    if run_id is None:
        run_id = session.scalar(select(Run.id).where(Run.id.in_(checks))
                                .order_by(Run.started_at.desc(), Run.id.desc()).limit(1))
        if run_id is None:
            raise LookupError(f"array {array_id!r} has no calibration with a predictive check")
    statement = (select(ArrayStat.quantity, ArrayStat.value, RunStep.name.label("step_name"), Run.started_at)
                 .join(Run, ArrayStat.run_fk == Run.id).outerjoin(RunStep, ArrayStat.step_fk == RunStep.id)
                 .where(ArrayStat.array_fk == array.id, ArrayStat.run_fk == run_id,
                        ArrayStat.quantity.like("check.%"))
                 .order_by(RunStep.index, RunStep.attempt, ArrayStat.id))
    rows: dict[tuple[Any, str], dict[str, Any]] = {}
    for r in session.execute(statement):
        quantity, _, figure = r.quantity[len("check."):].rpartition(".")
        row = rows.setdefault((r.step_name, quantity), {
            "run_id": run_id, "started_at": as_utc(r.started_at), "step_name": r.step_name, "quantity": quantity,
            "n": None, "ks": None, "spread_ratio": None, "verdict": "n/a"})
        if figure == "pass":
            row["verdict"] = "n/a" if r.value is None else ("pass" if r.value >= 0.5 else "warn")
        elif figure == "n":
            row["n"] = None if r.value is None else int(r.value)
        elif figure in ("ks", "spread_ratio"):
            row[figure] = r.value
    if not rows:
        raise LookupError(f"run {run_id} stored no predictive check of array {array_id!r}")
    return list(rows.values())


def latest_runs(session: Session, array_id: str, count: int, *, calibrations: bool = False) -> list[int]:
    """Ids of the newest ``count`` completed runs on ``array_id``, oldest first; with ``calibrations``, only
    runs that recorded whole-array statistics or a noise model. ``LookupError`` for an unknown array."""
    array = get_array(session, array_id)
    statement = select(Run.id).where(Run.array_fk == array.id, Run.status == COMPLETED)
    if calibrations:
        statement = statement.where(or_(select(ArrayStat.id).where(ArrayStat.run_fk == Run.id).exists(),
                                        select(NoiseModelRecord.id).where(NoiseModelRecord.run_fk == Run.id).exists()))
    ids = session.scalars(statement.order_by(Run.started_at.desc(), Run.id.desc()).limit(count)).all()
    return list(reversed(ids))


def _run_stats(session: Session, run_id: int) -> dict[str, tuple[Any, str]]:
    statement = (select(ArrayStat.quantity, ArrayStat.value, ArrayStat.unit)
                 .outerjoin(RunStep, ArrayStat.step_fk == RunStep.id).where(ArrayStat.run_fk == run_id)
                 .order_by(RunStep.index, RunStep.attempt, ArrayStat.id))
    stats: dict[str, tuple[Any, str]] = {}
    for row in session.execute(statement):
        stats[row.quantity] = (row.value, row.unit)  # a later step's value replaces an earlier one
    return stats


def _flatten(value: Any, prefix: str = "") -> dict[str, tuple[Any, str]]:
    if isinstance(value, dict):
        out: dict[str, tuple[Any, str]] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: (value, "")}


def _change(a: Any, b: Any) -> dict[str, float | None]:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numbers:
        return {"change": None, "relative_change": None}
    return {"change": b - a, "relative_change": (b - a) / abs(a) if a != 0 else None}


def to_frame(records: list[dict[str, Any]]) -> pandas.DataFrame:
    """The rows of any query above as a pandas DataFrame, one column per key."""
    import pandas  # only callers who want a frame pay for importing pandas

    return pandas.DataFrame.from_records(records)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime; a naive one is taken to be in UTC already."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _device_quantities(session: Session, array_fk: int) -> list[str]:
    """The distinct per-device quantities of an array, in order.

    One index lookup per quantity, each asking for the next name after the last one
    found: a DISTINCT would read the rows of every device of every run of the array.
    """
    found: list[str] = []
    while True:
        statement = select(DeviceStat.quantity).where(DeviceStat.array_fk == array_fk)
        if found:
            statement = statement.where(DeviceStat.quantity > found[-1])
        following = session.scalar(statement.order_by(DeviceStat.quantity).limit(1))
        if following is None:
            return found
        found.append(following)


def _rows(session: Session, statement: Any) -> list[dict[str, Any]]:
    return [dict(row) for row in session.execute(statement).mappings()]
