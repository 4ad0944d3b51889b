"""Maintenance of a deployment: group errors against the blocks' own matrices, drift compensated before
cells are rewritten, and a disturbed group found, rewritten alone, and restored."""

import numpy as np

from drivers import SoftwareCrossbar, WriteVerifySettings
from drivers.device_model import DeviceConfig
from hil.executor import CrossbarExecutor
from hil.maintenance import Maintainer, layer_matrix
from hil.mapping import ArraySlot, map_model
from hil.nn.blocks import crossbar_layers
from hil.nn.s4d import S4DRecurrence

from test_executor import mgrade_model, noise_model, s4d_model

SETTINGS = WriteVerifySettings(tolerance_s=0.5e-6)


def deployed(model, **device):
    xbar = SoftwareCrossbar(128, 128, config=DeviceConfig.ideal(**device), seed=0).open()
    mapping = map_model(model, [ArraySlot("a0", 128, 128)], noise_model(128, 128))
    xbar.program_exactly(mapping.targets(0))
    executor = CrossbarExecutor(model, mapping, [xbar])
    executor.reference()
    return xbar, mapping, executor


def test_a_linear_layers_matrix_is_its_weight_and_an_s4d_recurrence_its_residual_step():
    model = s4d_model()
    np.testing.assert_allclose(layer_matrix(model.decoder), model.decoder.weight.detach().numpy())
    rec = next(m for m in crossbar_layers(model).values() if isinstance(m, S4DRecurrence))
    mats = rec.crossbar_matrices().detach().numpy()                   # (H, N+1, N+1), block diagonal
    expected = np.zeros((mats.shape[0] * mats.shape[1],) * 2)
    for c, block in enumerate(mats):
        expected[c * block.shape[0]:(c + 1) * block.shape[0], c * block.shape[0]:(c + 1) * block.shape[0]] = block
    np.testing.assert_allclose(layer_matrix(rec), expected, atol=1e-12)


def test_drift_is_compensated_without_writing_a_cell():
    """Uniform drift (ideal device otherwise): a day later every group is off by the drift factor;
    compensation alone brings them back, so nothing is rewritten."""
    nu = 0.02
    model = mgrade_model()
    xbar, _, executor = deployed(model, drift_nu_mean=nu)
    keeper = Maintainer(model, executor, SETTINGS, bound=0.01)
    start = keeper.check(0.0)
    assert max(start.errors) < 1e-6 and not start.actions
    xbar.wait(86400)
    day = keeper.check(86400.0)
    drift = 1 - (86400 + 1.0) ** -nu                                    # t0 = 1 s
    assert min(day.errors_before) > 0.9 * drift
    assert [a.kind for a in day.actions] == ["compensate"] and max(day.errors) < 1e-3
    assert day.actions[0].mvms == len(executor.groups)                # one probe per group


def test_a_disturbed_group_is_rewritten_alone_and_restored():
    model = mgrade_model()
    xbar, mapping, executor = deployed(model)
    keeper = Maintainer(model, executor, SETTINGS, bound=0.02)
    assert not keeper.check(0.0).actions
    # disturb the cells of one group: every cell of its tiles set 30 % higher
    victim = 1
    part = executor.groups[victim][1]
    g = xbar.true_conductance().copy()
    for tile in part.tiles:
        cells = np.ix_(tile.rows, np.r_[tile.pos_cols, tile.neg_cols])
        g[cells] *= 1.3
    xbar.program_exactly(np.where(np.isfinite(mapping.targets(0)), g, np.nan))
    check = keeper.check(10.0)
    out = [i for i, e in enumerate(check.errors_before) if e > 0.02]
    assert victim in out
    rewrite = [a for a in check.actions if a.kind == "rewrite"]
    assert len(rewrite) == 1 and victim in rewrite[0].groups
    cells = sum(len(t.rows) * 2 * len(t.pos_cols) for t in part.tiles)
    assert rewrite[0].cells >= cells and rewrite[0].write_calls > 0
    assert check.errors[victim] < 0.02
