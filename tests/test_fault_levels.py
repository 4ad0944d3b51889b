"""Stuck devices anywhere in the window: calibration records where they sit, training draws them there."""

import numpy as np
import pytest
import torch

from calibration.noise_model import Defects
from calibration.options import CalibrationOptions
from calibration.pipeline import fit_noise_model, run_calibration
from drivers import DeviceConfig, SoftwareCrossbar
from hil.nn.analog import AnalogSpec, perturb_weights

WINDOW_ONLY = dict(pulse_response=None, programming=None, read_noise=None, drift=None, check=None, periphery=None)


@pytest.mark.parametrize("seed", [0, 1])
def test_stuck_levels_follow_the_hidden_stuck_conductances(seed):
    # The pessimistic preset freezes about 3 % of devices anywhere in the window, besides those at its ends.
    with SoftwareCrossbar(64, 64, config=DeviceConfig(preset="pessimistic"), seed=seed) as x:
        cal = run_calibration(x, CalibrationOptions(**WINDOW_ONLY), np.random.default_rng(seed))
        model = fit_noise_model(cal, array_id="a", rows=64, cols=64)
        truth = x.truth
        stuck_true = x.true_conductance()[truth.stuck]
        mid_true = truth.stuck_mid.mean() / truth.stuck.mean()
    levels = np.array(model.defects.stuck_levels_s)
    assert len(levels) == 16
    probs = (np.arange(16) + 0.5) / 16
    window = model.window.g_max_s - model.window.g_min_s
    np.testing.assert_allclose(levels, np.quantile(stuck_true, probs), atol=0.03 * window)
    # The share of stuck devices well inside the window, which the two end values alone would put at 0.
    inside = (levels > model.window.g_min_s + 0.1 * window) & (levels < model.window.g_max_s - 0.1 * window)
    assert inside.mean() == pytest.approx(mid_true, abs=1.5 / 16)


def test_training_draws_stuck_devices_at_the_recorded_levels():
    from tests.test_analog import noise_model   # the default-family model those tests build

    base = noise_model()
    g_lo, g_hi = base.weight_window()
    levels = [10e-6, 50e-6]
    model = base.model_copy(update={"defects": Defects(stuck_on_rate=1.0, stuck_off_rate=0.0, stuck_levels_s=levels),
                                    "drift": None})
    spec = AnalogSpec(noise_model=model, programming_noise=False, read_noise=False, stuck_compensation=False)
    w = torch.ones(200, 50)
    realised = perturb_weights(w, spec, torch.Generator().manual_seed(0))
    # Every device stuck at one of two levels drawn evenly: a pair reads 0 (same level, half the pairs)
    # or +-(50 - 10) uS over the weight window (a quarter each).
    step = (levels[1] - levels[0]) / (g_hi - g_lo)
    values = realised.flatten().numpy()
    assert np.all(np.isclose(values, 0) | np.isclose(np.abs(values), step, rtol=1e-5))
    assert np.mean(np.isclose(values, 0)) == pytest.approx(0.5, abs=0.03)
    assert np.mean(values > 0) == pytest.approx(0.25, abs=0.03)
    # Without recorded levels, stuck-on devices sit at g_max: every pair reads 0.
    old = model.model_copy(update={"defects": Defects(stuck_on_rate=1.0, stuck_off_rate=0.0)})
    assert torch.count_nonzero(perturb_weights(w, spec.model_copy(update={"noise_model": old}))) == 0


def test_old_defects_json_loads_and_bad_levels_are_refused():
    assert Defects.model_validate({"stuck_on_rate": 0.01, "stuck_off_rate": 0.02}).stuck_levels_s is None
    with pytest.raises(ValueError, match="non-decreasing"):
        Defects(stuck_on_rate=0.0, stuck_off_rate=0.0, stuck_levels_s=[2e-6, 1e-6])
