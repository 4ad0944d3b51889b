"""The ``finetune`` step: fine-tune a deployment on the array's own forward passes (the work is in
:mod:`hil.finetune`); stores the fine-tuned checkpoint and a record linking it to the deployment, with the
array passes, MVMs and validation accuracy of every epoch."""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from db import records
from db.models import RunStep

from ..context import RunContext, StepReport
from ..deployment import Deployed, crossbars_of, tile_records
from ..finetune import digital_logits, finetune, logits_on_array
from ..nn.tasks import load_task
from ..progressive import progressive
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
    if step.progressive:
        return _run_progressive(ctx, step, row, dep, data, pick, val_x, val_y)
    mvms_before = dep.executor.stats.transactions
    curve, marks = [], ()
    if step.curve is not None:
        split = getattr(data, step.curve.split)
        cx, cy = split.x[:step.curve.samples], split.y[:step.curve.samples]
        digital = float((digital_logits(dep.model, cx, step.curve.batch_size).argmax(-1) == cy).double().mean())
        marks = [round(share * n_train) for share in step.curve.at]

    def measure(passes: int) -> None:
        """A point of the learning curve: the split's accuracy on the array now."""
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
                          checkpoints=marks, on_checkpoint=measure if step.curve is not None else None,
                          on_batch=epochs.batch,
                          on_epoch=lambda r: epochs.epoch_done(r.epoch - 1, train_loss=r.train_loss,
                                                               val_accuracy=r.val_accuracy, seconds=r.seconds))

    history = [{**vars(h), "mvms": h.mvms - mvms_before, "val_accuracy": _number(h.val_accuracy),
                "train_loss": _number(h.train_loss)} for h in result.history]
    summary = {"deployment_id": dep.deployment_id, "base_checkpoint_id": dep.checkpoint_id, "groups": step.groups,
               "target": step.target, "train_sequences": n, "train_share": n / n_train,
               "sequence_passes": history[-1]["sequence_passes"], "mvms": history[-1]["mvms"],
               "val_samples": int(val_x.shape[0]), "val_accuracy_before": _number(result.start_val_accuracy),
               "val_accuracy_after": _number(result.best_val_accuracy), "best_epoch": result.best_epoch,
               "select": step.select, "skipped_batches": result.skipped_batches}
    if step.curve is not None:
        summary["curve"] = {"split": step.curve.split, "sequences": int(cx.shape[0]), "digital_accuracy": digital,
                            "points": curve}
    _store(ctx, step, row, dep, summary, history, groups=step.groups, readout_digital="readout" in step.groups)

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


def _store(ctx: RunContext, step: FinetuneStep, row: RunStep, dep: Deployed, summary: dict, history: list,
           *, groups: list[str], readout_digital: bool, deployment: dict | None = None) -> None:
    """The fine-tuned checkpoint and the record linking it to its deployment (a new deployment row first, if
    cells were written: ``deployment`` holds its summary and tiles)."""
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
                  "finetuned_on_deployment_id": dep.deployment_id, "readout_digital": readout_digital}
        checkpoint = records.add_checkpoint(session, name=name, model_kind=base.model_kind, task=base.task,
                                            config=config, state=state.getvalue(), code_version=code_version(),
                                            metrics=summary, run=ctx.run, step=row, noise_model_id=dep.noise_model_id)
        if deployment is not None:
            # the cells now hold the fine-tuned weights: a deployment of the new checkpoint, tile by tile
            new = records.add_deployment(session, run=ctx.run, step=row, crossbar_array=ctx.array,
                                         mapping=dep.mapping.to_bytes(), checkpoint_id=checkpoint.id,
                                         noise_model_id=dep.noise_model_id,
                                         summary={**deployment["summary"], "checkpoint_id": checkpoint.id},
                                         tiles=deployment["tiles"])
            summary["rewritten_deployment_id"] = new.id
        record = records.add_finetune(session, run=ctx.run, step=row, deployment_id=dep.deployment_id,
                                      base_checkpoint_id=dep.checkpoint_id, checkpoint_id=checkpoint.id,
                                      groups=groups, history=history, summary=summary, corrections=corrections)
        dep.finetune_id = record.id
        if deployment is not None:
            dep.deployment_id, dep.checkpoint_id = new.id, checkpoint.id
            dep.checkpoint_name = name
        summary.update(checkpoint_id=checkpoint.id, finetune_id=record.id)
    ctx.checkpoints[step.name] = summary["checkpoint_id"]


def _run_progressive(ctx: RunContext, step: FinetuneStep, row: RunStep, dep: Deployed, data, pick, val_x,
                     val_y) -> StepReport:
    executor, n_train = dep.executor, data.train.x.shape[0]

    def val_accuracy() -> float:
        logits = logits_on_array(dep.model, executor, val_x, step.batch_size)
        return float((logits.argmax(-1) == val_y).double().mean())

    before = val_accuracy()
    stages_total = len(dep.mapping.layers) - 1
    with ctx.progress.training(stages_total, label=f"progressive fine-tuning of {dep.checkpoint_name}") as stages_bar:
        stages = progressive(dep.model, executor, dep.settings, data.train.x[pick], data.train.y[pick],
                             epochs=step.epochs, lr=step.lr, batch_size=step.batch_size, seed=step.seed,
                             on_batch=stages_bar.batch,
                             on_stage=lambda s: ctx.progress.event(
                                 f"{step.name}: {s.written} written with weights trained on the measured outputs "
                                 f"up to {s.on_array} (changed {100 * s.weight_change:.1f}% rms, {s.cells:,} cells)"))
        stages_bar.update(stages_total)
    after = val_accuracy()
    xbars = crossbars_of(ctx, dep.mapping)
    achieved = [x.read(voltage_v=dep.settings.read_voltage_v) for x in xbars]
    success = [np.abs(a - dep.mapping.targets(i)) <= dep.settings.tolerance_s for i, a in enumerate(achieved)]
    tiles = tile_records(dep.mapping, achieved, success)
    ctx.wait(0.0)
    dep.programmed_at_s = ctx.xbar.now()
    history = [{**vars(s)} for s in stages]
    passes = sum(s.sequence_passes for s in stages)
    cells = sum(s.cells for s in stages)
    summary = {"deployment_id": dep.deployment_id, "base_checkpoint_id": dep.checkpoint_id, "progressive": True,
               "train_sequences": len(pick), "train_share": len(pick) / n_train, "sequence_passes": passes,
               "mvms": sum(s.mvms for s in stages), "cells_rewritten": cells,
               "write_calls": sum(s.write_calls for s in stages), "val_samples": int(val_x.shape[0]),
               "val_accuracy_before": before, "val_accuracy_after": after}
    deployment = {"summary": {"progressive_from_deployment_id": dep.deployment_id, "tiles": len(dep.mapping.tiles),
                              "cells_rewritten": cells, "weight_rms_error": float(np.sqrt(np.mean(
                                  [t["weight_rms_error"] ** 2 for t in tiles])))}, "tiles": tiles}
    _store(ctx, step, row, dep, summary, history, groups=["progressive"], readout_digital=False, deployment=deployment)
    return StepReport(
        cells=f"{cells:,} cells rewritten",
        iterations=f"{len(stages)} stages x {step.epochs} epochs",
        detail=(f"{dep.checkpoint_name}: validation on the array {100 * before:.2f}% -> {100 * after:.2f}% "
                f"({100 * (after - before):+.2f} points, {int(val_x.shape[0])} sequences); {passes:,} sequence "
                f"passes over {len(stages)} layers, {cells:,} cells rewritten"),
        summary=summary)
