"""A lab's queue of runs on its PostgreSQL server, on procrastinate; the bench lease its workers hold.

Every bench has its own queue (``bench:NAME``); a job is one protocol to run on that bench, its
arguments the protocol's text as submitted (validated before it was queued, and again by the worker
before it runs). The queue's tables (``procrastinate_*``) live beside the run records in the same
database, which must be PostgreSQL: SQLite stays the database of one bench without a queue.

**One worker per bench, across hosts.** A worker runs its bench's jobs only while it holds the bench's
lease: a PostgreSQL session-level advisory lock, taken on a connection of its own and held for the
worker's life. The server releases it when that session ends: at once when the process dies on a living
host (its socket closes), and within about half a minute when the host itself is gone (the session's
TCP keepalives, set on the server's side). The worker checks its lease connection every few seconds and
ends itself at once if it is lost (fencing): by the time the server has released the lease, the worker
that held it is gone or has stopped. So a worker that takes the lease knows no other worker of that
bench is running, anywhere; a job it finds ``doing`` in its bench's queue belongs to a worker that died,
and goes back to the queue to be resumed (:func:`reclaim_orphaned_jobs`). Jobs of one bench also share
a procrastinate lock, so the queue itself never hands out a second job of a bench while one is running.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

TASK = "hil.run"
QUEUE_PREFIX = "bench:"
BENCH_PATTERN = r"^[A-Za-z0-9_.:+-]{1,64}$"
# Priorities are the queue's integers; a range a person can reason about.
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000

# The advisory-lock space of bench leases (the two-integer form: this, hashtext(bench)); the schema
# lock is one key in the same space. Any constants will do, the same in every process of the project.
_LEASE_CLASS = 0x68696C71  # "hilq"
_SCHEMA_KEY = 0

# Server-side keepalives of the lease session (seconds): the server drops the session of a vanished
# host after about idle + interval * count. The client gives up sooner (tcp_user_timeout), so a worker
# cut off from the server fences itself before its lease can pass to another.
_KEEPALIVE = {"idle": 10, "interval": 5, "count": 3}
_CLIENT_TIMEOUT_MS = 15_000
LEASE_CHECK_S = 3.0


class QueueError(Exception):
    """The queue cannot do what was asked; the message is one line, without credentials."""


def queue_name(bench: str) -> str:
    return QUEUE_PREFIX + bench


def bench_of(queue: str) -> str:
    return queue[len(QUEUE_PREFIX):] if queue.startswith(QUEUE_PREFIX) else queue


def check_bench(bench: str) -> str:
    if not re.fullmatch(BENCH_PATTERN, bench or ""):
        raise QueueError(f"bench name {bench!r}: use 1 to 64 letters, digits and _ . : + - only")
    return bench


def postgres_url(url: str | None) -> str:
    """The database URL (``--db``, else ``$HIL_DB_URL``) if it names PostgreSQL; QueueError otherwise."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from db.engine import resolve_url
    from db.errors import mask_url

    resolved = resolve_url(url)
    try:
        backend = make_url(resolved).get_backend_name()
    except (ArgumentError, ValueError):
        raise QueueError(f"{mask_url(resolved)}: not a database URL (like "
                         "postgresql://user:password@host/database)") from None
    if backend != "postgresql":
        raise QueueError(f"the queue needs PostgreSQL (--db postgresql://user:password@host/database, or "
                         f"$HIL_DB_URL), not {mask_url(resolved)}: a {backend} database serves one bench without "
                         f"a queue (python -m hil.run)")
    return resolved


def libpq_url(url: str) -> str:
    """``url`` as libpq (psycopg) takes it: SQLAlchemy's ``postgresql+psycopg://`` without the driver."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def describe_error(exc: BaseException, url: str) -> str:
    """One line for a failure of the queue's database, with the URL masked and any password removed."""
    from sqlalchemy.engine import make_url

    from db.errors import describe, mask_url

    text = describe(exc.__cause__ if exc.__cause__ is not None and "procrastinate" in type(exc).__module__
                    else exc)
    password = make_url(url).password
    if password:
        text = text.replace(str(password), "***")
    return f"{mask_url(url)}: {text}"


def make_app(url: str, *, asynchronous: bool = False):
    """A procrastinate app on the queue at ``url`` (not yet opened): the asynchronous connector for a
    worker, the synchronous one for the command-line tools."""
    import procrastinate

    conninfo = libpq_url(url)
    if asynchronous:
        connector = procrastinate.PsycopgConnector(conninfo=conninfo, kwargs={"connect_timeout": 10})
    else:
        connector = procrastinate.SyncPsycopgConnector(conninfo=conninfo, kwargs={"connect_timeout": 10})
    return procrastinate.App(connector=connector)


def _connect(url: str, **kwargs: Any):
    import psycopg

    return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10, **kwargs)


def schema_present(url: str) -> bool:
    with _connect(url) as conn:
        return conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()[0]


def ensure_schema(url: str) -> None:
    """Create the queue's tables if they are not there (once, also when several processes start at once)."""
    from procrastinate.schema import SchemaManager

    with _connect(url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (_LEASE_CLASS, _SCHEMA_KEY))
        try:
            if not conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()[0]:
                with conn.transaction():
                    conn.execute(SchemaManager.get_schema())
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LEASE_CLASS, _SCHEMA_KEY))


def defer(app, *, bench: str, protocol_text: str, protocol_path: str, protocol_name: str, seed: int | None,
          priority: int) -> int:
    """Queue one run of a validated protocol on ``bench``; the job's id."""
    task = app.configure_task(name=TASK, queue=queue_name(bench), lock=queue_name(bench), priority=priority)
    return task.defer(protocol_text=protocol_text, protocol_path=protocol_path, protocol_name=protocol_name,
                      seed=seed)


@dataclass
class Work:
    """One job of the queue as ``python -m hil.queue`` lists it."""

    job_id: int
    bench: str
    protocol: str
    status: str                 # queued, running, completed, failed, cancelled, aborted
    priority: int
    attempts: int
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    run_id: int | None = None
    run_status: str | None = None


_STATUS = {"todo": "queued", "doing": "running", "succeeded": "completed", "failed": "failed",
           "cancelled": "cancelled", "aborted": "aborted", "aborting": "aborted"}

_LIST = """
SELECT j.id, j.queue_name, j.status::text AS status, j.priority, j.attempts, j.args,
       (SELECT min(e.at) FROM procrastinate_events e WHERE e.job_id = j.id AND e.type = 'deferred') AS queued_at,
       (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id AND e.type = 'started') AS started_at,
       (SELECT max(e.at) FROM procrastinate_events e
         WHERE e.job_id = j.id AND e.type IN ('succeeded', 'failed', 'cancelled', 'aborted')) AS finished_at
  FROM procrastinate_jobs j
 WHERE j.task_name = %(task)s AND (%(job)s::bigint IS NULL OR j.id = %(job)s::bigint)
 ORDER BY j.id
"""


def list_work(url: str, job_id: int | None = None) -> list[Work]:
    """Every job of the queue (or the one ``job_id``), oldest first, without its run."""
    import psycopg.rows

    if not schema_present(url):
        return []
    with _connect(url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute(_LIST, {"task": TASK, "job": job_id}).fetchall()
    final = {"succeeded", "failed", "cancelled", "aborted"}
    return [Work(job_id=row["id"], bench=bench_of(row["queue_name"]),
                 protocol=str((row["args"] or {}).get("protocol_name", "?")),
                 status=_STATUS.get(row["status"], row["status"]), priority=row["priority"],
                 attempts=row["attempts"], queued_at=row["queued_at"],
                 started_at=row["started_at"] if row["status"] != "todo" or row["attempts"] else None,
                 finished_at=row["finished_at"] if row["status"] in final else None)
            for row in rows]


def attach_runs(session, work: list[Work]) -> None:
    """Fill in each job's run (the newest run recorded for it) from the run records."""
    from db.runs import runs_of_jobs

    found = runs_of_jobs(session, [w.job_id for w in work])
    for w in work:
        if w.job_id in found:
            w.run_id, w.run_status = found[w.job_id]


def cancel(app, url: str, job_id: int) -> Work:
    """Cancel a queued job; QueueError, with nothing changed, for one that is running or finished."""
    found = list_work(url, job_id)
    if not found:
        raise QueueError(f"there is no job {job_id} in the queue")
    work = found[0]
    if work.status != "queued":
        if work.status == "running":
            raise QueueError(f"job {job_id} is running on bench {work.bench}: only a queued job can be "
                             "cancelled (stop that bench's worker to stop it; the next worker resumes it)")
        raise QueueError(f"job {job_id} has finished ({work.status}): only a queued job can be cancelled")
    if not app.job_manager.cancel_job_by_id(job_id):
        raise QueueError(f"job {job_id} was taken by its bench's worker meanwhile: it is running now, "
                         "and can no longer be cancelled")
    work.status = "cancelled"
    return work


def retry(app, url: str, job_id: int) -> Work:
    """Put a failed job back in its bench's queue: its worker resumes the job's run where it stopped (the
    steps it completed are kept). QueueError, with nothing changed, for a job that has not failed."""
    found = list_work(url, job_id)
    if not found:
        raise QueueError(f"there is no job {job_id} in the queue")
    work = found[0]
    if work.status != "failed":
        raise QueueError(f"job {job_id} is {work.status}: only a failed job can be retried")
    app.job_manager.retry_job_by_id(job_id, retry_at=datetime.now(timezone.utc))
    work.status = "queued"
    return work


def reclaim_orphaned_jobs(app, url: str, bench: str) -> list[int]:
    """Put back in the queue the jobs of ``bench`` left ``doing`` by a worker that died; only the holder of
    the bench's lease may call this (it proves that worker is gone). Returns their ids."""
    now = datetime.now(timezone.utc)
    ids = [job.id for job in app.job_manager.list_jobs(queue=queue_name(bench), status="doing")]
    for job_id in ids:
        app.job_manager.retry_job_by_id(job_id, retry_at=now)
    return ids


class LeaseLost(Exception):
    pass


class BenchLease:
    """The lease of one bench: held from :meth:`acquire` until :meth:`release` or the process ends."""

    def __init__(self, url: str, bench: str):
        self.url, self.bench = url, bench
        self._conn = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, *, wait: bool = True, on_wait: Callable[[], None] | None = None,
                poll_s: float = 2.0) -> bool:
        self._conn = _connect(self.url, keepalives=1, keepalives_idle=_KEEPALIVE["idle"],
                              keepalives_interval=_KEEPALIVE["interval"], keepalives_count=_KEEPALIVE["count"],
                              tcp_user_timeout=_CLIENT_TIMEOUT_MS,
                              application_name=f"hil.worker {self.bench}@{socket.gethostname()}"[:63])
        for name, value in _KEEPALIVE.items():
            self._conn.execute(f"SET tcp_keepalives_{name} = {int(value)}")
        told = False
        while True:
            if self._conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                  (_LEASE_CLASS, queue_name(self.bench))).fetchone()[0]:
                return True
            if not wait:
                return False
            if not told and on_wait is not None:
                on_wait()
                told = True
            time.sleep(poll_s)

    def holder(self) -> str | None:
        """Who else holds this bench's lease (application name and client address), if anyone."""
        with _connect(self.url) as conn:
            row = conn.execute(
                "SELECT a.application_name, a.client_addr::text FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid "
                "AND l.objid = hashtext(%s)::oid", (_LEASE_CLASS & 0xFFFFFFFF, queue_name(self.bench))).fetchone()
        return None if row is None else f"{row[0] or '?'} ({row[1] or 'local'})"

    def check(self) -> None:
        """LeaseLost unless the lease's session still answers."""
        try:
            with self._lock:
                self._conn.execute("SELECT 1")
        except Exception as exc:
            raise LeaseLost(describe_error(exc, self.url)) from None

    def watch(self, on_lost: Callable[[str], None], every_s: float = LEASE_CHECK_S) -> None:
        """Check the lease every ``every_s`` in a thread of its own; call ``on_lost(reason)`` if it is lost."""
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.check()
                except LeaseLost as exc:
                    on_lost(str(exc))
                    return
        self._thread = threading.Thread(target=loop, name=f"lease {self.bench}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._conn is not None:
            try:
                self._conn.close()   # ending the session releases the lock
            except Exception:
                pass
            self._conn = None
