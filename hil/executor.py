"""The crossbar executor: a model's streaming-step products run on programmed arrays.

:class:`CrossbarExecutor` is a matvec (:mod:`hil.nn.matvec`): given a layer and its input batch it
drives one MVM per group of that layer's tiles, with the whole batch (DAC: each tile's inputs scaled
per sample so the largest sits at the read voltage), reads the group's column currents (ADC, in the
instrument), subtracts each output's negative column from its positive one and rescales digitally
(per sample and per output), adds the partial sums of tiles that split one block, and adds the
layer's bias. Groups laid out alike go to the instrument as one stack of MVMs
(:meth:`~drivers.interface.Crossbar.mvm_stack`), and the arithmetic around them runs in compiled
loops (:mod:`hil.executor_kernels`): a step's overhead is then a few calls per layer, not per group.
Everything else in the step (nonlinearities, states, the S4D state's residual, the delay buffers)
stays digital, in the model's own code.

Cells conduct more than ohmically as the voltage rises, I = g V (1 + kappa V^2) / (1 + kappa V_r^2)
with g read at V_r; left alone that is an input-dependent gain error of a few percent, the same on
every step of a recurrence. With the calibrated kappa the executor pre-distorts each input voltage,
solving V (1 + kappa V^2) = v (1 + kappa V_r^2), so that the current is g v again.

Drift compensation (optional) is per MVM group: at :meth:`CrossbarExecutor.reference` the
executor drives each group's rows with a fixed all-ones probe and sums the currents of the group's
own columns; later, the same probe gives the factor that restores that response, applied to the
group's outputs. Only the group's cells enter its probe: a probe of the whole array would also
sum cells other programmings left in the same rows, which drift at their own (older, slower) pace
and would bias the factor of every group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from drivers.interface import Crossbar

from . import executor_kernels as kernels
from .mapping import Mapping, Tile
from .nn.blocks import crossbar_layers


@dataclass
class _ArrayPart:
    """The tiles of one layer in one group on one array: one MVM evaluates them all. The tiles'
    index arrays are concatenated once, so a step touches each group with a few array operations."""

    array: int
    tiles: list[Tile]
    adc_range_a: float | None = None     # None: the instrument's fixed range
    worst_current_per_v: float = 0.0     # the largest column's summed target conductance (S)
    drift_gain: float = 1.0              # restores the group's probe response (drift compensation)

    def __post_init__(self):
        t = self.tiles
        self.inputs = np.concatenate([x.inputs for x in t])
        self.rows = np.concatenate([x.rows for x in t])
        self.starts = np.cumsum([0] + [len(x.inputs) for x in t[:-1]])
        self.input_tile = np.repeat(np.arange(len(t)), [len(x.inputs) for x in t])
        self.outputs = np.concatenate([x.outputs for x in t])
        self.pos = np.concatenate([x.pos_cols for x in t])
        self.neg = np.concatenate([x.neg_cols for x in t])
        self.scale = np.concatenate([x.scale for x in t])
        self.gain = np.concatenate([np.ones(len(x.inputs)) if x.input_gain is None else x.input_gain for x in t])
        self.output_tile = np.repeat(np.arange(len(t)), [len(x.outputs) for x in t])


class _Stack:
    """The groups of one layer on one array whose tiles are laid out alike: one ``mvm_stack`` call
    evaluates them all, and the step's arithmetic runs on (group, batch, line) arrays."""

    def __init__(self, parts: list[_ArrayPart]):
        first = parts[0]
        self.parts = parts
        self.array = first.array
        self.inputs = np.stack([p.inputs for p in parts])                 # (P, K) layer input per row
        self.inv_gain = 1.0 / np.stack([p.gain for p in parts])
        self.rows = np.stack([p.rows for p in parts])
        self.cols = np.stack([np.r_[p.pos, p.neg] for p in parts])        # (P, 2M): positive, then negative
        self.starts, self.input_tile, self.output_tile = first.starts, first.input_tile, first.output_tile
        self.scale = np.stack([p.scale for p in parts])                   # (P, M)
        self.outputs = np.stack([p.outputs for p in parts])               # (P, M)
        self.ranges = [p.adc_range_a for p in parts]

    @staticmethod
    def layout(part: _ArrayPart) -> tuple:
        return part.array, tuple(len(t.inputs) for t in part.tiles), tuple(len(t.outputs) for t in part.tiles)


@dataclass
class ExecutorStats:
    transactions: int = 0
    seconds: float = 0.0
    per_layer: dict[str, int] = field(default_factory=dict)


class CrossbarExecutor:
    """Runs a model's matvec layers on the arrays of a :class:`~hil.mapping.Mapping`."""

    def __init__(self, model: nn.Module, mapping: Mapping, crossbars: list[Crossbar], *,
                 voltage_v: float | None = None, drift_compensation: bool = False,
                 iv_cubic_per_v2: float | None = None, iv_reference_v: float | None = None):
        if len(crossbars) != len(mapping.arrays):
            raise ValueError(f"the mapping uses {len(mapping.arrays)} array(s), {len(crossbars)} crossbar(s) given")
        for xbar, slot in zip(crossbars, mapping.arrays):
            if xbar.shape != (slot.rows, slot.cols):
                raise ValueError(f"array {slot.array_id!r} was mapped as {slot.rows}x{slot.cols}, the crossbar "
                                 f"is {xbar.shape[0]}x{xbar.shape[1]}")
        self.mapping = mapping
        self.crossbars = crossbars
        # The largest input drives its row at voltage_v (default: the calibration's read voltage), never above
        # any crossbar's read limit; the ADC ranges below are chosen for it.
        wanted = mapping.read_voltage_v if voltage_v is None else voltage_v
        self.voltage_v = min(wanted, *(x.limits.max_read_voltage_v for x in crossbars))
        # fixed, so that probes before and after drift compare; half the drive, so that a group's
        # all-ones probe stays inside the ADC range chosen for its worst-case input
        self._probe_voltage_v = 0.5 * self.voltage_v
        self.drift_compensation = drift_compensation
        # kappa from the calibration, V_r the voltage the programmed conductances were verified at
        self.iv_cubic_per_v2 = float(iv_cubic_per_v2 or 0.0)
        self.iv_reference_v = float(iv_reference_v if iv_reference_v is not None else mapping.read_voltage_v)
        self._reference: np.ndarray | None = None
        # Per-output gain and offset of each layer, learnt by fine-tuning on the array's own outputs
        # (hil.finetune.ColumnCorrections); None until then.
        self.corrections = None
        self._digital: set[int] = set()
        self.stats = ExecutorStats()
        self._parts: dict[int, tuple[str, list[_ArrayPart]]] = {}
        self._stacks: dict[int, list[_Stack]] = {}
        targets: dict[int, np.ndarray] = {}
        layers = crossbar_layers(model)
        missing = sorted(set(layers) - set(mapping.layers))
        if missing:
            raise ValueError(f"the mapping has no tiles for layer(s) {', '.join(missing)}: was it made for this model?")
        for name, layer in layers.items():
            self._build(name, layer, targets)
        self._all_parts = [p for _, parts in self._parts.values() for p in parts]

    def _build(self, name: str, layer: nn.Module, targets: dict[int, np.ndarray]) -> None:
        """The MVM groups and stacks of one layer, from its tiles in the mapping."""
        by_group: dict[tuple[int, int], list[Tile]] = {}
        for tile in self.mapping.layer_tiles(name):
            by_group.setdefault((tile.array, tile.group), []).append(tile)
        parts = [_ArrayPart(a, t) for (a, _), t in sorted(by_group.items())]
        for part in parts:
            if part.array not in targets:
                targets[part.array] = self.mapping.targets(part.array)
            part.worst_current_per_v = np.nan_to_num(
                targets[part.array][np.ix_(part.rows, np.r_[part.pos, part.neg])]).sum(axis=0).max()
            part.adc_range_a = self._adc_range(part)
        self._parts[id(layer)] = (name, parts)
        by_layout: dict[tuple, list[_ArrayPart]] = {}
        for part in parts:
            by_layout.setdefault(_Stack.layout(part), []).append(part)
        self._stacks[id(layer)] = [_Stack(same) for same in by_layout.values()]

    def refresh_layer(self, layer: nn.Module) -> list[int]:
        """Rebuild ``layer``'s groups after its tiles were given new weights (:meth:`Mapping.retarget`) and
        written; takes their drift reference now. Returns their indices in :attr:`groups`."""
        name = self.layer_name(layer)
        self._build(name, layer, {})       # same tiles, same groups, in the same places of the order
        self._all_parts = [p for _, parts in self._parts.values() for p in parts]
        mine = [i for i, (n, _) in enumerate(self.groups) if n == name]
        self.reference(mine)
        return mine

    def run_on_array(self, layer: nn.Module) -> None:
        """Drive ``layer`` on its cells again (after :meth:`run_digitally`)."""
        self.layer_name(layer)
        self._digital.discard(id(layer))

    def _adc_range(self, part: _ArrayPart) -> float | None:
        """The finest ADC range that holds the largest current the group's columns can carry (every
        input at full voltage, conductances as programmed): no output can saturate."""
        ranges = self.crossbars[part.array].converters().adc_ranges_a
        if not ranges:
            return None
        worst = self.voltage_v * part.worst_current_per_v
        fitting = [r for r in ranges if r >= worst]
        return min(fitting) if fitting else max(ranges)

    # ------------------------------------------------------------- drift
    _PROBE_REPEATS = 8     # identical probe vectors in one MVM, averaging read and output noise

    def _probe(self, parts: list[int] | None = None) -> np.ndarray:
        """Each MVM group's summed |column current| over its own columns, for an all-ones input on its rows
        (the groups ``parts`` indexes in :attr:`groups`, default all)."""
        chosen = range(len(self._all_parts)) if parts is None else parts
        totals = np.empty(len(chosen))
        for i, index in enumerate(chosen):
            part = self._all_parts[index]
            xbar = self.crossbars[part.array]
            v = np.zeros((self._PROBE_REPEATS, xbar.shape[0]), dtype=np.float32)
            v[:, part.rows] = self._probe_voltage_v
            currents = np.abs(xbar.mvm(v, adc_range_a=part.adc_range_a).astype(np.float64))
            totals[i] = currents[:, part.pos].sum() + currents[:, part.neg].sum()
            self.stats.transactions += 1
        return totals

    @property
    def groups(self) -> list[tuple[str, "_ArrayPart"]]:
        """Every (layer name, MVM group) the deployment drives, in a fixed order."""
        return [(name, part) for name, parts in self._parts.values() for part in parts]

    def reference(self, parts: list[int] | None = None) -> None:
        """Record the groups' probe responses now (right after programming them; ``parts``: only those
        groups, after they were written again)."""
        if parts is None or self._reference is None:
            self._reference = self._probe()
            parts = list(range(len(self._all_parts)))
        else:
            self._reference[parts] = self._probe(parts)
        for index in parts:
            self._all_parts[index].drift_gain = 1.0

    def compensate(self) -> np.ndarray:
        """Re-probe the groups and set their drift factors; returns them (one per group)."""
        if self._reference is None:
            raise RuntimeError("drift compensation needs a reference(): call it right after programming")
        now = self._probe()
        gains = np.where(now > 0, self._reference / np.where(now > 0, now, 1.0), 1.0)
        for part, gain in zip(self._all_parts, gains):
            part.drift_gain = float(gain)
        return gains

    def predistort(self, v: np.ndarray) -> np.ndarray:
        """The drive voltages whose currents are ohmic at the verify voltage: V with
        V (1 + kappa V^2) = v (1 + kappa V_r^2), by Halley's method from the first-order guess (the map is
        monotonic for kappa >= 0 and nearly linear at read voltages, so two steps reach float64
        precision), never beyond the read voltage (:func:`hil.executor_kernels.predistort`)."""
        k = self.iv_cubic_per_v2
        if k == 0.0:
            return v
        out = np.array(v, np.float64)
        kernels.predistort(out, k, 1.0 + k * self.iv_reference_v ** 2, self.voltage_v)
        return out

    # ------------------------------------------------------------- matvec
    def layer_name(self, layer: nn.Module) -> str:
        try:
            return self._parts[id(layer)][0]
        except KeyError:
            raise ValueError(f"{type(layer).__name__} is not a layer of the deployed model") from None

    def run_digitally(self, layer: nn.Module) -> None:
        """From now on compute ``layer`` digitally (a readout fine-tuned off the array): its cells stay
        programmed but are no longer driven."""
        self.layer_name(layer)
        self._digital.add(id(layer))

    def runs_digitally(self, layer: nn.Module) -> bool:
        return id(layer) in self._digital

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's product measured on the array, its output corrections (if fine-tuned) applied and
        its bias added (or the layer computed digitally, if it was taken off the array)."""
        if id(layer) in self._digital:
            return layer(x)
        product = self.product(layer, x)
        if self.corrections is not None:
            with torch.no_grad():
                product = self.corrections.apply(self.layer_name(layer), product)
        bias = getattr(layer, "bias", None)
        return product if bias is None else product + bias.detach()

    def product(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``layer``'s weight product with ``x`` as the array computes it (no bias), shaped as the
        layer's output; a tensor outside autograd."""
        name = self.layer_name(layer)
        shape = self.mapping.layers[name]
        # (batch, in) for linear layers and the taps, (batch, H, N+1) for the S4D recurrence
        flat = x.detach().reshape(x.shape[0], -1).cpu().numpy()
        if flat.shape[1] != shape.in_features:
            raise ValueError(f"layer {name!r} takes {shape.in_features} inputs per sample, got {flat.shape[1]}")
        batch = flat.shape[0]
        y = np.zeros((batch, shape.out_features))
        t0 = time.perf_counter()
        full_scale = self.voltage_v * self.mapping.span_s
        kappa = self.iv_cubic_per_v2
        ohmic_gain = 1.0 + kappa * self.iv_reference_v ** 2
        for stack in self._stacks[id(layer)]:
            n = len(stack.parts)
            volts = np.empty((n, batch, stack.rows.shape[1]), np.float32)
            top = np.empty((n, batch, len(stack.starts)))
            if not kernels.row_voltages(flat, stack.inputs, stack.inv_gain, stack.input_tile, len(stack.starts),
                                        self.voltage_v, volts, top):
                raise FloatingPointError(f"layer {name!r} received non-finite inputs: the model's state has "
                                         "diverged on the array")
            if kappa:
                kernels.predistort(volts, kappa, ohmic_gain, self.voltage_v)
            currents = self.crossbars[stack.array].mvm_stack(stack.rows, stack.cols, volts, adc_range_a=stack.ranges)
            self.stats.transactions += n
            self.stats.per_layer[name] = self.stats.per_layer.get(name, 0) + n
            # current / (V * span) is the output in units of each output's full scale
            factor = stack.scale / full_scale
            if self.drift_compensation:
                factor = factor * np.array([p.drift_gain for p in stack.parts])[:, None]
            kernels.add_outputs(currents, top, stack.output_tile, factor, stack.outputs, y)
        self.stats.seconds += time.perf_counter() - t0
        return torch.from_numpy(y).to(x.dtype).reshape(*x.shape[:-1], -1)


__all__ = ["CrossbarExecutor", "ExecutorStats"]
