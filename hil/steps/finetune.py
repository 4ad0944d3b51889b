"""The ``finetune`` step: fine-tune a deployment on the array's own forward passes (the work is in
:mod:`hil.finetune`); stores the fine-tuned checkpoint and a record linking it to the deployment, with the
array passes, MVMs and validation accuracy of every epoch."""

from __future__ import annotations

import io
import math

import torch

from db import records
from db.models import RunStep

from ..context import RunContext, StepReport
from ..deployment import Deployed
from ..finetune import digital_logits, finetune, logits_on_array
from ..nn.tasks import load_task
from ..protocol import FinetuneStep
from ..version import code_version


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value      # JSON has no NaN: no validation is None


def run_finetune(ctx: RunContext, step: FinetuneStep, row: RunStep) -> StepReport:
    dep: Deployed = ctx.deployments[step.deployment]
    data = load_task(dep.task.name, dep.task.seed)
    n_train = data.train.x.shape[0]
    n = max(1, round(step.train_fraction * n_train))
    pick = torch.randperm(n_train, generator=torch.Generator().manual_seed(step.seed))[:n]
    val_x, val_y = data.val.x, data.val.y
    if step.val_samples is not None:
        val_x, val_y = val_x[:step.val_samples], val_y[:step.val_samples]
    mvms_before = dep.executor.stats.transactions
    curve, on_checkpoint, marks = [], None, ()
    if step.curve is not None:
        split = getattr(data, step.curve.split)
        cx, cy = split.x[:step.curve.samples], split.y[:step.curve.samples]
        digital = float((digital_logits(dep.model, cx, step.curve.batch_size).argmax(-1) == cy).double().mean())
        marks = [round(share * n_train) for share in step.curve.at]

        def on_checkpoint(passes: int) -> None:
            logits = logits_on_array(dep.model, dep.executor, cx, step.curve.batch_size)
            accuracy = float((logits.argmax(-1) == cy).double().mean())
            curve.append({"sequence_passes": passes, "share": passes / n_train, "accuracy": accuracy})
            ctx.progress.event(f"{step.name}: {passes} sequence passes ({100 * passes / n_train:.1f}% of the training "
                               f"split), {step.curve.split} accuracy on the array {100 * accuracy:.2f}% (digital "
                               f"{100 * digital:.2f}%)")

    with ctx.progress.training(step.epochs, label=f"fine-tuning {dep.checkpoint_name} on the array") as epochs:
        result = finetune(dep.model, dep.executor, data.train.x[pick], data.train.y[pick], val_x, val_y,
                          groups=step.groups, epochs=step.epochs, lr=step.lr, batch_size=step.batch_size,
                          seed=step.seed, target=step.target, select_best=step.select == "best_val",
                          checkpoints=marks, on_checkpoint=on_checkpoint, on_batch=epochs.batch,
                          on_epoch=lambda r: epochs.epoch_done(r.epoch - 1, train_loss=r.train_loss,
                                                               val_accuracy=r.val_accuracy, seconds=r.seconds))

    history = [{**vars(h), "mvms": h.mvms - mvms_before, "val_accuracy": _number(h.val_accuracy)}
               for h in result.history]
    summary = {"deployment_id": dep.deployment_id, "base_checkpoint_id": dep.checkpoint_id, "groups": step.groups,
               "target": step.target, "train_sequences": n, "train_share": n / n_train,
               "sequence_passes": history[-1]["sequence_passes"], "mvms": history[-1]["mvms"],
               "val_samples": int(val_x.shape[0]), "val_accuracy_before": _number(result.start_val_accuracy),
               "val_accuracy_after": _number(result.best_val_accuracy), "best_epoch": result.best_epoch,
               "select": step.select}
    if step.curve is not None:
        summary["curve"] = {"split": step.curve.split, "sequences": int(cx.shape[0]), "digital_accuracy": digital,
                            "points": curve}
    state = io.BytesIO()
    torch.save(dep.model.state_dict(), state)
    corrections = None
    if dep.executor.corrections is not None:
        buffer = io.BytesIO()
        torch.save(dep.executor.corrections.state_dict(), buffer)
        corrections = buffer.getvalue()
    name = step.checkpoint or f"{ctx.protocol.name}.{step.name}"
    with ctx.db.session() as session:
        base = records.get_checkpoint(session, dep.checkpoint_id)
        config = {**base.config, "finetuned_from_checkpoint_id": dep.checkpoint_id,
                  "finetuned_on_deployment_id": dep.deployment_id, "readout_digital": "readout" in step.groups}
        checkpoint = records.add_checkpoint(session, name=name, model_kind=base.model_kind, task=base.task,
                                            config=config, state=state.getvalue(), code_version=code_version(),
                                            metrics=summary, run=ctx.run, step=row, noise_model_id=dep.noise_model_id)
        record = records.add_finetune(session, run=ctx.run, step=row, deployment_id=dep.deployment_id,
                                      base_checkpoint_id=dep.checkpoint_id, checkpoint_id=checkpoint.id,
                                      groups=step.groups, history=history, summary=summary, corrections=corrections)
        dep.finetune_id = record.id
        summary.update(checkpoint_id=checkpoint.id, finetune_id=record.id)
    ctx.checkpoints[step.name] = summary["checkpoint_id"]

    if step.select == "best_val":
        before, after = 100 * result.start_val_accuracy, 100 * result.best_val_accuracy
        outcome = (f"validation on the array {before:.2f}% -> {after:.2f}% ({after - before:+.2f} points, "
                   f"{int(val_x.shape[0])} sequences; best epoch {result.best_epoch})")
    else:
        outcome = "last epoch kept (no validation passes)"
    if curve:
        outcome += (f"; {step.curve.split} on the array {100 * curve[0]['accuracy']:.2f}% -> "
                    f"{100 * curve[-1]['accuracy']:.2f}% (digital {100 * digital:.2f}%)")
    return StepReport(
        cells=f"{n} training sequences ({100 * n / n_train:.0f}%)",
        iterations=f"{len(result.history)}/{step.epochs} epochs",
        detail=(f"{dep.checkpoint_name}: {outcome}; {summary['sequence_passes']:,} sequence passes, "
                f"{summary['mvms']:,} MVMs; groups {', '.join(step.groups)}; no cell rewritten"),
        summary=summary)
