"""What the non-default device families share: faults and the read channel's offset."""

from __future__ import annotations

import numpy as np

from ..mock import SoftwareCrossbar


class FamilyCrossbar(SoftwareCrossbar):
    """A SoftwareCrossbar whose config has :class:`~drivers.families.config.FaultFields`.

    Faults after the research notes, section 5: cells stuck low, high, or frozen anywhere in the window
    (Li et al., Nat. Commun. 9, 2385 (2018) found 11 % "unresponsive to programming pulses", which we read
    as frozen where they were, an interpretation); intermittent opens per read; and a read-channel offset
    current, static per column plus per-read jitter, which makes G_meas = G + I_off / V_read and can read
    a low cell as zero or negative conductance.
    """

    def _draw_faults(self, cfg, rng: np.random.Generator, shape: tuple[int, int]) -> None:
        u = rng.random(shape)
        high, low, mid = cfg.stuck_high_rate, cfg.stuck_low_rate, cfg.stuck_mid_rate
        self._stuck_on = u < high
        self._stuck_off = (u >= high) & (u < high + low)
        self._stuck_mid = (u >= high + low) & (u < high + low + mid)
        self._stuck = self._stuck_on | self._stuck_off | self._stuck_mid
        # The uniform draw, rescaled inside the mid band, is where in the window a frozen cell sits.
        frac = (u - high - low) / mid if mid else np.zeros(shape)
        g_lo, g_hi = self._fault_window()
        self._stuck_value = np.where(self._stuck_on, g_hi,
                                     np.where(self._stuck_mid, g_lo + frac * (g_hi - g_lo), g_lo))
        self._col_offset_a = cfg.read_offset_a + cfg.read_offset_spread_a * rng.standard_normal(shape[1])

    def _fault_window(self) -> tuple[np.ndarray, np.ndarray]:
        """Per cell, the conductances a cell stuck low and stuck high sits at: the bounds of the window
        the cell is operated in (stuck-at-0 and stuck-at-1 are the two states of normal operation)."""
        return self._gmin, self._gmax

    def _freeze_stuck(self) -> None:
        self._g_prog[self._stuck] = self._stuck_value[self._stuck]

    def _read_faults(self, g_read: np.ndarray, index, voltage_v: float) -> np.ndarray:
        cfg = self.config
        out = g_read
        if cfg.intermittent_rate:
            opened = self._rng.random(out.shape) < cfg.intermittent_rate
            out = np.where(opened, self._gmin[index], out)
        if cfg.read_offset_a or cfg.read_offset_spread_a or cfg.read_offset_jitter_a:
            cols = index[1] if isinstance(index, tuple) else slice(None)
            offset = self._col_offset_a[cols] + cfg.read_offset_jitter_a * self._rng.standard_normal(out.shape)
            # Not clipped: a true conductance below |I_off| / V_read reads as zero or negative.
            out = out + offset / voltage_v
        return out

    def _invalidate(self) -> None:
        self._g_cache = None
        self._g_mvm = None
