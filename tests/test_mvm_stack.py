"""A stack of MVMs is the same instrument as the MVMs one by one: same currents, same noise, same limits."""

import numpy as np
import pytest

from drivers import DeviceConfig, SoftwareCrossbar
from drivers.errors import CrossbarError, LimitViolation
from drivers.interface import Crossbar


def _programmed(config: DeviceConfig, seed: int = 3, noise_seed: int = 0) -> SoftwareCrossbar:
    xbar = SoftwareCrossbar(48, 40, config=config, seed=seed, noise_seed=noise_seed).open()
    rng = np.random.default_rng(seed)
    xbar.program_exactly(rng.uniform(config.g_min_s, config.g_max_s, xbar.shape))
    return xbar


def _requests(rng, parts=5, k=6, c=8, batch=3, rows=48, cols=40, voltage=0.2):
    r = np.stack([rng.choice(rows, k, replace=False) for _ in range(parts)])
    cc = np.stack([rng.choice(cols, c, replace=False) for _ in range(parts)])
    v = rng.uniform(-voltage, voltage, (parts, batch, k)).astype(np.float32)
    return r, cc, v


def _one_by_one(xbar, rows, cols, v, ranges):
    out = []
    for p in range(len(rows)):
        full = np.zeros((v.shape[1], xbar.shape[0]), np.float32)
        full[:, rows[p]] = v[p]
        out.append(xbar.mvm(full, adc_range_a=ranges[p])[:, cols[p]])
    return np.stack(out)


@pytest.mark.parametrize("config", [
    DeviceConfig.ideal(),
    # the default periphery (DAC, cubic I-V, ADC) with the noise switched off
    DeviceConfig(read_noise_relative=0.0, read_noise_floor_s=0.0, output_noise_a=0.0, drift_nu_mean=0.0,
                 drift_nu_std=0.0)])
def test_a_stack_gives_the_currents_of_its_mvms_one_by_one(config):
    rng = np.random.default_rng(0)
    a, b = _programmed(config), _programmed(config)
    rows, cols, v = _requests(rng)
    offered = a.converters().adc_ranges_a
    ranges = [None, offered[1], None, offered[3], offered[1]] if offered else [None] * 5
    want = _one_by_one(a, rows, cols, v, ranges)
    got = b.mvm_stack(rows, cols, v, adc_range_a=ranges)
    lsb = a.adc_range_a / 2 ** 9 if config.adc_bits else 0.0
    # summation order differs, so a current on a rounding edge may land one ADC code away
    assert np.allclose(got, want, rtol=1e-5, atol=lsb * 1.01 + 1e-15)
    assert b.now() == pytest.approx(a.now()) and b.transactions["mvm"] == a.transactions["mvm"] == 5
    same = [offered[2] if offered else None] * 5             # one range for the whole stack
    want = _one_by_one(a, rows, cols, v, same)
    assert np.allclose(b.mvm_stack(rows, cols, v, adc_range_a=same), want, rtol=1e-5, atol=lsb / 4 * 1.01 + 1e-15)


def test_the_drivers_default_stack_is_the_mvms_one_by_one():
    """What a bench driver without its own stack does (pyvisa, serial): one whole-array MVM per part."""
    config = DeviceConfig(read_noise_relative=0.0, read_noise_floor_s=0.0, output_noise_a=0.0)
    a, b = _programmed(config), _programmed(config)
    rows, cols, v = _requests(np.random.default_rng(1))
    want = _one_by_one(a, rows, cols, v, [None] * 5)
    got = Crossbar._mvm_stack(b, rows, cols, v, [None] * 5)
    assert np.array_equal(got, want)


def test_a_stack_has_the_noise_of_single_mvms():
    """Read noise frozen within a read-noise window, output noise per sample: the spread of a stacked
    read and of a single one agree, and two parts in one window see the same cell fluctuation."""
    config = DeviceConfig(output_noise_a=0.0, read_noise_relative=0.05, dac_bits=None, adc_bits=None,
                          drift_nu_mean=0.0, drift_nu_std=0.0)
    single, stacked = _programmed(config, noise_seed=1), _programmed(config, noise_seed=2)
    rows = np.arange(8)[None].repeat(2, 0)
    cols = np.arange(4)[None].repeat(2, 0)
    v = np.full((2, 1, 8), 0.1, np.float32)
    a, b = [], []
    for _ in range(400):
        single.wait(config.read_noise_correlation_s)       # a fresh window each time
        stacked.wait(config.read_noise_correlation_s)
        full = np.zeros((1, 48), np.float32)
        full[:, :8] = 0.1
        a.append(single.mvm(full)[0, :4])
        pair = stacked.mvm_stack(rows, cols, v)
        assert np.array_equal(pair[0], pair[1])             # same window, same cells, no output noise
        b.append(pair[0, 0])
    sa, sb = np.std(a, axis=0), np.std(b, axis=0)
    assert np.allclose(np.mean(a, axis=0), np.mean(b, axis=0), rtol=0.02)
    # 400 samples: the standard deviation's sampling error is about 3.5 %
    assert np.all(np.abs(sb / sa - 1) < 0.2)


def test_a_stack_is_checked_before_anything_reaches_the_array():
    xbar = _programmed(DeviceConfig())
    rows, cols, v = _requests(np.random.default_rng(2))
    before = xbar.now()
    too_high = v.copy()
    too_high[2, 0, 0] = xbar.limits.max_read_voltage_v * 1.5
    with pytest.raises(LimitViolation, match="max_read_voltage_v"):
        xbar.mvm_stack(rows, cols, too_high)
    twice = rows.copy()
    twice[1, 1] = twice[1, 0]
    with pytest.raises(LimitViolation, match="row appears twice"):
        xbar.mvm_stack(twice, cols, v)
    outside = cols.copy()
    outside[0, 0] = 40
    with pytest.raises(LimitViolation, match="cols index outside"):
        xbar.mvm_stack(rows, outside, v)
    with pytest.raises(CrossbarError, match="ADC range"):
        xbar.mvm_stack(rows, cols, v, adc_range_a=[1.234e-3] * 5)
    with pytest.raises(LimitViolation, match=r"rows \(P, K\)"):
        xbar.mvm_stack(rows, cols, v[:, :, :3])
    assert xbar.now() == before and xbar.transactions["mvm"] == 0
    # a layout that passed once is not let through again once its arrays are changed in place
    xbar.mvm_stack(rows, cols, v)
    kept, rows[1, 1] = rows[1, 1], rows[1, 0]
    with pytest.raises(LimitViolation, match="row appears twice"):
        xbar.mvm_stack(rows, cols, v)
    rows[1, 1], cols[0, 0] = kept, 40
    with pytest.raises(LimitViolation, match="cols index outside"):
        xbar.mvm_stack(rows, cols, v)


@pytest.mark.parametrize("family", ["pcm", "vcm"])
def test_every_family_gives_a_stack_the_currents_of_its_mvms(family):
    """The other families keep their own read physics (telegraph noise, a frozen MVM matrix): a stack on
    one chip and single MVMs on its twin agree to within that noise."""
    from drivers.families import PCMConfig, VCMConfig

    config = PCMConfig() if family == "pcm" else VCMConfig()
    chips = [SoftwareCrossbar(48, 40, config=config, seed=3).open() for _ in range(2)]
    for chip in chips:
        truth = chip.truth
        chip.program_exactly(0.5 * (truth.g_min_s + truth.g_max_s))
    rng = np.random.default_rng(4)
    rows = np.stack([np.arange(8 * p, 8 * p + 8) for p in range(5)])        # disjoint parts
    cols = np.stack([np.arange(8 * p, 8 * p + 8) for p in range(5)])
    v = rng.uniform(0.05, 0.2, (5, 2, 8)).astype(np.float32)
    for _ in range(2):            # the second time inside the read-noise window the first one opened
        want = _one_by_one(chips[0], rows, cols, v, [None] * 5)
        got = chips[1].mvm_stack(rows, cols, v)
    assert np.all(np.abs(got - want) <= 0.1 * np.abs(want).max())
