"""Four `python -m hil.run` processes writing into one SQLite file at the same time."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import func, select

from db import Database
from db.models import DeviceResult, DeviceStat, Measurement, NoiseModelRecord, Run, RunStep

PROTOCOL = """name: calibrate_program_read
array: {rows: 16, cols: 16}
steps:
  - kind: calibrate
    report: false
    pulse_response: {amplitudes_v: [1.3], pulses: 5, cells: 4}
    programming: {levels: 4, repeats: 1}
    read_noise: {reads: 10}
    drift: {times_s: [1, 10, 100], reads: 2}
    periphery: {repeats: 20, sweep_points: 32}
  - kind: program
    pattern: {kind: levels, levels: 4, g_low_s: 1.0e-5, g_high_s: 6.0e-5}
  - kind: read
    repeats: 3
"""


def test_four_concurrent_runs_share_one_sqlite_file(tmp_path):
    protocol = tmp_path / "calibrate_program_read.yaml"
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
            assert [(step.kind, step.status) for step in run.steps] == [("calibrate", "completed"),
                                                                       ("program", "completed"),
                                                                       ("read", "completed")]
            for step in run.steps:
                names = session.scalars(select(Measurement.name).where(Measurement.step_fk == step.id)).all()
                assert names, f"step {step.name} of run {run.id} has no measurements"
            read = session.scalars(select(Measurement).where(Measurement.step_fk == run.steps[2].id)).one()
            assert read.shape == [3, 16, 16]
            count = select(func.count()).select_from(DeviceResult).where(DeviceResult.run_fk == run.id)
            assert session.scalar(count) == 256
        assert session.scalar(select(func.count()).select_from(DeviceResult)) == 4 * 256
        assert session.scalar(select(func.count()).select_from(RunStep)) == 12
        # every calibration stored its per-device statistics and its noise model
        assert session.scalar(select(func.count()).select_from(DeviceStat)) == 4 * 256 * 8   # g_min, g_max, stuck on/off, unreadable, programming error, read sigma, drift nu
        assert session.scalar(select(func.count()).select_from(NoiseModelRecord)) == 4
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
