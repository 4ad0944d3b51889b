"""Whether the process that owns a running run is still there.

A run records its owner (host and pid) when it starts or resumes. A process killed mid-run
cannot close its run; the next process to open the database on that host finds it here.
Runs owned by another host cannot be checked by pid: a lab's queue answers for those
(:mod:`hil.worker`, from its workers' heartbeats).
"""

from __future__ import annotations

import os
import socket

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import INTERRUPTED, RUNNING, Run
from db.runs import finish_run
from db.timestamps import utcnow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                  # someone else's process: it exists
    return True


def mark_orphaned_runs(session: Session) -> list[int]:
    """Runs still "running" whose process (on this host) no longer exists: a process killed
    mid-run could not close them. They, and their running steps, become "interrupted"; what
    they measured stays. Runs of other hosts cannot be checked and are left alone. Returns
    the ids marked."""
    host = socket.gethostname()
    marked = []
    for run in session.scalars(select(Run).where(Run.status == RUNNING, Run.owner_host == host)):
        if run.owner_pid is None or _alive(run.owner_pid):
            continue
        mark_interrupted(session, run, f"the process running it (pid {run.owner_pid} on {host}) ended without "
                                        "closing it")
        marked.append(run.id)
    return marked


def mark_interrupted(session: Session, run: Run, cause: str) -> None:
    """Close a "running" ``run`` whose owner is known to be gone (by whoever knows it: this host's process
    table above, a lab queue's lease for another host's): it and its running steps become "interrupted"
    with ``cause``; what they measured stays."""
    for step in run.steps:
        if step.status == RUNNING:
            step.status, step.error, step.finished_at = INTERRUPTED, cause, utcnow()
    finish_run(session, run, INTERRUPTED, cause)
