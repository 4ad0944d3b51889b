"""Four `python -m hil.run` processes writing into one SQLite file at the same time."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import func, select

from db import Database
from db.models import DeviceResult, Measurement, Run, RunStep

PROTOCOL = """name: program_and_read
array: {rows: 16, cols: 16}
steps:
  - kind: program
    pattern: {kind: levels, levels: 4, g_low_s: 1.0e-5, g_high_s: 6.0e-5}
  - kind: read
    repeats: 3
"""


def test_four_concurrent_runs_share_one_sqlite_file(tmp_path):
    protocol = tmp_path / "program_and_read.yaml"
    protocol.write_text(PROTOCOL, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    seeds = [11, 12, 13, 14]
    # All four start on a database that does not exist yet: creating and migrating it races too.
    processes = [subprocess.Popen([sys.executable, "-m", "hil.run", str(protocol), "--db", url, "--seed", str(seed)],
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for seed in seeds]
    outcomes = [(proc.wait(timeout=180), *proc.communicate()) for proc in processes]
    for code, _, err in outcomes:
        assert code == 0, err

    with Database.open(url) as database, database.session() as session:
        runs = session.scalars(select(Run).order_by(Run.seed)).all()
        assert [(run.seed, run.status) for run in runs] == [(seed, "completed") for seed in seeds]
        # One simulated chip (the protocol's, whatever the run seed): the four also raced to register it.
        assert len({run.array_fk for run in runs}) == 1
        for run in runs:
            assert [(step.kind, step.status) for step in run.steps] == [("program", "completed"),
                                                                       ("read", "completed")]
            for step in run.steps:
                names = session.scalars(select(Measurement.name).where(Measurement.step_fk == step.id)).all()
                assert names, f"step {step.name} of run {run.id} has no measurements"
            read = session.scalars(select(Measurement).where(Measurement.step_fk == run.steps[1].id)).one()
            assert read.shape == [3, 16, 16]
            count = select(func.count()).select_from(DeviceResult).where(DeviceResult.run_fk == run.id)
            assert session.scalar(count) == 256
        assert session.scalar(select(func.count()).select_from(DeviceResult)) == 4 * 256
        assert session.scalar(select(func.count()).select_from(RunStep)) == 8
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
