"""The fitting routines against synthetic data with a known answer."""

import numpy as np
import pytest

from calibration.drift import DriftMeasurement, _random_effects, fit_drift
from calibration.noise_model import ReadNoise
from calibration.periphery import _quantum, fit_iv_cubic
from calibration.read_noise import fit_read_noise
from calibration.window import classify_stuck


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


def test_noise_free_power_law_gives_exact_exponents_and_t0():
    rng = np.random.default_rng(2)
    t = np.array([1.0, 3, 10, 30, 100, 1000, 10000])
    nu = rng.uniform(0.001, 0.05, (8, 8))
    g0 = rng.uniform(5e-6, 80e-6, (8, 8))
    t0 = 2.5
    g = g0 * ((t[:, None, None] + t0) / t0) ** -nu
    fit = fit_drift(DriftMeasurement(t, g, reads=1), np.ones((8, 8), dtype=bool))
    assert fit.t0_s == pytest.approx(t0, rel=1e-4)
    assert np.allclose(fit.nu, nu, rtol=1e-4)
    assert np.allclose(fit.g0_s, g0, rtol=1e-4)
    assert fit.nu_mean == pytest.approx(nu.mean(), rel=1e-4)


def test_unusable_devices_are_left_out_of_the_drift_fit():
    t = np.array([1.0, 10, 100, 1000])
    g = np.full((4, 2, 2), 1e-5) * ((t[:, None, None] + 1) / 1) ** -0.02
    g[:, 0, 0] = 5e-5                       # a stuck device does not drift
    usable = np.ones((2, 2), dtype=bool)
    usable[0, 0] = False
    fit = fit_drift(DriftMeasurement(t, g, reads=1), usable)
    assert np.isnan(fit.nu[0, 0]) and fit.nu_mean == pytest.approx(0.02, rel=1e-3)


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
