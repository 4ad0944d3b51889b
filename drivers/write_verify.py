"""Write-verify programming over the Crossbar interface, vectorised over the whole array.

Each iteration is one read of the array and one pulse transaction carrying a
pulse for every cell still out of tolerance, so instrument round trips grow
with iterations, never with cells.

Pulse amplitudes adapt per cell, in the spirit of Alibart et al.,
"High precision tuning of state for memristive devices by adaptable
variation-tolerant algorithm", Nanotechnology 23, 075201 (2012): switching rate
is roughly exponential in voltage, so the next amplitude is the last one moved
by ``volts_per_efold * ln(wanted change / observed change)``, bounded per step.
A cell with no history in a polarity starts gently; a cell that overshoots
switches polarity and keeps what it learned about each polarity, so a cell
knocked slightly out of tolerance later gets a correspondingly small pulse.
A cell that does not move at the maximum amplitude is given up as unresponsive
(a stuck-cell suspect) rather than pulsed on to the iteration limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .interface import Crossbar


@dataclass(frozen=True)
class WriteVerifySettings:
    """Knobs of the algorithm, in SI units. Voltages are magnitudes; RESET pulses are sent negative."""

    tolerance_s: float
    max_iterations: int = 20
    read_voltage_v: float = 0.2
    start_set_voltage_v: float = 0.9
    max_set_voltage_v: float = 2.0
    start_reset_voltage_v: float = 0.9
    max_reset_voltage_v: float = 2.0
    voltage_step_v: float = 0.05
    pulse_width_s: float = 1e-6
    volts_per_efold: float = 0.12
    max_voltage_change_v: float = 0.4
    give_up_after: int = 3
    # Cells are pulsed until within aim_fraction * tolerance, so read noise at the final
    # verify does not push cells that settled at the edge of the band out of it.
    aim_fraction: float = 0.6

    @classmethod
    def from_options(cls, options, *, tolerance_s: float, read_voltage_v: float) -> "WriteVerifySettings":
        """Settings taking every same-named attribute of ``options`` (a protocol step, calibration options)."""
        names = ("max_iterations", "start_set_voltage_v", "max_set_voltage_v", "start_reset_voltage_v",
                 "max_reset_voltage_v", "voltage_step_v", "pulse_width_s")
        given = {n: getattr(options, n) for n in names if hasattr(options, n)}
        return cls(tolerance_s=tolerance_s, read_voltage_v=read_voltage_v, **given)

    def __post_init__(self):
        if not 0 < self.aim_fraction <= 1:
            raise ValueError(f"aim_fraction must be in (0, 1], got {self.aim_fraction}")
        if not self.tolerance_s > 0:
            raise ValueError(f"tolerance_s must be positive, got {self.tolerance_s}")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be at least 1, got {self.max_iterations}")
        for start, top in ((self.start_set_voltage_v, self.max_set_voltage_v),
                           (self.start_reset_voltage_v, self.max_reset_voltage_v)):
            if not 0 < start <= top:
                raise ValueError(f"start voltage {start} V must be in (0, {top}] V")


@dataclass
class WriteVerifyResult:
    """Per-cell outcome (arrays of the array's shape) and the cost of getting there."""

    target_s: np.ndarray
    achieved_s: np.ndarray          # last verify read
    success: np.ndarray             # |achieved - target| <= tolerance (False where target is NaN)
    pulses: np.ndarray              # pulses each cell received
    gave_up: np.ndarray             # unresponsive at the maximum amplitude
    tolerance_s: float
    iterations: int                 # pulse rounds performed
    transactions: dict[str, int]    # instrument calls by kind, for this programming only
    elapsed_s: float
    remaining_per_iteration: list[int] = field(default_factory=list)

    @property
    def error_s(self) -> np.ndarray:
        return self.achieved_s - self.target_s

    @property
    def total_transactions(self) -> int:
        return sum(self.transactions.values())

    def success_rate(self, among: np.ndarray | None = None) -> float:
        """Fraction of programmed cells (optionally within a mask, e.g. the non-stuck ones) in tolerance."""
        cells = np.isfinite(self.target_s)
        if among is not None:
            cells &= among
        n = int(cells.sum())
        return float(self.success[cells].sum() / n) if n else 1.0


ProgressCallback = Callable[[int, int, int], None]   # (iteration, cells out of tolerance, cells programmed)


def write_verify(xbar: Crossbar, targets_s: np.ndarray, settings: WriteVerifySettings,
                 on_iteration: ProgressCallback | None = None) -> WriteVerifyResult:
    """Program ``targets_s`` (S, array-shaped; NaN = leave alone) to within ``settings.tolerance_s``."""
    targets = np.asarray(targets_s, dtype=np.float64)
    if targets.shape != xbar.shape:
        raise ValueError(f"targets have shape {targets.shape}, the array is {xbar.shape}")
    s = settings
    lim = xbar.limits
    # Refuse up front rather than fail on the iteration that first needs the higher amplitude.
    if max(s.max_set_voltage_v, s.max_reset_voltage_v) > lim.max_write_voltage_v:
        raise ValueError(f"write-verify amplitudes up to {max(s.max_set_voltage_v, s.max_reset_voltage_v)} V exceed "
                         f"the instrument's max_write_voltage_v {lim.max_write_voltage_v} V")
    if not lim.min_pulse_width_s <= s.pulse_width_s <= lim.max_pulse_width_s:
        raise ValueError(f"pulse width {s.pulse_width_s} s outside the instrument's "
                         f"[{lim.min_pulse_width_s}, {lim.max_pulse_width_s}] s")
    if s.read_voltage_v > lim.max_read_voltage_v:
        raise ValueError(f"read voltage {s.read_voltage_v} V exceeds the instrument's max_read_voltage_v "
                         f"{lim.max_read_voltage_v} V")
    before = dict(xbar.transactions)
    t_start = time.perf_counter()
    wanted = np.isfinite(targets)
    shape = targets.shape

    # Per-cell controller state, one slot per polarity (0 = SET, 1 = RESET): the last informative
    # (amplitude, change) pair locates the cell on its rate-voltage curve; the last amplitude used and
    # the iteration it was used in tell whether an uninformative pulse was just tried.
    v_info = np.zeros((2,) + shape)
    d_info = np.zeros((2,) + shape)
    v_prev = np.zeros((2,) + shape)
    it_prev = np.full((2,) + shape, -1)
    start_v = np.array([s.start_set_voltage_v, s.start_reset_voltage_v])
    max_v = np.array([s.max_set_voltage_v, s.max_reset_voltage_v])
    still = np.zeros(shape, dtype=np.int64)   # consecutive non-moves at max amplitude
    gave_up = np.zeros(shape, dtype=bool)
    pulses = np.zeros(shape, dtype=np.int64)
    remaining: list[int] = []
    # A change below this is within read noise of nothing: it says little about the rate.
    floor = 0.5 * s.tolerance_s

    g = xbar.read(voltage_v=s.read_voltage_v)
    iteration = 0
    n_wanted = int(wanted.sum())
    while True:
        err = np.where(wanted, targets - g, 0.0)
        active = wanted & (np.abs(err) > s.aim_fraction * s.tolerance_s) & ~gave_up
        n_active = int(active.sum())
        n_out = int((wanted & (np.abs(err) > s.tolerance_s)).sum())
        remaining.append(n_out)
        if on_iteration is not None:
            on_iteration(iteration, n_out, n_wanted)
        if n_active == 0 or iteration >= s.max_iterations:
            break
        iteration += 1

        rows, cols = np.nonzero(active)
        e = np.abs(err[rows, cols])
        pol = (err[rows, cols] < 0).astype(np.int64)      # RESET where we are above target
        vi, di = v_info[pol, rows, cols], d_info[pol, rows, cols]
        vp = v_prev[pol, rows, cols]
        just_tried = it_prev[pol, rows, cols] == iteration - 1
        # From the last informative pulse: ln(wanted / obtained) e-folds of rate.
        predicted = vi + np.clip(s.volts_per_efold * np.log(e / np.maximum(di, 1e-30)),
                                 -s.max_voltage_change_v, s.max_voltage_change_v)
        predicted = np.where(di > 0, predicted, start_v[pol])
        # An uninformative pulse was just tried: climb above it, boldly only when far from target.
        climb = vp + np.where(e > 3 * s.tolerance_s, s.max_voltage_change_v / 2, s.voltage_step_v)
        v = np.where(just_tried & (vp >= predicted), climb, predicted)
        v = np.clip(v, start_v[pol], max_v[pol])

        # A cell pulsed at full amplitude that barely moved, several times running, is left alone.
        at_max = just_tried & (vp >= max_v[pol] - 1e-12)
        still[rows, cols] = np.where(at_max, still[rows, cols] + 1, 0)
        quit_now = still[rows, cols] >= s.give_up_after
        if quit_now.any():
            gave_up[rows[quit_now], cols[quit_now]] = True
            keep = ~quit_now
            rows, cols, pol, v = rows[keep], cols[keep], pol[keep], v[keep]
        if rows.size == 0:
            continue

        xbar.pulse(rows, cols, np.where(pol == 0, v, -v), s.pulse_width_s)
        pulses[rows, cols] += 1
        g_prev = g
        g = xbar.read(voltage_v=s.read_voltage_v)
        # Progress in the pulse's own direction (negative = moved the wrong way).
        moved = (g - g_prev)[rows, cols] * np.where(pol == 0, 1.0, -1.0)
        informative = moved > floor
        v_prev[pol, rows, cols] = v
        # An informative pulse is remembered; an uninformative one leaves it_prev set so the next
        # iteration climbs (cells that moved clear it, so a later episode starts from the model).
        it_prev[pol, rows, cols] = np.where(informative, -1, iteration)
        ri, ci, pi = rows[informative], cols[informative], pol[informative]
        v_info[pi, ri, ci] = v[informative]
        d_info[pi, ri, ci] = moved[informative]

    err = g - targets
    success = wanted & (np.abs(err) <= s.tolerance_s)
    used = {k: xbar.transactions[k] - before.get(k, 0) for k in xbar.transactions}
    return WriteVerifyResult(target_s=targets, achieved_s=g, success=success, pulses=pulses, gave_up=gave_up,
                             tolerance_s=s.tolerance_s, iterations=iteration, transactions=used,
                             elapsed_s=time.perf_counter() - t_start, remaining_per_iteration=remaining)
