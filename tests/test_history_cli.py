"""`python -m hil.history`: every command in every format against a small database, the plot, and bad input."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

import hil.history
from db import Database, history
from db.records import add_noise_model, get_array
from history_data import T0, YIELDS, build_history, g_max_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def recorded(db_url):
    """The history of ``history_data`` plus two noise models of chip-A; returns (url, run ids, model ids).

    On every configured backend: for the tests that compare values, where a backend could differ.
    """
    return _record(db_url)


@pytest.fixture(scope="module")
def recorded_sqlite(tmp_path_factory):
    """The same on SQLite alone, built once: for the tests of the command line itself, which only read it."""
    return _record(f"sqlite:///{tmp_path_factory.mktemp('cli') / 'history.db'}")


def _record(db_url):
    with Database.open(db_url) as database, database.session() as session:
        runs = build_history(session)
        chip_a = get_array(session, "chip-A")
        older = add_noise_model(session, chip_a, {"read_noise": {"relative": 0.012}, "levels": [1e-5, 2e-5]},
                                schema_version=1, source_runs=[runs[0], runs[1]])
        newer = add_noise_model(session, chip_a, {"read_noise": {"relative": 0.011}, "levels": [1e-5, 3e-5]},
                                schema_version=1, source_runs=[runs[3], runs[4]])
        newer.created_at = older.created_at + timedelta(seconds=1)
        models = (older.id, newer.id)
    return db_url, runs, models


def cli(capsys, url, *args):
    code = hil.history.main(["--db", url, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# (command line, the same question through the query API)
QUERIES = {
    "arrays": (["arrays"], lambda s: history.list_arrays(s)),
    "runs": (["runs", "--array", "chip-A", "--since", "2025-03-02", "--until", "2025-03-04"],
             lambda s: history.list_runs(s, array_id="chip-A", since=datetime(2025, 3, 2), until=datetime(2025, 3, 5))),
    "models": (["models", "--array", "chip-A"], lambda s: history.list_noise_models(s, array_id="chip-A")),
    "quantities": (["quantities", "--array", "chip-A"], lambda s: history.array_quantities(s, "chip-A")),
    "trend": (["trend", "yield", "--array", "chip-A"], lambda s: history.array_trend(s, "chip-A", "yield")),
    "device": (["device", "2", "5", "--array", "chip-A", "--quantity", "g_max_s"],
               lambda s: history.device_history(s, "chip-A", 2, 5, quantity="g_max_s")),
}


def _expected(url, kind):
    with Database.open(url) as database, database.session() as session:
        rows = QUERIES[kind][1](session)
    assert rows, f"the test database should give {kind} rows"
    return [{column: row[column] for column in hil.history.COLUMNS[kind]} for row in rows]


def _as_json(value):
    return value.isoformat() if isinstance(value, datetime) else value


def _as_csv(value):
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_json_output_is_the_query_result(recorded, capsys, kind):
    url, _, _ = recorded
    code, out, err = cli(capsys, url, "--format", "json", *QUERIES[kind][0])
    assert (code, err) == (0, "")
    assert json.loads(out) == [{k: _as_json(v) for k, v in row.items()} for row in _expected(url, kind)]


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_csv_output_is_the_query_result(recorded, capsys, kind):
    url, _, _ = recorded
    # --format is also taken after the command.
    code, out, err = cli(capsys, url, *QUERIES[kind][0], "--format", "csv")
    assert (code, err) == (0, "")
    reader = csv.DictReader(io.StringIO(out))
    assert tuple(reader.fieldnames) == hil.history.COLUMNS[kind]
    assert list(reader) == [{k: _as_csv(v) for k, v in row.items()} for row in _expected(url, kind)]


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_table_output_shows_every_row(recorded_sqlite, capsys, kind):
    url, _, _ = recorded_sqlite
    code, out, err = cli(capsys, url, *QUERIES[kind][0])
    assert (code, err) == (0, "")
    rows = _expected(url, kind)
    first = hil.history.TABLE_COLUMNS[kind][0]
    for column in hil.history.TABLE_COLUMNS[kind]:
        assert column in out
    body = [line for line in out.splitlines() if line.startswith("│")]
    assert len(body) >= len(rows)
    for row in rows:
        assert str(row[first]) in out
    assert max(len(line) for line in out.splitlines()) <= 120


def test_values_reach_the_output_unchanged(recorded, capsys):
    url, runs, models = recorded
    _, out, _ = cli(capsys, url, "--format", "json", "trend", "yield", "--array", "chip-A")
    trend = json.loads(out)
    assert [row["value"] for row in trend] == YIELDS
    assert [row["run_id"] for row in trend] == [runs[day] for day in range(5)]
    assert [datetime.fromisoformat(row["started_at"]) for row in trend] == [T0 + timedelta(days=d) for d in range(5)]

    _, out, _ = cli(capsys, url, "--format", "csv", "device", "0", "0", "--array", "chip-A")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["quantity"], r["value"]) for r in rows[:2]] == [("g_max_s", ""), ("stuck", "1.0")]
    _, out, _ = cli(capsys, url, "--format", "csv", "device", "1", "2", "--array", "chip-A", "--quantity", "g_max_s")
    assert [float(r["value"]) for r in csv.DictReader(io.StringIO(out))] == [g_max_grid(d)[1, 2] for d in range(5)]

    _, out, _ = cli(capsys, url, "--format", "json", "runs", "--status", "failed")
    assert [(r["id"], r["error"], r["duration_s"]) for r in json.loads(out)] == [
        (runs[2], "InstrumentTimeout: no reply", 300.0)]
    _, out, _ = cli(capsys, url, "--format", "json", "runs", "--protocol", "program", "--limit", "5")
    assert [r["array_id"] for r in json.loads(out)] == ["chip-B"]
    _, out, _ = cli(capsys, url, "--format", "json", "models")
    assert [(m["id"], m["source_runs"]) for m in json.loads(out)] == [
        (models[1], [runs[3], runs[4]]), (models[0], [runs[0], runs[1]])]
    _, out, _ = cli(capsys, url, "--format", "csv", "arrays")
    assert [(r["array_id"], r["runs"]) for r in csv.DictReader(io.StringIO(out))] == [
        ("chip-A", "5"), ("chip-B", "1"), ("chip-unused", "0")]


def test_model_prints_its_params_as_json(recorded, capsys):
    url, _, models = recorded
    code, out, _ = cli(capsys, url, "model", str(models[0]))
    assert code == 0 and json.loads(out) == {"read_noise": {"relative": 0.012}, "levels": [1e-5, 2e-5]}
    code, out, _ = cli(capsys, url, "model", "--latest", "--array", "chip-A")
    assert code == 0 and json.loads(out)["levels"] == [1e-5, 3e-5]


def test_empty_results(recorded_sqlite, capsys):
    url, _, _ = recorded_sqlite
    code, out, _ = cli(capsys, url, "runs", "--array", "chip-unused")
    assert code == 0 and "(no runs)" in out
    code, out, _ = cli(capsys, url, "--format", "json", "runs", "--since", "2030-01-01")
    assert code == 0 and json.loads(out) == []
    code, out, _ = cli(capsys, url, "--format", "csv", "quantities", "--array", "chip-unused")
    assert code == 0 and out == ",".join(hil.history.COLUMNS["quantities"]) + "\n"


def test_plot_writes_a_png(recorded, capsys, tmp_path, monkeypatch):
    url, _, _ = recorded
    out_file = tmp_path / "figures" / "yield.png"
    out_file.parent.mkdir()
    code, out, err = cli(capsys, url, "plot", "yield", "--array", "chip-A", "--out", str(out_file))
    assert (code, err) == (0, "")
    assert out.strip() == str(out_file)
    data = out_file.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000

    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, url, "plot", "programming_sigma_s@level3", "--array", "chip-A")
    assert code == 2  # not recorded: nothing to draw
    code, out, _ = cli(capsys, url, "plot", "read_noise_relative", "--array", "chip-A")
    # By default into reports/history/, created as needed, not among the user's files.
    assert code == 0 and out.strip() == "reports/history/read_noise_relative-chip-A.png"
    assert (tmp_path / "reports" / "history" / "read_noise_relative-chip-A.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not list(tmp_path.glob("*.png"))


BAD_INPUT = {
    "unknown array": (["trend", "yield", "--array", "chip-Z"], "no array named 'chip-Z'; known arrays: chip-A"),
    "unknown array in runs": (["runs", "--array", "chip-Z"], "chip-Z"),
    "bad date": (["runs", "--since", "2025-02-30"], "not a date"),
    "bad time": (["runs", "--until", "yesterday"], "not a date"),
    "bad id": (["model", "seven"], "invalid int value: 'seven'"),
    "unknown id": (["model", "4242"], "no noise model with id 4242"),
    "id and --latest": (["model", "1", "--latest", "--array", "chip-A"], "model ID or --latest"),
    "--latest alone": (["model", "--latest"], "--latest needs --array"),
    "no model for array": (["model", "--latest", "--array", "chip-B"], "'chip-B' has no noise model"),
    "unknown quantity": (["trend", "yeild", "--array", "chip-A"], "recorded: read_noise_relative, yield"),
    "device outside": (["device", "8", "0", "--array", "chip-A"], "outside array 'chip-A'"),
    "negative limit": (["runs", "--limit", "-3"], "--limit"),
    "unknown status": (["runs", "--status", "done"], "invalid choice: 'done'"),
    "no command": ([], "COMMAND"),
    "missing --array": (["trend", "yield"], "--array"),
    "unwritable plot": (["plot", "yield", "--array", "chip-A", "--out", "/nonexistent/dir/x.png"], "/nonexistent"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(recorded_sqlite, capsys, case):
    url, _, _ = recorded_sqlite
    args, expected = BAD_INPUT[case]
    code = _exit_status(["--db", url, *args])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    assert expected in captured.err


def _exit_status(argv):
    # Command-line syntax errors leave through argparse's SystemExit, the others by return.
    try:
        return hil.history.main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("url, expected", [
    ("postgresql+psycopg://bench:s3cret@127.0.0.1:1/hil", "127.0.0.1:1"),
    ("nosuchdialect://x", "nosuchdialect"),
])
def test_unreachable_database_exits_2_without_the_password(capsys, url, expected):
    code = hil.history.main(["--db", url, "arrays"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert expected in err and "s3cret" not in err


def test_missing_sqlite_file_is_not_created(tmp_path, capsys):
    path = tmp_path / "typo.db"
    code = hil.history.main(["--db", f"sqlite:///{path}", "runs"])
    err = capsys.readouterr().err
    assert code == 2 and "no database at" in err and str(path) in err
    assert not path.exists()


def test_module_runs_as_a_program(recorded_sqlite):
    url, runs, _ = recorded_sqlite
    proc = subprocess.run([sys.executable, "-m", "hil.history", "--db", url, "--format", "json", "runs",
                           "--limit", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [row["id"] for row in json.loads(proc.stdout)] == [runs[4]]
