"""Fault campaign: runs through the real serial driver against an emulated board that drops and
garbles replies (the driver times out and resends) and, in some runs, disconnects at a random
point. Every run must end with the right status, keep what it finished, and leave the database
intact; then every failed run is resumed (through a fresh connection to its board, still dropping
and garbling replies) and completes, keeping the failed attempt beside the new one."""

import random

from sqlalchemy import select

import hil.run
from db import Database
from db.models import Measurement, Run
from drivers import SoftwareCrossbar
from drivers.emulators.serial_board import BoardEmulator, BoardServer, Faults

PROTOCOL = """name: faulty_bench
array: {rows: 8, cols: 8}
bench: {timeout_s: 0.05, retries: 6}
steps:
  - kind: read
    name: before
    read_voltage_v: 0.2
    repeats: 2
  - kind: program
    name: levels
    pattern: {kind: levels, levels: 4, g_low_s: 5.0e-6, g_high_s: 80.0e-6}
  - kind: read
    name: after
    read_voltage_v: 0.2
    repeats: 2
"""
RUNS = 50


def test_fifty_runs_with_injected_faults_end_with_the_right_status(tmp_path):
    protocol = tmp_path / "faulty.yaml"
    protocol.write_text(PROTOCOL, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'campaign.db'}"
    rng = random.Random(2026)
    expected, noisy = [], []
    for i in range(RUNS):
        faults = Faults(drop=rng.uniform(0, 0.15), garble=rng.uniform(0, 0.15),
                        disconnect_after=rng.randrange(3, 60) if rng.random() < 0.4 else None, seed=i)
        server = BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=i)), faults=faults).start()
        try:
            code = hil.run.main([str(protocol), "--db", url, "--backend", "serial", "--resource", server.url])
        finally:
            server.stop()
        lost = faults.disconnect_after is not None and server.board.commands > faults.disconnect_after
        expected.append("failed" if lost else "completed")
        noisy.append(Faults(drop=faults.drop, garble=faults.garble, seed=i + 1000))
        assert code == (1 if lost else 0), f"run {i}: {faults}"
    with Database.open(url) as db:
        with db.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        with db.session() as s:
            runs = s.scalars(select(Run).order_by(Run.id)).all()
            assert [r.status for r in runs] == expected
            assert "failed" in expected and "completed" in expected
            for run in runs:
                statuses = [st.status for st in run.steps]
                if run.status == "completed":
                    assert statuses == ["completed"] * 3 and run.error is None
                else:
                    assert statuses[-1] == "failed" and set(statuses[:-1]) <= {"completed"}
                    assert "connection lost" in run.error or "attempts" in run.error
                for step in run.steps:
                    if step.status == "completed":       # what finished is kept
                        assert s.scalars(select(Measurement).where(Measurement.step_fk == step.id)).first()

    # resume every failed run: the board is back (a new emulator for the same chip), still noisy
    failed = [i for i, status in enumerate(expected) if status == "failed"]
    for i in failed:
        server = BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=i)), faults=noisy[i]).start()
        try:
            code = hil.run.main(["--resume", str(i + 1), "--db", url, "--resource", server.url])
        finally:
            server.stop()
        assert code == 0, f"resume of run {i + 1}"
    with Database.open(url) as db:
        with db.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        with db.session() as s:
            runs = s.scalars(select(Run).order_by(Run.id)).all()
            assert [r.status for r in runs] == ["completed"] * RUNS
            for i in failed:
                run = runs[i]
                assert len(run.resumes) == 1 and run.resumes[0]["previous_status"] == "failed"
                latest = {}
                for step in run.steps:
                    latest[step.index] = step
                assert sorted(latest) == [0, 1, 2]
                assert all(st.status == "completed" for st in latest.values())
                # the step that failed has its failed attempt kept, with its error, before the new one
                failed_steps = [st for st in run.steps if st.status == "failed"]
                assert len(failed_steps) == 1 and failed_steps[0].error
                assert latest[failed_steps[0].index].attempt == 2
                # a first read completed before the fault is not run again
                if failed_steps[0].index > 0:
                    assert [st.attempt for st in run.steps if st.index == 0] == [1]
