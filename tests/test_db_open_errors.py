"""Databases that cannot be used are refused in one line, with nothing changed.

Each case runs through both command lines (``hil.run`` and ``hil.history``) on real
files, real SQLite and, when ``HIL_TEST_POSTGRES_URL`` names a server, real PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import hil.history
import hil.run
from db import Database, DatabaseError, DatabaseMissing
from db.errors import mask_url
from db.migrate import MIGRATIONS_DIR, head_revisions, known_revisions, read_revision_graph
from drivers import SoftwareCrossbar

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "protocols" / "quickstart.yaml"
COMMANDS = ["run", "history"]


def _invoke(command: str, url: str, capsys, *extra: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of one command-line call in this process."""
    argv = ["--db", url, *extra]
    try:
        code = hil.run.main([str(QUICKSTART), *argv]) if command == "run" else hil.history.main([*argv, "runs"])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _refused(command: str, url: str, capsys, mocker, *extra: str) -> str:
    """Run ``command`` on ``url``, check it was refused in one line before any instrument opened; the line."""
    opened = mocker.spy(SoftwareCrossbar, "_open")
    code, out, err = _invoke(command, url, capsys, *extra)
    assert code == 2, (out, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: database {mask_url(url)!r}: "), err
    assert opened.call_count == 0
    return err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _foreign_sqlite(path: Path) -> None:
    """Another application's database, with a table of the same name as one of ours."""
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT, km REAL)")
    connection.execute("CREATE TABLE shoes (id INTEGER PRIMARY KEY, brand TEXT)")
    connection.execute("INSERT INTO runs VALUES (1, 'ada', 10.5)")
    connection.commit()
    connection.close()


# --- SQLite files that are not a usable database ---------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path, capsys, mocker, command):
    path = tmp_path / "notes.db"
    path.write_text("these are my lab notes, not a database\n" * 20, encoding="utf-8")
    before = _digest(path)
    err = _refused(command, f"sqlite:///{path}", capsys, mocker)
    assert "file is not a SQLite database" in err
    assert _digest(path) == before and _files(tmp_path) == ["notes.db"]


@pytest.mark.parametrize("command", COMMANDS)
def test_corrupt_sqlite_file_is_refused_untouched(tmp_path, capsys, mocker, command):
    path = tmp_path / "hil.db"
    Database(f"sqlite:///{path}").close()
    raw = bytearray(path.read_bytes())
    raw[100:4096] = b"\xab" * (4096 - 100)  # the schema page, past the valid header
    path.write_bytes(bytes(raw))
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    err = _refused(command, f"sqlite:///{path}", capsys, mocker)
    assert "file is corrupt (database disk image is malformed)" in err
    assert path.read_bytes() == bytes(raw)


@pytest.mark.parametrize("command", COMMANDS)
def test_path_that_is_a_directory_is_refused(tmp_path, capsys, mocker, command):
    path = tmp_path / "hil.db"
    path.mkdir()
    err = _refused(command, f"sqlite:///{path}", capsys, mocker)
    assert "is a directory" in err
    assert _files(path) == []


def test_missing_directory_is_refused_and_not_created_by_run(tmp_path, capsys, mocker):
    path = tmp_path / "no" / "such" / "dir" / "hil.db"
    err = _refused("run", f"sqlite:///{path}", capsys, mocker)
    assert f"directory {path.parent} does not exist (give --create-db to create it)" in err
    assert _files(tmp_path) == []


def test_missing_database_is_refused_and_not_created_by_history(tmp_path, capsys, mocker):
    path = tmp_path / "no" / "such" / "dir" / "hil.db"
    err = _refused("history", f"sqlite:///{path}", capsys, mocker)
    assert f"no database at {path} (give --create-db to create an empty one)" in err
    assert _files(tmp_path) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_create_db_creates_the_missing_directory(tmp_path, capsys, command):
    path = tmp_path / "new" / "lab" / "hil.db"
    code, out, err = _invoke(command, f"sqlite:///{path}", capsys, "--create-db")
    assert code == 0, err
    with Database(f"sqlite:///{path}") as database, database.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) >= {"runs", "alembic_version"}
        runs = connection.execute(text("SELECT count(*) FROM runs")).scalar()
    assert runs == (1 if command == "run" else 0)


def test_new_file_in_an_existing_directory_needs_no_flag(tmp_path, capsys):
    # The quickstart writes hil.db in the working directory.
    path = tmp_path / "hil.db"
    code, _, err = _invoke("run", f"sqlite:///{path}", capsys)
    assert code == 0, err
    assert path.exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no file can be created in, even by root (there via the immutable attribute)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    immutable = False
    if os.access(directory, os.W_OK):  # root ignores permission bits
        immutable = shutil.which("chattr") is not None and subprocess.run(
            ["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        if not immutable or os.access(directory, os.W_OK):
            directory.chmod(0o755)
            pytest.skip("cannot make a directory read-only here")
    yield directory
    if immutable:
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    directory.chmod(0o755)


def test_read_only_directory_is_refused_by_run(read_only_dir, capsys, mocker):
    err = _refused("run", f"sqlite:///{read_only_dir / 'hil.db'}", capsys, mocker)
    assert f"directory {read_only_dir} is not writable" in err
    assert _files(read_only_dir) == []


# --- databases of another application ----------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_foreign_sqlite_database_is_refused_untouched(tmp_path, capsys, mocker, command):
    path = tmp_path / "training-log.db"
    _foreign_sqlite(path)
    before = _digest(path)
    err = _refused(command, f"sqlite:///{path}", capsys, mocker)
    assert ("holds tables of another application (runs, shoes) and no memristor-hil schema version; "
            "refusing to change it") in err
    assert "CREATE TABLE" not in err
    assert _digest(path) == before and _files(tmp_path) == ["training-log.db"]
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("SELECT * FROM runs").fetchall() == [(1, "ada", 10.5)]
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        connection.close()


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_schema_revision_is_refused_untouched(tmp_path, capsys, mocker, command):
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    connection.execute("INSERT INTO alembic_version VALUES ('1a2b3c4d5e6f')")
    connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    connection.commit()
    connection.close()
    before = _digest(path)
    err = _refused(command, f"sqlite:///{path}", capsys, mocker)
    assert "schema revision 1a2b3c4d5e6f is unknown to this code" in err and "refusing to change it" in err
    assert _digest(path) == before


def test_empty_sqlite_file_is_initialised(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with Database(f"sqlite:///{path}") as database, database.engine.connect() as connection:
        assert "runs" in inspect(connection).get_table_names()


# --- PostgreSQL ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_refused_postgres_login_exits_2_without_the_password(postgres_server, capsys, mocker, command):
    secret = "wr0ng-Pa55-for-test"
    url = make_url(postgres_server).set(password=secret).render_as_string(hide_password=False)
    err = _refused(command, url, capsys, mocker)
    assert "password authentication failed for user" in err
    assert secret not in err and ":***@" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_foreign_postgres_database_is_refused_untouched(postgres_url, capsys, mocker, command):
    engine = create_engine(postgres_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT)"))
            connection.execute(text("CREATE TABLE shoes (id INTEGER PRIMARY KEY)"))
            connection.execute(text("INSERT INTO runs VALUES (1, 'ada')"))
        err = _refused(command, postgres_url, capsys, mocker)
        assert "holds tables of another application (runs, shoes)" in err
        with engine.connect() as connection:
            assert sorted(inspect(connection).get_table_names()) == ["runs", "shoes"]
            assert [c["name"] for c in inspect(connection).get_columns("runs")] == ["id", "athlete"]
            assert connection.execute(text("SELECT * FROM runs")).all() == [(1, "ada")]
    finally:
        engine.dispose()


# --- the Python API ----------------------------------------------------------------------------------------


def test_constructor_takes_a_url(tmp_path):
    path = tmp_path / "x.db"
    with Database(f"sqlite:///{path}") as database, database.session() as session:
        assert session.execute(text("SELECT count(*) FROM runs")).scalar() == 0
    with Database.open(f"sqlite:///{path}") as again:
        assert again.url == f"sqlite:///{path}"


def test_from_engine_wraps_an_engine_as_it_is():
    engine = create_engine("sqlite://")
    database = Database.from_engine(engine)
    with database.session() as session:
        assert session.execute(text("SELECT 1")).scalar() == 1
    assert inspect(engine).get_table_names() == []  # no schema forced on it
    database.close()


def test_missing_directory_from_the_api_names_what_is_missing(tmp_path):
    with pytest.raises(DatabaseMissing) as info:
        Database(f"sqlite:///{tmp_path / 'a' / 'x.db'}")
    assert info.value.kind == "directory" and info.value.path == tmp_path / "a"
    assert not (tmp_path / "a").exists()


def test_a_password_quoted_back_by_a_driver_is_masked():
    error = DatabaseError("postgresql://bench:hunter22@db.example/hil", 'role "bench" password "hunter22" expired\n'
                                                                        "second line")
    assert "hunter22" not in str(error) and len(str(error).splitlines()) == 1
    assert "password \"***\" expired second line" in str(error)
    # A short password does not garble the words around it.
    short = DatabaseError("postgresql://bench:a@db.example/hil", "database a does not exist")
    assert str(short).endswith("database *** does not exist")


# --- opening a current database without Alembic ----------------------------------------------------------


def test_head_read_from_the_files_is_alembics():
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    heads, known = known_revisions()
    assert heads == head_revisions() == frozenset(script.get_heads())
    assert known == frozenset(rev.revision for rev in script.walk_revisions())
    assert set(read_revision_graph(MIGRATIONS_DIR / "versions")) == known


def test_revision_graph_follows_merges_and_annotations(tmp_path):
    (tmp_path / "a.py").write_text('revision = "a"\ndown_revision = None\n', encoding="utf-8")
    (tmp_path / "b.py").write_text('revision: str = "b"\ndown_revision: str | None = "a"\n', encoding="utf-8")
    (tmp_path / "c.py").write_text("revision = 'c'\ndown_revision = 'a'\n", encoding="utf-8")
    (tmp_path / "m.py").write_text('revision = "m"\ndown_revision = ("b", "c")\n', encoding="utf-8")
    (tmp_path / "__init__.py").write_text("", encoding="utf-8")
    graph = read_revision_graph(tmp_path)
    assert graph == {"a": frozenset(), "b": {"a"}, "c": {"a"}, "m": {"b", "c"}}
    (tmp_path / "x.py").write_text("revision = make_id()\n", encoding="utf-8")
    with pytest.raises(ValueError):
        read_revision_graph(tmp_path)


def test_opening_a_current_database_does_not_load_alembic(tmp_path):
    url = f"sqlite:///{tmp_path / 'hil.db'}"
    Database(url).close()
    probe = ("import sys\nfrom db import Database\nDatabase(sys.argv[1]).close()\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    result = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
