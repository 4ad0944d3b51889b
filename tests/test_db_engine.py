"""Opening databases: URL resolution, SQLite set-up, and errors that name the database."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from db import Database, DatabaseError
from db.engine import DEFAULT_URL, ENV_VAR, make_engine, resolve_url


def test_resolve_url_precedence(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_url(None) == DEFAULT_URL == "sqlite:///hil.db"
    monkeypatch.setenv(ENV_VAR, "sqlite:///from-env.db")
    assert resolve_url(None) == "sqlite:///from-env.db"
    assert resolve_url("") == "sqlite:///from-env.db"
    assert resolve_url("sqlite:///explicit.db") == "sqlite:///explicit.db"
    monkeypatch.setenv(ENV_VAR, "")
    assert resolve_url(None) == DEFAULT_URL


def test_open_uses_the_environment_variable(monkeypatch, tmp_path):
    path = tmp_path / "env.db"
    monkeypatch.setenv(ENV_VAR, f"sqlite:///{path}")
    with Database.open() as db:
        assert db.url == f"sqlite:///{path}"
    assert path.exists()


def test_default_is_a_file_in_the_current_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    with Database.open():
        pass
    assert (tmp_path / "hil.db").exists()


def test_file_database_pragmas(tmp_path):
    path = tmp_path / "missing" / "dir" / "hil.db"
    with Database(f"sqlite:///{path}", create_dirs=True) as db, db.engine.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("busy_timeout") == 30000
        assert pragma("foreign_keys") == 1
        assert pragma("synchronous") == 1  # NORMAL
    assert path.exists()


def test_every_pooled_connection_gets_the_pragmas(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as a, engine.connect() as b:
            for connection in (a, b):
                assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_in_memory_database_is_shared_by_sessions():
    with Database.open("sqlite://") as db:
        with db.session() as session:
            session.execute(text("INSERT INTO instruments (backend, instrument_id, model, firmware, created_at) "
                                 "VALUES ('mock', 'm', 'x', '1', '2024-01-01 00:00:00')"))
        with db.session() as session:
            assert session.execute(text("SELECT count(*) FROM instruments")).scalar() == 1
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.mark.parametrize("url", ["sqlite:////proc/nope/x.db", "nosuchdialect://host/db", "not a url",
                                 "sqlite:////dev/null/x.db"])
def test_bad_url_raises_database_error_naming_it(url):
    with pytest.raises(DatabaseError) as info:
        Database.open(url)
    assert url in str(info.value)
    assert info.value.cause is not None


def test_password_is_masked():
    with pytest.raises(DatabaseError) as info:
        Database.open("nosuchdialect://bench:s3cret@db.example/hil")
    message = str(info.value)
    assert "s3cret" not in message and "bench:***@db.example" in message
    assert "s3cret" not in repr(info.value.url)


def test_repr_masks_password(tmp_path):
    with Database.open(f"sqlite:///{tmp_path / 'r.db'}") as db:
        assert "r.db" in repr(db)


def test_server_urls_get_no_sqlite_pragmas_and_psycopg_by_default():
    sqlite_engine = make_engine("sqlite://")
    bare = make_engine("postgresql://bench:pw@127.0.0.1/hil")
    explicit = make_engine("postgresql+psycopg://bench:pw@127.0.0.1/hil?connect_timeout=3")
    def listeners(engine):
        return [getattr(fn, "__qualname__", "") for fn in engine.pool.dispatch.connect]

    try:
        assert any("_set_pragmas" in name for name in listeners(sqlite_engine))
        for engine in (bare, explicit):
            assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
            assert not any("_set_pragmas" in name for name in listeners(engine))
    finally:
        for engine in (sqlite_engine, bare, explicit):
            engine.dispose()


def test_unreachable_server_raises_database_error_quickly():
    # Port 1 on the loopback interface: nothing listens there, so the refusal is immediate.
    url = "postgresql+psycopg://bench:s3cret@127.0.0.1:1/hil"
    with pytest.raises(DatabaseError) as info:
        Database.open(url)
    message = str(info.value)
    assert "127.0.0.1:1" in message and "s3cret" not in message and "Connection refused" in message
    assert len(message.splitlines()) == 1


def test_open_works_on_postgresql(postgres_url):
    with Database.open(postgres_url) as database, database.session() as session:
        assert database.engine.dialect.name == "postgresql"
        assert session.execute(text("SELECT count(*) FROM runs")).scalar() == 0
        assert session.execute(text("SHOW server_version")).scalar()
