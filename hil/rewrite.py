"""Writing some tiles of a deployment again, and nothing else: a group that drifted or was disturbed
(:mod:`hil.maintenance`), or a layer given new weights (:mod:`hil.progressive`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers import WriteVerifySettings, write_verify

from .executor import CrossbarExecutor
from .mapping import Tile


@dataclass
class RewriteCost:
    write_calls: int = 0       # instrument transactions of the write-verify loops
    cells: int = 0             # cells written (each of a pair's two devices counts)


def rewrite_tiles(executor: CrossbarExecutor, tiles: list[Tile], settings: WriteVerifySettings) -> RewriteCost:
    """Write-verify the cells of ``tiles`` to the mapping's current targets (every other cell of the arrays
    left alone: NaN targets)."""
    mapping, cost = executor.mapping, RewriteCost()
    by_array: dict[int, np.ndarray] = {}
    full: dict[int, np.ndarray] = {}
    for tile in tiles:
        targets = by_array.setdefault(tile.array, np.full(executor.crossbars[tile.array].shape, np.nan))
        if tile.array not in full:
            full[tile.array] = mapping.targets(tile.array)
        cells = np.ix_(tile.rows, np.r_[tile.pos_cols, tile.neg_cols])
        targets[cells] = full[tile.array][cells]
    for array, targets in by_array.items():
        result = write_verify(executor.crossbars[array], targets, settings)
        cost.write_calls += int(sum(result.transactions.values()))
        cost.cells += int(np.isfinite(targets).sum())
    return cost


__all__ = ["RewriteCost", "rewrite_tiles"]
