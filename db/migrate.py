"""Bringing a database to the newest schema with Alembic, from code as well as from the CLI.

A database already at the newest revision is recognised from its version table alone,
without importing Alembic: the revisions this code knows are read from the migration
files' ``revision``/``down_revision`` lines, which costs a few milliseconds where loading
them through Alembic costs most of a command's start-up. Otherwise the migrations run on
one connection under a write lock, and the revision is checked again under that lock, so
two processes opening a fresh database at once do not both try to create it.

A database with tables but no version of ours (another application's, or one made by
hand) and one at a revision this code does not know are refused as they are: migrating
them would fail halfway or, worse, succeed on someone else's data.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect, text

from db.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"

# Any constant will do: it only has to be the same for every process of this project.
_POSTGRES_LOCK_KEY = 0x68696C5F6462  # "hil_db"

# How many of a foreign database's tables the refusal names; the rest are counted.
_TABLES_NAMED = 5


def __getattr__(name: str) -> Any:
    # ``db.migrate.command`` stays available (tests patch it) without importing Alembic
    # for every open of a current database.
    if name == "command":
        from alembic import command
        return command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for this package's migrations, optionally bound to ``connection``.

    With a connection, ``env.py`` runs the migrations on it instead of opening its
    own, which is what makes in-memory SQLite databases migratable.
    """
    from alembic.config import Config

    config = Config()
    # Config values go through ConfigParser interpolation, where "%" is special.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        raise ValueError("no value")
    return ast.literal_eval(node)


def read_revision_graph(versions_dir: Path = MIGRATIONS_DIR / "versions") -> dict[str, frozenset[str]]:
    """Each migration's revision and the revisions it follows, read from the files' source.

    Raises ValueError for a file whose ``revision`` or ``down_revision`` is not a plain
    literal; :func:`known_revisions` then asks Alembic instead.
    """
    graph: dict[str, frozenset[str]] = {}
    # The files Alembic itself loads: every .py but __init__ and editor lock files.
    for path in sorted(versions_dir.glob("*.py")):
        if path.name == "__init__.py" or path.name.startswith(".#"):
            continue
        values: dict[str, Any] = {}
        for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                values[node.target.id] = node.value
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        values[target.id] = node.value
        revision = _literal(values.get("revision"))
        down = _literal(values.get("down_revision")) if "down_revision" in values else None
        if not isinstance(revision, str):
            raise ValueError(f"{path.name}: revision is not a string")
        if revision in graph:
            raise ValueError(f"{path.name}: revision {revision} appears twice")
        graph[revision] = frozenset([down] if isinstance(down, str) else down or ())
    return graph


def _alembic_revisions() -> tuple[frozenset[str], frozenset[str]]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(script.get_heads()), frozenset(rev.revision for rev in script.walk_revisions())


@lru_cache(maxsize=1)
def known_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(head revisions, every revision) of this code's migrations."""
    try:
        graph = read_revision_graph()
    except (ValueError, SyntaxError):
        # A migration written in a form the reader does not follow: Alembic knows best.
        return _alembic_revisions()
    followed = frozenset().union(*graph.values()) if graph else frozenset()
    return frozenset(graph) - followed, frozenset(graph)


def head_revisions() -> frozenset[str]:
    """The newest revision(s) this code knows."""
    return known_revisions()[0]


def current_revisions(connection: Connection) -> frozenset[str]:
    """The revision(s) recorded in the database; empty for a database without schema."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return frozenset()
    return frozenset(connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def checked_revisions(connection: Connection, url: str) -> frozenset[str]:
    """The database's revision(s), once it is known to be ours or empty; reads, never writes.

    Raises :class:`DatabaseError` for a database holding tables but no version of ours,
    or a revision this code does not know.
    """
    heads, known = known_revisions()
    tables = inspect(connection).get_table_names()
    if VERSION_TABLE not in tables:
        if tables:
            named = ", ".join(sorted(tables)[:_TABLES_NAMED])
            more = f" and {len(tables) - _TABLES_NAMED} more" if len(tables) > _TABLES_NAMED else ""
            raise DatabaseError(url, f"holds tables of another application ({named}{more}) and no memristor-hil "
                                     f"schema version; refusing to change it")
        return frozenset()
    current = current_revisions(connection)
    unknown = current - known
    if unknown:
        raise DatabaseError(
            url, f"schema revision {', '.join(sorted(unknown))} is unknown to this code (which knows up to "
                 f"{', '.join(sorted(heads))}): a newer memristor-hil or another application made it; "
                 f"refusing to change it")
    if not current and set(tables) - {VERSION_TABLE}:
        raise DatabaseError(url, f"holds tables ({', '.join(sorted(set(tables) - {VERSION_TABLE})[:_TABLES_NAMED])}) "
                                 f"but an empty schema version table; refusing to change it")
    return current


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
    """Migrate the database behind ``engine`` to the newest revision; True if anything ran.

    Raises :class:`DatabaseError`, leaving the database as it was, for a database that
    is not ours (see :func:`checked_revisions`) or a migration that fails.
    """
    heads = head_revisions()
    url = _raw_url(engine)
    with engine.connect() as connection:
        if checked_revisions(connection, url) == heads:
            return False
    with migration_connection(engine) as connection:
        if checked_revisions(connection, url) == heads:
            return False
        from alembic import command
        from alembic.util import CommandError

        try:
            command.upgrade(alembic_config(connection), "head")
        except CommandError as exc:
            raise DatabaseError(url, f"migration failed: {exc}") from exc
    return True


def _raw_url(engine: Engine) -> str:
    # DatabaseError masks the password itself.
    return engine.url.render_as_string(hide_password=False)
