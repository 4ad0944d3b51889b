"""Questions about the past: which arrays and runs there are, and how a statistic moved over runs.

Every query takes the caller's ``Session`` and returns a list of plain dicts (column
name -> value, timestamps as timezone-aware UTC datetimes), ready for a table, CSV,
JSON or :func:`to_frame`. An array is named by its ``array_id``; an unknown one raises
``LookupError`` listing the known names.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (STATUSES, ArrayStat, CrossbarArray, DeviceStat, Instrument, NoiseModelRecord, Run,
                       RunStep)
from db.records import get_array

if TYPE_CHECKING:
    import pandas

__all__ = ["array_quantities", "array_trend", "device_history", "list_arrays", "list_noise_models", "list_runs",
           "to_frame"]


def list_arrays(session: Session) -> list[dict[str, Any]]:
    """Every array with its instrument, how many runs it had and when the last one started."""
    statement = (
        select(CrossbarArray.array_id, CrossbarArray.rows, CrossbarArray.cols, Instrument.backend,
               Instrument.instrument_id, func.count(Run.id).label("runs"),
               func.max(Run.started_at).label("last_run_at"))
        .join(Instrument, CrossbarArray.instrument_fk == Instrument.id)
        .outerjoin(Run, Run.array_fk == CrossbarArray.id)
        .group_by(CrossbarArray.id, CrossbarArray.array_id, CrossbarArray.rows, CrossbarArray.cols,
                  Instrument.backend, Instrument.instrument_id)
        .order_by(CrossbarArray.array_id))
    return _rows(session, statement)


def list_runs(session: Session, *, status: str | None = None, protocol: str | None = None,
              array_id: str | None = None, since: datetime | None = None, until: datetime | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Runs, newest first, optionally only those with ``status``, of ``protocol`` (its name), on
    ``array_id``, started at or after ``since`` and before ``until`` (naive datetimes are UTC),
    at most ``limit`` of them. ``duration_s`` is None for a run that has not finished."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; one of: {', '.join(STATUSES)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    statement = (
        select(Run.id, Run.protocol_name, Run.status, Run.backend, CrossbarArray.array_id, Run.seed,
               Run.started_at, Run.finished_at, Run.error, Run.code_version)
        .outerjoin(CrossbarArray, Run.array_fk == CrossbarArray.id)
        .order_by(Run.started_at.desc(), Run.id.desc()))
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
    if limit is not None:
        statement = statement.limit(limit)
    keys = ("id", "protocol_name", "status", "backend", "array_id", "seed", "started_at", "finished_at",
            "duration_s", "error", "code_version")
    runs = []
    for row in _rows(session, statement):
        finished = row["finished_at"]
        row["duration_s"] = None if finished is None else (finished - row["started_at"]).total_seconds()
        runs.append({key: row[key] for key in keys})
    return runs


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


def array_trend(session: Session, array_id: str, quantity: str) -> list[dict[str, Any]]:
    """The whole-array statistic ``quantity`` of ``array_id`` over its runs, oldest first.

    One row per run and step that recorded it, with the run's start time, the step's
    name (None if recorded outside a step), the value and its unit. An array that
    never recorded ``quantity`` gives an empty list.
    """
    crossbar_array = get_array(session, array_id)
    statement = (
        select(ArrayStat.run_fk.label("run_id"), Run.started_at, RunStep.name.label("step_name"), ArrayStat.value,
               ArrayStat.unit)
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
