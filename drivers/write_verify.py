"""Write-verify programming over the Crossbar interface, vectorised over the whole array.

Each iteration is one (possibly averaged) read of the array and one pulse transaction carrying a
pulse for every cell still out of tolerance, so instrument round trips grow with iterations, never
with cells; the bookkeeping works on the active cells only, so its time grows with cells, linearly.

Pulse amplitudes adapt per cell, in the spirit of Alibart et al., "High precision tuning of state
for memristive devices by adaptable variation-tolerant algorithm", Nanotechnology 23, 075201 (2012):
switching rate is roughly exponential in voltage, so the next amplitude is the cell's last
informative one moved by ``slope * ln(wanted change / observed change)``. No device constant is
assumed: the slope (volts per e-fold of step) is learned per polarity from every pair of informative
pulses a cell received (``volts_per_efold`` is only the guess before there are any), and so is the
spread of the steps around what was aimed for, which makes the controller aim short of the full
error when steps are erratic. Amplitudes stay within the settings' bounds; a change finer than the
lowest amplitude gives is asked of a shorter pulse, and one beyond the highest of a longer pulse
(within ``max_width_factor`` and the instrument's limits), on the same learned law.

The rate law is overruled where the device does not follow it. Per cell and polarity a bracket is kept
on the effective amplitude: the highest that did nothing or fell short and the lowest that crossed the
target beyond tolerance. A prediction at or above the overshooting amplitude is replaced by a point inside
the bracket (regula falsi on ln G), so that polarity is not pulsed there again unless the bracket has
closed on it. Two more properties are learned per polarity from the array's own pulses, not assumed:
whether it is abrupt (the first move above an amplitude that did nothing mostly crosses a far target, as
a compliance-stopped SET does: the amplitude known to move is then used and the other polarity
approaches), and whether it sets a level by amplitude (a pulse no higher than the one that just moved a
cell does not move it again, as a self-limiting RESET does). A level-setting polarity is steered on its
level-against-amplitude curve: amplitudes climb from the highest that fell short by the learned
sensitivity (ln S per volt), aimed short of the target by the learned landing scatter while far, so the
cell is approached from the side it is on and the last, small move lands it.

What is learned comes only from cells that behave: a cell whose read moves against its pulse beyond
noise (a stuck cell high in the window, say) is still programmed but teaches nothing; the slope is taken
only from a fit that explains its steps; and a learned decision (abrupt, level-setting) holds until new
evidence overturns it.

Read noise is measured from cells left alone between two reads; where it is large next to the
tolerance, each verify averages several reads (one transaction each).

Cells that cannot be programmed are reported instead of being pulsed to the iteration limit: a cell
that does not move at the highest amplitude and width is given up as unresponsive (``gave_up``, a
stuck-cell suspect); a cell that moves but has not come closer to its target for ``stall_after``
pulses is left as ``stalled``. The loop ends when no programmable cell is out of the aim band.
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
    # Only the first guess of the learned slope: the array's own pulses replace it.
    volts_per_efold: float = 0.12
    max_voltage_change_v: float = 0.4
    give_up_after: int = 3
    stall_after: int = 12
    # Longest pulse, as a multiple of pulse_width_s, for a cell that needs more than the top amplitude.
    max_width_factor: float = 10.0
    max_reads_per_verify: int = 4
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
        if self.max_reads_per_verify < 1 or self.stall_after < 1 or self.max_width_factor < 1:
            raise ValueError("max_reads_per_verify and stall_after must be at least 1, max_width_factor >= 1")
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
    gave_up: np.ndarray             # unresponsive at the maximum amplitude and width
    tolerance_s: float
    iterations: int                 # pulse rounds performed
    transactions: dict[str, int]    # instrument calls by kind, for this programming only
    elapsed_s: float
    remaining_per_iteration: list[int] = field(default_factory=list)
    stalled: np.ndarray | None = None          # responded, but stopped coming closer to the target
    # What was learned: volts per e-fold of step (SET, RESET), the spread of ln(step) around the
    # aimed one (SET, RESET), the read-noise sigma (S) and the reads averaged per verify at the end.
    volts_per_efold: tuple[float, float] = (float("nan"), float("nan"))
    step_spread: tuple[float, float] = (float("nan"), float("nan"))
    read_noise_s: float = float("nan")
    reads_per_verify: int = 1

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


def per_polarity(mask: np.ndarray, reset: np.ndarray) -> np.ndarray:
    """How many of ``mask`` are SET and how many RESET pulses."""
    n_reset = np.count_nonzero(mask & reset)
    return np.array([np.count_nonzero(mask) - n_reset, n_reset])


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
    shape = targets.shape
    n_cols = shape[1]
    # Flat views throughout: per-iteration work indexes only the active cells.
    target = targets.ravel()
    wanted = np.isfinite(target)
    n = target.size

    w0 = s.pulse_width_s
    # Width may shorten to the instrument's minimum (finer steps than the lowest amplitude gives) and
    # lengthen up to max_width_factor; in both cases rate is taken as proportional to width.
    lw_min = np.log(lim.min_pulse_width_s / w0)
    lw_max = np.log(min(lim.max_pulse_width_s, s.max_width_factor * w0) / w0)
    start_v = np.array([s.start_set_voltage_v, s.start_reset_voltage_v])
    max_v = np.array([s.max_set_voltage_v, s.max_reset_voltage_v])

    # Per-cell controller state, one slot per polarity (0 = SET, 1 = RESET): the last informative
    # pulse (amplitude, ln width ratio, change) locates the cell on its rate curve; the last effective
    # amplitude and its iteration tell whether an uninformative pulse was just tried.
    # Stored flat, polarity-major (index polarity * n + cell): one gather per quantity per iteration.
    v_info = np.zeros(2 * n)
    lw_info = np.zeros(2 * n)
    d_info = np.zeros(2 * n)
    ve_prev = np.zeros(2 * n)
    it_prev = np.full(2 * n, -1)
    fails = np.zeros(2 * n, dtype=np.int64)      # consecutive uninformative pulses
    # Whether the anchor's step stopped short of the target: then it cannot have been cut short by the
    # edge of the cell's window (the target lies inside it), and it measures the rate law itself.
    short_info = np.zeros(2 * n, dtype=bool)
    # Bracket on the effective amplitude, per cell and polarity: the highest that did nothing (lo_n), the
    # highest that moved but fell short (lo_m) and the lowest that crossed the target beyond tolerance
    # (hi), with the conductance each left behind. The rate law predicts; the bracket overrules it.
    lo_n = np.full(2 * n, -np.inf)
    lo_m = np.full(2 * n, -np.inf)
    hi_v = np.full(2 * n, np.inf)
    g_lo = np.full(2 * n, np.nan)
    g_hi = np.full(2 * n, np.nan)
    g_info = np.full(2 * n, np.nan)              # conductance left by the anchor pulse
    last_pol = np.full(n, -1)                    # polarity of each cell's last pulse and whether it moved
    last_moved = np.zeros(n, dtype=bool)
    still = np.zeros(n, dtype=np.int64)          # consecutive non-moves at the top amplitude and width
    best = np.full(n, np.inf)                    # closest the cell has come to its target
    since_best = np.zeros(n, dtype=np.int64)
    responded = np.zeros(n, dtype=bool)
    erratic = np.zeros(n, dtype=bool)
    gave_up = np.zeros(n, dtype=bool)
    stalled = np.zeros(n, dtype=bool)
    pulses = np.zeros(n, dtype=np.int64)
    remaining: list[int] = []

    # Learned, per polarity: slope from a decaying least-squares fit of d ln(step) against
    # d(effective volts) over pairs of informative pulses of one cell; spread of ln(step / aimed step).
    slope = np.full(2, s.volts_per_efold)
    sxx, sxy, syy, npairs = np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2)
    s_res2, n_res = np.zeros(2), np.zeros(2)
    spread = np.full(2, 0.3)
    forget = 0.7                   # weight of the past per iteration: the slope follows the cells' state
    intercept = np.full(2, np.nan)     # per polarity: median effective volts giving a step of 1 S, in ln
    # Whether a polarity sets the state by amplitude (the cell goes to a level fixed by the amplitude and
    # stops there, as a self-limiting RESET does) rather than stepping by a rate: learned from how often a
    # pulse no higher than the one that just moved a cell moves it again. Such a polarity is steered on
    # the level-against-amplitude curve, its sensitivity (ln S per volt) learned from consecutive pulses.
    rep_n, rep_moved = np.zeros(2), np.zeros(2)
    by_level = np.zeros(2, dtype=bool)
    sens_num, sens_den, sens_n = np.zeros(2), np.zeros(2), np.zeros(2)
    sens_lv = np.full(2, np.nan)
    res_v = s.voltage_step_v / 100         # amplitude resolution below which a bracket counts as closed
    over_n, moved_n = np.zeros(2), np.zeros(2)
    lvl_spread = np.full(2, 0.05)
    lvl_r2, lvl_nr = np.zeros(2), np.zeros(2)
    aim_ln = np.zeros(2 * n)              # ln of the level a level-law pulse was aimed at, this iteration
    abrupt = np.zeros(2, dtype=bool)
    sigma_read = np.nan
    n_reads = 1

    def verify() -> np.ndarray:
        g_read = xbar.read(voltage_v=s.read_voltage_v).ravel().astype(np.float64)
        for _ in range(n_reads - 1):
            g_read += xbar.read(voltage_v=s.read_voltage_v).ravel()
        if n_reads > 1:
            g_read /= n_reads
        return g_read

    tol = s.tolerance_s
    mvc = s.max_voltage_change_v
    floor_g = 0.1 * tol

    def climb_step(e_j: np.ndarray, fails_j: np.ndarray) -> np.ndarray:
        """Climb above an uninformative pulse: bold when far from target, gentle when close, the step
        doubling with each failure so an unresponsive cell reaches the top in a few pulses."""
        return np.where(e_j > 3 * tol, mvc / 2, s.voltage_step_v) * doubling(fails_j)

    def doubling(fails_j: np.ndarray) -> np.ndarray:
        return np.exp2(np.clip(fails_j - 1, 0, 5))

    raw = verify()
    # Decisions use, per cell, the mean of every read since its last pulse: a cell left alone gets
    # a better estimate each iteration at no extra transaction (drift over milliseconds is negligible).
    g_sum = raw.copy()
    g_cnt = np.ones(n)
    g = raw.copy()             # updated in place; raw is kept as the previous read for the noise estimate
    # Buffers for the work every iteration does over all n cells (the averaged reads change everywhere).
    err = np.empty(n)          # target - g; NaN where there is no target, which every comparison rejects
    abs_err = np.empty(n)
    pulsable = np.ones(n, dtype=bool)            # neither given up nor stalled
    pulsed_last = np.zeros(n, dtype=bool)
    idx_last = np.zeros(0, dtype=np.intp)        # the cells pulsed_last marks
    calm = np.empty(n, dtype=bool)
    iteration = 0
    n_wanted = int(wanted.sum())
    while True:
        np.subtract(target, g, out=err)
        np.abs(err, out=abs_err)
        n_out = int(np.count_nonzero(abs_err > tol))
        remaining.append(n_out)
        if on_iteration is not None:
            on_iteration(iteration, n_out, n_wanted)
        if iteration >= s.max_iterations:
            break
        # From here on, arrays are over the active cells idx (position j is cell idx[j]); the rarer
        # branches (level law, bracket, climb, first pulse) work on the positions they concern only.
        # A cell inside tolerance but outside the aim band is refined only where the polarity that would
        # move it is not abrupt: an abrupt pulse throws it across the window, to be approached again.
        refine = abs_err > s.aim_fraction * tol
        if abrupt.any():
            refine &= (abs_err > tol) | ~abrupt[(err < 0).astype(np.int64)]
        idx = np.flatnonzero(refine & pulsable)
        e = abs_err[idx]
        reset = err[idx] < 0                     # RESET where we are above target
        pol = reset.astype(np.int64)
        k = pol * n + idx
        sl = slope[pol]
        eff_max = max_v + slope * lw_max
        # Aim short of the full error by the learned spread, so an erratic step rarely overshoots.
        want = e * np.exp(-0.5 * np.minimum(spread, 0.7))[pol]
        di = d_info[k]
        has = di > 0
        ve_info = v_info[k] + sl * lw_info[k]
        with np.errstate(divide="ignore"):      # no anchor (di = 0): replaced just below
            predicted = ve_info + np.clip(sl * np.log(want / di), -mvc, mvc)

        def prior(j: np.ndarray) -> np.ndarray:
            # A cell with no history in this polarity starts from what the array has taught so far, an
            # e-fold below it (cells differ), or gently at the start amplitude while nothing is known.
            ic = intercept[pol[j]]
            return np.where(np.isnan(ic), start_v[pol[j]], ic + sl[j] * (np.log(np.maximum(want[j], 1e-30)) - 1.0))

        fresh = np.flatnonzero(~has)
        predicted[fresh] = np.maximum(prior(fresh), start_v[pol[fresh]])
        vp = ve_prev[k]
        just_tried = it_prev[k] == iteration     # pulsed in the previous round, uninformatively
        nf = fails[k]
        ve = predicted.copy()
        # An uninformative pulse was just tried: climb above it (climb_step), never below the prior of a
        # cell without history in this polarity once the array has taught one.
        j = np.flatnonzero(just_tried & (vp >= predicted))
        if j.size:
            climb = vp[j] + np.minimum(climb_step(e[j], nf[j]), 2 * mvc)
            late = np.flatnonzero(~has[j] & ~np.isnan(intercept[pol[j]]))
            climb[late] = np.maximum(climb[late], prior(j[late]))
            ve[j] = climb

        g_now = g[idx]
        tgt = target[idx]
        lvl = by_level[pol]
        any_lvl = bool(by_level.any())
        lo_n_k, lo_m_k, hi = lo_n[k], lo_m[k], hi_v[k]
        lo = np.where(lvl, np.maximum(lo_n_k, lo_m_k), lo_n_k) if any_lvl else lo_n_k

        def gap(j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Where the cells at positions j stand (g_ref) and their ln distance to target (ln_gap)."""
            # The level a cell would be at after its lo pulse: under a level law, that pulse's result (a
            # cell re-programmed the other way since is back where lo leaves it); otherwise where it is now.
            gl, gn, lv = g_lo[k[j]], g_now[j], lvl[j]
            g_ref = np.where(lv & np.isfinite(gl), np.where(reset[j], np.minimum(gn, gl), np.maximum(gn, gl)), gn)
            ln_gap = np.abs(np.log(np.maximum(g_ref, floor_g) / np.maximum(tgt[j], floor_g)))
            # A level-law pulse lands with a scatter (learned, in ln G): a cell is aimed two scatters short of
            # its target, or half way when closer, so it stays on its side and each move is smaller than the
            # last (where the scatter grows with the distance moved, the last, small move lands it).
            spread_j = lvl_spread[pol[j]]
            return g_ref, ln_gap - np.where(lv, np.minimum(2 * spread_j, 0.5 * ln_gap), 0.0)

        if any_lvl:
            # Level law: from the highest amplitude that fell short, part of the way the learned
            # sensitivity says, so the cell is approached from the side it starts on.
            j = np.flatnonzero(lvl)
            g_ref, ln_gap = gap(j)
            sens = sens_lv[pol[j]]
            dv = np.where(np.isfinite(sens), 0.7 * ln_gap / np.where(np.isfinite(sens), sens, 1.0),
                          0.5 * s.voltage_step_v)
            # Below the level the cell already holds nothing moves: climb faster with every such pulse.
            dv = np.clip(dv * doubling(nf[j]), res_v, mvc)
            lo_j, ve_j = lo[j], ve[j]
            ve_j = np.where(np.isfinite(lo_j), lo_j + dv, ve_j)
            # Without one, the rate law's history says nothing of where this cell's level lies: start low.
            ve[j] = np.where(~np.isfinite(lo_j) & ~just_tried[j], np.minimum(ve_j, start_v[pol[j]]), ve_j)
            aim_ln[k[j]] = np.log(np.maximum(g_ref, floor_g)) + np.where(reset[j], -ln_gap, ln_gap)

        def inside(j: np.ndarray) -> np.ndarray:
            # Within the bracket, by regula falsi on ln G between the short side (where the cell is) and
            # the level the overshooting pulse left, kept off both ends.
            g_ref, ln_gap = gap(j)
            gh = np.maximum(g_hi[k[j]], floor_g)
            ln_span = np.abs(np.log(np.maximum(g_ref, floor_g) / gh))
            frac = np.clip(np.where(ln_span > 0, ln_gap / np.where(ln_span > 0, ln_span, 1.0), 0.5), 0.2, 0.8)
            lo_j, hi_j = lo[j], hi[j]
            # Where moving pulses mostly cross the target (an abrupt polarity), nothing lies between the two
            # bounds to be found: the amplitude known to move is used, and the other polarity approaches.
            with np.errstate(invalid="ignore"):  # an open end gives NaN here, used only where both are set
                return np.where(abrupt[pol[j]] & ~lvl[j], hi_j, lo_j + frac * (hi_j - lo_j))

        has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
        # Never again at or above an amplitude that overshot, unless the bracket has closed on it (an
        # abrupt response: the cell must then be crossed over and approached from the other side).
        j = np.flatnonzero(has_hi & (ve >= hi))
        if j.size:
            ve[j] = np.where(has_lo[j], inside(j), hi[j] - s.voltage_step_v)
        # Under a gradual rate law, an amplitude that did nothing may have met a noisy read: the climb
        # alone uses it there.
        if any_lvl or abrupt.any():
            j = np.flatnonzero(has_lo & (lvl | abrupt[pol]) & (ve <= lo))
            if j.size:
                ve[j] = np.where(has_hi[j], inside(j), lo[j] + np.minimum(climb_step(e[j], nf[j]), mvc))
        j = np.flatnonzero(has_lo & has_hi & (hi - lo <= res_v))
        ve[j] = hi[j]
        top = eff_max[pol]
        np.clip(ve, start_v[pol] + sl * lw_min, top, out=ve)

        # A cell pulsed at the top amplitude and width that did not move, several times running, is given up.
        at_max = just_tried & (vp >= top - 1e-9)
        st = np.where(at_max, still[idx] + 1, 0)
        still[idx] = st
        quit_now = st >= s.give_up_after
        if quit_now.any():
            gave_up[idx[quit_now]] = True
            pulsable[idx[quit_now]] = False
            keep = np.flatnonzero(~quit_now)
            (idx, pol, reset, k, ve, e, want, sl, has, lvl, predicted, ve_info, di, nf, g_now, tgt, lo_n_k, lo_m_k,
             hi) = (a[keep] for a in (idx, pol, reset, k, ve, e, want, sl, has, lvl, predicted, ve_info, di, nf,
                                      g_now, tgt, lo_n_k, lo_m_k, hi))
        if idx.size == 0:
            break
        iteration += 1

        # Effective volts to (amplitude, width): amplitude within its bounds, the rest in width.
        v = np.clip(ve, start_v[pol], max_v[pol])
        lw = np.clip((ve - v) / sl, lw_min, lw_max)
        width = w0 * np.exp(lw)
        rows, cols = np.divmod(idx, n_cols)
        xbar.pulse(rows, cols, np.where(reset, -v, v), width)
        pulses[idx] += 1
        raw_prev = raw
        raw = verify()
        g_sum += raw
        g_cnt += 1.0
        g_sum[idx] = raw[idx]
        g_cnt[idx] = 1.0
        np.divide(g_sum, g_cnt, out=g)
        g_after = g[idx]
        moved = g_after - g_now
        np.negative(moved, out=moved, where=reset)       # the change along the pulse's polarity

        # Read noise from cells left alone across the last two pulse rounds (pulsed cells may relax).
        np.logical_not(pulsed_last, out=calm)
        calm[idx] = False
        pulsed_last[idx_last] = False
        pulsed_last[idx] = True
        idx_last = idx
        cells = np.flatnonzero(calm)
        cells = cells[::max(1, cells.size // 50000)]     # a sample gives the noise as well as all
        diff = raw[cells] - raw_prev[cells]
        diff = diff[np.isfinite(diff)]      # a cell reading NaN (an open channel) says nothing of the noise
        if diff.size >= 32:
            sigma_read = float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0)) * np.sqrt(n_reads)
            # Enough reads that the averaged noise is a quarter of the tolerance.
            n_reads = int(np.clip(np.ceil((sigma_read / (0.25 * tol)) ** 2), 1, s.max_reads_per_verify))
        # A change within read noise of nothing says little about the rate.
        noise = 0.0 if np.isnan(sigma_read) else 3.0 * sigma_read * np.sqrt(2.0 / n_reads)
        informative = moved > max(0.5 * tol, noise)
        # A cell whose read moved against its pulse beyond noise is erratic (a stuck cell high in the window,
        # whose read noise dwarfs the tolerance, or a noisy one): it is still programmed, but nothing is learned
        # from it. Before any cell is in tolerance there is no noise estimate, and a few dozen such cells
        # would otherwise set the RESET slope and starting amplitude for the whole array.
        erratic[idx[moved < -max(0.5 * tol, noise)]] = True
        trusted = ~erratic[idx]
        moved_at = np.flatnonzero(informative)
        responded[idx[moved_at]] = True

        # Learn the slope from cells with an earlier informative pulse in this polarity, on steps well
        # clear of read noise (small steps, barely informative, are ln-noisy and truncated by the floor).
        clear_v = 2 * max(tol, noise)
        short = moved < e
        jc = np.flatnonzero(informative & short & (moved > clear_v) & trusted)     # the clear steps
        pc = pol[jc]
        short_c = short_info[k[jc]]
        pair = has[jc] & short_c & (di[jc] > clear_v) & (np.abs(ve[jc] - ve_info[jc]) >= 0.05) & ~lvl[jc]
        # Spread: steps the model aimed (not clipped, not climbing) against what they gave.
        aimed = has[jc] & (np.abs(ve[jc] - predicted[jc]) < 1e-9)
        sxx *= forget
        sxy *= forget
        syy *= forget
        npairs *= forget
        s_res2 *= forget
        n_res *= forget
        for p in (0, 1):
            m = jc[pair & (pc == p)]
            if m.size:
                dv = ve[m] - ve_info[m]
                dl = np.log(moved[m]) - np.log(di[m])
                sxx[p] += float(dv @ dv)
                sxy[p] += float(dv @ dl)
                syy[p] += float(dl @ dl)
                npairs[p] += m.size
            r = jc[aimed & (pc == p)]
            if r.size:
                res = np.log(moved[r]) - np.log(want[r])
                s_res2[p] += float(res @ res)
                n_res[p] += r.size
        rep_n *= forget
        rep_moved *= forget
        sens_num *= forget
        sens_den *= forget
        sens_n *= forget
        v_eff_used = v + sl * lw
        same_pol = last_pol[idx] == pol
        # A pulse no higher than the one that just moved the cell the same way, on a cell still well short.
        again = same_pol & last_moved[idx] & has & (v_eff_used <= ve_info + 1e-9) & (want > clear_v) & trusted
        # Consecutive short moves the same way, the second higher: the level's sensitivity to amplitude.
        gi = g_info[k[jc]]
        climbed = has[jc] & short_c & same_pol[jc] & (v_eff_used[jc] > ve_info[jc] + 1e-3) & np.isfinite(gi)
        over_n *= forget
        moved_n *= forget
        crossed = moved > e + tol
        # Abruptness: how often the first move above an amplitude that did nothing crosses a far target.
        first_move = informative & (nf > 0) & (e > 3 * tol) & trusted
        moved_n += per_polarity(first_move, reset)
        over_n += per_polarity(first_move & crossed, reset)
        rep_n += per_polarity(again, reset)
        rep_moved += per_polarity(again & informative, reset)
        for p in (0, 1):
            m = climbed & (pc == p)
            if m.any():
                sens_num[p] += float(np.abs(np.log(np.maximum(g_after[jc[m]], 1e-30) / np.maximum(gi[m], 1e-30))).sum())
                sens_den[p] += float((v_eff_used[jc[m]] - ve_info[jc[m]]).sum())
                sens_n[p] += np.count_nonzero(m)
        # Decisions hold while the evidence is thin: a level-setting polarity, once steered by its level law,
        # gives few new "moved again" samples, and forgetting them must not switch the law off.
        by_level = np.where(rep_n >= 16, rep_moved < 0.5 * rep_n, by_level)
        sens_lv = np.where(sens_n >= 8, sens_num / np.maximum(sens_den, 1e-12), sens_lv)
        lvl_r2 *= forget
        lvl_nr *= forget
        if any_lvl:
            landed = informative & lvl & (g_after > 0) & trusted
            for p in (0, 1):
                m = np.flatnonzero(landed & (pol == p))
                if m.size:
                    r = np.log(g_after[m]) - aim_ln[k[m]]
                    lvl_r2[p] += float(r @ r)
                    lvl_nr[p] += m.size
        lvl_spread = np.where(lvl_nr >= 16, np.sqrt(lvl_r2 / np.maximum(lvl_nr, 1e-12)), lvl_spread)
        abrupt = np.where(moved_n >= 16, over_n > 0.8 * moved_n, abrupt)

        # The bracket. A pulse that crossed the target beyond tolerance bounds the polarity from above; one
        # that fell short, from below; a bound contradicted by a later pulse is dropped. lo_n_k, lo_m_k and
        # hi are kept equal to lo_n, lo_m and hi_v at k as they change.
        nothing = ~informative
        fell_short = informative & short
        # Under a rate law, only a crossing by more than a noisy landing explains bounds the amplitude.
        j = np.flatnonzero(crossed & (lvl | abrupt[pol] | (moved > e + 3 * max(tol, noise))) & (v_eff_used < hi))
        hi[j] = hi_v[k[j]] = v_eff_used[j]
        g_hi[k[j]] = g_after[j]
        j = np.flatnonzero(crossed & (v_eff_used <= lo_n_k))
        lo_n_k[j] = lo_n[k[j]] = -np.inf
        j = np.flatnonzero(crossed & (v_eff_used <= lo_m_k))
        lo_m_k[j] = lo_m[k[j]] = -np.inf
        up_n = nothing & (v_eff_used > lo_n_k)
        j = np.flatnonzero(up_n)
        lo_n_k[j] = lo_n[k[j]] = v_eff_used[j]
        up_m = fell_short & (v_eff_used > lo_m_k)
        j = np.flatnonzero(up_m)
        lo_m_k[j] = lo_m[k[j]] = v_eff_used[j]
        lo_now = np.where(lvl, np.maximum(lo_n_k, lo_m_k), lo_n_k) if any_lvl else lo_n_k
        hi_v[k[(~crossed) & (lo_now >= hi)]] = np.inf
        # The level after the highest short pulse (under a level law, where a re-programmed cell returns).
        j = np.flatnonzero((up_n | up_m) & (v_eff_used >= lo_now))
        g_lo[k[j]] = g_after[j]
        last_pol[idx] = pol
        last_moved[idx] = informative

        # The slope is taken only from a fit that explains something (r^2 >= 0.25): steps that do not follow
        # the amplitude at all (a threshold device's) say nothing about volts per e-fold.
        learned = (npairs >= 16) & (sxy > 0) & (sxy * sxy >= 0.25 * sxx * syy)
        slope = np.where(learned, np.clip(sxx / np.where(sxy > 0, sxy, 1.0), 0.02, 1.0), slope)
        spread = np.where(n_res >= 16, np.sqrt(s_res2 / np.maximum(n_res, 1e-12)), spread)

        # The array's typical cell: median over anchored cells of ve - slope ln(step) (a strided
        # sample keeps it cheap on large arrays).
        for p in (0, 1):
            part = slice(p * n, (p + 1) * n, max(1, n // 20000))
            d_a = d_info[part]
            anchored = (d_a > 0) & ~erratic[::max(1, n // 20000)]
            if np.count_nonzero(anchored) >= 16:
                ve_a = v_info[part][anchored] + slope[p] * lw_info[part][anchored]
                intercept[p] = float(np.median(ve_a - slope[p] * np.log(d_a[anchored])))
        ve_prev[k] = v_eff_used
        # An informative pulse is remembered; an uninformative one leaves it_prev set so the next
        # iteration climbs (cells that moved clear it, so a later episode starts from the model).
        it_prev[k] = iteration
        fails[k] = nf + 1
        ki = k[moved_at]
        it_prev[ki] = -1
        fails[ki] = 0
        v_info[ki] = v[moved_at]
        lw_info[ki] = lw[moved_at]
        d_info[ki] = moved[moved_at]
        short_info[ki] = short[moved_at]
        g_info[ki] = g_after[moved_at]

        # Progress: a cell that responds but has not come closer for stall_after pulses is left alone.
        e_now = np.abs(tgt - g_after)
        best_j = best[idx]
        closer = e_now < best_j - 0.1 * tol
        best[idx] = np.minimum(best_j, e_now)
        since = np.where(closer, 0, since_best[idx] + 1)
        since_best[idx] = since
        now_stalled = responded[idx] & (since >= s.stall_after) & (e_now > s.aim_fraction * tol)
        stalled[idx] = now_stalled
        pulsable[idx] = ~now_stalled

    err = g - target
    success = wanted & (np.abs(err) <= s.tolerance_s)
    stalled &= ~success
    used = {k: xbar.transactions[k] - before.get(k, 0) for k in xbar.transactions}
    return WriteVerifyResult(target_s=targets, achieved_s=g.reshape(shape), success=success.reshape(shape),
                             pulses=pulses.reshape(shape), gave_up=gave_up.reshape(shape),
                             tolerance_s=s.tolerance_s, iterations=iteration, transactions=used,
                             elapsed_s=time.perf_counter() - t_start, remaining_per_iteration=remaining,
                             stalled=stalled.reshape(shape), volts_per_efold=(float(slope[0]), float(slope[1])),
                             step_spread=(float(spread[0]), float(spread[1])), read_noise_s=sigma_read,
                             reads_per_verify=n_reads)
