"""Fault campaign: runs through the real serial driver against an emulated board that drops and
garbles replies (the driver times out and resends) and, in some runs, disconnects at a random
point. Every run must end with the right status, keep what it finished, and leave the database
intact."""

import random

from sqlalchemy import select

import hil.run
from db import Database
from db.models import Measurement, Run
from drivers import SoftwareCrossbar
from drivers.emulate import BoardEmulator, BoardServer, Faults

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
    expected = []
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
