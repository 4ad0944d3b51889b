"""The train step through `python -m hil.run`: calibrate, train against the fitted noise model, checkpoint."""

import io

import pytest
import torch
from sqlalchemy import select

import hil.run
from db import Database
from db.models import Checkpoint, Run
from hil.nn.tasks import load_task
from hil.deployment import load_model

PROTOCOL = """name: tiny_loop
array: {rows: 16, cols: 16}
steps:
  - kind: calibrate
    name: cal
    report: false
    pulse_response: null
    programming: {levels: 4, repeats: 1}
    read_noise: {reads: 10}
    drift: {times_s: [1, 10, 100], reads: 2}
    periphery: null
  - kind: train
    name: noisy
    task: {name: period}
    model: {kind: s4d, d_model: 16, d_state: 8, n_layers: 1}
    epochs: 2
    analog:
      weights: ternary
      noise_model: {from_step: cal}
    noise_draws: 2
  - kind: train
    name: plain
    task: {name: period}
    model: {kind: recurrent, d_model: 16, n_layers: 1}
    epochs: 1
    evaluate_under: {latest_for: mock-16x16-seed0}
    noise_draws: 2
"""


def test_train_steps_store_checkpoints_with_noise_evaluation(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(PROTOCOL, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    assert hil.run.main([str(path), "--db", url]) == 0
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert [st.status for st in run.steps] == ["completed"] * 3
        noisy, plain = s.scalars(select(Checkpoint).order_by(Checkpoint.id)).all()
        model_id = run.steps[0].summary["noise_model_id"]
        assert noisy.noise_model_fk == model_id and noisy.config["analog"]["weights"] == "ternary"
        assert noisy.name == "tiny_loop.noisy" and noisy.model_kind == "s4d"
        assert plain.noise_model_fk is None and plain.metrics["evaluated_under_noise_model"] == model_id
        for ck in (noisy, plain):
            # the stored accuracy is the stored model's: rebuilt from the checkpoint alone and run on the
            # task's test split, it classifies exactly as many test sequences correctly
            model, task = load_model(ck)
            test = load_task(task.name, task.seed).test
            with torch.no_grad():
                correct = int((model(test.x).argmax(-1) == test.y).sum())
            assert ck.metrics["test_accuracy"] == pytest.approx(correct / len(test.y), abs=1e-12)
            assert len(ck.metrics["noisy_test_accuracies"]) == 2
            assert ck.metrics["parameters"] > 0 and ck.metrics["state_bytes"] > 0
        state = torch.load(io.BytesIO(noisy.state), weights_only=True)
        assert any(k.endswith("log_dt") for k in state)


def test_from_step_must_name_an_earlier_calibration(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(PROTOCOL.replace("noise_model: {from_step: cal}", "noise_model: {from_step: nowhere}"),
                    encoding="utf-8")
    assert hil.run.main([str(path), "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert "steps[1].analog.noise_model.from_step" in err and ":19:" in err


INIT_PROTOCOL = """name: warm_start
array: {rows: 16, cols: 16}
steps:
  - kind: train
    name: plain
    task: {name: period}
    model: {kind: recurrent, d_model: 8, n_layers: 1}
    epochs: 1
    noise_draws: 0
  - kind: train
    name: retrained
    task: {name: period}
    model: {kind: recurrent, d_model: 8, n_layers: 1}
    epochs: 1
    lr: 1.0e-9
    warmup_epochs: 0
    init: {from_step: plain}
    noise_draws: 0
"""


def test_init_starts_from_the_named_checkpoint(tmp_path):
    # With a learning rate of 1e-9 one epoch cannot move the weights measurably: the retrained model
    # holds the plain model's weights only if it started from them.
    path = tmp_path / "warm.yaml"
    path.write_text(INIT_PROTOCOL, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'warm.db'}"
    assert hil.run.main([str(path), "--db", url]) == 0
    with Database.open(url) as db, db.session() as s:
        plain, retrained = s.scalars(select(Checkpoint).order_by(Checkpoint.id)).all()
        assert retrained.config["init_checkpoint_id"] == plain.id
        a = torch.load(io.BytesIO(plain.state), weights_only=True)
        b = torch.load(io.BytesIO(retrained.state), weights_only=True)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def test_init_from_another_model_is_refused_and_a_missing_step_before_any_work(tmp_path, capsys):
    other = INIT_PROTOCOL.replace("model: {kind: recurrent, d_model: 8, n_layers: 1}\n    epochs: 1\n    lr",
                                  "model: {kind: recurrent, d_model: 16, n_layers: 1}\n    epochs: 1\n    lr")
    path = tmp_path / "other.yaml"
    path.write_text(other, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'other.db'}"
    assert hil.run.main([str(path), "--db", url]) != 0
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert [st.status for st in run.steps] == ["completed", "failed"]
        assert "d_model" in run.steps[1].error and "init" in run.steps[1].error
    missing = INIT_PROTOCOL.replace("init: {from_step: plain}", "init: {from_step: nowhere}")
    path.write_text(missing, encoding="utf-8")
    assert hil.run.main([str(path), "--db", f"sqlite:///{tmp_path / 'none.db'}"]) != 0
    assert "steps[1].init.from_step: must name an earlier train step" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
