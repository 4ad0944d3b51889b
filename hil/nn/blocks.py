"""What a layer puts on a crossbar: its product as dense *blocks*, each with its own input and output
indices. Every layer whose product goes through a matvec (:mod:`hil.nn.matvec`) describes its own blocks
with ``crossbar_blocks()``; :mod:`hil.mapping` only tiles, packs and places them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Block:
    """A dense piece of a layer's product: y[outputs] += weight @ (x[inputs] / input_gain).

    ``input_gain`` balances a block whose columns differ in size: a column of small weights is
    programmed ``input_gain`` times larger and its input driven that much smaller, so its weights
    keep their precision against the output's scale and its (often large) input does not swamp
    the others at the DAC."""

    inputs: np.ndarray                  # (k,) indices into the layer's flattened input
    outputs: np.ndarray                 # (m,) indices into the layer's flattened output
    weight: np.ndarray                  # (m, k), as programmed (columns times their input gain)
    critical: np.ndarray | None = None  # (m, k) entries that must sit on working devices
    input_gain: np.ndarray | None = None  # (k,); None: all ones


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def crossbar_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose products a model's step sends through its matvec (those that describe their
    crossbar blocks), by qualified name."""
    return {name: m for name, m in model.named_modules() if callable(getattr(m, "crossbar_blocks", None))}


def array_parameters(layer: nn.Module) -> list[nn.Parameter]:
    """The parameters a layer's crossbar blocks are made from: what its cells hold once programmed (its
    bias is added digitally and is not among them). A layer that computes another module's product (the
    S4D recurrence, from its S4D layer) names that module ``_layer``."""
    source = getattr(layer, "_layer", None)
    named = list(layer.named_parameters()) + (list(source.named_parameters()) if source is not None else [])
    return [p for name, p in named if name.rsplit(".", 1)[-1] != "bias"]


def layer_blocks(layer: nn.Module) -> tuple[int, int, list[Block]]:
    """(in_features, out_features, blocks) of a layer's product as the array holds it: quantised as
    trained, without training noise (the layer is evaluated in eval mode and restored)."""
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            return layer.crossbar_blocks()
    finally:
        layer.train(was_training)


__all__ = ["Block", "array_parameters", "as_numpy", "crossbar_layers", "layer_blocks"]
