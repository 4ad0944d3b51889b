"""Bringing a database to the newest schema with Alembic, from code as well as from the CLI.

A database already at the newest revision is recognised from its version table alone,
so opening it costs one query. Otherwise the migrations run on one connection under a
write lock, and the revision is checked again under that lock, so two processes opening
a fresh database at once do not both try to create it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from db.errors import DatabaseError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Any constant will do: it only has to be the same for every process of this project.
_POSTGRES_LOCK_KEY = 0x68696C5F6462  # "hil_db"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for this package's migrations, optionally bound to ``connection``.

    With a connection, ``env.py`` runs the migrations on it instead of opening its
    own, which is what makes in-memory SQLite databases migratable.
    """
    config = Config()
    # Config values go through ConfigParser interpolation, where "%" is special.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _script_revisions() -> tuple[frozenset[str], frozenset[str]]:
    script = ScriptDirectory.from_config(alembic_config())
    heads = frozenset(script.get_heads())
    known = frozenset(rev.revision for rev in script.walk_revisions())
    return heads, known


def head_revisions() -> frozenset[str]:
    """The newest revision(s) this code knows."""
    return _script_revisions()[0]


def current_revisions(connection: Connection) -> frozenset[str]:
    """The revision(s) recorded in the database; empty for a database without schema."""
    return frozenset(MigrationContext.configure(connection).get_current_heads())


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction holding the database's write lock; commits on success."""
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
                yield connection
            return
        # SQLite rebuilds a table to alter it (batch mode); with foreign keys enforced,
        # dropping the old copy would cascade into the child tables. The pragma only
        # takes effect outside a transaction, hence before BEGIN; integrity is checked
        # before committing instead.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            # IMMEDIATE takes the write lock now, waiting out busy_timeout, rather than
            # failing later when a reader tries to become a writer.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
                violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if violations:
                    raise DatabaseError(_raw_url(engine), f"migration left broken foreign keys: {violations[:5]}")
                connection.commit()
            except BaseException:
                connection.rollback()
                raise
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def upgrade_to_head(engine: Engine) -> bool:
    """Migrate the database behind ``engine`` to the newest revision; True if anything ran."""
    heads, known = _script_revisions()
    with engine.connect() as connection:
        if current_revisions(connection) == heads:
            return False
    with migration_connection(engine) as connection:
        current = current_revisions(connection)
        if current == heads:
            return False
        unknown = current - known
        if unknown:
            raise DatabaseError(
                _raw_url(engine),
                f"schema revision {', '.join(sorted(unknown))} is newer than this code "
                f"(which knows up to {', '.join(sorted(heads))}); upgrade the software")
        command.upgrade(alembic_config(connection), "head")
    return True


def _raw_url(engine: Engine) -> str:
    # DatabaseError masks the password itself.
    return engine.url.render_as_string(hide_password=False)
