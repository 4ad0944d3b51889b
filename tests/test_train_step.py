"""The train step through `python -m hil.run`: calibrate, train against the fitted noise model, checkpoint."""

import io

import pytest
import torch
from sqlalchemy import select

import hil.run
from db import Database
from db.models import Checkpoint, Run

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
            assert 0 <= ck.metrics["test_accuracy"] <= 1
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
