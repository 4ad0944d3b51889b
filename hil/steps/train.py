"""The ``train`` step: train a sequence model (optionally against an array's noise model), evaluate it
digitally and on simulated chips, and store a checkpoint."""

from __future__ import annotations

import io

import torch

from db import records
from db.models import RunStep

from ..checkpoints import resolve_checkpoint
from ..context import RunContext, StepReport
from ..nn.analog import AnalogSpec, configure_analog
from ..nn.s4d_analog import attach
from ..nn.tasks import load_task
from ..nn.train import TrainConfig, accuracy_under_noise, train
from ..nn.zoo import build_model
from ..noise_models import resolve_noise_model
from ..protocol import TrainStep
from ..training import analog_specs, fixed_threads, numerics
from ..version import code_version


def restore_train(ctx: RunContext, step: TrainStep, summary: dict) -> None:
    ctx.checkpoints[step.name] = int(summary["checkpoint_id"])


def _load_init(ctx: RunContext, step: TrainStep, model: torch.nn.Module) -> int:
    """Put the weights of the checkpoint ``step.init`` names into ``model``; its id. A checkpoint of another
    model or task is refused with what differs."""
    checkpoint = resolve_checkpoint(ctx, step.init)
    for key, mine in (("model", step.model.model_dump()), ("task", step.task.model_dump())):
        theirs = checkpoint.config.get(key)
        if theirs != mine:
            raise ValueError(f"init: checkpoint {checkpoint.id} ({checkpoint.name}) was trained with {key} {theirs}, "
                             f"this step has {mine}")
    model.load_state_dict(torch.load(io.BytesIO(checkpoint.state), weights_only=True))
    return int(checkpoint.id)


def run_train(ctx: RunContext, step: TrainStep, row: RunStep) -> StepReport:
    data = load_task(step.task.name, step.task.seed)
    torch.manual_seed(step.seed)
    model = build_model(step.model, data.d_input, data.n_classes, pool=data.pool)
    attach(model)
    init_id = _load_init(ctx, step, model) if step.init is not None else None
    train_noise, train_noise_id = resolve_noise_model(ctx, step.analog.noise_model if step.analog else None)
    dense, recurrent = analog_specs(step.analog, train_noise)
    configure_analog(model, dense, recurrent)

    cfg = TrainConfig(epochs=step.epochs, lr=step.lr, batch_size=step.batch_size, weight_decay=step.weight_decay,
                      seed=step.seed, warmup_epochs=step.warmup_epochs)
    with ctx.progress.training(step.epochs, label=f"training {step.model.kind} on {step.task.name}") as epochs, \
            fixed_threads(step.threads):
        result = train(model, data, cfg, on_batch=epochs.batch,
                       on_epoch=lambda s: epochs.epoch_done(s.epoch, train_loss=s.train_loss,
                                                            val_accuracy=s.val_accuracy, seconds=s.seconds))

    metrics = {"test_accuracy": result.test_accuracy, "best_val_accuracy": result.best_val_accuracy,
               "best_epoch": result.best_epoch, "train_seconds": result.seconds,
               "parameters": model.parameter_count(), "state_bytes": model.streaming_state_bytes(),
               "reproducible_with": numerics(step.threads),
               "history": [vars(h) for h in result.history]}
    eval_noise, eval_noise_id = (resolve_noise_model(ctx, step.evaluate_under) if step.evaluate_under
                                 else (train_noise, train_noise_id))
    if eval_noise is not None and step.noise_draws > 0:
        # The same weights, now each realised on a simulated chip (noise off in training or not).
        eval_dense = (dense or AnalogSpec()).model_copy(update={"noise_model": eval_noise, "noise_scale": 1.0})
        eval_rec = (recurrent or AnalogSpec()).model_copy(update={"noise_model": eval_noise, "noise_scale": 1.0})
        configure_analog(model, eval_dense, eval_rec)
        mean, std, values = accuracy_under_noise(model, data.test, draws=step.noise_draws, seed=step.seed)
        metrics.update(noisy_test_accuracy_mean=mean, noisy_test_accuracy_std=std, noisy_test_accuracies=values,
                       evaluated_under_noise_model=eval_noise_id)
        configure_analog(model, dense, recurrent)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    config = {"task": step.task.model_dump(), "model": step.model.model_dump(),
              "training": cfg.__dict__, "analog": step.analog.model_dump() if step.analog else None,
              "noise_model_id": train_noise_id, "init_checkpoint_id": init_id, "pool": data.pool}
    name = step.checkpoint or f"{ctx.protocol.name}.{step.name}"
    with ctx.db.session() as session:
        stored = records.add_checkpoint(session, name=name, model_kind=step.model.kind, task=step.task.name,
                                        config=config, state=buffer.getvalue(), code_version=code_version(),
                                        metrics=metrics, run=ctx.run, step=row, noise_model_id=train_noise_id)
    ctx.checkpoints[step.name] = stored.id

    detail = (f"{step.model.kind} on {step.task.name}: test {100 * result.test_accuracy:.2f}% "
              f"({metrics['parameters']:,} parameters, {metrics['state_bytes']:,} B streaming state, "
              f"{result.seconds:.0f} s)")
    if "noisy_test_accuracy_mean" in metrics:
        detail += (f"; on {step.noise_draws} simulated chips {100 * metrics['noisy_test_accuracy_mean']:.2f}"
                   f" ± {100 * metrics['noisy_test_accuracy_std']:.2f}%")
    detail += f"; checkpoint {stored.id} ({name})"
    summary = {k: v for k, v in metrics.items() if k != "history"}
    summary["checkpoint_id"] = stored.id
    return StepReport(cells="", iterations=f"{result.best_epoch + 1}/{step.epochs}", detail=detail, summary=summary)
