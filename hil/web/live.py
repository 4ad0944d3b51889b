"""What a person watching a run wants from its row: how long it has run, how far its step is, and
when that step should end.

The estimate is the step's own rate so far (elapsed in the step over the share done); a step that
has not said how much work it has gives none, rather than a guess.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from db.history import as_utc
from db.models import FAILED, INTERRUPTED, RUNNING

# A running run whose progress is older than this is shown as quiet (it may be in a long measurement, or
# its process may be gone: the next writer to open the database marks a dead local process's run).
QUIET_AFTER_S = 120.0


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _parse(moment: Any) -> datetime | None:
    if moment is None:
        return None
    if isinstance(moment, datetime):
        return as_utc(moment)
    try:
        return as_utc(datetime.fromisoformat(str(moment)))
    except ValueError:
        return None


def live_state(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """From a :func:`db.history.run_live` row: ``elapsed_s``, ``step`` ("2/5 train"), ``stage``,
    ``fraction`` of the step's work done (None if unknown), ``step_eta_s`` (None if unknown),
    ``quiet_s`` (seconds since the last progress of a running run, when over QUIET_AFTER_S), and for a
    failed or interrupted run ``resume`` (the command that continues it)."""
    started = as_utc(row["started_at"])
    finished = _parse(row.get("finished_at"))
    status = row["status"]
    progress = row.get("progress") or {}
    out: dict[str, Any] = {"status": status, "elapsed_s": ((finished or now) - started).total_seconds(),
                           "step": None, "stage": progress.get("stage"), "fraction": None, "step_eta_s": None,
                           "quiet_s": None, "error": row.get("error"), "resume": None, "done": None, "total": None,
                           "unit": progress.get("unit") or ""}
    if row.get("step_index") is not None:
        steps = progress.get("steps")
        out["step"] = f"{row['step_index'] + 1}{f'/{steps}' if steps else ''} {row.get('step_name') or ''}".strip()
    total = progress.get("total")
    done = progress.get("epoch") if progress.get("epoch") is not None else progress.get("done")
    if isinstance(total, (int, float)) and total > 0 and isinstance(done, (int, float)):
        fraction = min(max(done / total, 0.0), 1.0)
        out.update(fraction=fraction, done=done, total=total)
        step_started = _parse(row.get("step_started_at"))
        if status == RUNNING and step_started is not None and 0 < fraction < 1:
            in_step = (now - step_started).total_seconds()
            out["step_eta_s"] = max(in_step * (1 - fraction) / fraction, 0.0)
    updated = _parse(progress.get("updated_at"))
    if status == RUNNING and updated is not None and (now - updated).total_seconds() > QUIET_AFTER_S:
        out["quiet_s"] = (now - updated).total_seconds()
    if status in (FAILED, INTERRUPTED):
        out["resume"] = f"python -m hil.run --resume {row['id']}"
    return out
