"""Calibration recovers the hidden truth of randomly drawn simulated arrays."""

import numpy as np
import pytest

from calibration.options import CalibrationOptions, ProgrammingOptions
from calibration.options import PeripheryOptions
from calibration.periphery import fit_periphery, measure_periphery
from calibration.pipeline import fit_noise_model, run_calibration
from drivers import DeviceConfig, SoftwareCrossbar


def random_device(rng: np.random.Generator) -> DeviceConfig:
    """Physical ranges of filamentary RRAM (see drivers/device_model.py for the sources)."""
    nu = rng.uniform(0.004, 0.03)
    return DeviceConfig(
        g_min_s=rng.uniform(0.5e-6, 3e-6), g_max_s=rng.uniform(60e-6, 150e-6),
        window_spread=rng.uniform(0.02, 0.08),
        stuck_on_rate=rng.uniform(0.0, 0.03), stuck_off_rate=rng.uniform(0.0, 0.03),
        set_v_half=rng.uniform(1.45, 1.75), reset_v_half=rng.uniform(1.35, 1.65),
        c2c_relative=rng.uniform(0.1, 0.4), c2c_absolute=rng.uniform(0.0005, 0.003),
        read_noise_relative=rng.uniform(0.002, 0.01), read_noise_floor_s=rng.uniform(0.05e-6, 0.4e-6),
        drift_nu_mean=nu, drift_nu_std=nu * rng.uniform(0.25, 0.5), drift_t0_s=rng.uniform(0.3, 3.0))


def programming_window(cfg: DeviceConfig) -> dict:
    return {"g_low_s": max(4 * cfg.g_min_s, 0.05 * cfg.g_max_s), "g_high_s": 0.75 * cfg.g_max_s}


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_read_noise_drift_and_stuck_rates_are_recovered(seed):
    rng = np.random.default_rng(seed)
    cfg = random_device(rng)
    options = CalibrationOptions(programming=ProgrammingOptions(**programming_window(cfg)), pulse_response=None)
    with SoftwareCrossbar(64, 64, config=cfg, seed=seed) as x:
        cal = run_calibration(x, options, rng)
        model = fit_noise_model(cal, array_id=x.identity.array_id, rows=64, cols=64)
        truth = x.truth
    working = ~truth.stuck
    assert model.read.relative == pytest.approx(cfg.read_noise_relative, rel=0.15)
    assert model.read.floor_s == pytest.approx(cfg.read_noise_floor_s, rel=0.15)
    # the drift exponents actually drawn for the working devices are the truth
    assert model.drift.nu_mean == pytest.approx(truth.drift_nu[working].mean(), rel=0.15)
    assert model.drift.nu_std == pytest.approx(truth.drift_nu[working].std(), rel=0.15)
    assert model.drift.t0_s == pytest.approx(cfg.drift_t0_s, rel=0.5)
    assert abs(model.defects.stuck_on_rate - truth.stuck_on.mean()) <= 0.01
    assert abs(model.defects.stuck_off_rate - truth.stuck_off.mean()) <= 0.01
    assert model.window.g_max_s == pytest.approx(np.median(truth.g_max_s[working]), rel=0.05)
    assert model.window.g_max_spread == pytest.approx(np.log(truth.g_max_s[working]).std(), rel=0.15)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_programming_noise_per_level_is_recovered(seed):
    """The truth is the hidden conductance error at the moment calibration measured it."""
    rng = np.random.default_rng(seed)
    cfg = random_device(rng)
    options = CalibrationOptions(programming=ProgrammingOptions(repeats=1, **programming_window(cfg)),
                                 pulse_response=None, read_noise=None, drift=None, periphery=None,
                                 check=None)   # the check would reprogram devices after the measurement
    with SoftwareCrossbar(64, 64, config=cfg, seed=seed) as x:
        cal = run_calibration(x, options, rng)
        model = fit_noise_model(cal, array_id=x.identity.array_id, rows=64, cols=64)
        # nothing ran after the achieved reads but ~10 ms of them: the state now is the state measured
        true_error = x.true_conductance() - cal.programming.targets_s[-1]
        working = ~x.truth.stuck
    index = cal.programming.level_index[-1]
    for k, level in enumerate(model.programming.levels_s):
        errors = true_error[(index == k) & working]
        if model.programming.law == "mixture":
            # The mixture's sigma is its core's, the devices write-verify brought to the level: the odd
            # device it left far off (beyond 6 robust spreads) is its tail's, and one such device makes most
            # of a level's standard deviation.
            q1, q3 = np.percentile(errors, [25, 75])
            errors = errors[np.abs(errors - np.median(errors)) <= 6 * (q3 - q1) / 1.349]
        assert model.programming.sigma(level) == pytest.approx(errors.std(), rel=0.15), f"level {k}"
        assert model.programming.bias(level) == pytest.approx(errors.mean(), abs=0.15 * errors.std() + 1e-9)


@pytest.mark.parametrize("kappa", [0.0, 0.5, 2.0])
def test_iv_curvature_is_recovered_from_the_periphery_sweep(kappa):
    xbar = SoftwareCrossbar(128, 128, config=DeviceConfig(iv_nonlinearity_per_v2=kappa), seed=3).open()
    xbar.program_exactly(np.random.default_rng(0).uniform(5e-6, 80e-6, (128, 128)))
    fit = fit_periphery(measure_periphery(xbar, PeripheryOptions(repeats=10, sweep_points=128)))
    assert fit.iv_cubic_per_v2 == pytest.approx(kappa, abs=0.03 + 0.03 * kappa)
