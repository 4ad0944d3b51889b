"""The finetune step in a protocol: calibrate, train, deploy, infer, finetune on the array, infer again."""

import pytest
from pydantic import ValidationError
from sqlalchemy import select

import hil.run
from db import Database
from db.models import Checkpoint, Finetune, Inference, Run
from hil.protocol import Protocol

from test_loop_protocols import CALIBRATE

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
"""


def test_a_finetune_step_records_its_epochs_checkpoint_and_the_inferences_it_affects(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PROTOCOL, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert hil.run.main([str(path), "--db", url, "--report-dir", str(tmp_path / "reports")]) == 0
    with Database(url) as db, db.session() as session:
        run = session.scalars(select(Run)).one()
        assert [s.status for s in run.steps] == ["completed"] * 6
        tune = session.scalars(select(Finetune)).one()
        n = tune.summary["train_sequences"]
        assert n == round(0.02 * 1259)
        # one array pass per training sequence and epoch; MVMs counted on the array
        assert [h["sequence_passes"] for h in tune.history] == [n, 2 * n]
        assert tune.history[-1]["mvms"] > 0 and tune.groups == ["bias", "norm", "columns"]
        tuned = session.get(Checkpoint, tune.checkpoint_fk)
        assert tuned.config["finetuned_from_checkpoint_id"] == tune.base_checkpoint_fk
        assert tuned.config["finetuned_on_deployment_id"] == tune.deployment_fk
        assert tune.corrections is not None
        before, after = session.scalars(select(Inference).order_by(Inference.id)).all()
        assert before.finetune_fk is None and after.finetune_fk == tune.id
        assert before.deployment_fk == after.deployment_fk == tune.deployment_fk       # the same cells


def test_reprogramming_a_finetuned_deployment_is_refused_before_the_run():
    text = PROTOCOL.replace("    name: after\n    deployment: deployed\n", "    name: after\n    deployment: deployed\n"
                            "    programmings: 2\n")
    import yaml
    with pytest.raises(ValidationError, match="fine-tuned"):
        Protocol.model_validate(yaml.safe_load(text))
