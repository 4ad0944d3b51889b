"""Reopening a failed or interrupted run, so that it continues from its first unfinished step."""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy.orm import Session

from db.jsonable import jsonable
from db.models import COMPLETED, FAILED, INTERRUPTED, RUNNING, Run
from db.timestamps import utcnow


class ResumeRefused(Exception):
    """The run cannot be resumed (unknown, still running or already completed); nothing was changed."""


def check_resumable(run: Run) -> None:
    """Raise :class:`ResumeRefused` unless ``run`` failed or was interrupted."""
    if run.status == COMPLETED:
        raise ResumeRefused(f"run {run.id} completed: there is nothing to resume")
    if run.status == RUNNING:
        raise ResumeRefused(f"run {run.id} is still running (pid {run.owner_pid} on {run.owner_host}); "
                            "stop that process first")
    if run.status not in (FAILED, INTERRUPTED):
        raise ResumeRefused(f"run {run.id} has status {run.status!r}")


def resume_run(session: Session, run_id: int, options: dict[str, Any] | None = None) -> Run:
    """Reopen a failed or interrupted run: back to "running", owned by this process, with the
    status and error it had (and the backend ``options`` of this session) appended to ``run.resumes``.
    Its steps and data are untouched."""
    run = session.get(Run, int(run_id))
    if run is None:
        raise ResumeRefused(f"there is no run {run_id} in this database")
    check_resumable(run)
    entry = {"at": utcnow().isoformat(), "host": socket.gethostname(), "pid": os.getpid(),
             "previous_status": run.status, "previous_error": run.error, "options": jsonable(options)}
    run.resumes = [*(run.resumes or []), entry]
    run.status, run.error, run.finished_at = RUNNING, None, None
    run.owner_host, run.owner_pid = socket.gethostname(), os.getpid()
    session.flush()
    return run
