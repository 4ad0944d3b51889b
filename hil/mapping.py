"""Mapping a trained model's weight matrices onto crossbar arrays.

Every product of a model's streaming step goes through one matvec with the *layer* that owns
the weights (:mod:`hil.nn.matvec`): linear layers, the delay taps, the S4D recurrence. A layer's
product is a set of *blocks*, dense sub-matrices with their own input and output indices: one for
a linear layer, one per channel for the block-diagonal S4D recurrence and delay taps (whose
all-zero inputs, the delays no tap sits on, take no devices).

A block larger than an array is cut into *tiles* of at most ``rows`` inputs and ``cols // 2``
outputs, whose partial sums are added digitally. Each weight is a differential pair on one row,
the positive and the negative column of its output; each output (column pair) of a tile is scaled
on its own, its largest |w| spanning the noise model's weight window, so the digital rescale
after the ADC is one factor per output. The tiles of one layer sit block-diagonally on an array
(disjoint rows and columns), so one MVM evaluates every tile of the layer that array holds; tiles
of different layers share rows or columns but never both, so that no layer's MVM picks up
another layer's devices.

Stuck devices known from calibration are avoided and compensated: within its rows and columns a
tile permutes its inputs and outputs (Hungarian assignment, :func:`scipy.optimize.linear_sum_assignment`)
so that stuck devices fall where they cost least, never on an entry marked critical (the S4D
poles' diagonal); the partner of each stuck device is then programmed around it.

The result, a :class:`Mapping`, is saved with the deployment and can be inspected
(:meth:`Mapping.summary`, :meth:`Mapping.to_bytes`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from calibration.noise_model import NoiseModel

from .nn.analog import AnalogLinear, apply_weight_spec
from .nn.delay_conv import DelayTaps
from .nn.s4d import S4DRecurrence

CRITICAL_COST = 1e6    # in units of a weight's full scale: no ordinary entry outweighs a critical one


class MappingError(ValueError):
    """The model does not fit the arrays, or the arrays' description is inconsistent."""


@dataclass
class Block:
    """A dense piece of a layer's product: y[outputs] += weight @ x[inputs]."""

    inputs: np.ndarray                  # (k,) indices into the layer's flattened input
    outputs: np.ndarray                 # (m,) indices into the layer's flattened output
    weight: np.ndarray                  # (m, k)
    critical: np.ndarray | None = None  # (m, k) entries that must sit on working devices


def matvec_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose products a model's step sends through its matvec, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (AnalogLinear, DelayTaps, S4DRecurrence))}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def layer_blocks(layer: nn.Module) -> tuple[int, int, list[Block]]:
    """(in_features, out_features, blocks) of a layer's product as the array holds it: quantised
    as trained, without training noise."""
    was_training = layer.training
    layer.eval()
    try:
        if isinstance(layer, AnalogLinear):
            w = _numpy(apply_weight_spec(layer.weight, layer.analog, False))
            used = np.flatnonzero(np.any(w != 0, axis=0))
            return layer.in_features, layer.out_features, [Block(used, np.arange(w.shape[0]), w[:, used])]
        if isinstance(layer, DelayTaps):
            kernel = _numpy(layer.kernel())                       # (C, D)
            blocks = []
            for c, row in enumerate(kernel):
                used = np.flatnonzero(row != 0)
                if used.size:
                    blocks.append(Block(c * layer.max_delay + used, np.array([c]), row[None, used]))
            return layer.in_features, layer.out_features, blocks
        if isinstance(layer, S4DRecurrence):
            with torch.no_grad():
                mats = _numpy(layer.crossbar_matrices())          # (H, N+1, N+1)
            h, n1, _ = mats.shape
            critical = np.zeros((n1, n1), dtype=bool)
            critical[np.arange(n1 - 1), np.arange(n1 - 1)] = True   # Re Ā - 1: see hil.nn.s4d_analog
            blocks = [Block(c * n1 + np.arange(n1), c * n1 + np.arange(n1), mats[c], critical)
                      for c in range(h)]
            return h * n1, h * n1, blocks
    finally:
        layer.train(was_training)
    raise MappingError(f"no crossbar mapping for a {type(layer).__name__}")


@dataclass
class ArraySlot:
    """One array the mapping may use, with what calibration knows of its devices."""

    array_id: str
    rows: int
    cols: int
    stuck_value_s: np.ndarray | None = None    # (rows, cols): conductance of stuck devices, NaN elsewhere

    def stuck(self) -> np.ndarray:
        if self.stuck_value_s is None:
            return np.zeros((self.rows, self.cols), dtype=bool)
        return np.isfinite(self.stuck_value_s)


@dataclass
class Tile:
    layer: str
    block: int
    array: int
    inputs: np.ndarray          # (k,) layer input indices
    outputs: np.ndarray         # (m,) layer output indices
    weight: np.ndarray          # (m, k)
    rows: np.ndarray            # (k,) physical rows, input i on rows[i]
    pos_cols: np.ndarray        # (m,) physical columns of the positive devices
    neg_cols: np.ndarray        # (m,) and of the negative ones
    scale: np.ndarray           # (m,) weight per full window (the largest |w| of the output)
    target_pos_s: np.ndarray = field(default=None)    # (m, k) conductance targets
    target_neg_s: np.ndarray = field(default=None)
    critical: np.ndarray | None = None

    def realised_weight(self, g_pos: np.ndarray, g_neg: np.ndarray, span: float) -> np.ndarray:
        """The weights the pair conductances (m, k) stand for."""
        return (g_pos - g_neg) / span * self.scale[:, None]


@dataclass
class LayerShape:
    in_features: int
    out_features: int


@dataclass
class Mapping:
    arrays: list[ArraySlot]
    g_lo_s: float
    g_hi_s: float
    g_min_s: float
    g_max_s: float
    read_voltage_v: float
    layers: dict[str, LayerShape]
    tiles: list[Tile]

    @property
    def span_s(self) -> float:
        return self.g_hi_s - self.g_lo_s

    def layer_tiles(self, name: str) -> list[Tile]:
        return [t for t in self.tiles if t.layer == name]

    def targets(self, array: int) -> np.ndarray:
        """Conductance targets (rows, cols) of one array, NaN on cells the mapping leaves alone."""
        slot = self.arrays[array]
        out = np.full((slot.rows, slot.cols), np.nan)
        for t in self.tiles:
            if t.array == array:
                out[np.ix_(t.rows, t.pos_cols)] = t.target_pos_s.T
                out[np.ix_(t.rows, t.neg_cols)] = t.target_neg_s.T
        return out

    def devices_used(self) -> int:
        return sum(2 * t.weight.size for t in self.tiles)

    def summary(self) -> list[dict]:
        """One row per tile: where it sits and what it holds."""
        rows = []
        for i, t in enumerate(self.tiles):
            stuck = self.arrays[t.array].stuck()
            cells = np.concatenate([stuck[np.ix_(t.rows, t.pos_cols)], stuck[np.ix_(t.rows, t.neg_cols)]], axis=1)
            rows.append({"tile": i, "layer": t.layer, "block": t.block, "array": self.arrays[t.array].array_id,
                         "rows": f"{t.rows.min()}-{t.rows.max()}", "cols": f"{min(t.pos_cols.min(), t.neg_cols.min())}-"
                         f"{max(t.pos_cols.max(), t.neg_cols.max())}", "inputs": len(t.inputs),
                         "outputs": len(t.outputs), "stuck_devices": int(cells.sum())})
        return rows

    # ------------------------------------------------------------------ storage
    def to_bytes(self) -> bytes:
        """A self-contained .npz: the layout as JSON plus every array."""
        arrays: dict[str, np.ndarray] = {}
        meta = {"g_lo_s": self.g_lo_s, "g_hi_s": self.g_hi_s, "g_min_s": self.g_min_s, "g_max_s": self.g_max_s,
                "read_voltage_v": self.read_voltage_v,
                "layers": {k: [v.in_features, v.out_features] for k, v in self.layers.items()},
                "arrays": [], "tiles": []}
        for i, a in enumerate(self.arrays):
            meta["arrays"].append({"array_id": a.array_id, "rows": a.rows, "cols": a.cols})
            if a.stuck_value_s is not None:
                arrays[f"array{i}.stuck_value_s"] = a.stuck_value_s
        for i, t in enumerate(self.tiles):
            meta["tiles"].append({"layer": t.layer, "block": t.block, "array": t.array})
            for name in ("inputs", "outputs", "weight", "rows", "pos_cols", "neg_cols", "scale", "target_pos_s",
                         "target_neg_s", "critical"):
                value = getattr(t, name)
                if value is not None:
                    arrays[f"tile{i}.{name}"] = value
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Mapping":
        with np.load(io.BytesIO(data)) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            arrays = [ArraySlot(a["array_id"], a["rows"], a["cols"],
                                z[f"array{i}.stuck_value_s"] if f"array{i}.stuck_value_s" in z else None)
                      for i, a in enumerate(meta["arrays"])]
            tiles = []
            for i, t in enumerate(meta["tiles"]):
                get = lambda name: z[f"tile{i}.{name}"] if f"tile{i}.{name}" in z else None  # noqa: E731
                tiles.append(Tile(t["layer"], t["block"], t["array"], get("inputs"), get("outputs"), get("weight"),
                                  get("rows"), get("pos_cols"), get("neg_cols"), get("scale"), get("target_pos_s"),
                                  get("target_neg_s"), get("critical")))
        return cls(arrays, meta["g_lo_s"], meta["g_hi_s"], meta["g_min_s"], meta["g_max_s"], meta["read_voltage_v"],
                   {k: LayerShape(*v) for k, v in meta["layers"].items()}, tiles)


# ---------------------------------------------------------------------- targets
def pair_targets(weight: np.ndarray, scale: np.ndarray, g_lo: float, g_hi: float, g_min: float, g_max: float,
                 stuck_pos: np.ndarray, stuck_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Conductances (m, k) of the positive and negative devices for ``weight`` (m, k).

    ``stuck_pos``/``stuck_neg`` hold the conductance of stuck devices (NaN where working): a stuck
    device keeps its value and its partner is set to keep the pair's difference, as far as the
    device window [g_min, g_max] allows.
    """
    span = g_hi - g_lo
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    diff = weight / safe * span
    pos = g_lo + np.maximum(diff, 0)
    neg = g_lo + np.maximum(-diff, 0)
    sp, sn = np.isfinite(stuck_pos), np.isfinite(stuck_neg)
    pos = np.where(sn & ~sp, np.clip(np.nan_to_num(stuck_neg) + diff, g_min, g_max), pos)
    neg = np.where(sp & ~sn, np.clip(np.nan_to_num(stuck_pos) - diff, g_min, g_max), neg)
    pos = np.where(sp, stuck_pos, pos)
    neg = np.where(sn, stuck_neg, neg)
    return pos, neg


def _placement_error(weight, scale, critical, g, stuck_pos, stuck_neg):
    """Per-entry cost (m, k) of a placement: the weight error stuck devices leave, in full-scale units,
    with critical entries on a stuck device priced out."""
    pos, neg = pair_targets(weight, scale, *g, stuck_pos, stuck_neg)
    span = g[1] - g[0]
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    err = np.abs((pos - neg) / span - weight / safe)
    if critical is not None:
        err = err + CRITICAL_COST * (critical & (np.isfinite(stuck_pos) | np.isfinite(stuck_neg)))
    return err


def _assign(tile: Tile, slot: ArraySlot, g: tuple[float, float, float, float], rounds: int = 2) -> None:
    """Permute the tile's inputs over its rows and its outputs over its column pairs so that stuck
    devices cost least (alternating Hungarian assignments, each one optimal given the other)."""
    if slot.stuck_value_s is None or not slot.stuck()[np.ix_(tile.rows, np.r_[tile.pos_cols, tile.neg_cols])].any():
        return
    sv = slot.stuck_value_s
    w, s, crit = tile.weight, tile.scale, tile.critical
    for _ in range(rounds):
        # rows: cost[i, r] of putting input i on physical row rows[r]
        sp = sv[np.ix_(tile.rows, tile.pos_cols)]            # (k_rows, m)
        sn = sv[np.ix_(tile.rows, tile.neg_cols)]
        cost = np.stack([_placement_error(w, s, crit, g, np.broadcast_to(sp[r][:, None], w.shape),
                                          np.broadcast_to(sn[r][:, None], w.shape)).sum(axis=0)
                         for r in range(len(tile.rows))], axis=1)   # (k inputs, k rows)
        _, cols = linear_sum_assignment(cost)
        tile.rows = tile.rows[cols]
        # column pairs: cost[j, p] of putting output j on pair p
        sp = sv[np.ix_(tile.rows, tile.pos_cols)].T           # (m pairs, k)
        sn = sv[np.ix_(tile.rows, tile.neg_cols)].T
        cost = np.stack([_placement_error(w, s, crit, g, np.broadcast_to(sp[p], w.shape),
                                          np.broadcast_to(sn[p], w.shape)).sum(axis=1)
                         for p in range(len(tile.pos_cols))], axis=1)   # (m outputs, m pairs)
        _, pairs = linear_sum_assignment(cost)
        tile.pos_cols, tile.neg_cols = tile.pos_cols[pairs], tile.neg_cols[pairs]


# ---------------------------------------------------------------------- packing
def _chunks(block: Block, rows: int, outputs: int):
    for i0 in range(0, len(block.inputs), rows):
        for j0 in range(0, len(block.outputs), outputs):
            sl_i, sl_j = slice(i0, i0 + rows), slice(j0, j0 + outputs)
            crit = None if block.critical is None else block.critical[sl_j, sl_i]
            yield block.inputs[sl_i], block.outputs[sl_j], block.weight[sl_j, sl_i], crit


class _Packer:
    """Free space of one array.

    One MVM drives the rows of every tile of a layer on the array and reads their columns, so a
    cell in (rows of the layer) x (columns of the layer) carries current into that layer's outputs:
    only the layer's own tiles may sit there, on the diagonal (rows and columns of their own). Tiles
    of two different layers therefore share rows or columns, never both.
    """

    def __init__(self, rows: int, cols: int):
        self.shape = (rows, cols)
        self.layer_rows: dict[str, np.ndarray] = {}
        self.layer_cols: dict[str, np.ndarray] = {}
        self.edges = {0}

    def place(self, layer: str, k: int, width: int) -> tuple[int, int] | None:
        rows, cols = self.shape
        if k > rows or width > cols or k == 0:
            return None
        own_rows = self.layer_rows.get(layer, np.zeros(rows, dtype=bool))
        own_cols = self.layer_cols.get(layer, np.zeros(cols, dtype=bool))
        others = [(self.layer_rows[x], self.layer_cols[x]) for x in self.layer_rows if x != layer]
        for c0 in sorted(self.edges):
            if c0 + width > cols or own_cols[c0:c0 + width].any():
                continue
            layer_cols = own_cols.copy()
            layer_cols[c0:c0 + width] = True
            blocked = own_rows.copy()
            clash = False
            for x_rows, x_cols in others:
                if (layer_cols & x_cols).any():
                    # the layer will read columns X also uses: it may not drive any row of X
                    clash |= bool((own_rows & x_rows).any())
                    blocked |= x_rows
            if clash:
                continue
            free = np.convolve(~blocked, np.ones(k, dtype=int), mode="valid")
            starts = np.flatnonzero(free == k)
            if not starts.size:
                continue
            r0 = int(starts[0])
            own_rows[r0:r0 + k] = True
            own_cols[c0:c0 + width] = True
            self.layer_rows[layer], self.layer_cols[layer] = own_rows, own_cols
            self.edges.add(c0 + width)
            return r0, c0
        return None


def map_model(model: nn.Module, arrays: list[ArraySlot], noise: NoiseModel) -> Mapping:
    """Place every matvec layer of ``model`` on ``arrays`` (in order, block-diagonally) and compute
    the conductance targets, avoiding and compensating the arrays' known stuck devices."""
    if not arrays:
        raise MappingError("no arrays to map onto")
    g_lo, g_hi = noise.weight_window()
    g = (g_lo, g_hi, noise.window.g_min_s, noise.window.g_max_s)
    packers = [_Packer(a.rows, a.cols) for a in arrays]
    tiles: list[Tile] = []
    shapes: dict[str, LayerShape] = {}
    for name, layer in matvec_layers(model).items():
        n_in, n_out, blocks = layer_blocks(layer)
        shapes[name] = LayerShape(n_in, n_out)
        for b, block in enumerate(blocks):
            for inputs, outputs, weight, crit in _chunks(block, min(a.rows for a in arrays),
                                                          min(a.cols for a in arrays) // 2):
                k, m = len(inputs), len(outputs)
                placed = None
                for current, packer in enumerate(packers):
                    placed = packer.place(name, k, 2 * m)
                    if placed is not None:
                        break
                if placed is None:
                    need = sum(2 * t.weight.size for t in tiles) + 2 * weight.size
                    raise MappingError(f"the model does not fit on {len(arrays)} array(s) of "
                                       f"{arrays[0].rows}x{arrays[0].cols}: ran out at layer {name!r} "
                                       f"(block {b}) after {len(tiles)} tiles ({need:,} devices so far); "
                                       "use more or larger arrays, or a smaller model")
                slot = arrays[current]
                r0, c0 = placed
                scale = np.abs(weight).max(axis=1) if weight.size else np.zeros(m)
                tile = Tile(name, b, current, inputs, outputs, weight, np.arange(r0, r0 + k),
                            np.arange(c0, c0 + 2 * m, 2), np.arange(c0 + 1, c0 + 2 * m, 2), scale, critical=crit)
                _assign(tile, slot, g)
                sv = slot.stuck_value_s
                stuck_pos = sv[np.ix_(tile.rows, tile.pos_cols)].T if sv is not None else np.full(weight.shape, np.nan)
                stuck_neg = sv[np.ix_(tile.rows, tile.neg_cols)].T if sv is not None else np.full(weight.shape, np.nan)
                tile.target_pos_s, tile.target_neg_s = pair_targets(weight, scale, *g, stuck_pos, stuck_neg)
                tiles.append(tile)
    return Mapping(list(arrays), g_lo, g_hi, noise.window.g_min_s, noise.window.g_max_s,
                   noise.periphery.read_voltage_v, shapes, tiles)


__all__ = ["ArraySlot", "Block", "Mapping", "MappingError", "Tile", "layer_blocks", "map_model", "matvec_layers",
           "pair_targets"]
