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
    gave_up = np.zeros(n, dtype=bool)
    stalled = np.zeros(n, dtype=bool)
    pulses = np.zeros(n, dtype=np.int64)
    remaining: list[int] = []

    # Learned, per polarity: slope from a decaying least-squares fit of d ln(step) against
    # d(effective volts) over pairs of informative pulses of one cell; spread of ln(step / aimed step).
    slope = np.full(2, s.volts_per_efold)
    sxx, sxy, npairs = np.zeros(2), np.zeros(2), np.zeros(2)
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
    res_v = s.voltage_step_v / 25          # amplitude resolution below which a bracket counts as closed
    over_n, moved_n = np.zeros(2), np.zeros(2)
    lvl_spread = np.full(2, 0.05)
    lvl_r2, lvl_nr = np.zeros(2), np.zeros(2)
    aim_ln = np.zeros(2 * n)              # ln of the level each cell's last pulse was aimed at
    abrupt = np.zeros(2, dtype=bool)
    sigma_read = np.nan
    n_reads = 1

    def verify() -> np.ndarray:
        g_sum = xbar.read(voltage_v=s.read_voltage_v).ravel().astype(np.float64)
        for _ in range(n_reads - 1):
            g_sum += xbar.read(voltage_v=s.read_voltage_v).ravel()
        return g_sum / n_reads if n_reads > 1 else g_sum

    raw = verify()
    # Decisions use, per cell, the mean of every read since its last pulse: a cell left alone gets
    # a better estimate each iteration at no extra transaction (drift over milliseconds is negligible).
    g_sum = raw.copy()
    g_cnt = np.ones(n)
    g = raw
    pulsed_last = np.zeros(n, dtype=bool)
    iteration = 0
    n_wanted = int(wanted.sum())
    eff_max = max_v + slope * lw_max
    while True:
        err = np.where(wanted, target - g, 0.0)
        abs_err = np.abs(err)
        n_out = int((abs_err > s.tolerance_s).sum())
        remaining.append(n_out)
        if on_iteration is not None:
            on_iteration(iteration, n_out, n_wanted)
        if iteration >= s.max_iterations:
            break
        idx = np.flatnonzero((abs_err > s.aim_fraction * s.tolerance_s) & ~gave_up & ~stalled)
        e = abs_err[idx]
        pol = (err[idx] < 0).astype(np.int64)          # RESET where we are above target
        k = pol * n + idx
        sl = slope[pol]
        eff_max = max_v + slope * lw_max
        # Aim short of the full error by the learned spread, so an erratic step rarely overshoots.
        want = e * np.exp(-0.5 * np.minimum(spread[pol], 0.7))
        di = d_info[k]
        has = di > 0
        ve_info = v_info[k] + sl * lw_info[k]
        predicted = ve_info + np.clip(sl * np.log(want / np.where(has, di, 1.0)),
                                      -s.max_voltage_change_v, s.max_voltage_change_v)
        # A cell with no history in this polarity starts from what the array has taught so far, an
        # e-fold below it (cells differ), or gently at the start amplitude while nothing is known.
        prior = np.where(np.isnan(intercept[pol]), start_v[pol],
                         intercept[pol] + sl * (np.log(np.maximum(want, 1e-30)) - 1.0))
        predicted = np.where(has, predicted, np.maximum(prior, start_v[pol]))
        vp = ve_prev[k]
        just_tried = it_prev[k] == iteration     # pulsed in the previous round, uninformatively
        # An uninformative pulse was just tried: climb above it, boldly when far from target, gently when
        # close, the step doubling with each failure so an unresponsive cell reaches the top in a few pulses.
        nf = fails[k]
        doubling = np.exp2(np.clip(nf - 1, 0, 5))
        step = np.where(e > 3 * s.tolerance_s, s.max_voltage_change_v / 2, s.voltage_step_v) * doubling
        climb = vp + np.minimum(step, 2 * s.max_voltage_change_v)
        climb = np.where(has | np.isnan(intercept[pol]), climb, np.maximum(climb, prior))
        ve = np.where(just_tried & (vp >= predicted), climb, predicted)

        g_now = g[idx]
        tgt = target[idx]
        floor_g = 0.1 * s.tolerance_s
        lvl = by_level[pol]
        lo = np.where(lvl, np.maximum(lo_n[k], lo_m[k]), lo_n[k])
        hi = hi_v[k]
        # The level a cell would be at after its lo pulse: under a level law, that pulse's result (a
        # cell re-programmed the other way since is back where lo leaves it); otherwise where it is now.
        gl = g_lo[k]
        g_ref = np.where(lvl & np.isfinite(gl), np.where(pol == 1, np.minimum(g_now, gl), np.maximum(g_now, gl)),
                         g_now)
        ln_gap = np.abs(np.log(np.maximum(g_ref, floor_g) / np.maximum(tgt, floor_g)))
        # A level-law pulse lands with a scatter (learned, in ln G): a far cell is aimed that much short of
        # its target, so it stays on its side and the last, small move is the one that lands it.
        margin = np.where(lvl & (ln_gap > 4 * lvl_spread[pol]), 2 * lvl_spread[pol], 0.0)
        ln_gap = ln_gap - margin
        if lvl.any():
            # Level law: from the highest amplitude that fell short, part of the way the learned
            # sensitivity says, so the cell is approached from the side it starts on.
            sens = np.where(sens_n[pol] >= 8, sens_num[pol] / np.maximum(sens_den[pol], 1e-12), np.nan)
            dv = np.where(np.isfinite(sens), 0.7 * ln_gap / np.where(np.isfinite(sens), sens, 1.0),
                          0.5 * s.voltage_step_v)
            # Below the level the cell already holds nothing moves: climb faster with every such pulse.
            dv = np.clip(dv * doubling, res_v, s.max_voltage_change_v)
            ve = np.where(lvl & np.isfinite(lo), lo + dv, ve)
            # Without one, the rate law's history says nothing of where this cell's level lies: start low.
            ve = np.where(lvl & ~np.isfinite(lo) & ~just_tried, np.minimum(ve, start_v[pol]), ve)
        # Within the bracket, by regula falsi on ln G between the short side (where the cell is) and the
        # level the overshooting pulse left, kept off both ends.
        gh = np.maximum(g_hi[k], floor_g)
        ln_span = np.abs(np.log(np.maximum(g_ref, floor_g) / gh))
        frac = np.clip(np.where(ln_span > 0, ln_gap / np.where(ln_span > 0, ln_span, 1.0), 0.5), 0.2, 0.8)
        has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
        # Where moving pulses mostly cross the target (an abrupt polarity), nothing lies between the two
        # bounds to be found: the amplitude known to move is used, and the other polarity approaches.
        with np.errstate(invalid="ignore"):      # an open end gives NaN here, used only where both are set
            inside = np.where(abrupt[pol] & ~lvl, hi, lo + frac * (hi - lo))
        # Never again at or above an amplitude that overshot, unless the bracket has closed on it (an
        # abrupt response: the cell must then be crossed over and approached from the other side).
        over = has_hi & (ve >= hi)
        ve = np.where(over, np.where(has_lo, inside, hi - s.voltage_step_v), ve)
        # Under a gradual rate law, an amplitude that did nothing may have met a noisy read: the climb
        # alone uses it there.
        under = has_lo & (lvl | abrupt[pol]) & (ve <= lo)
        ve = np.where(under, np.where(has_hi, inside, lo + np.minimum(step, s.max_voltage_change_v)), ve)
        ve = np.where(has_lo & has_hi & (hi - lo <= res_v), hi, ve)
        aim_ln[k] = np.log(np.maximum(g_ref, floor_g)) + np.where(pol == 1, -ln_gap, ln_gap)
        ve = np.clip(ve, start_v[pol] + sl * lw_min, eff_max[pol])

        # A cell pulsed at the top amplitude and width that did not move, several times running, is given up.
        at_max = just_tried & (vp >= eff_max[pol] - 1e-9)
        st = np.where(at_max, still[idx] + 1, 0)
        still[idx] = st
        quit_now = st >= s.give_up_after
        if quit_now.any():
            gave_up[idx[quit_now]] = True
            keep = ~quit_now
            idx, pol, ve, e, want, sl, has = idx[keep], pol[keep], ve[keep], e[keep], want[keep], sl[keep], has[keep]
            lvl = lvl[keep]
            k = k[keep]
            predicted, ve_info, di = predicted[keep], ve_info[keep], di[keep]
        if idx.size == 0:
            break
        iteration += 1

        # Effective volts to (amplitude, width): amplitude within its bounds, the rest in width.
        v = np.clip(ve, start_v[pol], max_v[pol])
        lw = np.clip((ve - v) / sl, lw_min, lw_max)
        width = w0 * np.exp(lw)
        rows, cols = np.divmod(idx, n_cols)
        xbar.pulse(rows, cols, np.where(pol == 0, v, -v), width)
        pulses[idx] += 1
        g_prev, raw_prev = g, raw
        raw = verify()
        g_sum += raw
        g_cnt += 1.0
        g_sum[idx] = raw[idx]
        g_cnt[idx] = 1.0
        g = g_sum / g_cnt
        sign = np.where(pol == 0, 1.0, -1.0)
        moved = (g[idx] - g_prev[idx]) * sign

        # Read noise from cells left alone across the last two pulse rounds (pulsed cells may relax).
        calm = ~pulsed_last
        calm[idx] = False
        pulsed_last[:] = False
        pulsed_last[idx] = True
        cells = np.flatnonzero(calm)
        cells = cells[::max(1, cells.size // 50000)]     # a sample gives the noise as well as all
        diff = raw[cells] - raw_prev[cells]
        diff = diff[np.isfinite(diff)]      # a cell reading NaN (an open channel) says nothing of the noise
        if diff.size >= 32:
            sigma_read = float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0)) * np.sqrt(n_reads)
            # Enough reads that the averaged noise is a quarter of the tolerance.
            n_reads = int(np.clip(np.ceil((sigma_read / (0.25 * s.tolerance_s)) ** 2), 1, s.max_reads_per_verify))
        # A change within read noise of nothing says little about the rate.
        noise = 0.0 if np.isnan(sigma_read) else 3.0 * sigma_read * np.sqrt(2.0 / n_reads)
        informative = moved > max(0.5 * s.tolerance_s, noise)
        responded[idx[informative]] = True

        # Learn the slope from cells with an earlier informative pulse in this polarity, on steps well
        # clear of read noise (small steps, barely informative, are ln-noisy and truncated by the floor).
        short = moved < e
        clear = informative & short & (moved > 2 * max(s.tolerance_s, noise))
        pair = clear & has & short_info[k] & (di > 2 * max(s.tolerance_s, noise)) & (np.abs(ve - ve_info) >= 0.05)
        pair &= ~lvl
        sxx *= forget
        sxy *= forget
        npairs *= forget
        s_res2 *= forget
        n_res *= forget
        for p in (0, 1):
            m = pair & (pol == p)
            if m.any():
                dv = ve[m] - ve_info[m]
                dl = np.log(moved[m]) - np.log(di[m])
                sxx[p] += float(dv @ dv)
                sxy[p] += float(dv @ dl)
                npairs[p] += m.sum()
            # Spread: steps the model aimed (not clipped, not climbing) against what they gave.
            r = clear & has & (pol == p) & (np.abs(ve - predicted) < 1e-9)
            if r.any():
                res = np.log(moved[r]) - np.log(want[r])
                s_res2[p] += float(res @ res)
                n_res[p] += r.sum()
        rep_n *= forget
        rep_moved *= forget
        sens_num *= forget
        sens_den *= forget
        sens_n *= forget
        v_eff_used = v + sl * lw
        g_after = g[idx]
        # A pulse no higher than the one that just moved the cell the same way, on a cell still well short.
        again = (last_pol[idx] == pol) & last_moved[idx] & has & (v_eff_used <= ve_info + 1e-9) & \
                (want > 2 * max(s.tolerance_s, noise))
        # Consecutive short moves the same way, the second higher: the level's sensitivity to amplitude.
        gi = g_info[k]
        climbed = clear & has & short_info[k] & (last_pol[idx] == pol) & (v_eff_used > ve_info + 1e-3) & \
            np.isfinite(gi)
        over_n *= forget
        moved_n *= forget
        crossed = moved > e + s.tolerance_s
        # Abruptness: how often the first move above an amplitude that did nothing crosses a far target.
        first_move = informative & (fails[k] > 0) & (e > 3 * s.tolerance_s)
        for p in (0, 1):
            m = first_move & (pol == p)
            moved_n[p] += m.sum()
            over_n[p] += (m & crossed).sum()
            m = again & (pol == p)
            rep_n[p] += m.sum()
            rep_moved[p] += (m & informative).sum()
            m = climbed & (pol == p)
            if m.any():
                sens_num[p] += float(np.abs(np.log(np.maximum(g_after[m], 1e-30) / np.maximum(gi[m], 1e-30))).sum())
                sens_den[p] += float((v_eff_used[m] - ve_info[m]).sum())
                sens_n[p] += m.sum()
        by_level = (rep_n >= 16) & (rep_moved < 0.5 * rep_n)
        lvl_r2 *= forget
        lvl_nr *= forget
        landed = informative & lvl & (g_after > 0)
        for p in (0, 1):
            m = landed & (pol == p)
            if m.any():
                r = np.log(g_after[m]) - aim_ln[k[m]]
                lvl_r2[p] += float(r @ r)
                lvl_nr[p] += m.sum()
        lvl_spread = np.where(lvl_nr >= 16, np.sqrt(lvl_r2 / np.maximum(lvl_nr, 1e-12)), lvl_spread)
        abrupt = (moved_n >= 16) & (over_n > 0.8 * moved_n)

        # The bracket. A pulse that crossed the target beyond tolerance bounds the polarity from above; one
        # that fell short, from below; a bound contradicted by a later pulse is dropped.
        nothing = ~informative
        fell_short = informative & short
        # Under a rate law, only a crossing by more than a noisy landing explains bounds the amplitude.
        new_hi = crossed & (lvl | abrupt[pol] | (moved > e + 3 * max(s.tolerance_s, noise))) & \
            (v_eff_used < hi_v[k])
        hi_v[k[new_hi]] = v_eff_used[new_hi]
        g_hi[k[new_hi]] = g_after[new_hi]
        lo_n[k[crossed & (v_eff_used <= lo_n[k])]] = -np.inf
        lo_m[k[crossed & (v_eff_used <= lo_m[k])]] = -np.inf
        up_n = nothing & (v_eff_used > lo_n[k])
        lo_n[k[up_n]] = v_eff_used[up_n]
        up_m = fell_short & (v_eff_used > lo_m[k])
        lo_m[k[up_m]] = v_eff_used[up_m]
        lo_now = np.where(lvl, np.maximum(lo_n[k], lo_m[k]), lo_n[k])
        hi_v[k[(~crossed) & (lo_now >= hi_v[k])]] = np.inf
        # The level after the highest short pulse (under a level law, where a re-programmed cell returns).
        up = (up_n | up_m) & (v_eff_used >= lo_now)
        g_lo[k[up]] = g_after[up]
        last_pol[idx] = pol
        last_moved[idx] = informative

        learned = (npairs >= 16) & (sxy > 0)
        slope = np.where(learned, np.clip(sxx / np.where(sxy > 0, sxy, 1.0), 0.02, 1.0), slope)
        spread = np.where(n_res >= 16, np.sqrt(s_res2 / np.maximum(n_res, 1e-12)), spread)

        # The array's typical cell: median over anchored cells of ve - slope ln(step) (a strided
        # sample keeps it cheap on large arrays).
        for p in (0, 1):
            part = slice(p * n, (p + 1) * n, max(1, n // 20000))
            d_a = d_info[part]
            anchored = d_a > 0
            if anchored.sum() >= 16:
                ve_a = v_info[part][anchored] + slope[p] * lw_info[part][anchored]
                intercept[p] = float(np.median(ve_a - slope[p] * np.log(d_a[anchored])))
        ve_prev[k] = v_eff_used
        # An informative pulse is remembered; an uninformative one leaves it_prev set so the next
        # iteration climbs (cells that moved clear it, so a later episode starts from the model).
        it_prev[k] = np.where(informative, -1, iteration)
        fails[k] = np.where(informative, 0, fails[k] + 1)
        ki = k[informative]
        v_info[ki] = v[informative]
        lw_info[ki] = lw[informative]
        d_info[ki] = moved[informative]
        short_info[ki] = short[informative]
        g_info[ki] = g_after[informative]

        # Progress: a cell that responds but has not come closer for stall_after pulses is left alone.
        e_now = np.abs(target[idx] - g[idx])
        closer = e_now < best[idx] - 0.1 * s.tolerance_s
        best[idx] = np.minimum(best[idx], e_now)
        since_best[idx] = np.where(closer, 0, since_best[idx] + 1)
        stalled[idx] = responded[idx] & (since_best[idx] >= s.stall_after) & (e_now > s.aim_fraction * s.tolerance_s)

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
