"""Write-verify: accuracy on a 64x64 array, cost in instrument calls, and its contract."""

import numpy as np
import pytest

from drivers import SafetyLimits, SoftwareCrossbar, WriteVerifySettings, write_verify

G_LOW, G_HIGH = 5e-6, 80e-6
TOL = 0.02 * (G_HIGH - G_LOW)


def level_targets(shape, seed):
    levels = np.linspace(G_LOW, G_HIGH, 8)
    return levels[np.random.default_rng(seed).integers(0, 8, shape)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_99_percent_of_working_cells_within_2_percent_in_20_iterations(seed):
    with SoftwareCrossbar(64, 64, seed=seed) as x:
        targets = level_targets(x.shape, seed)
        result = write_verify(x, targets, WriteVerifySettings(tolerance_s=TOL, max_iterations=20))
        working = ~x.truth.stuck
        truth_in = np.abs(x.true_conductance() - targets) <= TOL
    assert result.iterations <= 20
    assert result.success_rate(working) >= 0.99          # as the verify read saw it
    assert truth_in[working].mean() >= 0.99               # and as the hidden truth has it
    assert np.array_equal(result.success, np.abs(result.error_s) <= TOL)
    # unresponsive cells that were given up are stuck ones
    assert result.gave_up.sum() > 0 and np.all(x.truth.stuck[result.gave_up])


@pytest.mark.parametrize("shape", [(8, 8), (64, 64)])
def test_instrument_calls_grow_with_iterations_not_cells(shape, mocker):
    with SoftwareCrossbar(*shape, seed=3) as x:
        pulse = mocker.spy(x, "_pulse")
        result = write_verify(x, level_targets(shape, 3), WriteVerifySettings(tolerance_s=TOL, max_iterations=12))
    # one read to start, then one pulse transaction and one verify read per iteration
    assert result.transactions == {"read": 1 + result.iterations, "pulse": result.iterations, "mvm": 0}
    assert pulse.call_count == result.iterations
    assert result.iterations <= 12
    assert result.pulses.sum() > 10 * result.iterations   # many cells per transaction


def test_iteration_limit_is_respected_and_reported():
    with SoftwareCrossbar(16, 16, seed=4) as x:
        result = write_verify(x, level_targets(x.shape, 4), WriteVerifySettings(tolerance_s=TOL, max_iterations=3))
    assert result.iterations == 3
    assert result.pulses.max() <= 3
    assert len(result.remaining_per_iteration) == 4


def test_nan_targets_are_left_alone():
    with SoftwareCrossbar(16, 16, seed=5) as x:
        targets = level_targets(x.shape, 5)
        targets[:8] = np.nan
        before = x.true_conductance()
        result = write_verify(x, targets, WriteVerifySettings(tolerance_s=TOL))
        after = x.true_conductance()
    assert result.pulses[:8].sum() == 0
    assert np.allclose(after[:8], before[:8], rtol=1e-3)
    assert not result.success[:8].any()


def test_progress_callback_sees_every_iteration():
    seen = []
    with SoftwareCrossbar(16, 16, seed=6) as x:
        result = write_verify(x, level_targets(x.shape, 6), WriteVerifySettings(tolerance_s=TOL),
                              on_iteration=lambda i, out, total: seen.append((i, out, total)))
    assert [s[0] for s in seen] == list(range(result.iterations + 1))
    assert seen[0][1] == 256 and seen[0][2] == 256
    assert seen[-1][1] == result.remaining_per_iteration[-1]


def test_settings_beyond_instrument_limits_are_refused_before_any_pulse(mocker):
    with SoftwareCrossbar(8, 8, limits=SafetyLimits(max_write_voltage_v=1.5)) as x:
        spy = mocker.spy(x, "_pulse")
        with pytest.raises(ValueError, match="max_write_voltage_v"):
            write_verify(x, level_targets(x.shape, 0), WriteVerifySettings(tolerance_s=TOL, max_set_voltage_v=2.0))
        assert spy.call_count == 0 and x.total_transactions == 0


def test_target_shape_must_match_array():
    with SoftwareCrossbar(8, 8) as x:
        with pytest.raises(ValueError, match="shape"):
            write_verify(x, np.full((4, 4), 1e-5), WriteVerifySettings(tolerance_s=TOL))
