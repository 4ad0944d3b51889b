"""A run's lifecycle: the run row and its steps, opened and closed, and where a running run is.

Every function takes the caller's ``Session`` and flushes, so new rows have their ids
at once, but never commits: the caller decides what one transaction covers.
Objects from an earlier, closed session may be passed back in; they are re-attached.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.jsonable import jsonable
from db.models import FINAL_STATUSES, RUNNING, CrossbarArray, Run, RunStep
from db.timestamps import utcnow


def protocol_hash(protocol_text: str) -> str:
    """sha256 (hex) of the protocol text as UTF-8, to find runs of the same protocol."""
    return hashlib.sha256(protocol_text.encode("utf-8")).hexdigest()


def start_run(session: Session, *, protocol_name: str, protocol_path: str | None, protocol_text: str,
              backend: str, seed: int | None, code_version: str, options: dict[str, Any] | None = None,
              crossbar_array: CrossbarArray | None = None, operator: str | None = None,
              notes: str | None = None) -> Run:
    """A new run in status "running", started now."""
    run = Run(protocol_name=protocol_name, protocol_path=protocol_path, protocol_text=protocol_text,
              protocol_hash=protocol_hash(protocol_text), backend=backend,
              seed=None if seed is None else int(seed), status=RUNNING, code_version=code_version,
              started_at=utcnow(), options=jsonable(options),
              array_fk=None if crossbar_array is None else crossbar_array.id,
              owner_host=socket.gethostname(), owner_pid=os.getpid(), operator=operator, notes=notes)
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


def set_run_progress(session: Session, run_id: int, *, step_index: int | None, step_name: str | None,
                     progress: Mapping[str, Any] | None) -> None:
    """Record where run ``run_id`` is: the step running (``step_index`` 0-based, ``step_name``) and a small
    JSON-able ``progress`` of it; None clears them.

    One UPDATE of these columns alone, by id: it never writes back other columns of a ``Run`` object
    another session holds, and costs the same however often a long step reports.
    """
    session.execute(update(Run).where(Run.id == int(run_id)).values(
        current_step_index=None if step_index is None else int(step_index), current_step=step_name,
        progress=None if progress is None else jsonable(dict(progress))))


def array_id_of(session: Session, run: Run) -> str | None:
    """The id of the array ``run`` measured (None if it never reached one), without loading it into ``run``."""
    if run.array_fk is None:
        return None
    return session.scalar(select(CrossbarArray.array_id).where(CrossbarArray.id == run.array_fk))


def latest_attempts(session: Session, run: Run) -> dict[int, RunStep]:
    """The last attempt at each step index of ``run``."""
    out: dict[int, RunStep] = {}
    for step in session.scalars(select(RunStep).where(RunStep.run_fk == run.id)
                                .order_by(RunStep.index, RunStep.attempt)):
        out[step.index] = step
    return out


def start_step(session: Session, run: Run, index: int, name: str, kind: str, attempt: int = 1) -> RunStep:
    """A new step of ``run`` in status "running"; ``index`` is its position in the protocol,
    ``attempt`` counts its runs (more than one only in a resumed run)."""
    step = RunStep(run_fk=run.id, index=int(index), name=name, kind=kind, status=RUNNING, started_at=utcnow(),
                   attempt=int(attempt))
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
    step.summary = jsonable(summary)
    step.finished_at = utcnow()
    session.flush()


def _check_final(status: str) -> None:
    if status not in FINAL_STATUSES:
        raise ValueError(f"final status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}")


# The key of a run's ``options`` that names the lab queue's job it runs (see hil.lab_queue).
QUEUE_JOB_OPTION = "queue_job"


def run_of_job(session: Session, job_id: int) -> Run | None:
    """The run started for the queue's job ``job_id`` (the newest, should there be more), or None."""
    return session.scalars(select(Run).where(Run.options[QUEUE_JOB_OPTION].as_integer() == int(job_id))
                           .order_by(Run.id.desc()).limit(1)).first()


def runs_of_jobs(session: Session, job_ids: list[int]) -> dict[int, tuple[int, str]]:
    """For each of the queue's jobs that has a run: (run id, run status) of its newest run."""
    if not job_ids:
        return {}
    job = Run.options[QUEUE_JOB_OPTION].as_integer()
    out: dict[int, tuple[int, str]] = {}
    for job_id, run_id, status in session.execute(select(job, Run.id, Run.status)
                                                  .where(job.in_([int(j) for j in job_ids])).order_by(Run.id)):
        out[int(job_id)] = (run_id, status)
    return out
