"""The ``train`` step: train a sequence model (optionally against an array's noise model), evaluate it
digitally and on simulated chips, and store a checkpoint."""

from __future__ import annotations

import io
from contextlib import contextmanager

import torch

from calibration.noise_model import NoiseModel
from db import records
from db.models import RunStep

from ..checkpoints import resolve_checkpoint
from ..context import RunContext, StepReport
from ..nn.analog import AnalogSpec, configure_analog
from ..nn.s4d_analog import attach
from ..nn.tasks import load_task
from ..nn.train import TrainConfig, accuracy_under_noise, train
from ..nn.zoo import build_model
from ..noise_models import load_noise_model_with_id
from ..protocol import AnalogTraining, NoiseModelRef, TrainStep
from ..version import code_version


def resolve_noise_model(ctx: RunContext, ref: NoiseModelRef | None) -> tuple[NoiseModel | None, int | None]:
    if ref is None:
        return None, None
    if ref.from_step is not None:
        return load_noise_model_with_id(ctx.db, model_id=ctx.noise_models[ref.from_step])
    if ref.id is not None:
        return load_noise_model_with_id(ctx.db, model_id=ref.id)
    return load_noise_model_with_id(ctx.db, array_id=ref.latest_for)


def analog_specs(analog: AnalogTraining | None, noise: NoiseModel | None) -> tuple[AnalogSpec | None, AnalogSpec | None]:
    """The (dense, recurrent) specs of an ``analog`` training section, with ``noise`` (None: quantisation only)."""
    a = analog
    if a is None:
        return None, None
    common = dict(noise_model=noise, noise_scale=a.noise_scale, drift_time_s=a.drift_time_s, dac_bits=a.dac_bits,
                  adc_bits=a.adc_bits)
    dense = AnalogSpec(weights=a.weights, bits=a.bits, **common)
    recurrent = AnalogSpec(weights=a.recurrent_weights, bits=a.recurrent_bits, **common)
    return dense, recurrent


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


@contextmanager
def fixed_threads(threads: int):
    """Train at a fixed intra-op thread count, whatever the machine has: the order in which threads add
    partial sums changes the weights in the last bits, and training amplifies that into other accuracies."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def numerics(threads: int) -> dict:
    """What a rerun from the same seed must match to give the same weights bit for bit."""
    return {"torch": torch.__version__, "threads": threads, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


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
