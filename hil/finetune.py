"""Fine-tuning a deployed model on the array's own forward passes (chip in the loop).

Training batches are streamed through the model's step form with every weight product measured on the
array, as inference does; the loss is taken on those measured outputs and its gradient flows through the
digital model (straight-through: :class:`ArrayInTheLoop` returns the array's value with the digital
product's gradient). Only digital parameters move, so no cell is rewritten:

* ``bias``: the biases of every layer (digital, added after the ADC);
* ``norm``: the LayerNorms' gains and shifts;
* ``columns``: a gain and an offset per output of every crossbar layer (:class:`ColumnCorrections`),
  which absorb what programming error, stuck cells and drift did to each column's sum;
* ``readout``: the readout layer is taken off the array and computed digitally, its weights trained
  on the measured features (the last layer retrained on chip).

What the array does to a read (its read noise) differs between passes and cannot be learnt; static
error (each cell's programming error, faults, drift since programming) can.

S4D's C and D are not digital here: the mapping folds them into the output row of each channel's block of
the recurrence (y_k = c_r x_k + D u_k, :class:`~hil.nn.s4d.S4DRecurrence`), and the output projection is a
crossbar layer of its own. Their digital counterparts are the ``columns`` corrections of those outputs (a
gain and an offset per channel's y and per projected output) and, for the projection, its bias; training
C and D themselves would change what the cells hold (:mod:`hil.progressive` does that, writing them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .executor import CrossbarExecutor

GROUPS = ("bias", "norm", "columns", "readout")
DEFAULT_GROUPS = ("bias", "norm", "columns")


def _key(name: str) -> str:
    return name.replace(".", "/")       # ParameterDict keys may not contain dots


class ColumnCorrections(nn.Module):
    """A gain and an offset per output of every crossbar layer, applied to the array's product before the
    bias: y = g ⊙ (W x)_array + o + b. Starts as the identity (g = 1, o = 0)."""

    def __init__(self, layers: dict[str, int]):
        super().__init__()
        self.gain = nn.ParameterDict({_key(n): nn.Parameter(torch.ones(k, dtype=torch.float32)) for n, k in layers.items()})
        self.offset = nn.ParameterDict({_key(n): nn.Parameter(torch.zeros(k, dtype=torch.float32))
                                        for n, k in layers.items()})

    @classmethod
    def for_executor(cls, executor: CrossbarExecutor) -> "ColumnCorrections":
        return cls({name: shape.out_features for name, shape in executor.mapping.layers.items()})

    def apply(self, name: str, product: torch.Tensor) -> torch.Tensor:
        k = _key(name)
        flat = product.reshape(product.shape[0], -1)
        out = flat * self.gain[k].to(flat.dtype) + self.offset[k].to(flat.dtype)
        return out.reshape(product.shape)


class ArrayInTheLoop:
    """A matvec (:mod:`hil.nn.matvec`) whose value is the array's and whose gradient is the digital
    model's: ``digital + (array - digital).detach()``, then the layer's output corrections and bias.
    Layers the executor runs digitally (a readout taken off the array) are computed digitally."""

    def __init__(self, executor: CrossbarExecutor):
        self.executor = executor

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.executor.runs_digitally(layer):
            return layer(x)
        bias = getattr(layer, "bias", None)
        measured = self.executor.product(layer, x)
        digital = layer(x)
        if bias is not None:
            digital = digital - bias
        product = digital + (measured - digital).detach()
        if self.executor.corrections is not None:
            product = self.executor.corrections.apply(self.executor.layer_name(layer), product)
        return product if bias is None else product + bias


def readout_layer(model: nn.Module) -> nn.Module:
    """The layer the model's readout ends in (its ``decoder``)."""
    layer = getattr(model, "decoder", None)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no decoder to train as the readout")
    return layer


def trainable(model: nn.Module, executor: CrossbarExecutor, groups: Iterable[str],
              columns_of: Iterable[str] | None = None) -> dict[str, list[nn.Parameter]]:
    """The parameters each group trains (every group named must exist in GROUPS); ``columns_of`` limits the
    column corrections to those crossbar layers (default: all)."""
    groups = list(groups)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown parameter group(s) {', '.join(unknown)}: choose from {', '.join(GROUPS)}")
    out: dict[str, list[nn.Parameter]] = {}
    readout = readout_layer(model) if "readout" in groups else None
    if "bias" in groups:
        out["bias"] = [m.bias for m in model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)
                       and not isinstance(m, nn.LayerNorm) and m is not readout]
    if "norm" in groups:
        out["norm"] = [p for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    if "columns" in groups:
        if executor.corrections is None:
            executor.corrections = ColumnCorrections.for_executor(executor)
        names = list(executor.mapping.layers) if columns_of is None else list(columns_of)
        missing = sorted(set(names) - set(executor.mapping.layers))
        if missing:
            raise ValueError(f"no crossbar layer(s) {', '.join(missing)} in the deployment: it has "
                             f"{', '.join(executor.mapping.layers)}")
        c = executor.corrections
        out["columns"] = [p for n in names for p in (c.gain[_key(n)], c.offset[_key(n)])]
    if readout is not None:
        out["readout"] = list(readout.parameters())
    return out


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_accuracy: float
    sequences: int          # distinct training sequences used so far
    sequence_passes: int    # training sequences streamed through the array so far (sequences x epochs)
    mvms: int               # MVM transactions on the array so far (training and validation)
    seconds: float


@dataclass
class FinetuneResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0                 # 0: the deployment as it was (no epoch improved on it)
    best_val_accuracy: float = 0.0
    start_val_accuracy: float = 0.0
    skipped_batches: int = 0            # batches undone because the array's outputs went non-finite


def stream_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's step form over (B, L, d): its readout logits."""
    state = model.init_state(x.shape[0])
    for t in range(x.shape[1]):
        state = model.step(x[:, t], state)
    return model.readout(state)


def logits_on_array(model: nn.Module, matvec: ArrayInTheLoop, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    from .nn.matvec import set_matvec

    set_matvec(model, matvec)
    with torch.no_grad():
        return torch.cat([stream_logits(model, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def digital_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    from .nn.matvec import digital_matvec, set_matvec

    set_matvec(model, digital_matvec)
    with torch.no_grad():
        return torch.cat([stream_logits(model, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def finetune(model: nn.Module, executor: CrossbarExecutor, train_x: torch.Tensor, train_y: torch.Tensor,
             val_x: torch.Tensor, val_y: torch.Tensor, *, groups: Iterable[str] = DEFAULT_GROUPS, epochs: int = 5,
             lr: float = 1e-2, batch_size: int = 32, seed: int = 0, target: str = "labels",
             columns_of: Iterable[str] | None = None, parameters: list[nn.Parameter] | None = None,
             select_best: bool = True,
             checkpoints: Iterable[int] = (), on_checkpoint: Callable[[int], None] | None = None,
             on_batch: Callable[[int, int], None] | None = None,
             on_epoch: Callable[[EpochRecord], None] | None = None) -> FinetuneResult:
    """Fine-tune ``groups`` of ``model`` (deployed through ``executor``) on ``train_x``, every forward pass
    on the array; after each epoch the validation split is streamed on the array, and the parameters of
    the best epoch (or the starting ones, if no epoch beat them) are kept.

    ``target``: ``labels``, cross-entropy against ``train_y``; ``digital``, the squared distance of the
    array's logits from the digital model's (as it was before fine-tuning) on the same sequences, which
    needs no labels and asks the array to do what the trained model does.

    ``parameters``, if given, are trained instead of ``groups``. ``select_best=False`` streams no validation
    sequences and keeps the last parameters: every array pass
    is then a training pass. ``on_checkpoint(passes)`` is called before training (0) and when the training
    passes reach each of ``checkpoints`` (a batch is cut short to land on it exactly), with the model set to
    its current parameters: a learning curve against array passes."""
    from .nn.matvec import digital_matvec, set_matvec

    if target not in ("labels", "digital"):
        raise ValueError(f"target must be 'labels' or 'digital', not {target!r}")
    model.eval()            # no dropout: the array's outputs are what is being fitted
    # The digital model as it is now: the teacher of the ``digital`` target, on training and validation
    teacher = digital_logits(model, train_x, batch_size) if target == "digital" else None
    val_teacher = digital_logits(model, val_x, batch_size) if target == "digital" and select_best else None

    params = trainable(model, executor, groups, columns_of) if parameters is None else {"given": list(parameters)}
    flat = [p for ps in params.values() for p in ps]
    if not flat:
        raise ValueError(f"nothing to train in group(s) {', '.join(groups)} of this model")
    if "readout" in params:
        executor.run_digitally(readout_layer(model))
    matvec = ArrayInTheLoop(executor)
    everything = list(model.parameters()) + (list(executor.corrections.parameters()) if executor.corrections else [])
    requires = {id(p): p.requires_grad for p in everything}
    for p in everything:
        p.requires_grad_(False)
    for p in flat:
        p.requires_grad_(True)

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in flat]

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(flat, lr=lr)
    result = FinetuneResult()
    def validate() -> tuple[float, float]:
        """(accuracy, selection score) on the validation sequences, on the array: the score is the accuracy
        for the labels target, minus the mean squared distance from the digital logits for the digital one."""
        logits = logits_on_array(model, matvec, val_x, batch_size)
        accuracy = float((logits.argmax(-1) == val_y).double().mean())
        if val_teacher is None:
            return accuracy, accuracy
        return accuracy, -float(F.mse_loss(logits, val_teacher.to(logits.dtype)))

    marks = sorted({int(c) for c in checkpoints if c > 0})

    def checkpoint(passes: int) -> None:
        if on_checkpoint is not None:
            on_checkpoint(passes)
            set_matvec(model, matvec)

    try:
        if select_best:
            result.start_val_accuracy, best_score = validate()
            result.best_val_accuracy = result.start_val_accuracy
        else:
            result.start_val_accuracy = result.best_val_accuracy = float("nan")
        best = before_step = snapshot()
        checkpoint(0)
        passes, failures, t0 = 0, 0, time.perf_counter()
        for epoch in range(1, epochs + 1):
            set_matvec(model, matvec)
            order = torch.randperm(train_x.shape[0], generator=generator)
            losses = []
            steps = -(-len(order) // batch_size)
            start, b = 0, 0
            while start < len(order):
                take = batch_size
                if marks and marks[0] > passes:
                    take = min(take, marks[0] - passes)
                idx = order[start:start + take]
                start += len(idx)
                try:
                    logits = stream_logits(model, train_x[idx])
                    loss = (F.cross_entropy(logits, train_y[idx]) if teacher is None
                            else F.mse_loss(logits, teacher[idx].to(logits.dtype)))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"the loss is {float(loss)}")
                    optimiser.zero_grad()
                    loss.backward()
                    before_step = snapshot()
                    optimiser.step()
                    losses.append(float(loss.detach()))
                    failures = 0
                except FloatingPointError as exc:
                    # the last step took the state off the array's range: back to the parameters before it
                    with torch.no_grad():
                        for p, g in zip(flat, before_step):
                            p.copy_(g)
                    failures += 1
                    result.skipped_batches += 1
                    if failures >= 3:
                        raise FloatingPointError(f"fine-tuning diverged: three batches in a row went non-finite "
                                                 f"on the array (last: {exc}); lower lr") from exc
                passes += len(idx)
                b += 1
                if on_batch is not None:
                    on_batch(min(b, steps), steps)
                while marks and passes >= marks[0]:
                    marks.pop(0)
                    checkpoint(passes)
            if select_best:
                val, score = validate()
            else:
                val, score = float("nan"), 0.0
            record = EpochRecord(epoch, float(np.mean(losses)) if losses else float("nan"), val, int(train_x.shape[0]), passes,
                                 executor.stats.transactions, time.perf_counter() - t0)
            result.history.append(record)
            if select_best and score > best_score:
                best_score, result.best_val_accuracy, result.best_epoch, best = score, val, epoch, snapshot()
            if not select_best:
                result.best_epoch, best = epoch, snapshot()
            if on_epoch is not None:
                on_epoch(record)
        with torch.no_grad():
            for p, b in zip(flat, best):
                p.copy_(b)
    finally:
        set_matvec(model, digital_matvec)
        for p in everything:
            p.requires_grad_(requires[id(p)])
    return result


__all__ = ["ArrayInTheLoop", "ColumnCorrections", "DEFAULT_GROUPS", "EpochRecord", "FinetuneResult", "GROUPS",
           "digital_logits", "logits_on_array", "finetune", "readout_layer", "stream_logits", "trainable"]
