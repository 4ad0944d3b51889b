"""A process killed mid-run (kill -9) leaves a consistent database, the run is marked
interrupted the next time the database is opened, and resuming it completes it."""

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import select

import hil.run
from db import Database
from drivers.emulators.serial_board import BoardEmulator, BoardServer, Faults
from drivers.mock import SoftwareCrossbar
from db.models import Measurement, Run

LONG = """name: long_levels
array: {rows: 64, cols: 64}
steps:
  - kind: read
    name: first
    read_voltage_v: 0.2
    repeats: 2
  - kind: program
    name: slow
    pattern: {kind: levels, levels: 8, g_low_s: 5.0e-6, g_high_s: 80.0e-6}
    tolerance: 0.0001
    max_iterations: 1000
"""


def test_a_run_killed_mid_step_is_marked_interrupted_when_the_database_is_next_opened(tmp_path):
    protocol = tmp_path / "long.yaml"
    protocol.write_text(LONG, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    # A bench slow to answer (the serial emulator with added latency) keeps the run in its second step long
    # enough to be killed there: write-verify no longer spins on a tolerance no device can reach.
    server = BoardServer(BoardEmulator(SoftwareCrossbar(64, 64, seed=1)), faults=Faults(latency_s=0.4)).start()
    proc = subprocess.Popen([sys.executable, "-m", "hil.run", str(protocol), "--db", url, "--backend", "serial",
                             "--resource", server.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:                      # until the first step's data is in and the second has started
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            if (tmp_path / "killed.db").exists():
                with Database.open(url) as db, db.session() as s:
                    run = s.scalars(select(Run)).one_or_none()
                    if run is not None and len(run.steps) == 2:
                        break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with Database.open(url) as db:
        with db.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        with db.session() as s:
            run = s.scalars(select(Run)).one()
            assert run.status == "interrupted" and f"pid {proc.pid}" in run.error
            assert [st.status for st in run.steps] == ["completed", "interrupted"]
            assert s.scalars(select(Measurement).where(Measurement.step_fk == run.steps[0].id)).first() is not None
            assert run.finished_at is not None
            first_id = run.steps[0].id

    server.faults.latency_s = 0.0          # the resumed run may finish its write-verify at full speed
    try:
        assert hil.run.main(["--resume", "1", "--db", url]) == 0
    finally:
        server.stop()
    with Database.open(url) as db:
        with db.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        with db.session() as s:
            run = s.scalars(select(Run)).one()
            assert run.status == "completed" and run.error is None
            assert run.resumes[0]["previous_status"] == "interrupted" and f"pid {proc.pid}" in \
                run.resumes[0]["previous_error"]
            # the first step is kept, not run again; the killed one is kept beside its second, completed attempt
            assert [(st.index, st.attempt, st.status) for st in run.steps] == [
                (0, 1, "completed"), (1, 1, "interrupted"), (1, 2, "completed")]
            assert run.steps[0].id == first_id
            assert s.scalars(select(Measurement).where(Measurement.step_fk == run.steps[2].id)).first() is not None


def test_a_live_run_is_left_running(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    from db import runs
    with Database.open(url) as db, db.session() as s:
        runs.start_run(s, protocol_name="p", protocol_path=None, protocol_text="x", backend="mock", seed=0,
                       code_version="test")
    with Database.open(url) as db, db.session() as s:        # this process is alive: not an orphan
        assert s.scalars(select(Run)).one().status == "running"
