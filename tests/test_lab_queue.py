"""The lab queue: runs submitted for benches, run by one worker per bench, on PostgreSQL.

The tests that need a server take ``postgres_url`` (skipped unless ``HIL_TEST_POSTGRES_URL`` is set; CI's
``.ci/run`` starts one). The main one runs thirty queued runs on three emulated benches (two serial
boards, one SMU) while workers are killed (SIGKILL) at random moments and restarted: every run ends
completed exactly once, no step runs twice at once, and the records stay whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import hil.queue
import hil.submit
import hil.worker
from drivers.emulators.serial_board import BoardEmulator, BoardServer
from drivers.mock import SoftwareCrossbar

ROOT = Path(__file__).resolve().parent.parent

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

@pytest.mark.parametrize("command", ["submit", "worker", "queue", "cancel"])
def test_a_sqlite_url_is_refused_by_the_queue_commands_with_nothing_created(command, tmp_path, capsys):
    protocol = _write(tmp_path, "read.yaml", READ)
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    argv = {"submit": (hil.submit.main, [str(protocol), "--bench", "A", "--db", url]),
            "worker": (hil.worker.main, ["--bench", "A", "--db", url]),
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


class _Bench:
    def __init__(self, name: str, backend: str, resource: str, url: str, log: Path):
        self.name, self.backend, self.resource, self.url, self.log = name, backend, resource, url, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hil.worker", "--bench", self.name, "--backend", self.backend, "--resource",
                 self.resource, "--db", self.url, "--poll", "0.5", "--report-dir", str(self.log.parent / "reports")],
                stdout=log, stderr=log, env=env, cwd=self.log.parent)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_for(predicate, timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_run_left_running_by_another_host_is_resumed_once_the_bench_lease_passes(postgres_url, tmp_path):
    """A bench computer that vanished mid-run: its pid cannot be checked from here, but a worker that holds the
    bench's lease knows nobody else runs the bench's jobs, so the job goes back to the queue and its run,
    marked interrupted, is resumed: one run, its finished steps kept."""
    from db import Database
    from db.models import Run
    from db.runs import QUEUE_JOB_OPTION, start_run, start_step

    protocol = _write(tmp_path, "program.yaml", PROGRAM)
    args = hil.submit.build_parser().parse_args([str(protocol), "--bench", "far", "--db", postgres_url])
    job_id, _ = hil.submit.submit(args)
    _sql(postgres_url, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = :job", job=job_id)
    with Database(postgres_url) as db, db.session() as s:       # what the vanished computer had written
        run = start_run(s, protocol_name="program8", protocol_path=str(protocol), protocol_text=PROGRAM,
                        backend="serial", seed=None, code_version="t",
                        options={QUEUE_JOB_OPTION: job_id, "bench": "far"})
        run.owner_host, run.owner_pid = "bench-pc-that-vanished", 4242
        start_step(s, run, 0, "before", "read")
        run_id = run.id
    server = BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=5))).start()
    bench = _Bench("far", "serial", server.url, postgres_url, tmp_path / "far.log")
    try:
        bench.start()
        _wait_for(lambda: _sql(postgres_url, "SELECT status::text FROM procrastinate_jobs WHERE id = :job",
                               job=job_id)[0][0] == "succeeded", what="the job to complete")
    finally:
        bench.stop()
        server.stop()
    with Database(postgres_url) as db, db.session() as s:
        runs = s.query(Run).all()
        assert [r.id for r in runs] == [run_id] and runs[0].status == "completed"
        (resume,) = runs[0].resumes
        assert resume["previous_status"] == "interrupted"
        assert "bench-pc-that-vanished" in resume["previous_error"] and "lease passed" in resume["previous_error"]
        first = [st for st in runs[0].steps if st.index == 0]
        assert [st.status for st in first] == ["interrupted", "completed"]


def test_a_second_worker_of_a_bench_waits_for_the_first(postgres_url, tmp_path):
    server = BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=6))).start()
    first = _Bench("twice", "serial", server.url, postgres_url, tmp_path / "first.log")
    second = _Bench("twice", "serial", server.url, postgres_url, tmp_path / "second.log")
    try:
        first.start()
        _wait_for(lambda: "waiting for runs" in first.log.read_text(), what="the first worker")
        second.start()
        _wait_for(lambda: "holds its lease" in second.log.read_text(), what="the second worker to wait")
        assert "hil.worker twice@" in second.log.read_text()       # who holds it, by name
        protocol = _write(tmp_path, "read.yaml", READ)
        hil.submit.main([str(protocol), "--bench", "twice", "--db", postgres_url])
        _wait_for(lambda: "run 1 completed" in first.log.read_text(), what="the first worker's run")
        first.kill()
        _wait_for(lambda: "waiting for runs" in second.log.read_text(), what="the second worker to take over")
        assert "run " not in second.log.read_text().split("waiting for runs")[0]
    finally:
        first.stop()
        second.stop()
        server.stop()
