"""The Alembic migrations build exactly the ORM schema, both ways, from code and from the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from io import StringIO
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import db.migrate
from db import Database, DatabaseError
from db.engine import make_engine
from db.migrate import MIGRATIONS_DIR, alembic_config, current_revisions, head_revisions, upgrade_to_head
from db.models import Base

DB_DIR = Path(db.migrate.__file__).parent


def _schema_diff(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def _reflected_schema(engine):
    """Everything SQLite reports about the tables, names of constraints and indexes included."""
    inspector = inspect(engine)
    schema = {}
    for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        schema[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "pk": inspector.get_pk_constraint(table),
            "fks": sorted((fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                           tuple(fk["referred_columns"]), tuple(sorted(fk["options"].items())))
                          for fk in inspector.get_foreign_keys(table)),
            "uniques": sorted((u["name"], tuple(u["column_names"]))
                              for u in inspector.get_unique_constraints(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
            "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)),
        }
    return schema


@pytest.fixture
def migrated(tmp_path):
    with Database.open(f"sqlite:///{tmp_path / 'm.db'}") as database:
        yield database


def test_migration_builds_the_orm_schema(migrated):
    assert _schema_diff(migrated.engine) == []


def test_migration_matches_create_all_down_to_constraint_names(migrated):
    # compare_metadata ignores CHECK constraints and most names; comparing with what
    # the ORM itself would create covers those too.
    reference = create_engine("sqlite://")
    Base.metadata.create_all(reference)
    try:
        expected = _reflected_schema(reference)
    finally:
        reference.dispose()
    migrated_schema = _reflected_schema(migrated.engine)
    assert migrated_schema == expected
    assert migrated_schema["runs"]["checks"][0][0] == "ck_runs_status"
    assert ("uq_run_steps_run_fk_index", ("run_fk", "index")) in migrated_schema["run_steps"]["uniques"]


def test_downgrade_to_base_and_upgrade_again(migrated):
    with migrated.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert set(inspect(migrated.engine).get_table_names()) <= {"alembic_version"}
    with migrated.engine.begin() as connection:
        assert current_revisions(connection) == frozenset()
    assert upgrade_to_head(migrated.engine) is True
    assert _schema_diff(migrated.engine) == []


def test_in_memory_database_is_migrated():
    with Database.open("sqlite://") as database:
        assert _schema_diff(database.engine) == []


def test_current_database_opens_without_running_migrations(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    Database.open(url).close()

    def refuse(*args, **kwargs):
        raise AssertionError("migrations ran on a current database")

    monkeypatch.setattr(db.migrate.command, "upgrade", refuse)
    with Database.open(url) as database, database.engine.connect() as connection:
        assert current_revisions(connection) == head_revisions()


def test_database_newer_than_the_code_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    with Database.open(url) as database, database.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dfeed'")
    with pytest.raises(DatabaseError, match="f00dfeed.*newer"):
        Database.open(url)


def test_concurrent_first_opens_agree(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    errors = []

    def open_once():
        try:
            Database.open(url).close()
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = make_engine(url)
    try:
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_migrations_do_not_import_the_models():
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("db"), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("db") for a in node.names), f"{path.name} imports db"


def test_offline_sql_can_be_generated():
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", "sqlite://")
    config.output_buffer = StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    assert "CREATE TABLE device_results" in sql and "CREATE INDEX ix_device_results_array_fk_row_col" in sql


def test_alembic_cli(tmp_path):
    path = tmp_path / "cli.db"
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(DB_DIR / "alembic.ini"), "-x", f"url=sqlite:///{path}",
         "upgrade", "head"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    engine = make_engine(f"sqlite:///{path}")
    try:
        assert _schema_diff(engine) == []
        with engine.connect() as connection:
            assert current_revisions(connection) == head_revisions()
    finally:
        engine.dispose()
