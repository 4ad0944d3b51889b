"""Opening a database: which URL, how the engine is set up, and the ``Database`` handle.

SQLite is the default, a file in the current directory. It is set up for a bench
where a run writes while other processes read its progress: write-ahead logging so
readers do not block the writer, a generous busy timeout so concurrent writers wait
instead of failing, and foreign keys enforced so deleting a run removes its children.
A database server (PostgreSQL: ``postgresql+psycopg://user:password@host/db``) is
used as it is configured; only the connection set-up is ours.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from db.errors import DatabaseError, mask_url
from db.migrate import upgrade_to_head
from db.records import mark_orphaned_runs

DEFAULT_URL = "sqlite:///hil.db"
ENV_VAR = "HIL_DB_URL"

BUSY_TIMEOUT_MS = 30_000
# How long to wait for a database server to answer at all: a wrong host should fail
# a run before it starts, not leave it hanging on the operating system's TCP timeout.
CONNECT_TIMEOUT_S = 10


def resolve_url(url: str | None = None) -> str:
    """``url`` if given, else the ``HIL_DB_URL`` environment variable, else :data:`DEFAULT_URL`.

    An empty string counts as not given, so an unset shell variable passed through a
    command-line option falls back to the defaults instead of failing.
    """
    if url:
        return url
    return os.environ.get(ENV_VAR) or DEFAULT_URL


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets the pragmas above, database servers a connect timeout.

    A bare ``postgresql://`` URL means psycopg (version 3, installed with this package)
    rather than SQLAlchemy's default of psycopg2.

    Raises :class:`DatabaseError` if the URL cannot be parsed, names an unknown dialect
    or a missing driver, or is a SQLite file whose directory cannot be created.
    """
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return _server_engine(parsed)
        return _sqlite_engine(parsed)
    except (ArgumentError, ImportError, OSError) as exc:
        raise DatabaseError(url, exc) from exc


def _server_engine(url: URL) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    if url.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    # A bench process keeps its pool for hours; pre-ping replaces connections the
    # server dropped meanwhile (restart, idle timeout) instead of failing a step.
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _sqlite_engine(url: URL) -> Engine:
    if _is_memory(url):
        # Each connection to ":memory:" is a new, empty database; one shared
        # connection makes every session see the same one.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        file_backed = False
    else:
        if url.query.get("uri") != "true":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        file_backed = True

    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # First, so that switching the journal mode also waits for a busy database.
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if file_backed:
                _enable_wal(cursor)
                # Under WAL, NORMAL can lose the last commits on power loss but never
                # corrupts the file, and saves an fsync per transaction.
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


def _enable_wal(cursor: Any) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database
    # is locked" at once instead of calling the busy handler when another connection is
    # doing the same, so several processes creating one database at once need a retry.
    # Once the file is in WAL mode (which persists), the first query returns early.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Database:
    """An open database at the current schema; hands out sessions.

    Use :meth:`open` rather than the constructor. ``url`` is the resolved URL as given
    (it may contain a password; ``repr`` masks it).
    """

    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.url = url
        # Objects stay readable after their session commits, so a run engine can keep
        # a Run it created in one short session and finish it in another.
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | None = None) -> Database:
        """Open the database at ``url`` (see :func:`resolve_url`), creating it if need be, at the newest schema."""
        resolved = resolve_url(url)
        engine = make_engine(resolved)
        try:
            upgrade_to_head(engine)
        except DatabaseError:
            engine.dispose()
            raise
        except (SQLAlchemyError, CommandError, ImportError, OSError) as exc:
            engine.dispose()
            raise DatabaseError(resolved, exc) from exc
        db = cls(engine, resolved)
        # a run whose process was killed is found here, the next time anyone opens the database
        with db.session() as session:
            mark_orphaned_runs(session)
        return db

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back if it raises."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({mask_url(self.url)!r})"
