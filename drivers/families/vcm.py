"""A filamentary valence-change (VCM) RRAM array after the Stanford-PKU gap model.

Switching: the Stanford-PKU compact model (Jiang et al., IEEE TED 63, 1884 (2016); Verilog-A on nanoHUB,
doi:10.4231/D37H1DN48; parameters as in the MemTorch port, memtorch/bh/memristor/Stanford_PKU.py).
The state is the gap g between filament tip and electrode:

    I(V, g) = I0 exp(-g/g0) sinh(V/V0)
    dg/dt   = -v0 exp(-Ea/kT) sinh(gamma a0/tox qV/kT),  gamma = gamma0 - beta (g/1 nm)^3,
              gamma = 0 where gamma |V| / tox < F_min
    T       = T0 + |V I| Rth

integrated over each pulse per cell with explicit sub-steps of at most ``_MAX_GAP_STEP`` of gap.
SET (V > 0) closes the gap; as it closes the current, the temperature and gamma rise together, so the
rate runs away and SET is abrupt, stopped by the 1T1R current compliance (the voltage left across the
cell is the one at which I(V, g) = I_cc, solved in closed form: V = V0 asinh(I_cc / (I0 exp(-g/g0)))).
RESET (V < 0) opens the gap; the current and the heating then fall, so RESET slows itself and is gradual.
The model's dynamic-mode gap noise is replaced by a Gaussian gap jitter per pulse whose variance is
proportional to the gap the pulse travelled, sd = gap_c2c_m sqrt(|dg| / g0) (a choice: ion hops taken as
a random walk; a full abrupt SET, |dg| ~ 6 g0, then scatters G by ~20 %, a small tuning step by a few %).

Beyond the compact model (engineering choices after research/device_families.md, sections 3-5):

* relaxation after programming with aihwkit ReRamCMONoiseModel's law and magnitudes (CMO/HfOx): a mean
  shift growing with ln t and a wider spread, so cells move both ways (VCMConfig gives the formula);
* random telegraph noise: each cell holds up to ``_MAX_TRAPS`` two-state traps (Poisson count, truncated),
  with dG/G ~ LogNormal(ln(A0 (G/G_ref)^-alpha), s) and dwell times log-uniform in 1e-4..1e2 s, sampled
  by the exact two-state Markov transition over the time between reads;
* faults and the read offset of :class:`~drivers.families.base.FamilyCrossbar`.
"""

from __future__ import annotations

import numpy as np

from .base import FamilyCrossbar

_Q = 1.602176634e-19        # C
_K_B = 1.380649e-23         # J/K
_MAX_GAP_STEP = 0.02e-9     # m of gap per explicit sub-step
_MAX_SUBSTEPS = 400         # the rest of a pulse that would need more is dropped (stiff runaway at a bound)
_MAX_TRAPS = 4
_TAU_RANGE_S = (1e-4, 1e2)


class VCMCrossbar(FamilyCrossbar):
    """The ``vcm`` family: a ``rows x cols`` simulated filamentary VCM RRAM array."""

    MODEL_NAME = "VCM (Stanford-PKU) model"

    # ------------------------------------------------------------- gap law
    def _g_of_gap(self, gap: np.ndarray) -> np.ndarray:
        cfg = self.config
        v = cfg.read_reference_v
        return cfg.i0_a * np.exp(-gap / cfg.g0_m) * (np.sinh(v / cfg.v0_v) / v)

    def _gap_of_g(self, g: np.ndarray) -> np.ndarray:
        cfg = self.config
        v = cfg.read_reference_v
        return cfg.g0_m * np.log(cfg.i0_a * (np.sinh(v / cfg.v0_v) / v) / np.maximum(g, 1e-30))

    def _fault_window(self) -> tuple[np.ndarray, np.ndarray]:
        # The gap's lower bound is a filament closed without a current limit (~2 mS): no cell is operated
        # there. A stuck-high cell holds the state of a SET stopped by the 1T1R compliance, like the
        # window's top; its device-to-device spread is that of the gap's lower bound.
        cfg = self.config
        return self._gmin, cfg.formed_g_s * np.exp(-(self._gap_lo - cfg.gap_min_m) / cfg.g0_m)

    def _draw_devices(self, cfg, rng: np.random.Generator, shape: tuple[int, int]) -> None:
        self._gap_lo = cfg.gap_min_m + cfg.gap_spread_m * rng.standard_normal(shape)
        self._gap_hi = cfg.gap_max_m + cfg.gap_spread_m * rng.standard_normal(shape)
        self._gap_lo = np.maximum(self._gap_lo, 0.0)
        self._gap_hi = np.maximum(self._gap_hi, self._gap_lo + cfg.g0_m)
        self._gmax = self._g_of_gap(self._gap_lo)
        self._gmin = self._g_of_gap(self._gap_hi)
        self._draw_faults(cfg, rng, shape)
        self._v_half_set = np.full(shape, np.nan)
        self._v_half_reset = np.full(shape, np.nan)
        self._nu = np.zeros(shape)
        n_traps = np.minimum(rng.poisson(cfg.rtn_traps_per_cell, shape), _MAX_TRAPS)
        k = np.arange(_MAX_TRAPS)[:, None, None]
        self._trap_present = k < n_traps
        self._trap_z = rng.standard_normal((_MAX_TRAPS,) + shape)
        lo, hi = np.log(_TAU_RANGE_S[0]), np.log(_TAU_RANGE_S[1])
        tau_a = np.exp(rng.uniform(lo, hi, (_MAX_TRAPS,) + shape))
        tau_b = np.exp(rng.uniform(lo, hi, (_MAX_TRAPS,) + shape))
        self._trap_p = tau_a / (tau_a + tau_b)              # long-run probability of the trap being filled
        self._trap_rate = 1 / tau_a + 1 / tau_b
        self._trap_state = rng.random((_MAX_TRAPS,) + shape) < self._trap_p
        self._trap_t = np.zeros(shape)
        self._trap_list = np.flatnonzero(self._trap_present)     # flat indices of the traps that exist
        # Relaxation of each cell since its last programming: its standard normal, and whether it relaxes
        # at all (cells formed before the session, or programmed exactly, do not).
        self._relax_s = np.zeros(shape)
        self._relax_on = np.zeros(shape)
        self._g_prog = self._gmin + cfg.initial_state * (self._gmax - self._gmin)
        self._freeze_stuck()
        self._floor = 0.0

    # ------------------------------------------------------------ relaxation
    def _relaxation_t0_s(self) -> float:
        return self.config.relax_t0_s

    def _relaxed(self, t: float) -> np.ndarray:
        cfg = self.config
        age = (t - self._t_prog) / cfg.relax_t0_s
        log_age = np.log1p(age)
        spread = cfg.relax_sigma0_s * (age / (age + 1.0)) + cfg.relax_sigma_per_ln_s * log_age
        g = self._g_prog + cfg.relax_mean_per_ln_s * log_age * self._relax_on + self._relax_s * spread
        np.maximum(g, 0.0, out=g)
        return g

    def _programmed(self, r, c, g_new) -> None:
        self._g_prog[r, c] = g_new
        self._t_prog[r, c] = self._clock
        self._relax_s[r, c] = self._rng.standard_normal(len(g_new))
        self._relax_on[r, c] = 1.0
        self._invalidate()

    def program_exactly(self, targets_s: np.ndarray) -> None:
        super().program_exactly(targets_s)
        cells = np.isfinite(np.asarray(targets_s, dtype=np.float64)) & ~self._stuck
        self._relax_s[cells] = 0.0        # a perfect programmer also leaves no relaxation to come
        self._relax_on[cells] = 0.0

    # ----------------------------------------------------------------- noise
    def read_noise_sigma(self, g: np.ndarray) -> np.ndarray:
        cfg = self.config
        return np.sqrt(cfg.read_noise_floor_s ** 2 + (cfg.read_noise_relative * g) ** 2)

    def _rtn_factor(self, g: np.ndarray, index) -> np.ndarray:
        """1 - sum of the filled traps' dG/G for the cells ``index`` now, advancing their Markov states."""
        cfg = self.config
        if not isinstance(index, tuple):
            return self._rtn_factor_all(g)
        sel = (slice(None),) + index
        present = self._trap_present[sel]
        if not cfg.rtn_traps_per_cell or not present.any():
            return np.ones_like(g)
        dt = self._clock - self._trap_t[index]
        p, state = self._trap_p[sel], self._trap_state[sel]
        # Exact two-state Markov transition over dt: P(filled) relaxes to p at rate 1/tau_a + 1/tau_b.
        p_filled = p + (state - p) * np.exp(-self._trap_rate[sel] * dt)
        state = self._rng.random(p.shape) < p_filled
        self._trap_state[sel] = state
        self._trap_t[index] = self._clock
        amp = cfg.rtn_amplitude_ref * (np.maximum(g, 1e-30) / cfg.rtn_g_ref_s) ** -cfg.rtn_alpha
        rel = amp * np.exp(cfg.rtn_sigma_ln * self._trap_z[sel])
        return np.clip(1.0 - (rel * (state & present)).sum(axis=0), 0.0, None)

    def _rtn_factor_all(self, g: np.ndarray) -> np.ndarray:
        """:meth:`_rtn_factor` for the whole array, visiting only the traps that exist (the MVM's path)."""
        cfg = self.config
        traps = self._trap_list
        if not cfg.rtn_traps_per_cell or traps.size == 0:
            return np.ones_like(g)
        cell = traps % g.size
        p = self._trap_p.reshape(-1)[traps]
        state = self._trap_state.reshape(-1)
        dt = self._clock - self._trap_t.reshape(-1)[cell]
        p_filled = p + (state[traps] - p) * np.exp(-self._trap_rate.reshape(-1)[traps] * dt)
        filled = self._rng.random(traps.size) < p_filled
        state[traps] = filled
        self._trap_t[...] = self._clock
        gc = np.maximum(g.reshape(-1)[cell], 1e-30)
        rel = cfg.rtn_amplitude_ref * (gc / cfg.rtn_g_ref_s) ** -cfg.rtn_alpha
        rel *= np.exp(cfg.rtn_sigma_ln * self._trap_z.reshape(-1)[traps])
        drop = np.bincount(cell, weights=rel * filled, minlength=g.size).reshape(g.shape)
        return np.clip(1.0 - drop, 0.0, None)

    def _read_sigma(self, g, index):
        return self.read_noise_sigma(g)

    def _read(self, rows, cols, voltage_v):
        self._maybe_fail("read")
        self._clock += self.config.read_time_s
        index = np.ix_(rows, cols)
        g = self._conductance_now()[index]
        g = g * self._rtn_factor(g, index)
        noisy = g + self.read_noise_sigma(g) * self._normal(g.size).reshape(g.shape)
        kappa = self.config.iv_nonlinearity_per_v2
        return self._read_faults(noisy * ((1.0 + kappa * voltage_v ** 2) * self._iv_norm), index, voltage_v)

    def _refresh_mvm_conductance(self) -> None:
        # Telegraph noise switches on the same slow time scale the MVM freezes read fluctuations for.
        g = self._conductance_now()
        g = g * self._rtn_factor(g, ...)
        sigma = self.read_noise_sigma(g)
        self._g_mvm = ((g + sigma * self._normal(g.size).reshape(g.shape)) * self._g_to_codes).astype(np.float32)
        self._t_noise = self._clock

    # ----------------------------------------------------------------- pulses
    def gap_rate(self, gap: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dg/dt (m/s) and the cell temperature (K) at gap ``gap`` and cell voltage ``v`` (Stanford-PKU)."""
        cfg = self.config
        current = cfg.i0_a * np.exp(-gap / cfg.g0_m) * np.sinh(v / cfg.v0_v)
        temp = cfg.t0_k + np.abs(v * current) * cfg.rth_k_per_w
        gamma = cfg.gamma0 - cfg.beta * (gap / 1e-9) ** 3
        gamma = np.where(gamma * np.abs(v) / cfg.tox_m < cfg.f_min_v_per_m, 0.0, gamma)
        kt = _K_B * temp
        rate = -cfg.vel0_m_per_s * np.exp(-cfg.ea_ev * _Q / kt) * np.sinh(gamma * cfg.a0_m / cfg.tox_m * _Q * v / kt)
        return rate, temp

    def _cell_voltage(self, gap, v, compliance_a):
        # On SET the selector transistor limits the current to I_cc: the cell sees at most the voltage at which
        # I(V, g) = I_cc, and the rest drops across the transistor.
        cfg = self.config
        # RESET runs with the transistor fully on, so only SET is limited.
        v_cc = cfg.v0_v * np.arcsinh(compliance_a / (cfg.i0_a * np.exp(-gap / cfg.g0_m)))
        return np.where(v > 0, np.minimum(v, v_cc), v)

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        g = self._pulse_started(rows, cols, width_s)
        cfg = self.config
        lo, hi = self._gap_lo[rows, cols], self._gap_hi[rows, cols]
        gap = np.clip(self._gap_of_g(g), lo, hi)
        start = gap.copy()
        v = np.asarray(amplitude_v, dtype=np.float64)
        cc = np.broadcast_to(np.asarray(compliance_a, dtype=np.float64), v.shape)
        remaining = np.asarray(width_s, dtype=np.float64).copy()
        live = ~self._stuck[rows, cols] & (remaining > 0)
        for _ in range(_MAX_SUBSTEPS):
            i = np.flatnonzero(live)
            if i.size == 0:
                break
            vc = self._cell_voltage(gap[i], v[i], cc[i])
            rate, _ = self.gap_rate(gap[i], vc)
            speed = np.abs(rate)
            dt = np.minimum(remaining[i], _MAX_GAP_STEP / np.maximum(speed, 1e-300))
            new = np.clip(gap[i] + rate * dt, lo[i], hi[i])
            gap[i] = new
            remaining[i] -= dt
            # A cell is done when its pulse is over, it no longer moves, or it sits at the bound it is pushed to.
            stalled = (speed * remaining[i] < 1e-4 * _MAX_GAP_STEP) | ((rate < 0) & (new <= lo[i])) | \
                      ((rate > 0) & (new >= hi[i]))
            live[i[(remaining[i] <= 0) | stalled]] = False
        travel = np.abs(gap - start)
        moved = travel > 1e-3 * _MAX_GAP_STEP
        if cfg.gap_c2c_m:
            # Ion hops as a random walk: the jitter's variance grows with the distance the tip travelled, so
            # a pulse that barely moves the filament barely randomises it.
            sd = cfg.gap_c2c_m * np.sqrt(travel / cfg.g0_m)
            gap = np.where(moved, np.clip(gap + sd * self._rng.standard_normal(gap.size), lo, hi), gap)
        r, c = rows[moved], cols[moved]
        if r.size:
            self._programmed(r, c, self._g_of_gap(gap[moved]))
