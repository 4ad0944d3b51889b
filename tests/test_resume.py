"""``python -m hil.run --resume RUN_ID``: a failed or interrupted run continues from its first
unfinished step; what it finished is neither lost nor run again, except what the array must hold
again for the steps that remain."""

import pytest
from sqlalchemy import func, select

import hil.run
from db import Database
from db.models import Checkpoint, Deployment, Inference, NoiseModelRecord, Run
from drivers import InstrumentIOError
from hil import steps as step_kinds
from tests.test_loop_protocols import CALIBRATE

LOOP = """name: resumable_loop
array: {rows: 128, cols: 128}
steps:
""" + CALIBRATE + """  - kind: train
    name: plain
    task: {name: digits}
    model: {kind: s4d, d_model: 8, d_state: 4, n_layers: 1}
    epochs: 2
    noise_draws: 0
  - kind: deploy
    name: deploy_plain
    checkpoint: {from_step: plain}
    noise_model: {from_step: cal}
  - kind: infer
    name: infer_plain
    deployment: deploy_plain
    samples: 40
    times_s: [0]
"""

SMALL = """name: small
array: {rows: 8, cols: 8}
steps:
  - kind: read
    name: first
    read_voltage_v: 0.2
"""


def _count(s, entity) -> int:
    return s.scalar(select(func.count()).select_from(entity))


def test_a_loop_that_lost_its_instrument_in_inference_resumes_without_training_again(tmp_path, mocker):
    path = tmp_path / "loop.yaml"
    path.write_text(LOOP, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    real_infer = step_kinds.EXECUTORS["infer"]
    calls = []

    def lost_then_fine(ctx, step, row):
        calls.append(step.name)
        if len(calls) == 1:
            raise InstrumentIOError("bench", "mvm", "connection lost")
        return real_infer(ctx, step, row)

    mocker.patch.dict(step_kinds.EXECUTORS, {"infer": lost_then_fine})
    args = ["--db", url, "--report-dir", str(tmp_path / "reports")]
    assert hil.run.main([str(path), *args]) == 1
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "failed" and "connection lost" in run.error
        assert [st.status for st in run.steps] == ["completed"] * 3 + ["failed"]
        before = {"noise": _count(s, NoiseModelRecord), "checkpoints": _count(s, Checkpoint),
                  "deployments": _count(s, Deployment)}
        checkpoint_id = run.steps[1].summary["checkpoint_id"]
    assert before == {"noise": 1, "checkpoints": 1, "deployments": 1}

    # the in-process mock array is gone with the failed session: a new one stands in for the bench
    assert hil.run.main(["--resume", "1", *args]) == 0
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "completed" and run.error is None
        assert [(st.name, st.attempt, st.status) for st in run.steps] == [
            ("cal", 1, "completed"), ("plain", 1, "completed"), ("deploy_plain", 1, "completed"),
            ("deploy_plain", 2, "completed"), ("infer_plain", 1, "failed"), ("infer_plain", 2, "completed")]
        # calibration and training were not run again; the model was programmed again, from the same checkpoint
        assert _count(s, NoiseModelRecord) == 1 and _count(s, Checkpoint) == 1
        deployments = s.scalars(select(Deployment).order_by(Deployment.id)).all()
        assert len(deployments) == 2 and {d.checkpoint_fk for d in deployments} == {checkpoint_id}
        inference = s.scalars(select(Inference)).one()
        assert inference.deployment_fk == deployments[1].id
        assert run.resumes[0]["previous_status"] == "failed"
    assert calls == ["infer_plain", "infer_plain"]


@pytest.fixture
def completed_run(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'small.db'}"
    assert hil.run.main([str(path), "--db", url]) == 0
    return path, url


def _reject(capsys, argv) -> str:
    assert hil.run.main(argv) == hil.run.EXIT_BAD_INPUT
    return capsys.readouterr().err


def _set_status(url, status):
    with Database.open(url) as db, db.session() as s:
        s.scalars(select(Run)).one().status = status


def test_resume_refuses_runs_it_cannot_continue(completed_run, capsys):
    path, url = completed_run
    assert "completed: there is nothing to resume" in _reject(capsys, ["--resume", "1", "--db", url])
    assert "no run 7" in _reject(capsys, ["--resume", "7", "--db", url])
    assert "keeps its seed" in _reject(capsys, ["--resume", "1", "--db", url, "--seed", "3"])
    _set_status(url, "failed")
    assert "not serial" in _reject(capsys, ["--resume", "1", "--db", url, "--backend", "serial"])
    changed = path.with_name("changed.yaml")
    changed.write_text(SMALL.replace("0.2", "0.1"), encoding="utf-8")
    assert "differs from the protocol" in _reject(capsys, [str(changed), "--resume", "1", "--db", url])
    # nothing above touched the run
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "failed" and run.resumes is None and len(run.steps) == 1


def test_a_run_still_owned_by_a_live_process_is_not_resumed(completed_run, capsys):
    _, url = completed_run
    _set_status(url, "running")         # owned by this (live) process: not an orphan
    err = _reject(capsys, ["--resume", "1", "--db", url])
    assert "still running (pid" in err


def test_resuming_with_the_same_file_and_no_steps_left_to_redo(completed_run):
    path, url = completed_run
    _set_status(url, "interrupted")     # interrupted after its only step completed
    assert hil.run.main([str(path), "--resume", "1", "--db", url]) == 0
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "completed"
        assert [(st.attempt, st.status) for st in run.steps] == [(1, "completed")]
