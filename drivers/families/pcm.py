"""A phase-change memory array after IBM's statistical PCM model (Nandakumar et al., ICECS 2019).

The statistics are those of aihwkit ``PCMLikeNoiseModel``
(github.com/IBM/aihwkit, src/aihwkit/inference/noise/pcm.py), fitted to measured PCM and used by
Joshi et al., Nat. Commun. 11, 2473 (2020) for DNN inference; :class:`~drivers.families.config.PCMConfig`
lists the formulas. How they are placed on a device:

* Programming noise: every programming event (a pulse that moves the cell, or
  :meth:`PCMCrossbar.program_with_noise`) lands at its deterministic target plus
  sigma_prog(x) N(0,1), x = target / g_max, clipped at 0, as aihwkit applies it to a programmed target.
* Drift: the exponent is nu = |mu(x) + sigma(x) z| with x the programmed conductance and z one
  standard normal per device drawn with the chip (an engineering choice: aihwkit draws z per call; a
  device-bound z makes the exponent a recoverable property of the cell). Re-programming restarts drift.
* Read noise: each read, and each MVM read-fluctuation epoch, draws relative noise
  Q_s(x) sqrt(ln((t + t_read) / (2 t_read))), t = time since programming + t0: the accumulated
  1/f noise grows with time since programming.

Pulse response (engineering choice, not part of the statistical model): PCM SET is a partial
crystallisation that accumulates pulse after pulse, modelled as an exponential step towards g_max
whose rate grows exponentially with amplitude (the "exponential-step" model of the research notes);
RESET melts and quenches part of the cell, the amorphised fraction growing with amplitude above the
melting threshold until the cell is fully amorphous at ``reset_full_v`` — abrupt and amplitude-graded,
unlike SET. The sign of the amplitude selects SET (+) or RESET (-), as on every Crossbar.
"""

from __future__ import annotations

import numpy as np

from .base import FamilyCrossbar

# aihwkit pcm.py: polynomial coefficients in uS at g_max = 25 uS, powers 0..2 of x.
PROG_COEFF_US = (0.26348, 1.9650, -1.1731)
PROG_REFERENCE_S = 25e-6


def prog_sigma(x: np.ndarray, g_max_s: float) -> np.ndarray:
    """Programming-noise sigma (S) at normalised target x (aihwkit pcm.py)."""
    c0, c1, c2 = PROG_COEFF_US
    return (c0 + c1 * x + c2 * x * x) * 1e-6 * (g_max_s / PROG_REFERENCE_S)


def drift_mu(x: np.ndarray) -> np.ndarray:
    """Mean drift exponent at normalised conductance x > 0 (aihwkit pcm.py)."""
    return np.clip(-0.0155 * np.log(x) + 0.0244, 0.049, 0.1)


def drift_sigma(x: np.ndarray) -> np.ndarray:
    """Device-to-device sigma of the drift exponent at x > 0 (aihwkit pcm.py)."""
    return np.clip(-0.0125 * np.log(x) - 0.0059, 0.008, 0.045)


def q_s(x: np.ndarray) -> np.ndarray:
    """1/f noise amplitude Q_s at normalised conductance x >= 0 (aihwkit pcm.py)."""
    return np.minimum(0.0088 / np.maximum(np.power(np.abs(x), 0.65), 1e-3), 0.2)


# x below this counts as this for the logarithms of the drift law (a fully reset cell has G ~ 0).
_X_FLOOR = 1e-6


class PCMCrossbar(FamilyCrossbar):
    """The ``pcm`` family: a ``rows x cols`` simulated PCM array."""

    MODEL_NAME = "PCM model"

    def _draw_devices(self, cfg, rng: np.random.Generator, shape: tuple[int, int]) -> None:
        spread = cfg.window_spread
        self._gmin = cfg.g_min_s * np.exp(spread * rng.standard_normal(shape))
        self._gmax = cfg.g_max_s * np.exp(spread * rng.standard_normal(shape))
        self._gmax = np.maximum(self._gmax, 2 * self._gmin)
        self._draw_faults(cfg, rng, shape)
        self._v_half_set = cfg.set_v_half + cfg.v_half_spread_v * rng.standard_normal(shape)
        self._v_half_reset = np.full(shape, np.nan)       # RESET has a threshold, no V_half
        self._z_nu = rng.standard_normal(shape)
        self._g_prog = self._gmin + cfg.initial_state * (self._gmax - self._gmin)
        self._freeze_stuck()
        # Programming noise is clipped at 0 (aihwkit), and drift only scales G down towards it.
        self._floor = 0.0
        self._update_nu()

    def _update_nu(self) -> None:
        cfg = self.config
        x = np.maximum(self._g_prog / cfg.g_max_s, _X_FLOOR)
        self._nu = np.abs(drift_mu(x) + drift_sigma(x) * self._z_nu) * cfg.drift_scale
        self._nu[self._stuck] = 0.0

    def read_noise_sigma(self, g: np.ndarray, age_s: float | np.ndarray = 0.0,
                         g_prog: np.ndarray | None = None) -> np.ndarray:
        """Read-noise sigma (S) at conductance ``g``, ``age_s`` after programming to ``g_prog`` (default ``g``)."""
        cfg = self.config
        x = np.abs(g if g_prog is None else g_prog) / cfg.g_max_s
        t = np.asarray(age_s) + cfg.drift_t0_s
        rel = q_s(x) * np.sqrt(np.log((t + cfg.t_read_s) / (2 * cfg.t_read_s)))
        return np.abs(g) * rel * cfg.read_noise_scale

    def _read_sigma(self, g, index):
        return self.read_noise_sigma(g, self._clock - self._t_prog[index], self._g_prog[index])

    def programming_noise_sigma(self, target_s: np.ndarray) -> np.ndarray:
        """Programming-noise sigma (S) of a programming event aimed at ``target_s``."""
        cfg = self.config
        return prog_sigma(np.asarray(target_s) / cfg.g_max_s, cfg.g_max_s) * cfg.prog_noise_scale

    def program_exactly(self, targets_s: np.ndarray) -> None:
        super().program_exactly(targets_s)
        self._update_nu()

    def program_with_noise(self, targets_s: np.ndarray) -> None:
        """Program every cell with a finite target as the statistical model does: target + sigma_prog N(0,1).

        Not part of the Crossbar interface; it stands for a chip's own program-and-verify, whose
        residual error is what the published programming-noise law describes. Stuck cells keep their value.
        """
        targets = np.asarray(targets_s, dtype=np.float64)
        if targets.shape != self.shape:
            raise ValueError(f"targets have shape {targets.shape}, the array is {self.shape}")
        cells = np.isfinite(targets) & ~self._stuck
        t = np.where(cells, targets, 0.0)
        noisy = t + self.programming_noise_sigma(t) * self._rng.standard_normal(t.shape)
        self._g_prog[cells] = np.maximum(noisy, 0.0)[cells]
        self._t_prog[cells] = self._clock
        self._update_nu()
        self._invalidate()

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        g = self._pulse_started(rows, cols, width_s)
        cfg = self.config
        gmin, gmax = self._gmin[rows, cols], self._gmax[rows, cols]
        mag = np.abs(amplitude_v)
        is_set = amplitude_v > 0
        effective = np.where(is_set, mag >= cfg.set_threshold_v, mag >= cfg.reset_threshold_v)
        effective &= ~self._stuck[rows, cols]
        rate = (width_s / cfg.reference_width_s) * np.exp((mag - self._v_half_set[rows, cols]) / cfg.switching_slope_v)
        set_target = g + (gmax - g) * -np.expm1(-rate)
        melted = np.clip((mag - cfg.reset_threshold_v) / (cfg.reset_full_v - cfg.reset_threshold_v), 0.0, 1.0)
        reset_target = g + (gmin - g) * melted
        target = np.where(is_set, set_target, reset_target)
        noisy = target + self.programming_noise_sigma(target) * self._rng.standard_normal(g.size)
        g_new = np.maximum(noisy, 0.0)
        r, c = rows[effective], cols[effective]
        self._g_prog[r, c] = g_new[effective]
        self._t_prog[r, c] = self._clock
        self._update_nu()
        self._invalidate()
