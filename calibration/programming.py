"""Programming error: write-verify to random levels, then measure what was really achieved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from drivers import Crossbar, WriteVerifySettings, write_verify

from .options import ProgrammingOptions
from .quality import ReadQuality, assess


@dataclass
class ProgrammingMeasurement:
    levels_s: np.ndarray          # (L,)
    level_index: np.ndarray       # (repeats, rows, cols)
    achieved_s: np.ndarray        # (repeats, rows, cols): mean of `reads` reads, `settle_s` after programming
    reads: int
    programmed_at_s: float        # instrument clock at the end of the last programming
    write_verify: list[dict] = field(default_factory=list)   # per repeat: iterations, transactions, success

    @property
    def quality(self) -> ReadQuality:
        return assess(self.achieved_s)

    @property
    def targets_s(self) -> np.ndarray:
        return self.levels_s[self.level_index]

    @property
    def error_s(self) -> np.ndarray:
        return self.achieved_s - self.targets_s


def measure_programming(xbar: Crossbar, options: ProgrammingOptions, read_voltage_v: float,
                        rng: np.random.Generator,
                        on_iteration: Callable[[int, int, int, int], None] | None = None, *,
                        g_low_s: float | None = None, g_high_s: float | None = None) -> ProgrammingMeasurement:
    """``repeats`` rounds of write-verify to a random arrangement of the levels; leaves the last one programmed.

    The levels span ``g_low_s..g_high_s`` (S), by default the options' own (see calibration.levels for
    the range taken from a measured window). ``on_iteration(repeat, iteration, cells_out, cells)``
    reports write-verify progress.
    """
    rows, cols = xbar.shape
    low = options.g_low_s if g_low_s is None else g_low_s
    high = options.g_high_s if g_high_s is None else g_high_s
    if low is None or high is None or not 0 < low < high:
        raise ValueError(f"programming needs 0 < g_low_s < g_high_s, got {low} and {high}")
    levels = np.linspace(low, high, options.levels)
    tolerance = options.tolerance * (high - low)
    settings = WriteVerifySettings.from_options(options, tolerance_s=tolerance, read_voltage_v=read_voltage_v)
    indices, achieved, summaries = [], [], []
    programmed_at = xbar.now()
    for repeat in range(options.repeats):
        # Equal counts per level, shuffled, so every level is measured on many devices each round.
        index = rng.permutation(np.arange(rows * cols) % options.levels).reshape(rows, cols)
        callback = None
        if on_iteration is not None:
            def callback(it, out, total, _r=repeat):
                on_iteration(_r, it, out, total)
        result = write_verify(xbar, levels[index], settings, on_iteration=callback)
        programmed_at = xbar.now()
        xbar.wait(options.settle_s)
        achieved.append(np.mean([xbar.read(voltage_v=read_voltage_v) for _ in range(options.reads)], axis=0))
        indices.append(index)
        summaries.append({"iterations": result.iterations, "transactions": result.transactions,
                          "fraction_in_tolerance": float(result.success.mean()), "tolerance_s": tolerance})
    return ProgrammingMeasurement(levels, np.stack(indices), np.stack(achieved), options.reads, programmed_at,
                                  summaries)
