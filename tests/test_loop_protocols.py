"""The whole loop on the mock, small: calibrate, train plain and noise-aware, deploy, infer on the array."""

import numpy as np
import pytest
import torch
from sqlalchemy import select

import hil.run
from db import Database
from db.models import Checkpoint, Deployment, DeploymentTile, Inference, Measurement, Run
from db.records import load_measurement_array
from hil.mapping import Mapping
from hil.nn.tasks import load_task
from hil.deployment import load_model

CALIBRATE = """  - kind: calibrate
    name: cal
    report: false
    pulse_response: null
    programming: {levels: 4, repeats: 1}
    read_noise: {reads: 10}
    drift: {times_s: [1, 10, 100], reads: 2}
    periphery: {repeats: 20, sweep_points: 64}
"""


def run_text(tmp_path, text: str) -> str:
    """Run a protocol given as text with its own database and reports under ``tmp_path``; it must exit 0.
    Returns the database URL."""
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert hil.run.main([str(path), "--db", url, "--report-dir", str(tmp_path / "reports")]) == 0
    return url


def loop_protocol(model: str) -> str:
    return f"""name: small_loop
array: {{rows: 128, cols: 128}}
steps:
{CALIBRATE}  - kind: train
    name: plain
    task: {{name: digits}}
    model: {model}
    epochs: 2
    noise_draws: 0
  - kind: train
    name: aware
    task: {{name: digits}}
    model: {model}
    epochs: 2
    analog: {{noise_model: {{from_step: cal}}, drift_time_s: 3600}}
    noise_draws: 0
  - kind: deploy
    name: deploy_plain
    checkpoint: {{from_step: plain}}
    noise_model: {{from_step: cal}}
  - kind: infer
    name: infer_plain
    deployment: deploy_plain
    samples: 40
    times_s: [0, 3600]
  - kind: deploy
    name: deploy_aware
    checkpoint: {{from_step: aware}}
  - kind: infer
    name: infer_aware
    deployment: deploy_aware
    samples: 40
    times_s: [0]
    programmings: 2
  - kind: infer
    name: drift_aware
    deployment: deploy_aware
    samples: 40
    times_s: [3600]
    drift_compensation: false
"""


def stored_programming(session, deployment):
    """The targets and achieved conductances the step that made ``deployment`` stored: its k-th programming's
    measurements for its k-th deployment."""
    def arrays(name):
        rows = session.scalars(select(Measurement).where(Measurement.step_fk == deployment.step_fk,
                                                         Measurement.name == name).order_by(Measurement.id)).all()
        return [load_measurement_array(m) for m in rows]

    mine = session.scalars(select(Deployment.id).where(Deployment.step_fk == deployment.step_fk)
                           .order_by(Deployment.id)).all()
    k = list(mine).index(deployment.id)
    targets, achieved = arrays("targets"), arrays("achieved")
    assert len(targets) == len(achieved) == len(mine)
    return targets[k], achieved[k]


@pytest.mark.parametrize("model", ["{kind: s4d, d_model: 8, d_state: 4, n_layers: 1}",
                                   "{kind: mgrade, d_model: 8, n_layers: 1, max_delay: 4, taps: 2}"],
                         ids=["s4d", "mgrade"])
def test_small_loop_deploys_and_infers_on_the_array(tmp_path, model):
    url = run_text(tmp_path, loop_protocol(model))
    with Database.open(url) as db, db.session() as s:
        run = s.scalars(select(Run)).one()
        assert [st.status for st in run.steps] == ["completed"] * 8
        noise_id = run.steps[0].summary["noise_model_id"]
        deployments = s.scalars(select(Deployment).order_by(Deployment.id)).all()
        assert len(deployments) == 3        # the aware model is programmed a second time by its infer step
        plain, aware = s.scalars(select(Checkpoint).order_by(Checkpoint.id)).all()
        assert [d.checkpoint_fk for d in deployments] == [plain.id, aware.id, aware.id]
        assert [d.summary["erased_first"] for d in deployments] == [False, False, True]
        assert all(d.noise_model_fk == noise_id for d in deployments)
        for d in deployments:
            mapping = Mapping.from_bytes(d.mapping)
            tiles = s.scalars(select(DeploymentTile).where(DeploymentTile.deployment_fk == d.id)).all()
            assert len(tiles) == len(mapping.tiles) == d.summary["tiles"]
            # each tile's yield and rms error, recomputed from the conductances the step stored (the targets
            # and the last verify read) and the write-verify tolerance
            targets, achieved = stored_programming(s, d)
            tolerance = d.summary["tolerance_s"]
            for tile, rec in zip(mapping.tiles, sorted(tiles, key=lambda t: t.tile)):
                cells = np.ix_(tile.rows, np.r_[tile.pos_cols, tile.neg_cols])
                err = achieved[cells] - targets[cells]
                assert rec.in_tolerance == pytest.approx(np.mean(np.abs(err) <= tolerance), abs=1e-12)
                assert rec.rms_error_s == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-9)
            assert d.summary["fraction_in_tolerance"] > 0.95
            # the executor pre-distorts with the curvature the calibration measured (the mock's is 0.5)
            assert d.summary["iv_cubic_per_v2"] == pytest.approx(0.5, abs=0.05)
        rows = s.scalars(select(Inference).order_by(Inference.id)).all()
        # plain: t = 0, 3600 and 3600 compensated; aware: t = 0 on each of its two programmings
        assert [(r.time_s, r.drift_compensation) for r in rows] == [(0, False), (3600, False), (3600, True), (0, False),
                                                                     (0, False), (3600, False)]
        assert [r.deployment_fk for r in rows[3:]] == [deployments[1].id, deployments[2].id, deployments[2].id]
        for r in rows:
            assert r.samples == 40 and np.array(r.confusion).sum() == 40
            assert np.trace(np.array(r.confusion)) == round(r.crossbar_accuracy * 40)
            assert r.transactions_per_step >= 1 and r.step_latency_s > 0
        # the digital accuracy next to it is the checkpoint's own model on the same 40 samples
        model_, task = load_model(aware)
        data = load_task(task.name, task.seed)
        with torch.no_grad():
            expected = (model_(data.val.x[:40]).argmax(-1) == data.val.y[:40]).float().mean().item()
        assert rows[-1].digital_accuracy == pytest.approx(expected)     # infer streams the validation split
        assert {r.split for r in rows} == {"val"}
        # a later step on the same model compares with both of the earlier step's programmings
        drift_report = (tmp_path / "reports" / f"run-{run.id}-drift_aware" / "report.md").read_text()
        aware_rows = [line for line in drift_report.splitlines() if line.startswith(f"| {aware.name} |")]
        assert len(aware_rows) == 1 and aware_rows[0].endswith("| 2 |")
        infer = run.steps[4].summary
        assert (tmp_path / "reports" / f"run-{run.id}-infer_plain" / "report.md").exists()
        assert (tmp_path / "reports" / f"run-{run.id}-infer_plain" / "accuracy_vs_time.png").exists()
        # the second model's report sets its gaps next to the first's, on the same array
        aware_report = (tmp_path / "reports" / f"run-{run.id}-infer_aware" / "report.md").read_text()
        plain_rows = [line for line in aware_report.splitlines() if line.startswith(f"| {plain.name} |")]
        assert len(plain_rows) == len([r for r in rows if r.deployment_fk == deployments[0].id])
        first = min((r for r in rows if r.deployment_fk == deployments[0].id), key=lambda r: r.id)
        assert f"{100 * (first.digital_accuracy - first.crossbar_accuracy):+.2f} |" in plain_rows[0]
        assert infer["gap_points"] == pytest.approx(100 * (infer["digital_accuracy"] - infer["crossbar_accuracy"]))
        aware_infer = run.steps[6].summary
        gaps = [100 * (r.digital_accuracy - r.crossbar_accuracy) for r in rows[3:5]]
        assert aware_infer["programmings"] == 2
        assert aware_infer["gap_points"] == pytest.approx(np.mean(gaps))
        assert aware_infer["gap_points_sd"] == pytest.approx(np.std(gaps, ddof=1))
        assert "Over the programmings" in aware_report


def test_an_infer_step_must_follow_its_deploy_step(tmp_path):
    text = """name: bad_loop
array: {rows: 16, cols: 16}
steps:
  - kind: infer
    name: too_early
    deployment: deploy
  - kind: deploy
    name: deploy
    checkpoint: {from_step: nowhere}
"""
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    assert hil.run.main([str(path), "--db", url]) == 2
    assert not (tmp_path / "bad.db").exists()


def test_deploy_refuses_write_voltages_beyond_the_limits(tmp_path):
    text = """name: hot
array: {rows: 16, cols: 16}
limits: {max_write_voltage_v: 1.5}
steps:
  - kind: deploy
    checkpoint: {id: 1}
"""
    path = tmp_path / "hot.yaml"
    path.write_text(text, encoding="utf-8")
    assert hil.run.main([str(path), "--db", f"sqlite:///{tmp_path / 'hot.db'}"]) == 2
