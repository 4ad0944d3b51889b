"""Mapping and the crossbar executor: exact on ideal devices, stuck devices avoided, storage round trip."""

import numpy as np
import pytest
import torch

from calibration.noise_model import (ConductanceWindow, Defects, NoiseModel, Periphery, ProgrammingNoise,
                                     ReadNoise)
from drivers import SoftwareCrossbar
from drivers.device_model import DeviceConfig
from hil.executor import CrossbarExecutor
from hil.mapping import ArraySlot, Mapping, MappingError, map_model, pair_targets
from hil.nn.blocks import crossbar_layers, layer_blocks
from hil.nn.matvec import digital_matvec, set_matvec
from hil.nn.mgrade import MGradeModel
from hil.nn.s4d import S4DModel

G_LO, G_HI = 5e-6, 80e-6


def noise_model(rows=64, cols=64):
    return NoiseModel(
        array_id="test", rows=rows, cols=cols,
        window=ConductanceWindow(g_min_s=1e-6, g_max_s=100e-6, g_min_spread=0, g_max_spread=0),
        programming=ProgrammingNoise(levels_s=[G_LO, G_HI], sigma_s=[0, 0], bias_s=[0, 0], tolerance_s=1e-6),
        read=ReadNoise(floor_s=0, relative=0), defects=Defects(stuck_on_rate=0, stuck_off_rate=0),
        periphery=Periphery(read_voltage_v=0.2))


def s4d_model():
    torch.manual_seed(0)
    return S4DModel(2, 3, d_model=4, d_state=6, n_layers=2).double().eval()


def mgrade_model():
    torch.manual_seed(1)
    return MGradeModel(2, 3, d_model=6, n_layers=2, max_delay=5, taps=2).double().eval()


def stream(model, x):
    state = model.init_state(x.shape[0])
    outputs = []
    for t in range(x.shape[1]):
        state = model.step(x[:, t], state)
        outputs.append(model.readout(state))
    return torch.stack(outputs, dim=1)


def deploy_ideal(model, n_arrays=4, size=64):
    xbars = [SoftwareCrossbar(size, size, config=DeviceConfig.ideal(), seed=i).open() for i in range(n_arrays)]
    mapping = map_model(model, [ArraySlot(f"a{i}", size, size) for i in range(n_arrays)], noise_model())
    for i, xbar in enumerate(xbars):
        xbar.program_exactly(mapping.targets(i))
    return mapping, xbars


@pytest.mark.parametrize("make", [s4d_model, mgrade_model], ids=["s4d", "mgrade"])
def test_ideal_crossbar_reproduces_the_digital_step(make):
    model = make()
    x = torch.randn(5, 12, 2, dtype=torch.float64)
    digital = stream(model, x)
    mapping, xbars = deploy_ideal(model)
    executor = CrossbarExecutor(model, mapping, xbars)
    set_matvec(model, executor)
    on_crossbar = stream(model, x)
    set_matvec(model, digital_matvec)
    relative = ((on_crossbar - digital).abs().max() / digital.abs().max()).item()
    assert relative < 1e-4
    # one transaction per array holding a layer's tiles, per layer product, per step (stream() reads
    # out at every step, so the decoder counts too): the whole batch rides along in each
    per_step = sum(len({(t.array, t.group) for t in mapping.layer_tiles(name)}) for name in crossbar_layers(model))
    assert executor.stats.transactions == per_step * x.shape[1]
    assert sum(x.total_transactions for x in xbars) == executor.stats.transactions


@pytest.mark.parametrize("kappa", [0.5, 3.0])
def test_predistortion_undoes_a_cubic_iv_curve(kappa):
    model = s4d_model()
    x = torch.randn(5, 12, 2, dtype=torch.float64)
    digital = stream(model, x)
    xbars = [SoftwareCrossbar(64, 64, config=DeviceConfig.ideal(iv_nonlinearity_per_v2=kappa, read_reference_v=0.15),
                              seed=i).open() for i in range(4)]
    mapping = map_model(model, [ArraySlot(f"a{i}", 64, 64) for i in range(4)], noise_model())
    for i, xbar in enumerate(xbars):
        # what write-verify would reach reading at 0.2 V: the conductance the cubic curve shows there
        xbar.program_exactly(mapping.targets(i) * (1 + kappa * 0.15 ** 2) / (1 + kappa * 0.2 ** 2))
    errors = {}
    for k in (None, kappa):
        set_matvec(model, CrossbarExecutor(model, mapping, xbars, iv_cubic_per_v2=k, iv_reference_v=0.2))
        errors[k] = ((stream(model, x) - digital).abs().max() / digital.abs().max()).item()
    set_matvec(model, digital_matvec)
    assert errors[kappa] < 1e-4 < 10 * 1e-4 < errors[None]


def test_predistorted_voltages_solve_the_cubic_and_stay_within_the_read_limit():
    model = s4d_model()
    mapping, xbars = deploy_ideal(model)
    ex = CrossbarExecutor(model, mapping, xbars, iv_cubic_per_v2=1.5, iv_reference_v=0.2)
    v = np.linspace(-ex.voltage_v, ex.voltage_v, 101)
    out = ex.predistort(v)
    assert np.allclose(out * (1 + 1.5 * out ** 2), v * (1 + 1.5 * 0.04), rtol=0, atol=1e-12)
    assert np.all(np.diff(out) > 0) and np.abs(out).max() <= ex.voltage_v
    assert np.array_equal(CrossbarExecutor(model, mapping, xbars).predistort(v), v)


def test_the_executor_is_wrong_when_the_arrays_are_not_programmed():
    """A check that the test above can fail: unprogrammed arrays give other outputs."""
    model = s4d_model()
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    digital = stream(model, x)
    mapping, _ = deploy_ideal(model)
    blank = [SoftwareCrossbar(64, 64, config=DeviceConfig.ideal(), seed=9).open() for _ in range(4)]
    set_matvec(model, CrossbarExecutor(model, mapping, blank))
    assert ((stream(model, x) - digital).abs().max() / digital.abs().max()).item() > 0.1


def test_blocks_cover_each_layer_product_exactly():
    for model in (s4d_model(), mgrade_model()):
        for name, layer in crossbar_layers(model).items():
            n_in, n_out, blocks = layer_blocks(layer)
            x = torch.randn(3, n_in, dtype=torch.float64)
            y = np.zeros((3, n_out))
            for b in blocks:
                gain = 1 if b.input_gain is None else b.input_gain
                np.add.at(y, (slice(None), b.outputs), (x.numpy()[:, b.inputs] / gain) @ b.weight.T)
            expected = layer(x.reshape(3, *(( -1, layer._layer.d_state + 1) if hasattr(layer, "_layer") else (-1,))))
            bias = getattr(layer, "bias", None)
            expected = expected.reshape(3, -1) - (bias if bias is not None else 0)
            assert np.allclose(y, expected.detach().numpy(), atol=1e-12), name


def test_tiles_of_a_layer_are_block_diagonal_others_stay_out_of_its_mvm_and_large_blocks_split():
    torch.manual_seed(0)
    model = S4DModel(1, 3, d_model=40, d_state=4, n_layers=1).double()      # encoder out 40 > 16 column pairs
    slots = [ArraySlot(f"a{i}", 32, 32) for i in range(30)]
    mapping = map_model(model, slots, noise_model())
    for a in range(len(slots)):
        on_array = [t for t in mapping.tiles if t.array == a]
        union = {}
        for layer in {(t.layer, t.group) for t in on_array}:
            tiles = [t for t in on_array if (t.layer, t.group) == layer]
            rows = np.concatenate([t.rows for t in tiles])
            cols = np.concatenate([np.r_[t.pos_cols, t.neg_cols] for t in tiles])
            assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)     # block-diagonal
            union[layer] = set(rows), set(cols)
        for x, (rx, cx) in union.items():
            for y, (ry, cy) in union.items():
                # no layer's MVM (its rows driven, its columns read) reaches another layer's devices
                assert x == y or not (rx & ry and cx & cy)
    encoder = mapping.layer_tiles("encoder")
    assert len(encoder) == 3 and sorted(np.concatenate([t.outputs for t in encoder])) == list(range(40))


def test_a_model_that_does_not_fit_is_refused_with_the_layer_named():
    model = s4d_model()
    with pytest.raises(MappingError, match="does not fit on 1 array"):
        map_model(model, [ArraySlot("small", 8, 8)], noise_model())


def test_a_full_diagonal_opens_a_new_group_on_the_same_array():
    torch.manual_seed(0)
    model = S4DModel(1, 3, d_model=12, d_state=4, n_layers=1).double()      # 12 blocks of 5x10
    mapping = map_model(model, [ArraySlot("a0", 96, 96)], noise_model())
    recurrence = mapping.layer_tiles("layers.0.s4d.recurrence")
    assert len({t.group for t in recurrence}) > 1 and {t.array for t in recurrence} == {0}


def test_stuck_devices_are_kept_off_the_s4d_diagonal_and_compensated():
    torch.manual_seed(0)
    model = S4DModel(1, 3, d_model=4, d_state=8, n_layers=1).double()
    rng = np.random.default_rng(0)
    stuck = np.full((128, 128), np.nan)
    mask = rng.random((128, 128)) < 0.02          # twice the default device's rate
    stuck[mask] = np.where(rng.random(mask.sum()) < 0.5, 100e-6, 1e-6)
    slot = ArraySlot("a0", 128, 128, stuck)
    mapping = map_model(model, [slot], noise_model())
    plain = map_model(model, [ArraySlot("a0", 128, 128)], noise_model())
    lost, lost_plain = 0.0, 0.0
    for tile, ref in zip(mapping.layer_tiles("layers.0.s4d.recurrence"), plain.layer_tiles("layers.0.s4d.recurrence")):
        sp = stuck[np.ix_(tile.rows, tile.pos_cols)].T
        sn = stuck[np.ix_(tile.rows, tile.neg_cols)].T
        on_stuck = np.isfinite(sp) | np.isfinite(sn)
        assert tile.critical is None or not (on_stuck & tile.critical).any()
        g = (np.where(np.isfinite(sp), sp, tile.target_pos_s), np.where(np.isfinite(sn), sn, tile.target_neg_s))
        lost += np.abs(tile.realised_weight(*g, mapping.span_s) - tile.weight).sum()
        # the same stuck devices under the unoptimised placement, uncompensated
        sp0 = stuck[np.ix_(ref.rows, ref.pos_cols)].T
        sn0 = stuck[np.ix_(ref.rows, ref.neg_cols)].T
        g0 = (np.where(np.isfinite(sp0), sp0, ref.target_pos_s), np.where(np.isfinite(sn0), sn0, ref.target_neg_s))
        lost_plain += np.abs(ref.realised_weight(*g0, plain.span_s) - ref.weight).sum()
    assert lost < 0.2 * lost_plain


def test_pair_targets_compensate_a_stuck_partner():
    w = np.array([[0.5, -0.5, 0.0, 0.2]])
    scale = np.array([1.0])
    nan = np.nan
    pos, neg = pair_targets(w, scale, G_LO, G_HI, 1e-6, 100e-6, np.array([[100e-6, nan, 1e-6, nan]]),
                            np.array([[nan, 100e-6, nan, nan]]))
    realised = (pos - neg) / (G_HI - G_LO)
    assert realised[0, 0] == pytest.approx(0.5)          # positive stuck on: negative set 0.5 window below it
    assert realised[0, 1] == pytest.approx(-0.5)         # negative stuck on: positive set below it
    assert realised[0, 2] == pytest.approx(0.0)          # zero weight with a stuck-off device: exact
    assert realised[0, 3] == pytest.approx(0.2)


def test_mapping_round_trips_through_bytes():
    model = mgrade_model()
    stuck = np.full((64, 64), np.nan)
    stuck[3, 5] = 1e-6
    mapping = map_model(model, [ArraySlot("a0", 64, 64, stuck), ArraySlot("a1", 64, 64)], noise_model())
    back = Mapping.from_bytes(mapping.to_bytes())
    assert back.layers.keys() == mapping.layers.keys() and len(back.tiles) == len(mapping.tiles)
    for a in range(2):
        assert np.array_equal(back.targets(a), mapping.targets(a), equal_nan=True)
    assert np.array_equal(back.arrays[0].stuck_value_s, stuck, equal_nan=True)
    assert back.summary() == mapping.summary()


def test_each_mvm_takes_the_finest_adc_range_that_cannot_saturate():
    model = mgrade_model()
    xbar = SoftwareCrossbar(64, 64, seed=0).open()                     # default device: 10-bit ADC
    mapping = map_model(model, [ArraySlot("a0", 64, 64)], noise_model())
    xbar.program_exactly(mapping.targets(0))
    executor = CrossbarExecutor(model, mapping, [xbar])
    ranges = sorted(xbar.converters().adc_ranges_a)
    targets = mapping.targets(0)
    for _, parts in executor._parts.values():
        for part in parts:
            worst = executor.voltage_v * np.nan_to_num(targets[np.ix_(part.rows, np.r_[part.pos, part.neg])]).sum(0).max()
            assert part.adc_range_a >= worst
            finer = [r for r in ranges if r < part.adc_range_a]
            assert not finer or finer[-1] < worst
    assert len({p.adc_range_a for _, parts in executor._parts.values() for p in parts}) > 1
    # a deployment driven at half the voltage halves the currents: every range is chosen for it
    before = {name: [p.adc_range_a for p in parts] for name, parts in executor._parts.values()}
    executor = CrossbarExecutor(model, mapping, [xbar], voltage_v=executor.voltage_v / 2)
    for name, parts in executor._parts.values():
        for part, range_before in zip(parts, before[name]):
            worst = executor.voltage_v * part.worst_current_per_v
            assert worst <= part.adc_range_a <= range_before
            assert part.adc_range_a == min([r for r in ranges if r >= worst] or [max(ranges)])


def test_drift_compensation_restores_each_group_whatever_else_the_rows_hold():
    """Drift only (ideal otherwise): the array first held an old pattern everywhere, programmed long
    ago, then the model; an hour later every output has drifted by the same power law, while the old
    cells (outside the model's groups but on its rows) drift far more slowly. Compensation per group
    restores the outputs; a probe that also summed the old cells would not."""
    model = s4d_model()
    nu = 0.02
    xbar = SoftwareCrossbar(128, 128, config=DeviceConfig.ideal(drift_nu_mean=nu), seed=0).open()
    mapping = map_model(model, [ArraySlot("a0", 128, 128)], noise_model(128, 128))
    xbar.program_exactly(np.full((128, 128), 90e-6))
    xbar.wait(1e5)
    xbar.program_exactly(mapping.targets(0))
    g_ref = xbar.true_conductance()
    executor = CrossbarExecutor(model, mapping, [xbar])
    executor.reference()
    x = torch.randn(4, 10, 2, dtype=torch.float64)
    set_matvec(model, executor)
    with torch.no_grad():
        before = stream(model, x)
        xbar.wait(3600)
        drifted = stream(model, x)
        gains = executor.compensate()
        executor.drift_compensation = True
        compensated = stream(model, x)
    set_matvec(model, digital_matvec)
    expected = (3600 + 1.0) ** nu               # t0 = 1 s; the cells were programmed at the reference
    assert np.allclose(gains, expected, rtol=2e-3)
    err = lambda a: float((a - before).norm() / before.norm())  # noqa: E731
    assert err(drifted) > 0.05
    assert err(compensated) < 1e-3
    # the old cells in the model's rows would have pulled a whole-row probe's factor well off
    rows = np.unique(np.concatenate([t.rows for t in mapping.tiles]))
    whole_ref, whole_now = (g[rows].sum() for g in (g_ref, xbar.true_conductance()))
    assert abs(whole_ref / whole_now / expected - 1) > 0.01


def test_deploy_warns_of_stuck_devices_far_above_the_window_inside_mvm_groups():
    from hil.deployment import shorted_note
    model = mgrade_model()
    stuck = np.full((64, 64), np.nan)
    assert shorted_note(map_model(model, [ArraySlot("a0", 64, 64, stuck)], noise_model())) == ""
    stuck[0, 0] = 2e-3                                    # a shorted filament, 20x the window's top
    note = shorted_note(map_model(model, [ArraySlot("a0", 64, 64, stuck)], noise_model()))
    assert note.startswith("warning: 1 stuck device(s)") and "2000 uS against 100 uS" in note


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_input_is_refused_before_any_mvm(bad):
    model = mgrade_model()
    mapping, xbars = deploy_ideal(model)
    executor = CrossbarExecutor(model, mapping, xbars)
    x = torch.randn(3, model.decoder.in_features, dtype=torch.float64)
    x[1, 2] = bad
    before = sum(xb.transactions["mvm"] for xb in xbars)
    with pytest.raises(FloatingPointError, match="decoder.*non-finite"):
        executor.product(model.decoder, x)
    assert sum(xb.transactions["mvm"] for xb in xbars) == before
