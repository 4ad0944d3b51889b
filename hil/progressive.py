"""Progressive fine-tuning (the scheme of Wan et al., Nature 2022, NeuRRAM): the layers go onto the array one
at a time, and what comes after each is trained on that layer's measured outputs before it is written.

The deployment starts programmed as mapped. Stage i keeps layers 0..i on the array, computes the later ones
digitally, and trains every parameter not held by the cells of layers 0..i (the later layers' weights, all
biases and normalisations) on training sequences streamed through the array (straight-through, as
:mod:`hil.finetune`); then layer i+1 is given its new weights where its tiles sit and its cells are written
again, and it is driven on the array from then on. After the last stage the whole model runs on the array,
each layer trained to the errors of the layers before it. This rewrites the cells of every layer but the
first; :mod:`hil.finetune` alone rewrites none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from drivers import WriteVerifySettings

from .executor import CrossbarExecutor
from .finetune import finetune
from .nn.blocks import array_parameters, crossbar_layers, layer_blocks
from .rewrite import rewrite_tiles


@dataclass
class Stage:
    on_array: str            # the last layer on the array while the later ones trained
    written: str             # the layer written at the end of the stage
    sequence_passes: int     # training sequences streamed through the array in this stage
    mvms: int                # MVM transactions in this stage
    train_loss: float        # of the stage's last epoch
    weight_change: float     # relative rms change of the written layer's weights since deployment
    cells: int               # cells written
    write_calls: int
    seconds: float


def progressive(model: nn.Module, executor: CrossbarExecutor, settings: WriteVerifySettings,
                train_x: torch.Tensor, train_y: torch.Tensor, *, epochs: int = 1, lr: float = 1e-3,
                batch_size: int = 32, seed: int = 0,
                on_batch: Callable[[int, int], None] | None = None,
                on_stage: Callable[[Stage], None] | None = None) -> list[Stage]:
    """Run the stages on ``executor``'s deployment of ``model`` (see the module); returns one record per stage."""
    layers = crossbar_layers(model)          # in the order the step drives them
    names = list(layers)
    if len(names) < 2:
        raise ValueError("progressive fine-tuning needs at least two crossbar layers")
    deployed = {n: [t.weight.copy() for t in executor.mapping.layer_tiles(n)] for n in names}
    for n in names[1:]:
        executor.run_digitally(layers[n])
    stages = []
    try:
        for i, name in enumerate(names[:-1]):
            t0, mvms0 = time.perf_counter(), executor.stats.transactions
            held = {id(p) for n in names[:i + 1] for p in array_parameters(layers[n])}
            params = [p for p in model.parameters() if id(p) not in held]
            result = finetune(model, executor, train_x, train_y, None, None, parameters=params, epochs=epochs, lr=lr,
                              batch_size=batch_size, seed=seed + i, select_best=False, on_batch=on_batch)
            nxt = names[i + 1]
            tiles = executor.mapping.retarget(nxt, layer_blocks(layers[nxt])[2])
            before = np.concatenate([w.ravel() for w in deployed[nxt]])
            after = np.concatenate([t.weight.ravel() for t in tiles])
            change = float(np.sqrt(np.mean((after - before) ** 2)) / max(np.sqrt(np.mean(before ** 2)), 1e-30))
            cost = rewrite_tiles(executor, tiles, settings)
            executor.run_on_array(layers[nxt])
            executor.refresh_layer(layers[nxt])
            stage = Stage(name, nxt, result.history[-1].sequence_passes, executor.stats.transactions - mvms0,
                          result.history[-1].train_loss, change, cost.cells, cost.write_calls,
                          time.perf_counter() - t0)
            stages.append(stage)
            if on_stage is not None:
                on_stage(stage)
    finally:
        for n in names:               # whatever happened, every layer is driven on its cells again
            executor.run_on_array(layers[n])
    return stages


__all__ = ["Stage", "progressive"]
