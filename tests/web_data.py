"""A database for the web-view tests: two real calibrations of a mock array (device maps, noise
models, predictive checks), a loop's evaluations on it, a failed run and a run that is still going,
whose progress a test advances as a bench would.

Not a test module: imported by them (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import hil.run
from db import Database
from db.records import add_deployment, add_inference, get_array, get_or_create_array, get_or_create_instrument
from db.runs import finish_run, finish_step, set_run_progress, start_run, start_step

CALIBRATION = """name: web_calibration
array: {rows: 16, cols: 16}
steps:
  - kind: calibrate
    name: cal
    pulse_response: {amplitudes_v: [1.2, 1.5], pulses: 8, cells: 6}
    programming: {levels: 3, repeats: 1}
    read_noise: {reads: 10}
    drift: {times_s: [1, 10, 100], reads: 2}
    periphery: {repeats: 20, sweep_points: 32}
"""
ARRAY = "mock-16x16-seed0"
FAILURE = "InstrumentTimeout: bench-1: hil.read: no reply within 2 s, after 5 attempts"


def build(tmp_path: Path) -> dict:
    """The database at ``tmp_path/web.db``; returns its URL and the ids of what a test looks for."""
    protocol = tmp_path / "cal.yaml"
    protocol.write_text(CALIBRATION, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'web.db'}"
    for seed in (1, 2):
        assert hil.run.main([str(protocol), "--db", url, "--seed", str(seed), "--array", ARRAY,
                             "--report-dir", str(tmp_path / "reports")]) == 0
    with Database(url) as db, db.session() as session:
        array = get_array(session, ARRAY)
        loop = start_run(session, protocol_name="loop", protocol_path=None, protocol_text="name: loop\n",
                         backend="mock", seed=0, code_version="test", crossbar_array=array)
        step = start_step(session, loop, 0, "infer", "infer")
        deployment = add_deployment(session, run=loop, step=step, crossbar_array=array, mapping=b"", checkpoint_id=None,
                                    noise_model_id=None, summary={}, tiles=[])
        for k, (t, acc) in enumerate([(60.0, 0.93), (86400.0, 0.88), (86400.0, 0.925)]):
            add_inference(session, run=loop, step=step, deployment_id=deployment.id, time_s=t,
                          drift_compensation=k == 2, samples=359, crossbar_accuracy=acc, digital_accuracy=0.95,
                          confusion=[[1]], step_latency_s=0.01, transactions_per_step=4.0, split="test")
        finish_step(session, step, "completed")
        finish_run(session, loop, "completed")

        failed = add_failed_run(session, array)

        running = add_running_run(session, array)
        ids = {"loop": loop.id, "failed": failed.id, "running": running.id}
    advance(url, ids["running"], 1)
    return {"url": url, **ids}


def add_failed_run(session, array=None):
    """A calibration that failed on the bench with FAILURE, on ``array`` (or a new 4x4 one)."""
    if array is None:
        instrument = get_or_create_instrument(session, "visa", "bench-1", "2636B", "4.0.0")
        array = get_or_create_array(session, instrument, "chip-W", 4, 4)
    failed = start_run(session, protocol_name="calibrate", protocol_path=None, protocol_text="name: c\n",
                       backend="visa", seed=3, code_version="test", crossbar_array=array)
    step = start_step(session, failed, 0, "cal", "calibrate")
    finish_step(session, step, "failed", FAILURE)
    finish_run(session, failed, "failed", FAILURE)
    return failed


def add_running_run(session, array):
    """A training that has started its first step on ``array``, its process still going."""
    running = start_run(session, protocol_name="long_training", protocol_path=None,
                        protocol_text="name: long_training\n", backend="mock", seed=4, code_version="test",
                        crossbar_array=array)
    start_step(session, running, 0, "noisy", "train")
    return running


def advance(url: str, run_id: int, epoch: int, epochs: int = 30) -> None:
    """The running run reports epoch ``epoch`` of ``epochs``, as the run's progress writer does."""
    from datetime import datetime, timezone

    with Database(url) as db, db.session() as session:
        set_run_progress(session, run_id, step_index=0, step_name="noisy",
                         progress={"stage": "training", "done": epoch, "total": epochs, "unit": "epochs",
                                   "epoch": epoch, "epochs": epochs, "steps": 2,
                                   "updated_at": datetime.now(timezone.utc).isoformat()})
