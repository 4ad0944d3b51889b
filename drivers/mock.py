"""The software crossbar: a seeded physical model of an RRAM array behind the Crossbar interface.

Hidden per-device truth (window, defects, switching voltages, drift exponents)
is drawn once from :class:`~drivers.device_model.DeviceConfig` and a seed; the
calibration pipeline's job is to recover it through the interface alone. Configs of
the other device families (:mod:`drivers.families`: PCM, filamentary VCM) build
subclasses that replace the device physics and share everything else here.

Time is virtual: every operation advances the clock by its modelled duration
and :meth:`SoftwareCrossbar.wait` jumps it, so hours of drift take microseconds.

Speed matters because the MVM sits inside recurrent inference loops. The MVM
works in float32 on cached conductances: drift is re-evaluated only when the
clock has moved enough to change it by ~1e-4 relative, and read fluctuations
are redrawn once per ``read_noise_correlation_s`` of virtual time (random
telegraph noise is slow next to a microsecond MVM). Gaussian samples come from
a pre-drawn pool read at random offsets, which is far cheaper than drawing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels
from .device_model import DeviceConfig
from .errors import InstrumentTimeout
from .interface import ConverterSpec, Crossbar, CrossbarIdentity
from .limits import SafetyLimits

_POOL_SIZE = 1 << 20
# Cells that were never programmed in this session were formed "long ago": they barely drift.
_FORMED_AGO_S = 1e6
# Re-evaluate drift when the time since the last evaluation exceeds this fraction of the age of the
# newest programming: the conductance then moves by about nu * this (~2e-4), far below read noise.
_DRIFT_REFRESH = 5e-2


@dataclass(frozen=True)
class DeviceTruth:
    """The hidden per-device parameters of a simulated array (for tests and truth-recovery checks)."""

    g_min_s: np.ndarray
    g_max_s: np.ndarray
    stuck_on: np.ndarray
    stuck_off: np.ndarray
    set_v_half: np.ndarray
    reset_v_half: np.ndarray
    drift_nu: np.ndarray
    # Cells unresponsive to pulses wherever they were frozen; None for a chip without any.
    stuck_mid: np.ndarray | None = None

    @property
    def stuck(self) -> np.ndarray:
        stuck = self.stuck_on | self.stuck_off
        return stuck if self.stuck_mid is None else stuck | self.stuck_mid


class _Fluctuation:
    """One read-noise window of the MVM: every cell's conductance in ADC codes per input code plus its
    frozen fluctuation. Cell f's fluctuation is pool[start + f], so the cells an MVM reads can be drawn
    alone and agree with the whole matrix, which is built only when an MVM needs it."""

    __slots__ = ("scaled", "sigma", "pool", "start", "_full", "_kept")

    def __init__(self, scaled: np.ndarray, sigma: np.ndarray, pool: np.ndarray, start: int):
        self.scaled, self.sigma, self.pool, self.start = scaled, sigma, pool, start
        self._full = None
        self._kept: dict = {}

    def matrix(self) -> np.ndarray:
        if self._full is None:
            fluct = self.sigma * self.pool[self.start:self.start + self.scaled.size].reshape(self.scaled.shape)
            fluct += self.scaled
            self._full = fluct
        return self._full

    def gathered(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(P, K, C): the window's values at the cells rows[p] x cols[p], kept for the same index arrays."""
        key = (id(rows), id(cols))
        hit = self._kept.get(key)
        if hit is not None and hit[0] is rows and hit[1] is cols:
            return hit[2]
        g = self.cells(rows[:, :, None] * self.scaled.shape[1] + cols[:, None, :])
        if len(self._kept) > 16:
            self._kept.clear()
        self._kept[key] = (rows, cols, g)
        return g

    def cells(self, flat: np.ndarray) -> np.ndarray:
        """The window's values at the flat cell indices ``flat`` (any shape)."""
        if self._full is not None:
            return self._full.ravel()[flat]
        if flat.ndim == 3:          # (P, K, C), the parts of a stack
            out = np.empty(flat.shape, np.float32)
            kernels.fluctuated(self.scaled.ravel(), self.sigma.ravel(), self.pool,
                               np.full(len(flat), self.start, np.int64), flat, out)
            return out
        out = np.empty((1, *flat.shape), np.float32)
        kernels.fluctuated(self.scaled.ravel(), self.sigma.ravel(), self.pool, np.array([self.start]), flat[None], out)
        return out[0]


class SoftwareCrossbar(Crossbar):
    """A ``rows x cols`` simulated array; same seeds, same behaviour, call for call.

    This class is the RRAM family; a config of another family (``drivers.device_families``)
    makes ``SoftwareCrossbar(config=...)`` return that family's subclass, which replaces the
    device physics (``_draw_devices``, ``_pulse``, ``_read_sigma``, ``_read_faults``) and keeps
    the clock, the drift cache and the MVM periphery.
    """

    MODEL_NAME = "RRAM model"

    def __new__(cls, *args, config=None, **kwargs):
        # SoftwareCrossbar(config=...) builds the family the config names: callers never pick a class.
        family = getattr(config, "family", "rram")
        if cls is SoftwareCrossbar and family != "rram":
            from .families import crossbar_class
            cls = crossbar_class(family)
        return super().__new__(cls)

    def __init__(self, rows: int = 64, cols: int = 64, *, config: DeviceConfig | Any = None, seed: int = 0,
                 noise_seed: int | None = None, limits: SafetyLimits | None = None, array_id: str | None = None,
                 fail_on_transaction: int | None = None):
        if rows < 1 or cols < 1:
            raise ValueError(f"array shape must be positive, got {rows}x{cols}")
        self.config = cfg = config or DeviceConfig()
        self.seed = seed
        name = array_id or f"mock-{rows}x{cols}-seed{seed}"
        super().__init__(CrossbarIdentity(backend="mock", instrument_id=f"software-crossbar:{name}", array_id=name,
                                          rows=rows, cols=cols, model=f"SoftwareCrossbar {self.MODEL_NAME}",
                                          firmware="1"), self._hard_limits(limits or SafetyLimits(), cfg))
        # A fault-injection hook: the N-th transaction (1-based) times out, as a lost instrument would.
        self._fail_on = fail_on_transaction
        rng = np.random.default_rng(seed)
        shape = (rows, cols)
        self._draw_devices(cfg, rng, shape)
        self._t_prog = np.full(shape, -_FORMED_AGO_S)
        self._clock = 0.0
        # ``seed`` makes the chip (its hidden device parameters); ``noise_seed``, when given, the
        # session's cycle and read noise, so one simulated chip can be measured in many runs.
        if noise_seed is not None:
            rng = np.random.default_rng([noise_seed, seed])
        self._rng = rng
        self._pool = rng.standard_normal(_POOL_SIZE, dtype=np.float32)

        # Periphery constants.
        self._iv_norm = 1.0 / (1.0 + cfg.iv_nonlinearity_per_v2 * cfg.read_reference_v ** 2)
        self._dac_levels = None if cfg.dac_bits is None else float(2 ** (cfg.dac_bits - 1) - 1)
        self._dac_lsb = None if cfg.dac_bits is None else cfg.dac_range_v / self._dac_levels
        adc_range = cfg.adc_range_a or rows * cfg.g_max_s * cfg.dac_range_v / 4
        self.adc_range_a = adc_range
        # A readout with a programmable gain: the full scale divided by 1, 2, 4 .. 64.
        self.adc_ranges_a = tuple(adc_range / 2 ** k for k in range(7))
        self._adc_levels = None if cfg.adc_bits is None else float(2 ** (cfg.adc_bits - 1) - 1)
        self._adc_lsb = None if cfg.adc_bits is None else adc_range / self._adc_levels

        self._work: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._offsets: list[float] = []
        self._offset_i = 0
        self._mvm_time = cfg.mvm_time_s
        self._noise_corr = cfg.read_noise_correlation_s
        self._kappa = cfg.iv_nonlinearity_per_v2
        code_v = self._dac_lsb or 1.0          # volts per input code
        if self._dac_lsb is not None:
            self._dac_scale = np.float32(1.0 / self._dac_lsb)
        self._kappa_code = np.float32(self._kappa * code_v ** 2)
        if self._adc_lsb is None:
            self._adc_lsb = 1.0
        # conductance -> ADC codes per input code, with the I-V normalisation folded in
        self._g_to_codes = code_v * self._iv_norm / self._adc_lsb
        self._output_noise = bool(cfg.output_noise_a)
        # Output noise in ADC codes; an all-zero pool when there is none keeps one code path.
        self._out_noise_pool = self._pool * np.float32(cfg.output_noise_a / self._adc_lsb)
        self._adc_lsb32 = np.float32(self._adc_lsb)
        self._adc_levels32 = np.float32(self._adc_levels or 0.0)
        self._sigma_cache = None
        self._g_cache = None          # float64 conductance at _t_cache (drift applied)
        self._t_cache = -np.inf
        self._g_mvm = None            # float32 conductance with a frozen read fluctuation, for mvm
        self._t_noise = -np.inf

    def _draw_devices(self, cfg, rng: np.random.Generator, shape: tuple[int, int]) -> None:
        """Draw the hidden per-device parameters and the fresh state (``_g_prog``) from the chip's ``rng``."""
        spread = cfg.window_spread
        self._gmin = cfg.g_min_s * np.exp(spread * rng.standard_normal(shape))
        self._gmax = cfg.g_max_s * np.exp(spread * rng.standard_normal(shape))
        self._gmax = np.maximum(self._gmax, 2 * self._gmin)
        u = rng.random(shape)
        self._stuck_on = u < cfg.stuck_on_rate
        self._stuck_off = (u >= cfg.stuck_on_rate) & (u < cfg.stuck_on_rate + cfg.stuck_off_rate)
        # Unresponsive cells reuse the same uniform draw, rescaled, for where in the window they froze:
        # no extra random number, so a chip without them draws exactly what it always drew.
        low = cfg.stuck_on_rate + cfg.stuck_off_rate
        self._stuck_mid = (u >= low) & (u < low + cfg.stuck_mid_rate)
        self._stuck = self._stuck_on | self._stuck_off | self._stuck_mid
        self._stuck_value = np.where(self._stuck_on, self._gmax, self._gmin)
        if cfg.stuck_mid_rate:
            frac = (u - low) / cfg.stuck_mid_rate
            self._stuck_value = np.where(self._stuck_mid, self._gmin + frac * (self._gmax - self._gmin),
                                         self._stuck_value)
        self._v_half_set = cfg.set_v_half + cfg.v_half_spread_v * rng.standard_normal(shape)
        self._v_half_reset = cfg.reset_v_half + cfg.v_half_spread_v * rng.standard_normal(shape)
        self._nu = np.clip(cfg.drift_nu_mean + cfg.drift_nu_std * rng.standard_normal(shape), 0.0, None)
        self._nu[self._stuck] = 0.0

        self._g_prog = self._gmin + cfg.initial_state * (self._gmax - self._gmin)
        self._g_prog[self._stuck] = self._stuck_value[self._stuck]
        self._floor = self._gmin

    @staticmethod
    def _hard_limits(limits: SafetyLimits, cfg: DeviceConfig) -> SafetyLimits:
        # The input DAC cannot produce more than its full scale, so neither may a read request.
        if cfg.dac_bits is not None and limits.max_read_voltage_v > cfg.dac_range_v:
            return limits.model_copy(update={"max_read_voltage_v": cfg.dac_range_v})
        return limits

    def converters(self) -> ConverterSpec:
        cfg = self.config
        return ConverterSpec(dac_bits=cfg.dac_bits, dac_range_v=cfg.dac_range_v if cfg.dac_bits else None,
                             adc_bits=cfg.adc_bits, adc_range_a=self.adc_range_a if cfg.adc_bits else None,
                             adc_ranges_a=self.adc_ranges_a if cfg.adc_bits else None)

    # ------------------------------------------------------------ ground truth
    @property
    def truth(self) -> DeviceTruth:
        return DeviceTruth(self._gmin.copy(), self._gmax.copy(), self._stuck_on.copy(), self._stuck_off.copy(),
                           self._v_half_set.copy(), self._v_half_reset.copy(), self._nu.copy(),
                           self._stuck_mid.copy() if self._stuck_mid.any() else None)

    def true_conductance(self) -> np.ndarray:
        """Noise-free conductance of every cell now (S); not part of the Crossbar interface."""
        return self._conductance_now().copy()

    def program_exactly(self, targets_s: np.ndarray) -> None:
        """Set every cell with a finite target to it at once, as a perfect programmer would.

        Not part of the Crossbar interface: it isolates what runs on programmed arrays (an
        executor's arithmetic, say) from programming error in tests. Each target is clipped to
        its device's window; stuck cells keep their value.
        """
        targets = np.asarray(targets_s, dtype=np.float64)
        if targets.shape != self.shape:
            raise ValueError(f"targets have shape {targets.shape}, the array is {self.shape}")
        cells = np.isfinite(targets) & ~self._stuck
        self._g_prog[cells] = np.clip(targets, self._gmin, self._gmax)[cells]
        self._t_prog[cells] = self._clock
        self._g_cache = None
        self._g_mvm = None

    def read_noise_sigma(self, g: np.ndarray) -> np.ndarray:
        """The configured read-noise sigma (S) at conductance ``g`` (S)."""
        cfg = self.config
        return np.sqrt(cfg.read_noise_floor_s ** 2 + (cfg.read_noise_relative * g) ** 2)

    # ------------------------------------------------------------------- clock
    def now(self) -> float:
        return self._clock

    def wait(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot wait a negative time ({seconds} s)")
        self._clock += seconds

    # --------------------------------------------------------------- backend
    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _maybe_fail(self, command: str) -> None:
        if self._fail_on is not None and self.total_transactions >= self._fail_on:
            raise InstrumentTimeout(self._name, command, f"no reply (injected fault at transaction {self._fail_on})")

    def _read(self, rows, cols, voltage_v):
        self._maybe_fail("read")
        self._clock += self.config.read_time_s
        index = np.ix_(rows, cols)
        g = self._conductance_now()[index]
        sigma = self._read_sigma(g, index)
        noisy = g + sigma * self._normal(g.size).reshape(g.shape)
        kappa = self.config.iv_nonlinearity_per_v2
        # The instrument reports I/V; a nonlinear I-V makes that depend on the read voltage.
        return self._read_faults(noisy * ((1.0 + kappa * voltage_v ** 2) * self._iv_norm), index, voltage_v)

    def _read_sigma(self, g: np.ndarray, index) -> np.ndarray:
        """Read-noise sigma (S) of the cells ``index`` (an ``np.ix_`` or ``...``) at conductance ``g``."""
        return self.read_noise_sigma(g)

    def _read_faults(self, g_read: np.ndarray, index, voltage_v: float) -> np.ndarray:
        """What the read path does to a read of the cells ``index`` beyond noise (this family: nothing)."""
        return g_read

    def _pulse_started(self, rows, cols, width_s) -> np.ndarray:
        """What every family's pulse begins with: an injected fault if one is due, the pulses' time on the
        virtual clock, and the conductance of the pulsed cells just before them."""
        self._maybe_fail("pulse")
        self._clock += self.config.pulse_overhead_s + float(width_s.sum())
        return self._conductance_now()[rows, cols]

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        g = self._pulse_started(rows, cols, width_s)
        cfg = self.config
        gmin, gmax = self._gmin[rows, cols], self._gmax[rows, cols]
        mag = np.abs(amplitude_v)
        is_set = amplitude_v > 0
        v_half = np.where(is_set, self._v_half_set[rows, cols], self._v_half_reset[rows, cols])
        threshold = np.where(is_set, cfg.set_threshold_v, cfg.reset_threshold_v)
        effective = (mag >= threshold) & ~self._stuck[rows, cols]
        rate = (width_s / cfg.reference_width_s) ** cfg.width_exponent * np.exp((mag - v_half) / cfg.switching_slope_v)
        fraction = -np.expm1(-rate)
        step = np.where(is_set, (gmax - g) * fraction, -(g - gmin) * fraction)
        n = g.size
        noise = (cfg.c2c_relative * step * self._rng.standard_normal(n)
                 + cfg.c2c_absolute * (gmax - gmin) * self._rng.standard_normal(n))
        g_new = g + np.where(effective, step + noise, 0.0)
        # Current compliance caps how far a SET can grow the filament: g <= I_cc / V.
        g_new = np.where(is_set & effective, np.minimum(g_new, compliance_a / np.maximum(mag, 1e-12)), g_new)
        g_new = np.clip(g_new, gmin, gmax)
        r, c = rows[effective], cols[effective]
        self._g_prog[r, c] = g_new[effective]
        self._t_prog[r, c] = self._clock
        self._g_cache = None
        self._g_mvm = None

    def _mvm(self, v, adc_range_a=None):
        self._maybe_fail("mvm")
        self._clock += v.shape[0] * self._mvm_time
        if self._g_mvm is None or self._clock - self._t_noise >= self._noise_corr:
            self._refresh_mvm_conductance()
        drive, acc = self._buffers(v.shape[0])
        active = np.flatnonzero(v.any(axis=0))
        sparse = 4 * len(active) < v.shape[1]
        if sparse:
            # A tile drives a few rows: rows at 0 V carry no current, so only the driven ones are
            # converted and summed.
            v = np.ascontiguousarray(v[:, active])
            drive = np.empty_like(v)
        drive = self._drive(v, drive)
        # _g_mvm is pre-scaled to ADC codes per input code, so the product is already in ADC codes.
        g_mvm = self._mvm_matrix()
        np.matmul(drive, g_mvm[active] if sparse else g_mvm, out=acc)
        out = np.empty_like(acc)      # a fresh array for the caller: the buffers are reused
        gain = 1.0 if adc_range_a is None else self.adc_range_a / adc_range_a
        return self._convert(acc, self._output_noise_codes(acc.size), gain, out)

    def _drive(self, v: np.ndarray, out: np.ndarray) -> np.ndarray:
        """What the rows see for input voltages ``v``: DAC codes through the I-V nonlinearity (into ``out``)."""
        if self._dac_lsb is not None:
            # The driver's read-voltage limit never exceeds the DAC range, so codes need no clipping.
            kernels.dac_drive(v, self._dac_scale, self._kappa_code, out)
            return out
        if self._kappa:
            np.multiply(v, v, out=out)
            out *= self._kappa_code
            out += np.float32(1.0)
            out *= v
            return out
        return v

    def _convert(self, acc: np.ndarray, noise: np.ndarray, gain: float, out: np.ndarray) -> np.ndarray:
        """Column sums ``acc`` (ADC codes at unit gain) plus output ``noise``, read at ``gain``, in amperes."""
        if self._adc_levels is None:
            acc += noise.reshape(acc.shape)
            np.multiply(acc, self._adc_lsb32, out=out)
            return out
        lsb = self._adc_lsb32
        if gain != 1:
            # A higher gain: the same codes span a smaller current, output noise included.
            gain = np.float32(gain)
            acc *= gain
            noise = noise * gain
            lsb = np.float32(self._adc_lsb / gain)
        kernels.adc_convert(acc, noise, self._adc_levels32, lsb, out)
        return out

    def _mvm_stack(self, rows, cols, v, adc_ranges):
        # The same physics as one _mvm per part, without building whole-array vectors: each part's
        # product uses only its driven rows and read columns. The clock walks part by part, so each
        # part reads the read-noise window (and drift) of its own time; then all parts are evaluated
        # at once.
        self._maybe_fail("mvm")
        n, batch, _ = v.shape
        step = batch * self._mvm_time
        if self._g_mvm is not None and self._clock + n * step - self._t_noise < self._noise_corr:
            self._clock += n * step          # the whole stack inside the current window
            windows = [self._g_mvm] * n
        else:
            windows = []
            for _ in range(n):
                self._clock += step
                if self._g_mvm is None or self._clock - self._t_noise >= self._noise_corr:
                    self._refresh_mvm_conductance()
                windows.append(self._g_mvm)
        if windows[0] is windows[-1] and isinstance(windows[0], _Fluctuation):
            # one window for the whole stack: the same cells read again in it (a recurrence at a small
            # batch steps many times per window) are gathered once
            g = windows[0].gathered(rows, cols)
        else:
            g = self._gather(windows, rows, cols)
        drive = self._drive(v, np.empty_like(v))
        acc = np.empty((n, batch, g.shape[2]), np.float32)
        kernels.stack_matmul(drive, g, acc)
        noise = self._output_noise_codes(acc.size)
        out = np.empty_like(acc)
        gains = np.array([1.0 if r is None else self.adc_range_a / r for r in adc_ranges], np.float32)
        if self._adc_levels is None or (gains == gains[0]).all():    # one range for the whole stack
            return self._convert(acc, noise, float(gains[0]), out)
        kernels.adc_convert_parts(acc, noise, gains, self._adc_levels32, self._adc_lsb32, out)
        return out

    def _gather(self, windows: list, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(P, K, C): part p's cells in the read-noise window ``windows[p]`` it was driven in."""
        n = len(rows)
        assert len(windows) == n
        flat = rows[:, :, None] * self.shape[1] + cols[:, None, :]
        g = np.empty(flat.shape, np.float32)
        p = 0
        while p < n:           # runs of parts whose windows share one drift evaluation: one gather each
            w = windows[p]
            q = p + 1
            if isinstance(w, _Fluctuation):
                while q < n and isinstance(windows[q], _Fluctuation) and windows[q].scaled is w.scaled:
                    q += 1
                starts = np.fromiter((windows[i].start for i in range(p, q)), np.int64, q - p)
                kernels.fluctuated(w.scaled.ravel(), w.sigma.ravel(), self._pool, starts, flat[p:q], g[p:q])
            else:
                g[p] = w.ravel()[flat[p]]
            p = q
        return g

    def _output_noise_codes(self, n: int) -> np.ndarray:
        """``n`` output-noise samples in ADC codes (zeros without output noise)."""
        if n * 2 > _POOL_SIZE:
            return (self._normal(n) * np.float32(self.config.output_noise_a / self._adc_lsb)).astype(np.float32)
        start = self._next_offset(n) if self._output_noise else 0
        return self._out_noise_pool[start:start + n]

    def _buffers(self, batch: int):
        # Reused work buffers: a fresh 128 kB temporary per operation costs an mmap and page faults.
        bufs = self._work.get(batch)
        if bufs is None:
            rows, cols = self.shape
            bufs = (np.empty((batch, rows), np.float32), np.empty((batch, cols), np.float32))
            if len(self._work) > 8:
                self._work.clear()
            self._work[batch] = bufs
        return bufs

    # ---------------------------------------------------------------- physics
    def _conductance_now(self) -> np.ndarray:
        """Every cell's conductance on the clock now, stuck cells at their stuck value; recomputed only once
        the clock has moved by a twentieth of the youngest programming's age (relaxation is logarithmic)."""
        t = self._clock
        if self._g_cache is not None and (t - self._t_cache) <= _DRIFT_REFRESH * (self._t_cache - self._newest
                                                                                  + self._relaxation_t0_s()):
            return self._g_cache
        g = self._relaxed(t)
        g[self._stuck] = self._stuck_value[self._stuck]
        self._g_cache = g
        self._sigma_cache = None
        self._t_cache = t
        self._newest = float(self._t_prog.max())
        return g

    def _relaxation_t0_s(self) -> float:
        """The family's relaxation time scale (s), which sets how often the conductances are recomputed."""
        return self.config.drift_t0_s

    def _relaxed(self, t: float) -> np.ndarray:
        """Every cell's conductance at time ``t`` after relaxation, a new array (this family: power-law drift)."""
        t0 = self.config.drift_t0_s
        # g_prog * ((age + t0) / t0) ** -nu, written with log1p/exp: a float64 power is several times slower.
        decay = np.log1p((t - self._t_prog) / t0)
        decay *= -self._nu
        np.exp(decay, out=decay)
        g = decay
        g *= self._g_prog
        np.maximum(g, self._floor, out=g)
        return g

    def _refresh_mvm_conductance(self) -> None:
        g = self._conductance_now()
        if self._sigma_cache is None:
            self._sigma_cache = (self._read_sigma(g, ...) * self._g_to_codes).astype(np.float32)
            self._g_scaled = (g * self._g_to_codes).astype(np.float32)
        if g.size * 2 > _POOL_SIZE:
            fluct = self._sigma_cache * self._normal(g.size).reshape(g.shape)
            fluct += self._g_scaled
            self._g_mvm = fluct
        else:
            # drawn lazily: an MVM of a few tiles reads only their cells of the window
            self._g_mvm = _Fluctuation(self._g_scaled, self._sigma_cache, self._pool, self._next_offset(g.size))
        self._t_noise = self._clock

    def _mvm_matrix(self) -> np.ndarray:
        """The current read-noise window's conductances, in ADC codes per input code, as one matrix."""
        g = self._g_mvm
        return g if isinstance(g, np.ndarray) else g.matrix()

    def _normal(self, n: int) -> np.ndarray:
        if n * 2 > _POOL_SIZE:
            return self._rng.standard_normal(n, dtype=np.float32)
        start = self._next_offset(n)
        return self._pool[start:start + n]

    def _next_offset(self, n: int) -> int:
        # Offsets are drawn in blocks: one Generator call per sample costs more than a small MVM.
        if self._offset_i >= len(self._offsets):
            self._offsets = self._rng.random(4096).tolist()
            self._offset_i = 0
        u = self._offsets[self._offset_i]
        self._offset_i += 1
        return int(u * (_POOL_SIZE - n))
