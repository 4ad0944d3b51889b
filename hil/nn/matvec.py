"""The one place every matrix-vector product of a model's streaming step goes through.

A model's ``step`` never multiplies by a weight itself: it calls ``self.matvec(layer, x)``
with the layer that owns the weight. The default computes it digitally in torch; a crossbar
executor (set with :func:`set_matvec`) runs the same product on an array instead.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class MatVec(Protocol):
    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``layer``'s product with ``x`` (batch, in_features) -> (batch, out_features), bias included."""


def digital_matvec(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x)


def set_matvec(model: nn.Module, matvec: MatVec) -> None:
    """Route the step form of ``model`` and all its submodules through ``matvec``."""
    for module in model.modules():
        if hasattr(module, "matvec"):
            module.matvec = matvec
