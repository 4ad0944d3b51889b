"""The chip-in-the-loop steps in a protocol: calibrate, train, deploy, infer, finetune on the array, infer again,
then maintain the deployment for two weeks."""

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from db import Database
from db.models import Checkpoint, Deployment, Finetune, Inference, Run
from hil.protocol import Protocol

from test_loop_protocols import CALIBRATE, run_text

PROTOCOL = f"""name: small_finetune
array: {{rows: 128, cols: 128}}
steps:
{CALIBRATE}  - kind: train
    name: plain
    task: {{name: digits}}
    model: {{kind: mgrade, d_model: 8, n_layers: 1, max_delay: 4, taps: 2}}
    epochs: 2
    noise_draws: 0
  - kind: deploy
    name: deployed
    checkpoint: {{from_step: plain}}
    noise_model: {{from_step: cal}}
  - kind: infer
    name: before
    deployment: deployed
    samples: 30
  - kind: finetune
    name: tuned
    deployment: deployed
    train_fraction: 0.02
    epochs: 2
    batch_size: 16
    val_samples: 30
  - kind: infer
    name: after
    deployment: deployed
    samples: 30
  - kind: finetune
    name: curve
    deployment: deployed
    train_fraction: 0.02
    epochs: 2
    batch_size: 16
    select: last
    curve: {{split: val, at: [0.01, 0.02, 0.04], samples: 20}}
  - kind: maintain
    name: kept
    deployment: deployed
    days: 14
    every_s: 302400
    bound: 0.2
    evaluate: {{samples: 30}}
"""


def test_a_finetune_step_records_its_epochs_checkpoint_and_the_inferences_it_affects(tmp_path):
    url = run_text(tmp_path, PROTOCOL)
    with Database(url) as db, db.session() as session:
        run = session.scalars(select(Run)).one()
        assert [s.status for s in run.steps] == ["completed"] * 8
        tune, curve = session.scalars(select(Finetune).order_by(Finetune.id)).all()
        n = tune.summary["train_sequences"]
        assert n == round(0.02 * 1259)
        # one array pass per training sequence and epoch; MVMs counted on the array
        assert [h["sequence_passes"] for h in tune.history] == [n, 2 * n]
        assert tune.history[-1]["mvms"] > 0 and tune.groups == ["bias", "norm", "columns"]
        tuned = session.get(Checkpoint, tune.checkpoint_fk)
        assert tuned.config["finetuned_from_checkpoint_id"] == tune.base_checkpoint_fk
        assert tuned.config["finetuned_on_deployment_id"] == tune.deployment_fk
        assert tune.corrections is not None
        before, after, *kept = session.scalars(select(Inference).order_by(Inference.id)).all()
        assert before.finetune_fk is None and after.finetune_fk == tune.id
        assert before.deployment_fk == after.deployment_fk == tune.deployment_fk       # the same cells
        # the learning curve: measured before training and where the passes reach 1, 2 and 4 % of the
        # training split, batches cut short to land there; no validation passes with `select: last`
        points = curve.summary["curve"]["points"]
        assert [p["sequence_passes"] for p in points] == [0, round(0.01 * 1259), round(0.02 * 1259), 2 * n]
        assert curve.summary["sequence_passes"] == 2 * n and curve.summary["val_accuracy_after"] is None
        assert all(h["val_accuracy"] is None for h in curve.history)
        assert curve.summary["curve"]["sequences"] == 20 and 0 <= points[-1]["accuracy"] <= 1
        # maintenance: checks every 3.5 days, evaluations weekly (the default), drift-compensated
        # (the first now, a little after programming: the evaluations and the fine-tuning took their time)
        assert kept[0].time_s < 3600 and [k.time_s / 86400 for k in kept[1:]] == [7, 14]
        assert all(k.drift_compensation for k in kept)
        assert all(k.finetune_fk == curve.id and k.split == "val" for k in kept)
        summary = run.steps[-1].summary
        assert summary["checks"][0]["time_s"] < 3600
        assert [c["time_s"] / 86400 for c in summary["checks"][1:]] == [3.5, 7, 10.5, 14]
        assert len(summary["cells_rewritten_per_week"]) == 2
        assert summary["cost"]["check_mvms"] > 0
    report = tmp_path / "reports" / f"run-{run.id}-kept"
    assert (report / "report.md").exists() and (report / "maintenance.png").exists()


def test_reprogramming_a_finetuned_deployment_is_refused_before_the_run():
    text = PROTOCOL.replace("    name: after\n    deployment: deployed\n", "    name: after\n    deployment: deployed\n"
                            "    programmings: 2\n")
    import yaml
    with pytest.raises(ValidationError, match="fine-tuned"):
        Protocol.model_validate(yaml.safe_load(text))


def test_a_progressive_finetune_rewrites_the_layers_after_the_first_and_records_a_new_deployment(tmp_path):
    text = PROTOCOL.split("  - kind: infer\n    name: before")[0] + """  - kind: finetune
    name: layered
    deployment: deployed
    progressive: true
    train_fraction: 0.02
    epochs: 1
    batch_size: 16
    val_samples: 20
  - kind: infer
    name: after
    deployment: deployed
    samples: 20
"""
    url = run_text(tmp_path, text)
    with Database(url) as db, db.session() as session:
        run = session.scalars(select(Run)).one()
        assert [s.status for s in run.steps] == ["completed"] * 5
        tune = session.scalars(select(Finetune)).one()
        layers = [h["written"] for h in tune.history]
        # mGRADE, one block: the encoder stays; the taps, minGRU, MLP and decoder are written in order
        assert layers == ["blocks.0.conv.taps", "blocks.0.rnn.linear", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2",
                          "decoder"]
        n = tune.summary["train_sequences"]
        assert tune.summary["sequence_passes"] == 5 * n and tune.summary["cells_rewritten"] > 0
        new = session.get(Deployment, tune.summary["rewritten_deployment_id"])
        assert new.checkpoint_fk == tune.checkpoint_fk and new.summary["progressive_from_deployment_id"] == tune.deployment_fk
        after = session.scalars(select(Inference)).one()
        assert after.deployment_fk == new.id and after.finetune_fk == tune.id
