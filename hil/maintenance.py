"""Keeping a deployment accurate over time: probe each MVM group, and where its error passes a bound act on
it, cheapest first.

A check drives every crossbar layer with ``probes`` random input vectors (uniform in [-1, 1]) and compares
what the array returns with what the layer's blocks say it should (:func:`layer_matrix`, from the same
``crossbar_blocks`` the mapping programmed): each group's error is the rms difference over its outputs
relative to the rms of the expected outputs. Read noise and the group's own programming error are part of
it and no action removes them, so a group is out of bound when its error has grown by more than ``bound``
beyond what it showed when it was last written (:attr:`Maintainer.baseline`, the first check's errors,
renewed for a group at each rewrite).

Actions, cheapest first:

1. ``compensate``: re-probe every group's drift reference (one MVM per group) and rescale its outputs;
2. ``rewrite``: write-verify the cells of the groups still out of bound against their targets, and take
   their drift reference again.

Each action is recorded with its cost: MVM transactions, write-verify pulse rounds and instrument calls,
and cells written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from drivers import WriteVerifySettings

from .executor import CrossbarExecutor
from .nn.blocks import crossbar_layers, layer_blocks
from .rewrite import rewrite_tiles

ACTIONS = ("compensate", "rewrite")


def layer_matrix(layer: nn.Module) -> np.ndarray:
    """The dense (out, in) matrix of a layer's product as the array holds it: every block's weights,
    divided by its input gain (the executor drives that input that much smaller)."""
    n_in, n_out, blocks = layer_blocks(layer)
    m = np.zeros((n_out, n_in))
    for b in blocks:
        gain = np.ones(len(b.inputs)) if b.input_gain is None else b.input_gain
        m[np.ix_(b.outputs, b.inputs)] += b.weight / gain
    return m


@dataclass
class Action:
    time_s: float           # since the deployment was programmed
    kind: str               # compensate | rewrite
    groups: list[int]       # the groups acted on (indices into CrossbarExecutor.groups)
    mvms: int = 0
    write_calls: int = 0     # instrument calls of write-verify (reads and pulse batches)
    cells: int = 0           # cells written


@dataclass
class Check:
    time_s: float
    errors: list[float]      # per group, after the actions taken at this time
    errors_before: list[float]
    actions: list[Action] = field(default_factory=list)


class Maintainer:
    """Checks and repairs a deployment's groups (see the module docstring)."""

    def __init__(self, model: nn.Module, executor: CrossbarExecutor, settings: WriteVerifySettings, *,
                 probes: int = 16, bound: float = 0.05, actions: tuple[str, ...] = ACTIONS, seed: int = 0):
        unknown = sorted(set(actions) - set(ACTIONS))
        if unknown:
            raise ValueError(f"unknown maintenance action(s) {', '.join(unknown)}: choose from {', '.join(ACTIONS)}")
        self.executor, self.settings = executor, settings
        self.probes, self.bound, self.actions = probes, bound, tuple(a for a in ACTIONS if a in actions)
        self.rng = np.random.default_rng(seed)
        self.layers = crossbar_layers(model)
        self.matrices = {name: layer_matrix(layer) for name, layer in self.layers.items()}
        self.baseline: list[float] | None = None
        self.check_mvms = 0          # MVM transactions spent measuring the groups
        executor.drift_compensation = True

    # -------------------------------------------------------------- measuring
    def errors(self) -> list[float]:
        """Each group's relative rms error on fresh random inputs."""
        before = self.executor.stats.transactions
        by_group = []
        measured_layers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, part in self.executor.groups:
            if name not in measured_layers:
                m = self.matrices[name]
                x = self.rng.uniform(-1.0, 1.0, size=(self.probes, m.shape[1]))
                got = self.executor.product(self.layers[name], torch.from_numpy(x)).numpy().reshape(self.probes, -1)
                measured_layers[name] = (got, x @ m.T)
            got, want = measured_layers[name]
            outs = np.unique(part.outputs)
            scale = np.sqrt(np.mean(want[:, outs] ** 2))
            diff = np.sqrt(np.mean((got[:, outs] - want[:, outs]) ** 2))
            by_group.append(float(diff / scale) if scale > 0 else 0.0)
        self.check_mvms += self.executor.stats.transactions - before
        return by_group

    # -------------------------------------------------------------- acting
    def _compensate(self, time_s: float, groups: list[int]) -> Action:
        before = self.executor.stats.transactions
        self.executor.compensate()
        return Action(time_s, "compensate", groups, mvms=self.executor.stats.transactions - before)

    def _rewrite(self, time_s: float, groups: list[int]) -> Action:
        ex = self.executor
        cost = rewrite_tiles(ex, [tile for index in groups for tile in ex.groups[index][1].tiles], self.settings)
        action = Action(time_s, "rewrite", groups, write_calls=cost.write_calls, cells=cost.cells)
        before = ex.stats.transactions
        ex.reference(groups)
        action.mvms = ex.stats.transactions - before
        return action

    def check(self, time_s: float) -> Check:
        """Measure every group; act on those out of bound, cheapest action first, measuring again after
        each; record what was done."""
        errors = self.errors()
        if self.baseline is None:
            self.baseline = list(errors)
        record = Check(time_s, errors, list(errors))
        for kind in self.actions:
            out = [i for i, e in enumerate(errors) if e > self.baseline[i] + self.bound]
            if not out:
                break
            action = self._compensate(time_s, out) if kind == "compensate" else self._rewrite(time_s, out)
            record.actions.append(action)
            errors = self.errors()
            if kind == "rewrite":
                # a group written again has a programming error of its own: the new floor it is held to
                for i in out:
                    self.baseline[i] = errors[i]
        record.errors = errors
        return record


__all__ = ["ACTIONS", "Action", "Check", "Maintainer", "layer_matrix"]
