"""Adaptive write-verify against devices that do not switch like the mock.

The device below is written here, independently of drivers/mock.py: each pulse moves a cell by an
absolute step that grows exponentially with amplitude at a slope of the test's choosing (the mock's
step is a fraction of the distance to its window edge, at 0.12 V per e-fold), linearly with width,
with log-normal cycle-to-cycle spread, and reads carry Gaussian noise of the test's choosing. Stuck
cells never move. Nothing about it is told to write_verify: it must learn it from the pulses.
"""

import numpy as np
import pytest

from drivers import Crossbar, CrossbarIdentity, SafetyLimits, WriteVerifySettings, write_verify

G_MIN, G_MAX = 2e-6, 40e-6
TOL = 0.02 * (G_MAX - G_MIN)


class AbsoluteStepCrossbar(Crossbar):
    """Step = unit * exp((|V| - v_ref) / slope) * width / 1 us, per cell v_ref, times a log-normal factor."""

    def __init__(self, rows, cols, *, slope_v, v_ref=1.2, unit_s=2e-6, spread=0.15, read_sigma_s=0.05e-6,
                 stuck_rate=0.0, seed=0):
        super().__init__(CrossbarIdentity("test", "absolute-step", "a", rows, cols), SafetyLimits())
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.slope_v, self.unit_s, self.spread, self.read_sigma_s = slope_v, unit_s, spread, read_sigma_s
        self.v_ref = v_ref + 0.05 * rng.standard_normal((rows, cols))
        self.g = np.full((rows, cols), G_MIN)
        self.stuck = rng.random((rows, cols)) < stuck_rate
        self.g[self.stuck] = rng.uniform(G_MIN, G_MAX, int(self.stuck.sum()))
        self.widths_seen = []

    def _open(self):
        pass

    def _close(self):
        pass

    def _read(self, rows, cols, voltage_v):
        g = self.g[np.ix_(rows, cols)]
        return g + self.read_sigma_s * self.rng.standard_normal(g.shape)

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        self.widths_seen.append(width_s.copy())
        mag = np.abs(amplitude_v)
        step = (self.unit_s * np.exp((mag - self.v_ref[rows, cols]) / self.slope_v) * (width_s / 1e-6)
                * np.exp(self.spread * self.rng.standard_normal(rows.size)))
        new = np.clip(self.g[rows, cols] + np.sign(amplitude_v) * step, G_MIN, G_MAX)
        moving = ~self.stuck[rows, cols]
        self.g[rows[moving], cols[moving]] = new[moving]

    def _mvm(self, voltages_v, adc_range_a=None):
        return voltages_v @ self.g


def targets(shape, seed):
    levels = np.linspace(G_MIN + 0.05 * (G_MAX - G_MIN), G_MAX - 0.05 * (G_MAX - G_MIN), 8)
    return levels[np.random.default_rng(seed).integers(0, 8, shape)]


@pytest.mark.parametrize("slope_v", [0.04, 0.3])
def test_learns_a_switching_slope_it_was_not_given(slope_v):
    # volts_per_efold stays at its default guess (0.12 V): a slope 3x off either way must be learned.
    with AbsoluteStepCrossbar(48, 48, slope_v=slope_v, seed=1) as x:
        t = targets(x.shape, 1)
        result = write_verify(x, t, WriteVerifySettings(tolerance_s=TOL, max_iterations=20))
        truly_in = np.abs(x.g - t) <= TOL
    assert truly_in.mean() >= 0.99
    assert result.success_rate() >= 0.99
    learned_set, learned_reset = result.volts_per_efold
    assert learned_set == pytest.approx(slope_v, rel=0.35)
    assert result.transactions == {"read": 1 + result.iterations, "pulse": result.iterations, "mvm": 0}


def test_unresponsive_cells_are_reported_and_not_pulsed_to_the_limit():
    with AbsoluteStepCrossbar(48, 48, slope_v=0.15, stuck_rate=0.03, seed=2) as x:
        t = targets(x.shape, 2)
        result = write_verify(x, t, WriteVerifySettings(tolerance_s=TOL, max_iterations=60))
        stuck_out = x.stuck & (np.abs(x.g - t) > TOL)
        truly_in = np.abs(x.g - t) <= TOL
    # Every cell given up is a stuck one, and every stuck cell out of tolerance was given up.
    assert result.gave_up.sum() > 0
    assert np.all(x.stuck[result.gave_up])
    assert np.all(result.gave_up[stuck_out])
    assert truly_in[~x.stuck].mean() >= 0.99
    # Stuck cells cost a handful of pulses each, and the loop ends when only they were left,
    # long before the iteration limit.
    assert result.pulses[stuck_out].max() <= 10
    assert result.iterations < 30
    assert result.pulses[stuck_out].sum() < 0.1 * result.pulses.sum()


def test_finer_steps_than_the_lowest_amplitude_gives_come_from_shorter_pulses():
    # At the start amplitude this device already steps ~4x the tolerance: only a shorter pulse can land it.
    with AbsoluteStepCrossbar(32, 32, slope_v=0.1, v_ref=0.75, seed=3) as x:
        t = targets(x.shape, 3)
        settings = WriteVerifySettings(tolerance_s=TOL, max_iterations=20)
        write_verify(x, t, settings)
        truly_in = np.abs(x.g - t) <= TOL
        shortest = min(float(w.min()) for w in x.widths_seen)
        assert max(float(w.max()) for w in x.widths_seen) <= settings.max_width_factor * settings.pulse_width_s
    assert shortest < 0.5 * settings.pulse_width_s
    assert shortest >= x.limits.min_pulse_width_s
    assert truly_in.mean() >= 0.98


def test_reads_are_averaged_when_read_noise_rivals_the_tolerance():
    noisy = dict(slope_v=0.15, read_sigma_s=0.6 * TOL, seed=4)
    with AbsoluteStepCrossbar(48, 48, **noisy) as x:
        t = targets(x.shape, 4)
        averaged = write_verify(x, t, WriteVerifySettings(tolerance_s=TOL, max_iterations=20))
        in_averaged = (np.abs(x.g - t) <= TOL).mean()
    with AbsoluteStepCrossbar(48, 48, **noisy) as x:
        single = write_verify(x, t, WriteVerifySettings(tolerance_s=TOL, max_iterations=20, max_reads_per_verify=1))
        in_single = (np.abs(x.g - t) <= TOL).mean()
    # The noise estimate comes from cells left alone between reads; the device's sigma is known here.
    assert averaged.read_noise_s == pytest.approx(0.6 * TOL, rel=0.3)
    assert averaged.reads_per_verify > 1
    # Averaging costs reads (still a fixed number per iteration), and buys truly-in-tolerance cells.
    assert averaged.transactions["pulse"] == averaged.iterations
    assert averaged.transactions["read"] <= 1 + averaged.iterations * averaged.reads_per_verify
    assert averaged.transactions["read"] > 1 + averaged.iterations
    assert single.transactions["read"] == 1 + single.iterations
    assert in_averaged > in_single
    assert in_averaged >= 0.9


@pytest.mark.parametrize("shape", [(8, 8), (96, 96)])
def test_instrument_calls_do_not_grow_with_cells(shape):
    with AbsoluteStepCrossbar(*shape, slope_v=0.2, seed=5) as x:
        result = write_verify(x, targets(shape, 5), WriteVerifySettings(tolerance_s=TOL, max_iterations=20))
    assert result.transactions["read"] == 1 + result.iterations
    assert result.transactions["pulse"] == result.iterations <= 20
