"""Following a run: progress lines off a terminal and in a log file, bars on a terminal, the run's current
step and progress in the database for another process, and a Ctrl-C that says where it stopped."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from alembic import command
from rich.console import Console
from sqlalchemy import create_engine, inspect, select, text

import hil.run
from db import Database
from db.history import list_runs
from db.migrate import alembic_config, migration_connection
from db.models import Run
from hil.progress import RunProgress, duration

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \S")     # every line: a timestamp, then text

SMALL = """name: small
array: {rows: 16, cols: 16}
steps:
  - kind: program
    name: levels
    pattern: {kind: levels, levels: 4, g_low_s: 1.0e-5, g_high_s: 6.0e-5}
  - kind: read
    name: readback
    repeats: 2
"""

# Write-verify to a tolerance no device can reach, through a bench that is slow to answer each
# reply (the serial emulator with 0.4 s added latency): tens of seconds of iterations, unless stopped.
LONG = """name: long_levels
array: {rows: 64, cols: 64}
steps:
  - kind: read
    name: first
    repeats: 1
  - kind: program
    name: slow
    pattern: {kind: levels, levels: 8, g_low_s: 5.0e-6, g_high_s: 80.0e-6}
    tolerance: 0.0001
    max_iterations: 1000
"""

TRAIN = """name: long_training
array: {rows: 16, cols: 16}
steps:
  - kind: read
    name: first
    repeats: 1
  - kind: train
    name: plain
    task: {name: period}
    model: {kind: recurrent, d_model: 8, n_layers: 1}
    epochs: 300
"""


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def _start(args: list[str], stderr_path: Path, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    # SIGINT must raise KeyboardInterrupt in the child even where the test runner's parent ignores it.
    return subprocess.Popen([sys.executable, "-m", "hil.run", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=stderr_path.open("w", encoding="utf-8"), text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _run_row(url: str) -> dict | None:
    """The run as another process sees it, on a connection of its own."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(text("SELECT status, current_step_index, current_step, progress, error "
                                          "FROM runs")).mappings().first()
    finally:
        engine.dispose()
    if row is None:
        return None
    row = dict(row)
    row["progress"] = json.loads(row["progress"]) if row["progress"] else None
    return row


def _wait_for(url: str, db_file: Path, proc: subprocess.Popen, condition, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the run ended before it was seen in progress"
        assert time.monotonic() < deadline, "no progress seen in the database"
        if db_file.exists():
            try:
                row = _run_row(url)
            except Exception:              # the schema is still being created by the run
                row = None
            if row is not None and condition(row):
                return row
        time.sleep(0.2)


def _plain_lines(path: Path) -> list[str]:
    content = path.read_text(encoding="utf-8")
    assert "\x1b" not in content and "\r" not in content
    lines = content.splitlines()
    assert lines and all(LINE.match(line) for line in lines), lines
    return [line[20:] for line in lines]


def test_stderr_to_a_file_gives_a_timestamped_line_per_event_and_no_blank_lines(tmp_path):
    path = _write(tmp_path, "small", SMALL)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = subprocess.run([sys.executable, "-m", "hil.run", str(path), "--db", url], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=(tmp_path / "run.log").open("w"), text=True, timeout=120)
    assert proc.returncode == 0
    lines = _plain_lines(tmp_path / "run.log")
    assert lines[0] == "run 1 started: small, 2 steps"
    assert "step 1/2 levels (program)" in lines and "step 2/2 readback (read)" in lines
    assert any(re.fullmatch(r"step 1/2 levels \(program\) done in \d+\.\d s", line) for line in lines)
    assert any(re.fullmatch(r"write-verify: \d+/20 iterations, \d+/256 cells in tolerance, \d+\.\d s", line)
               for line in lines)
    assert re.fullmatch(r"run 1 completed in \d+\.\d s", lines[-1])
    # A completed run has nothing current any more.
    assert _run_row(url) == {"status": "completed", "current_step_index": None, "current_step": None,
                             "progress": None, "error": None}


def test_log_file_gets_plain_lines_while_the_terminal_keeps_its_bars(tmp_path):
    path = _write(tmp_path, "small", SMALL)
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()
    log.write_text("", encoding="utf-8")
    # rich's documented switch for "this output is a terminal" where the test has none.
    proc = _start([str(path), "--db", f"sqlite:///{tmp_path / 'runs.db'}", "--log", str(log)],
                  tmp_path / "terminal.txt", tmp_path, env={"TTY_COMPATIBLE": "1", "FORCE_COLOR": "1"})
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    terminal = (tmp_path / "terminal.txt").read_text(encoding="utf-8")
    assert "\x1b[" in terminal and "━" in terminal                    # styled text and bars
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal)
    assert "step 1/2 levels (program)" in shown and "levels write-verify" in shown
    lines = _plain_lines(log)
    assert "step 1/2 levels (program)" in lines and lines[-1].startswith("run 1 completed in ")
    # The terminal has its bars instead of the progress lines the log gets.
    assert any(line.startswith("write-verify: ") for line in lines)
    assert "write-verify: " not in terminal


def test_an_unwritable_log_file_is_refused_before_anything_runs(tmp_path, capsys):
    path = _write(tmp_path, "small", SMALL)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert hil.run.main([str(path), "--db", url, "--log", str(tmp_path / "missing" / "run.log")]) == 2
    assert "--log" in capsys.readouterr().err
    with Database.open(url) as db, db.session() as session:
        assert session.scalars(select(Run)).all() == []


def test_progress_lines_are_rate_limited_off_a_terminal():
    now = [0.0]
    out = StringIO()
    with RunProgress(Console(file=out, force_terminal=False), steps=1, clock=lambda: now[0]) as progress:
        progress.step_started(0, "slow", "program")
        with progress.task("write-verify", total=1000, unit="iterations") as task:
            for i in range(1, 1001):          # 100 s of iterations, ten a second
                now[0] += 0.1
                task.update(i)
        progress.step_finished()
    lines = [line[20:] for line in out.getvalue().splitlines()]
    ticks = [line for line in lines if line.startswith("write-verify: ") and line.endswith(")")]
    seconds = [_seconds(re.search(r"\(([^)]*)\)$", line).group(1)) for line in ticks]
    # A line every 5 s (each tenth falls on one of them), not one per iteration; the last one's line is the end's.
    assert 15 <= len(ticks) <= 21
    assert all(b - a >= 2.0 - 1e-9 for a, b in zip(seconds, seconds[1:]))
    assert lines[-2] == "write-verify: 1000/1000 iterations, 1 min 40 s"
    assert lines[-1] == "step 1/1 slow (program) done in 1 min 40 s"


def _seconds(text: str) -> float:
    """The seconds in duration()'s "4.2 s" or "1 min 05 s"."""
    minutes = re.fullmatch(r"(\d+) min (\d+) s", text)
    return 60 * int(minutes[1]) + int(minutes[2]) if minutes else float(text.removesuffix(" s"))


def test_epoch_lines_and_where_an_interrupted_training_stopped():
    now = [0.0]
    out = StringIO()
    with RunProgress(Console(file=out, force_terminal=False), steps=3, clock=lambda: now[0]) as progress:
        progress.step_started(2, "plain", "train")
        with pytest.raises(KeyboardInterrupt):
            with progress.training(30, label="training s4d on period") as training:
                for epoch in range(2):
                    for b in range(1, 11):
                        now[0] += 2.0
                        training.batch(b, 10)
                    training.epoch_done(epoch, train_loss=1.5 - epoch / 10, val_accuracy=0.5 + epoch / 10,
                                        seconds=20.0)
                training.batch(1, 10)
                raise KeyboardInterrupt
        assert progress.where() == "in step 3/3 plain (train), epoch 3/30 of training s4d on period"
        progress.step_stopped("interrupted", "KeyboardInterrupt")
        assert progress.where() == "in step 3/3 plain (train), epoch 3/30 of training s4d on period"
    lines = [line[20:] for line in out.getvalue().splitlines()]
    assert "step 3/3 plain (train) epoch 1/30: train loss 1.5000, val accuracy 50.00%, 20.0 s/epoch, " \
           "ETA 9 min 40 s" in lines
    assert "step 3/3 plain (train) epoch 2/30: train loss 1.4000, val accuracy 60.00%, 20.0 s/epoch, " \
           "ETA 9 min 20 s" in lines
    assert lines[-1] == "step 3/3 plain (train) interrupted after 40.0 s (epoch 3/30 of training s4d on period)"
    assert any(re.fullmatch(r"training s4d on period: epoch 1/30, batch \d+/10 \(\d+\.\d s\)", line) for line in lines)


def test_another_process_follows_a_long_measurement_and_ctrl_c_names_the_step(tmp_path):
    path = _write(tmp_path, "long", LONG)
    db_file = tmp_path / "long.db"
    url = f"sqlite:///{db_file}"
    from drivers.emulators.serial_board import BoardEmulator, BoardServer, Faults
    from drivers.mock import SoftwareCrossbar
    server = BoardServer(BoardEmulator(SoftwareCrossbar(64, 64, seed=1)), faults=Faults(latency_s=0.4)).start()
    proc = _start([str(path), "--db", url, "--backend", "serial", "--resource", server.url], tmp_path / "run.log",
                  tmp_path)
    try:
        first = _wait_for(url, db_file, proc, lambda r: r["current_step"] == "slow" and
                          (r["progress"] or {}).get("done", 0) > 0)
        assert first["status"] == "running" and first["current_step_index"] == 1
        assert first["progress"]["stage"] == "write-verify" and first["progress"]["total"] == 1000
        assert first["progress"]["unit"] == "iterations" and first["progress"]["steps"] == 2
        later = _wait_for(url, db_file, proc, lambda r: r["progress"]["updated_at"] != first["progress"]["updated_at"])
        assert later["progress"]["done"] > first["progress"]["done"]
        gap = (_time(later) - _time(first))
        assert gap >= 1.9, f"progress written {gap:.2f} s apart: more often than every 2 s"
        with Database.open(url) as db, db.session() as session:
            listed = list_runs(session)[0]
        assert re.fullmatch(r"2/2 slow: write-verify \d+/1000 iterations", listed["progress"])
        deadline = time.monotonic() + 120
        while "write-verify: " not in (tmp_path / "run.log").read_text(encoding="utf-8"):
            assert proc.poll() is None and time.monotonic() < deadline, "no progress line in the log"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 130
    lines = _plain_lines(tmp_path / "run.log")
    stopped = [line for line in lines if line.startswith("step 2/2 slow (program) interrupted after ")]
    assert len(stopped) == 1 and re.search(r"\(write-verify at \d+/1000 iterations\)$", stopped[0])
    assert lines[-1].startswith("run 1 interrupted in ") and "in step 2/2 slow (program)" in lines[-1]
    # Periodic lines while the measurement went on.
    assert any(re.fullmatch(r"write-verify: \d+/1000 iterations, \d+/4096 cells in tolerance \(\d+\.\d s\)", line)
               for line in lines)
    row = _run_row(url)
    assert row["status"] == "interrupted"
    assert re.fullmatch(r"interrupted by the user \(KeyboardInterrupt\) in step 2/2 slow \(program\), "
                        r"write-verify at \d+/1000 iterations", row["error"])
    assert "in step 2/2 slow (program)" in stdout
    # Where it stopped stays for whoever looks later.
    assert row["current_step"] == "slow" and row["current_step_index"] == 1 and row["progress"]["done"] > 0


def _time(row: dict) -> float:
    from datetime import datetime
    return datetime.fromisoformat(row["progress"]["updated_at"]).timestamp()


def test_training_reports_every_epoch_and_ctrl_c_names_the_epoch(tmp_path):
    path = _write(tmp_path, "train", TRAIN)
    db_file = tmp_path / "train.db"
    url = f"sqlite:///{db_file}"
    proc = _start([str(path), "--db", url], tmp_path / "run.log", tmp_path)
    try:
        seen = _wait_for(url, db_file, proc, lambda r: (r["progress"] or {}).get("epoch", 0) >= 3, timeout=300)
        assert seen["current_step"] == "plain" and seen["progress"]["epochs"] == 300
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    lines = _plain_lines(tmp_path / "run.log")
    epochs = [line for line in lines if re.fullmatch(
        r"step 2/2 plain \(train\) epoch \d+/300: train loss \d+\.\d{4}, val accuracy \d+\.\d\d%, "
        r"\d+\.\d s/epoch, ETA .+", line)]
    assert len(epochs) >= 2 and epochs[0].startswith("step 2/2 plain (train) epoch 1/300: ")
    row = _run_row(url)
    assert row["status"] == "interrupted"
    epoch = row["progress"]["epoch"]
    assert epoch >= len(epochs)
    where = f"in step 2/2 plain (train), epoch {epoch}/300 of training recurrent on period"
    assert row["error"] == f"interrupted by the user (KeyboardInterrupt) {where}"
    assert where in " ".join(stdout.split()) and where in lines[-1]      # the summary wraps long lines


def test_migration_0007_adds_the_progress_columns_and_takes_them_away(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    from db.engine import make_engine
    engine = make_engine(url)
    try:
        with migration_connection(engine) as connection:
            command.upgrade(alembic_config(connection), "0006")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO runs (protocol_name, protocol_text, protocol_hash, backend, status, code_version, "
                "started_at) VALUES ('old', 'steps: []', 'h', 'mock', 'completed', '0', '2025-01-01 00:00:00')"))
        with migration_connection(engine) as connection:
            command.upgrade(alembic_config(connection), "0007")
        columns = {c["name"] for c in inspect(engine).get_columns("runs")}
        assert {"current_step_index", "current_step", "progress"} <= columns
        with engine.connect() as connection:
            assert connection.execute(text("SELECT protocol_name, current_step, progress FROM runs")).one() == \
                ("old", None, None)
        with migration_connection(engine) as connection:
            command.downgrade(alembic_config(connection), "0006")
        assert not {"current_step_index", "current_step", "progress"} & \
            {c["name"] for c in inspect(engine).get_columns("runs")}
    finally:
        engine.dispose()


def test_duration_reads_like_a_person_would_say_it():
    assert [duration(s) for s in (4.24, 59.94, 576, 3900)] == ["4.2 s", "59.9 s", "9 min 36 s", "1 h 05 min"]
    assert logging.getLogger("hil.progress").propagate is False
