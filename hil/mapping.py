"""Mapping a trained model's weight matrices onto crossbar arrays.

Every product of a model's streaming step goes through one matvec with the *layer* that owns
the weights (:mod:`hil.nn.matvec`). Each such layer describes its product as dense *blocks* with
their own input and output indices (``crossbar_blocks()``, :mod:`hil.nn.blocks`): one for a linear
layer, one per channel for the delay taps, per mode and per channel for the S4D recurrence. This
module only tiles, packs and places them.

A block larger than an array is cut into *tiles* of at most ``rows`` inputs and ``cols // 2``
outputs, whose partial sums are added digitally. Each weight is a differential pair on one row,
the positive and the negative column of its output; each output (column pair) of a tile is scaled
on its own, its largest |w| spanning the noise model's weight window, so the digital rescale
after the ADC is one factor per output. Tiles of one layer and one shape form a *group* (at most
``tiles_per_mvm``) placed block-diagonally in its own rectangle of an array, so one MVM evaluates
the group; rectangles never overlap, so no MVM reaches another group's devices.

Stuck devices known from calibration are avoided and compensated: within its rows and columns a
tile permutes its inputs and outputs (Hungarian assignment, :func:`scipy.optimize.linear_sum_assignment`)
so that stuck devices fall where they cost least, never on an entry marked critical (the S4D
poles' entries; tiles may also trade places in their group, or take its spare slot); the partner
of each stuck device is then programmed around it.

The result, a :class:`Mapping`, is saved with the deployment and can be inspected
(:meth:`Mapping.summary`, :meth:`Mapping.to_bytes`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from torch import nn

from calibration.noise_model import NoiseModel

from .nn.analog import pair_targets
from .nn.blocks import Block, crossbar_layers, layer_blocks

CRITICAL_COST = 1e6    # in units of a weight's full scale: no ordinary entry outweighs a critical one


class MappingError(ValueError):
    """The model does not fit the arrays, or the arrays' description is inconsistent."""


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

    def stuck_pairs(self, rows: np.ndarray, pos_cols: np.ndarray,
                    neg_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stuck values (outputs, inputs) of the positive and negative devices of pairs on ``rows``
        and the given columns; NaN where a device works."""
        if self.stuck_value_s is None:
            nan = np.full((len(pos_cols), len(rows)), np.nan)
            return nan, nan
        return self.stuck_value_s[np.ix_(rows, pos_cols)].T, self.stuck_value_s[np.ix_(rows, neg_cols)].T


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
    group: int = 0              # tiles of one layer with the same (array, group) share one MVM
    input_gain: np.ndarray | None = None     # (k,) inputs are driven divided by it (see Block)

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

    def retarget(self, name: str, blocks: list[Block]) -> list[Tile]:
        """Give layer ``name``'s tiles new weights from ``blocks`` (the layer's blocks after its weights
        changed; same block structure), where they sit: scales and conductance targets recomputed around
        the arrays' stuck devices. Returns the layer's tiles (their cells must be written again)."""
        g = (self.g_lo_s, self.g_hi_s, self.g_min_s, self.g_max_s)
        tiles = self.layer_tiles(name)
        if not tiles:
            raise MappingError(f"the mapping has no layer {name!r}")
        for tile in tiles:
            if tile.block >= len(blocks):
                raise MappingError(f"layer {name!r} now has {len(blocks)} blocks; tile of block {tile.block} has none")
            block = blocks[tile.block]
            where_in = {int(i): k for k, i in enumerate(block.inputs)}
            where_out = {int(o): j for j, o in enumerate(block.outputs)}
            try:
                rows = [where_in[int(i)] for i in tile.inputs]
                cols = [where_out[int(o)] for o in tile.outputs]
            except KeyError:
                raise MappingError(f"layer {name!r}: block {tile.block} no longer has the inputs and outputs "
                                   "its tile was placed for") from None
            tile.weight = block.weight[np.ix_(cols, rows)]
            tile.input_gain = None if block.input_gain is None else block.input_gain[rows]
            tile.scale = np.abs(tile.weight).max(axis=1) if tile.weight.size else np.zeros(len(cols))
            stuck_pos, stuck_neg = self.arrays[tile.array].stuck_pairs(tile.rows, tile.pos_cols, tile.neg_cols)
            tile.target_pos_s, tile.target_neg_s = pair_targets(tile.weight, tile.scale, *g, stuck_pos, stuck_neg)
        return tiles

    def layer_tiles(self, name: str) -> list[Tile]:
        return [t for t in self.tiles if t.layer == name]

    def targets(self, array: int) -> np.ndarray:
        """Conductance targets (rows, cols) of one array, NaN on cells the mapping leaves alone.

        Cells that an MVM drives and reads but no tile holds (off the diagonal of a group of
        tiles) hold a zero weight: both devices of the pair at the bottom of the weight window, or
        where one is stuck, the other at its value, so that they cancel in the pair's difference.
        """
        slot = self.arrays[array]
        out = np.full((slot.rows, slot.cols), np.nan)
        groups: dict[tuple[str, int], list[Tile]] = {}
        for t in self.tiles:
            if t.array == array:
                groups.setdefault((t.layer, t.group), []).append(t)
        for tiles in groups.values():
            if len(tiles) > 1:
                rows = np.concatenate([t.rows for t in tiles])
                pos = np.concatenate([t.pos_cols for t in tiles])
                neg = np.concatenate([t.neg_cols for t in tiles])
                # a zero weight: a stuck device gets its partner set to the same conductance
                g_pos, g_neg = pair_targets(np.zeros((len(pos), len(rows))), np.ones(len(pos)), self.g_lo_s,
                                            self.g_hi_s, self.g_min_s, self.g_max_s,
                                            *slot.stuck_pairs(rows, pos, neg))
                out[np.ix_(rows, pos)] = g_pos.T
                out[np.ix_(rows, neg)] = g_neg.T
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
        stuck_maps = [a.stuck() for a in self.arrays]
        for i, t in enumerate(self.tiles):
            stuck = stuck_maps[t.array]
            cells = np.concatenate([stuck[np.ix_(t.rows, t.pos_cols)], stuck[np.ix_(t.rows, t.neg_cols)]], axis=1)
            rows.append({"tile": i, "layer": t.layer, "block": t.block, "array": self.arrays[t.array].array_id,
                         "group": t.group,
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
            meta["tiles"].append({"layer": t.layer, "block": t.block, "array": t.array, "group": t.group})
            for name in ("inputs", "outputs", "weight", "rows", "pos_cols", "neg_cols", "scale", "target_pos_s",
                         "target_neg_s", "critical", "input_gain"):
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
                                  get("target_neg_s"), get("critical"), t["group"], get("input_gain")))
        return cls(arrays, meta["g_lo_s"], meta["g_hi_s"], meta["g_min_s"], meta["g_max_s"], meta["read_voltage_v"],
                   {k: LayerShape(*v) for k, v in meta["layers"].items()}, tiles)


# ---------------------------------------------------------------------- targets
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
    sp, sn = slot.stuck_pairs(tile.rows, tile.pos_cols, tile.neg_cols)
    if not (np.isfinite(sp).any() or np.isfinite(sn).any()):
        return
    w, s, crit = tile.weight, tile.scale, tile.critical
    for _ in range(rounds):
        # rows: cost[i, r] of putting input i on physical row rows[r]; sp[:, r] are row r's devices
        cost = np.stack([_placement_error(w, s, crit, g, np.broadcast_to(sp[:, r][:, None], w.shape),
                                          np.broadcast_to(sn[:, r][:, None], w.shape)).sum(axis=0)
                         for r in range(len(tile.rows))], axis=1)   # (k inputs, k rows)
        _, cols = linear_sum_assignment(cost)
        tile.rows = tile.rows[cols]
        # column pairs: cost[j, p] of putting output j on pair p (sp[p] are pair p's devices)
        sp, sn = slot.stuck_pairs(tile.rows, tile.pos_cols, tile.neg_cols)
        cost = np.stack([_placement_error(w, s, crit, g, np.broadcast_to(sp[p], w.shape),
                                          np.broadcast_to(sn[p], w.shape)).sum(axis=1)
                         for p in range(len(tile.pos_cols))], axis=1)   # (m outputs, m pairs)
        _, pairs = linear_sum_assignment(cost)
        tile.pos_cols, tile.neg_cols = tile.pos_cols[pairs], tile.neg_cols[pairs]
        sp, sn = slot.stuck_pairs(tile.rows, tile.pos_cols, tile.neg_cols)


# ---------------------------------------------------------------------- packing
def _chunks(block: Block, rows: int, outputs: int):
    for i0 in range(0, len(block.inputs), rows):
        for j0 in range(0, len(block.outputs), outputs):
            sl_i, sl_j = slice(i0, i0 + rows), slice(j0, j0 + outputs)
            crit = None if block.critical is None else block.critical[sl_j, sl_i]
            gain = None if block.input_gain is None else block.input_gain[sl_i]
            yield block.inputs[sl_i], block.outputs[sl_j], block.weight[sl_j, sl_i], crit, gain


@dataclass
class _Group:
    """Tiles of one layer evaluated by one MVM: placed along the diagonal of their bounding box."""

    layer: str
    chunks: list = field(default_factory=list)    # (block, inputs, outputs, weight, critical, input gain)
    height: int = 0
    width: int = 0
    shape: tuple[int, int] | None = None          # (rows, columns) of its tiles, all alike
    spare: bool = False                           # one extra slot of that shape, for tiles with critical entries


def _groups(model: nn.Module, rows: int, cols: int, tiles_per_mvm: int,
            max_shared_rows: int) -> tuple[dict[str, LayerShape], list[_Group]]:
    """Cut every layer's blocks into tiles and gather tiles of a layer into groups of one tile shape
    whose diagonal fits an array. Blocks are taken by shape in their order, so that e.g. the S4D
    modes' tiles and its output rows form separate groups."""
    shapes: dict[str, LayerShape] = {}
    groups: list[_Group] = []
    for name, layer in crossbar_layers(model).items():
        n_in, n_out, blocks = layer_blocks(layer)
        shapes[name] = LayerShape(n_in, n_out)
        group = None
        chunks = [(b, c) for b, block in enumerate(blocks) for c in _chunks(block, rows, cols // 2)]
        chunks.sort(key=lambda bc: (len(bc[1][0]), len(bc[1][1])))       # stable: block order within a shape
        for b, (inputs, outputs, weight, crit, gain) in chunks:
            k, w = len(inputs), 2 * len(outputs)
            if (group is None or len(group.chunks) >= tiles_per_mvm or group.height + k > rows
                    or group.width + w > cols or group.shape != (k, w)
                    or len(group.chunks) * k > max_shared_rows):
                group = _Group(name, shape=(k, w))
                groups.append(group)
                if crit is not None and 2 * k <= rows and 2 * w <= cols:
                    # a spare slot lets a tile whose critical entries meet stuck devices move
                    group.spare = True
                    group.height, group.width = k, w
            group.chunks.append((b, inputs, outputs, weight, crit, gain))
            group.height += k
            group.width += w
    return shapes, groups


def _shelf_pack(groups: list[_Group], arrays: list[ArraySlot]) -> list[tuple[int, int, int]]:
    """(array, row, col) of each group's bounding box: boxes never overlap, so no MVM (its group's
    rows driven, its columns read) reaches another group's devices. Shelf packing, tallest first."""
    order = sorted(range(len(groups)), key=lambda i: -groups[i].height)
    shelves: list[list[list[int]]] = [[] for _ in arrays]      # per array: [row, height, next col]
    next_row = [0] * len(arrays)
    where: list[tuple[int, int, int] | None] = [None] * len(groups)
    for i in order:
        g = groups[i]
        for a, slot in enumerate(arrays):
            shelf = next((s for s in shelves[a] if g.height <= s[1] and s[2] + g.width <= slot.cols), None)
            if shelf is None and next_row[a] + g.height <= slot.rows and g.width <= slot.cols:
                shelf = [next_row[a], g.height, 0]
                shelves[a].append(shelf)
                next_row[a] += g.height
            if shelf is not None:
                where[i] = (a, shelf[0], shelf[2])
                shelf[2] += g.width
                break
        else:
            devices = sum(2 * c[3].size for grp in groups for c in grp.chunks)
            raise MappingError(f"the model does not fit on {len(arrays)} array(s) of {arrays[0].rows}x"
                               f"{arrays[0].cols}: {devices:,} devices in {len(groups)} groups, and a group of layer "
                               f"{g.layer!r} ({g.height}x{g.width}) finds no room; use more or larger arrays, "
                               "or a smaller model")
    return where


def _place(layer: str, group: int, array: int, chunk, at: tuple[int, int], slot: ArraySlot,
           g: tuple[float, float, float, float]) -> tuple[Tile, float]:
    """A tile for ``chunk`` with its corner at ``at``, its lines permuted around the stuck devices
    and its conductance targets set, and the cost those devices still leave."""
    b, inputs, outputs, weight, crit, gain = chunk
    (r0, c0), k, m = at, len(inputs), len(outputs)
    scale = np.abs(weight).max(axis=1) if weight.size else np.zeros(m)
    tile = Tile(layer, b, array, inputs, outputs, weight, np.arange(r0, r0 + k), np.arange(c0, c0 + 2 * m, 2),
                np.arange(c0 + 1, c0 + 2 * m, 2), scale, critical=crit, group=group, input_gain=gain)
    _assign(tile, slot, g)
    stuck_pos, stuck_neg = slot.stuck_pairs(tile.rows, tile.pos_cols, tile.neg_cols)
    tile.target_pos_s, tile.target_neg_s = pair_targets(weight, scale, *g, stuck_pos, stuck_neg)
    cost = _placement_error(weight, scale, crit, g, stuck_pos, stuck_neg).sum()
    return tile, float(cost)


def map_model(model: nn.Module, arrays: list[ArraySlot], noise: NoiseModel, tiles_per_mvm: int = 8,
              max_shared_rows: int = 24) -> Mapping:
    """Place every matvec layer of ``model`` on ``arrays`` and compute the conductance targets,
    avoiding and compensating the arrays' known stuck devices.

    ``tiles_per_mvm`` caps how many tiles one MVM evaluates together: more means fewer
    transactions per step, but also more driven-and-read cells off the tiles' diagonal, whose
    programming error and read noise add to every output of the group; ``max_shared_rows`` caps
    how many such rows one output's columns cross.
    """
    if tiles_per_mvm < 1:
        raise MappingError(f"tiles_per_mvm must be at least 1, got {tiles_per_mvm}")
    if not arrays:
        raise MappingError("no arrays to map onto")
    g_lo, g_hi = noise.weight_window()
    g = (g_lo, g_hi, noise.window.g_min_s, noise.window.g_max_s)
    layer_shapes, groups = _groups(model, min(a.rows for a in arrays), min(a.cols for a in arrays), tiles_per_mvm,
                                   max_shared_rows)
    where = _shelf_pack(groups, arrays)
    tiles: list[Tile] = []
    group_index: dict[str, int] = {}
    for g_def, (current, r0, c0) in zip(groups, where):
        slot = arrays[current]
        group = group_index[g_def.layer] = group_index.get(g_def.layer, -1) + 1
        slots = []
        for _, inputs, outputs, *_ in g_def.chunks:
            slots.append((r0, c0))
            r0, c0 = r0 + len(inputs), c0 + 2 * len(outputs)
        placed = [_place(g_def.layer, group, current, chunk, at, slot, g) for chunk, at in zip(g_def.chunks, slots)]
        if g_def.spare:
            slots.append((r0, c0))
        if len(slots) > 1 and max(cost for _, cost in placed) >= CRITICAL_COST:
            # Some tile cannot keep its critical entries off stuck devices where it sits: let the
            # tiles trade places along the group's diagonal, spare slot included (all the same size).
            trials = [[_place(g_def.layer, group, current, chunk, at, slot, g) for at in slots]
                      for chunk in g_def.chunks]
            _, best = linear_sum_assignment(np.array([[cost for _, cost in row] for row in trials]))
            placed = [trials[t][best[t]] for t in range(len(trials))]
        tiles.extend(tile for tile, _ in placed)
    return Mapping(list(arrays), g_lo, g_hi, noise.window.g_min_s, noise.window.g_max_s,
                   noise.periphery.read_voltage_v, layer_shapes, tiles)


__all__ = ["ArraySlot", "Mapping", "MappingError", "Tile", "map_model", "pair_targets"]
