"""The Alembic migrations build exactly the ORM schema, both ways, from code and from the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from datetime import datetime, timezone
from io import StringIO
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text

import db.migrate
from db import Database, DatabaseError
from db.engine import make_engine
from db.migrate import (MIGRATIONS_DIR, alembic_config, current_revisions, head_revisions, migration_connection,
                        upgrade_to_head)
from db.models import Base, Run

DB_DIR = Path(db.migrate.__file__).parent


def _schema_diff(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def _reflected_schema(engine, schema=None):
    """Everything the database reports about the tables, names of constraints and indexes included."""
    inspector = inspect(engine)
    result = {}
    for table in sorted(set(inspector.get_table_names(schema=schema)) - {"alembic_version"}):
        result[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"])
                        for c in inspector.get_columns(table, schema=schema)],
            "pk": inspector.get_pk_constraint(table, schema=schema),
            "fks": sorted((fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                           tuple(fk["referred_columns"]), tuple(sorted(fk["options"].items())))
                          for fk in inspector.get_foreign_keys(table, schema=schema)),
            "uniques": sorted((u["name"], tuple(u["column_names"]))
                              for u in inspector.get_unique_constraints(table, schema=schema)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table, schema=schema)),
            "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table, schema=schema)),
        }
    return result


def _create_all_schema(migrated):
    """What the ORM itself creates on the same kind of database, reflected like the migrated one."""
    if migrated.engine.dialect.name == "sqlite":
        reference = create_engine("sqlite://")
        try:
            Base.metadata.create_all(reference)
            return _reflected_schema(reference)
        finally:
            reference.dispose()
    # One database per test on PostgreSQL: the reference goes into a schema of its own.
    with migrated.engine.begin() as connection:
        connection.exec_driver_sql("CREATE SCHEMA reference")
        Base.metadata.create_all(connection.execution_options(schema_translate_map={None: "reference"}))
    try:
        return _reflected_schema(migrated.engine, schema="reference")
    finally:
        with migrated.engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA reference CASCADE")


@pytest.fixture
def migrated(db_url):
    with Database.open(db_url) as database:
        yield database


def test_migration_builds_the_orm_schema(migrated):
    assert _schema_diff(migrated.engine) == []


def test_migration_matches_create_all_down_to_constraint_names(migrated):
    # compare_metadata ignores CHECK constraints and most names; comparing with what
    # the ORM itself would create covers those too.
    expected = _create_all_schema(migrated)
    migrated_schema = _reflected_schema(migrated.engine)
    assert migrated_schema == expected
    assert migrated_schema["runs"]["checks"][0][0] == "ck_runs_status"
    assert ("uq_run_steps_run_fk_index_attempt", ("run_fk", "index", "attempt")) in \
        migrated_schema["run_steps"]["uniques"]
    assert ("ix_device_stats_array_fk_quantity_row_col", ("array_fk", "quantity", "row", "col"), False) in \
        migrated_schema["device_stats"]["indexes"]
    assert ("fk_noise_models_run_fk_runs", ("run_fk",), "runs", ("id",), (("ondelete", "SET NULL"),)) in \
        migrated_schema["noise_models"]["fks"]


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


def test_current_database_opens_without_running_migrations(db_url, monkeypatch):
    url = db_url
    Database.open(url).close()

    def refuse(*args, **kwargs):
        raise AssertionError("migrations ran on a current database")

    monkeypatch.setattr(db.migrate.command, "upgrade", refuse)
    with Database.open(url) as database, database.engine.connect() as connection:
        assert current_revisions(connection) == head_revisions()


def test_database_newer_than_the_code_is_refused(db_url):
    url = db_url
    with Database.open(url) as database, database.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dfeed'")
    with pytest.raises(DatabaseError, match="f00dfeed.*newer"):
        Database.open(url)


def test_concurrent_first_opens_agree(db_url):
    url = db_url
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


@pytest.mark.parametrize("url", ["sqlite://", "postgresql+psycopg://"])
def test_offline_sql_can_be_generated(url):
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", url)
    config.output_buffer = StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    assert "CREATE TABLE device_results" in sql and "CREATE INDEX ix_device_results_array_fk_row_col" in sql
    assert "CREATE TABLE noise_models" in sql and "CREATE INDEX ix_device_stats_array_fk_quantity_row_col" in sql


def test_database_at_the_first_revision_is_upgraded_with_its_rows(db_url):
    engine = make_engine(db_url)
    try:
        with migration_connection(engine) as connection:
            command.upgrade(alembic_config(connection), "0001")
        with engine.begin() as connection:
            assert current_revisions(connection) == frozenset({"0001"})
            assert "device_stats" not in inspect(connection).get_table_names()
            connection.execute(text(
                "INSERT INTO runs (protocol_name, protocol_text, protocol_hash, backend, status, code_version, "
                "started_at) VALUES ('old', 'steps: []', 'h', 'mock', 'completed', '0', :t)"),
                {"t": datetime(2025, 1, 1, tzinfo=timezone.utc)})
    finally:
        engine.dispose()
    with Database.open(db_url) as database:
        assert _schema_diff(database.engine) == []
        with database.session() as session:
            assert [run.protocol_name for run in session.scalars(select(Run))] == ["old"]


def test_alembic_cli(db_url):
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(DB_DIR / "alembic.ini"), "-x", f"url={db_url}",
         "upgrade", "head"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    engine = make_engine(db_url)
    try:
        assert _schema_diff(engine) == []
        with engine.connect() as connection:
            assert current_revisions(connection) == head_revisions()
    finally:
        engine.dispose()
