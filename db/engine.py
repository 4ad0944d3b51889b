"""Opening a database: which URL, how the engine is set up, and the ``Database`` handle.

SQLite is the default, a file in the current directory. It is set up for a bench
where a run writes while other processes read its progress: write-ahead logging so
readers do not block the writer, a generous busy timeout so concurrent writers wait
instead of failing, and foreign keys enforced so deleting a run removes its children.
A database server (PostgreSQL: ``postgresql+psycopg://user:password@host/db``) is
used as it is configured; only the connection set-up is ours.

Opening refuses, leaving everything as it was, what would otherwise be changed or
created by mistake: a missing directory (a mistyped path would start a second
history; created only when asked), a file that is not a SQLite database, and a
database of another application (see :mod:`db.migrate`).
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

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from db.errors import DatabaseError, DatabaseMissing, mask_url
from db.migrate import checked_revisions, head_revisions, upgrade_to_head
from db.liveness import mark_orphaned_runs

DEFAULT_URL = "sqlite:///hil.db"
ENV_VAR = "HIL_DB_URL"

BUSY_TIMEOUT_MS = 30_000
# How long to wait for a database server to answer at all: a wrong host should fail
# a run before it starts, not leave it hanging on the operating system's TCP timeout.
CONNECT_TIMEOUT_S = 10

# The first 16 bytes of every SQLite 3 database file (an empty file is a new database too).
SQLITE_HEADER = b"SQLite format 3\x00"


def resolve_url(url: str | None = None) -> str:
    """``url`` if given, else the ``HIL_DB_URL`` environment variable, else :data:`DEFAULT_URL`.

    An empty string counts as not given, so an unset shell variable passed through a
    command-line option falls back to the defaults instead of failing.
    """
    if url:
        return url
    return os.environ.get(ENV_VAR) or DEFAULT_URL


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets the pragmas above, database servers a connect timeout.
    With ``read_only`` every connection refuses writes (SQLite ``query_only``, a server's read-only
    transactions), whatever the role may do: a viewer cannot change what it shows.

    A bare ``postgresql://`` URL means psycopg (version 3, installed with this package)
    rather than SQLAlchemy's default of psycopg2. Nothing is created or checked here:
    :class:`Database` checks the path and the schema and switches a SQLite file to WAL.

    Raises :class:`DatabaseError` if the URL cannot be parsed, names an unknown dialect
    or a missing driver.
    """
    parsed = _parse(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            return _server_engine(parsed, read_only)
        return _sqlite_engine(parsed, read_only)
    except NoSuchModuleError as exc:
        raise DatabaseError(url, f"unknown kind of database {parsed.drivername!r}") from exc
    except ImportError as exc:
        raise DatabaseError(url, f"the driver for {parsed.drivername} is not installed ({exc})") from exc
    except ArgumentError as exc:
        raise DatabaseError(url, exc) from exc


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError(url, "not a database URL (like sqlite:///hil.db or "
                                 "postgresql://user:password@host/database)") from exc


def _server_engine(url: URL, read_only: bool = False) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    if url.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    if read_only and url.get_backend_name() == "postgresql":
        connect_args["options"] = "-c default_transaction_read_only=on"
    # A bench process keeps its pool for hours; pre-ping replaces connections the
    # server dropped meanwhile (restart, idle timeout) instead of failing a step.
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def sqlite_path(url: URL) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database or a ``file:`` URI."""
    if url.get_backend_name() != "sqlite" or _is_memory(url) or url.query.get("uri") == "true":
        return None
    return Path(url.database)


def _sqlite_engine(url: URL, read_only: bool = False) -> Engine:
    if _is_memory(url):
        # Each connection to ":memory:" is a new, empty database; one shared
        # connection makes every session see the same one.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        file_backed = False
    else:
        engine = create_engine(url)
        file_backed = True

    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # WAL itself is switched on by Database once the file is known to be ours:
            # the switch writes to the file, which must stay untouched when it is refused.
            if file_backed and cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                _relax_sync(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            if read_only:
                cursor.execute("PRAGMA query_only=ON")
        finally:
            cursor.close()

    return engine


def _relax_sync(cursor: Any) -> None:
    # Under WAL, NORMAL can lose the last commits on power loss but never corrupts the
    # file, and saves an fsync per transaction. (Not so in the rollback-journal mode.)
    cursor.execute("PRAGMA synchronous=NORMAL")


def _enable_wal(connection: Connection) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database
    # is locked" at once instead of calling the busy handler when another connection is
    # doing the same, so several processes creating one database at once need a retry.
    # Once the file is in WAL mode (which persists), the first query returns early.
    cursor = connection.connection.dbapi_connection.cursor()
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    try:
        while True:
            try:
                if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        _relax_sync(cursor)
    finally:
        cursor.close()


def check_sqlite_file(url: str, path: Path, *, create_dirs: bool = False, must_exist: bool = False) -> None:
    """Refuse, before SQLite touches anything, a path that cannot hold this database.

    An existing file must be a SQLite database (or empty: SQLite's new database). A
    missing file is created later by SQLite, in an existing, writable directory; a
    missing directory is created here only with ``create_dirs``, and with ``must_exist``
    a missing file is refused too.

    Raises :class:`DatabaseMissing` for a missing file or directory (the caller may offer
    to create it), :class:`DatabaseError` for the rest.
    """
    if path.is_dir():
        raise DatabaseError(url, "is a directory, not a database file")
    if path.exists():
        try:
            with path.open("rb") as file:
                header = file.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise DatabaseError(url, f"cannot read {path}: {exc.strerror or exc}") from exc
        if header and header != SQLITE_HEADER:
            raise DatabaseError(url, "file is not a SQLite database")
        return
    parent = path.parent
    if must_exist:
        raise DatabaseMissing(url, path, "file")
    if not parent.exists():
        if not create_dirs:
            raise DatabaseMissing(url, parent, "directory")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(url, f"cannot create directory {parent}: {exc.strerror or exc}") from exc
    elif not parent.is_dir():
        raise DatabaseError(url, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DatabaseError(url, f"directory {parent} is not writable: cannot create {path.name} there")


def _open_engine(url: str, *, create_dirs: bool, must_exist: bool, read_only: bool = False) -> Engine:
    """An engine on a database at the current schema, created or migrated if need be (read-only: one
    already at the current schema, or an error)."""
    parsed = _parse(url)
    path = sqlite_path(parsed)
    if path is not None:
        check_sqlite_file(url, path, create_dirs=create_dirs, must_exist=must_exist or read_only)
    engine = make_engine(url, read_only=read_only)
    try:
        # One read decides: at the newest revision (the usual case, and then Alembic is
        # not even imported), to be created or migrated, or not ours and left alone.
        with engine.connect() as connection:
            current = checked_revisions(connection, url)
            if path is not None and not read_only:
                _enable_wal(connection)
        if current != head_revisions():
            if read_only:
                raise DatabaseError(url, "its schema is not this version's (a reader does not migrate it): "
                                         "open it once with a writer, such as python -m hil.run")
            upgrade_to_head(engine)
    except DatabaseError:
        engine.dispose()
        raise
    except (SQLAlchemyError, ImportError, OSError) as exc:
        engine.dispose()
        raise DatabaseError(url, _in_context(exc, path)) from exc
    return engine


def _in_context(exc: BaseException, path: Path | None) -> BaseException | str:
    # SQLite says "unable to open database file" whatever the reason; the path says which.
    if path is not None and "unable to open database file" in str(exc):
        parent = path.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"directory {parent} is not writable (SQLite keeps its journal files beside {path.name})"
        return f"cannot open {path}"
    return exc


class Database:
    """An open database at the current schema; hands out sessions.

    ``Database(url)`` opens the database at ``url`` (see :func:`resolve_url`): a new SQLite
    file is created in an existing directory, an empty database gets the schema, an older
    one is migrated. ``create_dirs`` also creates a SQLite file's missing directories;
    ``must_exist`` refuses a missing SQLite file instead of creating it (for readers, to
    whom a new empty database would look like no history). ``read_only`` opens an existing
    database at the current schema without writing anything, ever (for viewers; a read-only
    database role suffices). Raises :class:`DatabaseError`,
    with everything left as it was, for a database that cannot be used.

    ``url`` is the resolved URL as given (it may contain a password; ``repr`` masks it).
    """

    engine: Engine
    url: str

    def __init__(self, url: str | None = None, *, create_dirs: bool = False, must_exist: bool = False,
                 read_only: bool = False):
        resolved = resolve_url(url)
        self._attach(_open_engine(resolved, create_dirs=create_dirs, must_exist=must_exist, read_only=read_only),
                     resolved)
        if read_only:
            return
        try:
            # a run whose process was killed is found here, the next time anyone opens the database
            with self.session() as session:
                mark_orphaned_runs(session)
        except SQLAlchemyError as exc:
            self.close()
            raise DatabaseError(resolved, _in_context(exc, sqlite_path(make_url(resolved)))) from exc

    @classmethod
    def open(cls, url: str | None = None, *, create_dirs: bool = False, must_exist: bool = False,
             read_only: bool = False) -> Database:
        """The same as ``Database(url, ...)``."""
        return cls(url, create_dirs=create_dirs, must_exist=must_exist, read_only=read_only)

    @classmethod
    def from_engine(cls, engine: Engine, url: str | None = None) -> Database:
        """A handle on ``engine`` as it is: no check, no migration (for code that set the engine up itself)."""
        db = cls.__new__(cls)
        db._attach(engine, url or engine.url.render_as_string(hide_password=False))
        return db

    def _attach(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        # Objects stay readable after their session commits, so a run engine can keep
        # a Run it created in one short session and finish it in another.
        self._sessions = sessionmaker(engine, expire_on_commit=False)

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
