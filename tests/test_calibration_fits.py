"""The fitting routines against data with a known answer: synthetic reads, and reads of the software
crossbar whose hidden truth is known."""

import numpy as np
import pytest

from calibration.drift import _random_effects, fit_drift, measure_drift
from calibration.noise_model import ReadNoise
from calibration.options import DriftOptions
from calibration.periphery import _quantum, fit_iv_cubic
from calibration.read_noise import fit_read_noise
from calibration.window import classify_stuck
from drivers import DeviceConfig, SoftwareCrossbar


def test_read_noise_law_recovered_from_synthetic_reads():
    rng = np.random.default_rng(0)
    truth = ReadNoise(floor_s=0.3e-6, relative=0.008)
    g = rng.uniform(1e-6, 100e-6, 5000)
    reads = g + truth.sigma(g) * rng.standard_normal((40, g.size))
    fit = fit_read_noise([(reads.mean(axis=0), reads.var(axis=0, ddof=1), 40)])
    assert fit.floor_s == pytest.approx(0.3e-6, rel=0.03)
    assert fit.relative == pytest.approx(0.008, rel=0.03)


def test_read_noise_fit_with_no_floor_gives_zero_floor():
    rng = np.random.default_rng(1)
    g = rng.uniform(10e-6, 100e-6, 4000)
    reads = g * (1 + 0.01 * rng.standard_normal((30, g.size)))
    fit = fit_read_noise([(reads.mean(axis=0), reads.var(axis=0, ddof=1), 30)])
    assert fit.relative == pytest.approx(0.01, rel=0.03)
    assert fit.floor_s < 0.05 * 0.01 * 10e-6 * 10


def drifting_chip(rows, cols, seed, **config):
    """A software crossbar with noise-free reads (its reads are its hidden conductances) whose every working
    cell was just programmed to a known conductance; reads take a nanosecond, so a read is at the time
    measure_drift records for it. Returns the open crossbar, the targets and the time of programming."""
    cfg = DeviceConfig.ideal(read_time_s=1e-9, **config)
    xbar = SoftwareCrossbar(rows, cols, config=cfg, seed=seed).open()
    targets = np.random.default_rng(seed).uniform(5e-6, 80e-6, (rows, cols))
    xbar.program_exactly(targets)
    return xbar, targets, xbar.now()


def test_noise_free_power_law_gives_exact_exponents_and_t0():
    # The simulator's hidden truth: its configured t0, the exponent it drew for each cell and the
    # conductance each cell was programmed to (the law's g0, at t = 0).
    xbar, targets, programmed_at = drifting_chip(8, 8, seed=2, drift_nu_mean=0.025, drift_nu_std=0.01,
                                                 drift_t0_s=2.5)
    options = DriftOptions(times_s=[1.0, 3, 10, 30, 100, 1000, 10000], reads=1)
    fit = fit_drift(measure_drift(xbar, options, 0.2, programmed_at), np.ones((8, 8), dtype=bool))
    nu = xbar.truth.drift_nu
    assert nu.std() > 0.005                       # the exponents differ from cell to cell
    assert fit.t0_s == pytest.approx(2.5, rel=1e-4)
    assert np.allclose(fit.nu, nu, rtol=1e-4, atol=1e-8)
    assert np.allclose(fit.g0_s, targets, rtol=1e-4)
    assert fit.nu_mean == pytest.approx(nu.mean(), rel=1e-4)


def test_unusable_devices_are_left_out_of_the_drift_fit():
    # Stuck cells of the simulator hold their value: taken into the fit they would pull the mean exponent down.
    xbar, _, programmed_at = drifting_chip(16, 16, seed=4, drift_nu_mean=0.02, drift_nu_std=0.005, drift_t0_s=1.0,
                                           stuck_on_rate=0.1, stuck_off_rate=0.1)
    options = DriftOptions(times_s=[1.0, 10, 100, 1000], reads=1)
    m = measure_drift(xbar, options, 0.2, programmed_at)
    truth = xbar.truth
    usable = ~truth.stuck
    assert 0.1 < truth.stuck.mean() < 0.3
    fit = fit_drift(m, usable)
    assert np.all(np.isnan(fit.nu[truth.stuck])) and np.all(np.isnan(fit.g0_s[truth.stuck]))
    assert np.allclose(fit.nu[usable], truth.drift_nu[usable], rtol=1e-4, atol=1e-8)
    assert fit.nu_mean == pytest.approx(truth.drift_nu[usable].mean(), rel=1e-4)
    assert fit_drift(m, np.ones_like(usable)).nu_mean < 0.9 * fit.nu_mean


def test_random_effects_separates_spread_from_measurement_noise():
    rng = np.random.default_rng(3)
    values = rng.normal(0.01, 0.002, 20000)
    noise_var = rng.uniform(0, 3, values.size) ** 2 * 0.002 ** 2   # up to 3x the spread, device by device
    estimates = values + np.sqrt(noise_var) * rng.standard_normal(values.size)
    mean, std = _random_effects(estimates, noise_var)
    assert mean == pytest.approx(0.01, rel=0.01)
    assert std == pytest.approx(0.002, rel=0.05)
    assert np.std(estimates) > 1.5 * 0.002        # the naive spread would be far off


def test_stuck_classification():
    g_min = np.full((4, 4), 1e-6)
    g_max = np.full((4, 4), 100e-6)
    g_min[0, 0] = g_max[0, 0] = 98e-6        # stuck near the top
    g_min[1, 1], g_max[1, 1] = 1e-6, 1.5e-6  # stuck near the bottom
    g_min[2, 2], g_max[2, 2] = 2e-6, 60e-6   # a weak but working device
    on, off = classify_stuck(g_min, g_max, 0.2)
    assert on.sum() == 1 and on[0, 0]
    assert off.sum() == 1 and off[1, 1]


def test_quantum_of_quantised_and_continuous_values():
    step = 7.8e-7
    codes = np.random.default_rng(4).integers(-500, 500, 1000)
    assert _quantum(codes * step) == pytest.approx(step, rel=1e-9)
    assert _quantum(np.random.default_rng(5).normal(size=1000)) is None


def test_iv_curvature_recovered_from_a_quantised_saturating_sweep():
    rng = np.random.default_rng(3)
    v = np.linspace(0, 0.25, 200)
    kappa, step, full = 0.8, 2e-6, 1.5e-3
    g = rng.uniform(2e-3, 8e-3, 64)                     # summed column conductances; the largest saturate
    i = g[None] * v[:, None] * (1 + kappa * v[:, None] ** 2) + 0.5e-6 * rng.standard_normal((200, 64))
    i = np.clip(np.rint(i / step) * step, -full, full)
    assert fit_iv_cubic(v, i, step, full) == pytest.approx(kappa, rel=0.03)
    assert fit_iv_cubic(v, np.zeros_like(i), step, full) is None
    # an ohmic array gives no curvature
    assert abs(fit_iv_cubic(v, np.clip(np.rint(g * v[:, None] / step) * step, -full, full), step, full)) < 0.02
