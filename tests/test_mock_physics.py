"""Each physical effect of the software crossbar, checked against its configured statistics or a closed form."""

import numpy as np
import pytest

from drivers import DeviceConfig, SoftwareCrossbar

IDEAL = DeviceConfig.ideal()


def opened(rows=64, cols=64, **kw):
    return SoftwareCrossbar(rows, cols, **kw).open()


def all_cells(x):
    r, c = np.indices(x.shape)
    return r.ravel(), c.ravel()


def mean_read(x, n=20, v=0.2):
    return np.mean([x.read(voltage_v=v) for _ in range(n)], axis=0)


def test_same_seed_same_result_and_different_seed_differs():
    def session(seed):
        x = opened(16, 16, seed=seed)
        r, c = all_cells(x)
        x.pulse(r, c, 1.3, 1e-6)
        a = x.read(voltage_v=0.2)
        x.wait(100.0)
        b = x.mvm(np.full((3, 16), 0.1))
        x.pulse(r[:10], c[:10], -1.2, 2e-6)
        return np.concatenate([a.ravel(), b.ravel(), x.read(voltage_v=0.1).ravel()])

    assert np.array_equal(session(7), session(7))
    assert not np.allclose(session(7), session(8))


def test_device_to_device_window_spread_matches_config():
    # no per-pulse additive noise, so saturated cells sit exactly on their bounds
    cfg = DeviceConfig(window_spread=0.08, stuck_on_rate=0, stuck_off_rate=0, c2c_absolute=0)
    x = opened(config=cfg, seed=1)
    r, c = all_cells(x)
    for _ in range(4):                      # saturate: r >> 1 at 2.2 V
        x.pulse(r, c, 2.2, 1e-5)
    g_hi = mean_read(x)
    for _ in range(8):                      # cycle noise is relative to the step: it dies out at the bound
        x.pulse(r, c, -2.2, 1e-5)
    g_lo = mean_read(x, n=100)          # the read-noise floor is 20 % of g_min per read
    assert np.std(np.log(g_hi)) == pytest.approx(0.08, rel=0.1)
    assert np.median(g_hi) == pytest.approx(cfg.g_max_s, rel=0.02)
    assert np.std(np.log(g_lo)) == pytest.approx(0.08, rel=0.15)
    assert np.median(g_lo) == pytest.approx(cfg.g_min_s, rel=0.03)


def test_stuck_cells_never_move_and_occur_at_configured_rates():
    cfg = DeviceConfig(stuck_on_rate=0.04, stuck_off_rate=0.06)
    x = opened(128, 128, config=cfg, seed=2)
    truth = x.truth
    n = truth.stuck.size
    assert truth.stuck_on.sum() / n == pytest.approx(0.04, abs=0.01)
    assert truth.stuck_off.sum() / n == pytest.approx(0.06, abs=0.01)
    before = x.true_conductance()
    r, c = all_cells(x)
    for amp in (1.5, 2.0, -1.8, 2.0, -2.0, 1.2):
        x.pulse(r, c, amp, 1e-5)
        x.wait(3600.0)
        after = x.true_conductance()
        assert np.array_equal(after[truth.stuck], before[truth.stuck])
    # and the free cells did move
    assert np.mean(np.abs(after - before)[~truth.stuck] > 1e-7) > 0.95
    reads = mean_read(x)
    assert np.allclose(reads[truth.stuck_on], truth.g_max_s[truth.stuck_on], rtol=0.01)


def test_soft_bound_pulse_response_matches_closed_form():
    cfg = DeviceConfig.ideal(initial_state=0.0)
    x = opened(8, 8, config=cfg, seed=3)
    r, c = all_cells(x)
    g0 = x.true_conductance()
    v, w = 1.3, 1e-6
    rate = (w / cfg.reference_width_s) * np.exp((v - cfg.set_v_half) / cfg.switching_slope_v)
    gmax = x.truth.g_max_s
    for n in range(1, 6):
        x.pulse(r, c, v, w)
        expected = gmax - (gmax - g0) * np.exp(-n * rate)
        assert np.allclose(x.true_conductance(), expected, rtol=1e-9)
    # state dependence: successive identical pulses give ever smaller steps
    steps = []
    g = x.true_conductance()
    for _ in range(4):
        x.pulse(r, c, v, w)
        g_new = x.true_conductance()
        steps.append(float(np.mean(g_new - g)))
        g = g_new
    assert all(a > b for a, b in zip(steps, steps[1:]))


def test_pulse_response_is_exponential_in_voltage_linear_in_width_and_thresholded():
    cfg = DeviceConfig.ideal()
    slope = cfg.switching_slope_v

    def first_step(v, w):
        x = opened(4, 4, config=cfg, seed=4)
        r, c = all_cells(x)
        g0 = x.true_conductance()
        x.pulse(r, c, v, w)
        frac = (x.true_conductance() - g0) / (x.truth.g_max_s - g0)
        return float(np.mean(-np.log1p(-frac)))       # the rate r

    r1 = first_step(1.0, 1e-6)
    assert first_step(1.0 + slope, 1e-6) / r1 == pytest.approx(np.e, rel=1e-6)
    assert first_step(1.0, 3e-6) / r1 == pytest.approx(3.0, rel=1e-6)
    assert first_step(cfg.set_threshold_v * 0.99, 1e-4) == 0.0


def test_cycle_to_cycle_noise_spread_matches_config():
    cfg = DeviceConfig.ideal(c2c_relative=0.3)
    x = opened(64, 64, config=cfg, seed=5)
    r, c = all_cells(x)
    g0 = x.true_conductance()
    x.pulse(r, c, 1.3, 1e-6)
    rate = np.exp((1.3 - cfg.set_v_half) / cfg.switching_slope_v)
    nominal = (x.truth.g_max_s - g0) * -np.expm1(-rate)
    rel = (x.true_conductance() - g0) / nominal - 1
    assert np.std(rel) == pytest.approx(0.3, rel=0.08)
    assert abs(np.mean(rel)) < 0.03


def configured_read_sigma(cfg: DeviceConfig, g: np.ndarray) -> np.ndarray:
    """The read-noise law as DeviceConfig documents it, from the configured values."""
    return np.sqrt(cfg.read_noise_floor_s ** 2 + (cfg.read_noise_relative * g) ** 2)


def variance_ratio_bound(n_reads: int, n_groups: int, k: float = 5.0) -> float:
    """k standard errors of the mean of n_groups ratios s^2 / sigma^2 of n_reads normal reads each
    (s^2 / sigma^2 ~ chi2(n - 1) / (n - 1), variance 2 / (n - 1))."""
    return k * np.sqrt(2.0 / (n_reads - 1) / n_groups)


@pytest.mark.parametrize("state", [0.05, 0.5, 0.95])
def test_read_noise_spread_matches_configured_law(state):
    cfg = DeviceConfig(initial_state=state, stuck_on_rate=0, stuck_off_rate=0, iv_nonlinearity_per_v2=0)
    x = opened(32, 32, config=cfg, seed=6)
    g_true = x.true_conductance()
    n = 200
    reads = np.stack([x.read(voltage_v=0.2) for _ in range(n)])
    expected = configured_read_sigma(cfg, g_true)
    ratio = reads.var(axis=0, ddof=1) / expected ** 2
    assert ratio.mean() == pytest.approx(1.0, abs=variance_ratio_bound(n, g_true.size))
    # unbiased: the standardised means are standard normal
    z = (reads.mean(axis=0) - g_true) / (expected / np.sqrt(n))
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert z.std() == pytest.approx(1.0, abs=5 / np.sqrt(2 * z.size))


def test_read_noise_is_relatively_larger_at_low_conductance():
    """Cells programmed to 2, 20 and 90 uS, read many times: the measured relative spread falls with
    conductance as the configured floor-plus-relative law says, each level within its sampling error."""
    cfg = DeviceConfig(stuck_on_rate=0, stuck_off_rate=0, iv_nonlinearity_per_v2=0)
    x = opened(32, 30, config=cfg, seed=15)
    levels = np.array([2e-6, 20e-6, 90e-6])
    targets = np.repeat(levels, 10)[None].repeat(32, axis=0)      # ten columns per level
    x.program_exactly(targets)
    g_true = x.true_conductance()
    n = 200
    reads = np.stack([x.read(voltage_v=0.2) for _ in range(n)])
    ratio = reads.var(axis=0, ddof=1) / configured_read_sigma(cfg, g_true) ** 2
    relative = reads.std(axis=0, ddof=1) / g_true
    measured = [relative[:, 10 * k:10 * (k + 1)].mean() for k in range(3)]
    for k in range(3):
        cells = ratio[:, 10 * k:10 * (k + 1)]
        assert cells.mean() == pytest.approx(1.0, abs=variance_ratio_bound(n, cells.size))
    assert measured[0] > 5 * measured[1] and measured[1] > 1.5 * measured[2]


def test_drift_follows_power_law_with_configured_exponent_and_goes_down():
    # reads take a microsecond, so a burst of reads sees one instant of the drift
    cfg = DeviceConfig(drift_nu_mean=0.02, drift_nu_std=0.005, stuck_on_rate=0.02, stuck_off_rate=0.0,
                       iv_nonlinearity_per_v2=0, read_time_s=1e-6)
    x = opened(32, 32, config=cfg, seed=7)
    r, c = all_cells(x)
    x.pulse(r, c, 1.45, 1e-6)
    t_prog = x.now()
    times = np.array([1.0, 10.0, 100.0, 1000.0, 10000.0])
    n = 20
    g, means, variances = [], [], []
    for t in times:
        x.wait(t_prog + t - x.now())
        g.append(x.true_conductance())
        reads = np.stack([x.read(voltage_v=0.2) for _ in range(n)])
        means.append(reads.mean(axis=0))
        variances.append(reads.var(axis=0, ddof=1))
    g = np.stack(g)
    free = ~x.truth.stuck
    assert np.all(np.diff(g[:, free], axis=0) < 0), "drift must lower conductance"
    assert np.all(g[:, x.truth.stuck] == g[0, x.truth.stuck])
    # From the reads alone: the per-cell slope of log g against log((t + t0) / t0) is -nu (the power law),
    # and its standard error follows from the sample variance of the reads at each time.
    logt = np.log((times + cfg.drift_t0_s) / cfg.drift_t0_s)
    y = np.log(np.stack(means)[:, free])
    var_y = np.stack(variances)[:, free] / n / np.stack(means)[:, free] ** 2
    xc = logt - logt.mean()
    sxx = xc @ xc
    nu = -(xc @ y) / sxx
    se = np.sqrt((xc ** 2) @ var_y) / sxx
    # each cell's exponent is its hidden one, within its measurement error
    z = (nu - x.truth.drift_nu[free]) / se
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    # (the standard errors are themselves estimated from 20 reads per time, which widens z by about 1 %)
    assert z.std() == pytest.approx(1.0, abs=5 / np.sqrt(2 * z.size))
    assert np.abs(z).max() < 5.5
    # and the exponents over the array have the configured mean and spread: sampling error of the
    # mean of N cells, and of a standard deviation (s / sqrt(2N)), with the measurement error removed
    spread = np.sqrt(nu.var(ddof=1) - np.mean(se ** 2))
    assert nu.mean() == pytest.approx(0.02, abs=5 * np.sqrt((0.005 ** 2 + np.mean(se ** 2)) / nu.size))
    assert spread == pytest.approx(0.005, abs=5 * 0.005 / np.sqrt(2 * nu.size))


def test_virtual_clock_advances_with_operations_and_wait():
    x = opened(8, 8)
    t0 = x.now()
    x.read(voltage_v=0.2)
    assert x.now() == pytest.approx(t0 + x.config.read_time_s)
    x.wait(3600.0)
    assert x.now() == pytest.approx(t0 + x.config.read_time_s + 3600.0)
    with pytest.raises(ValueError):
        x.wait(-1.0)


def test_ideal_mvm_is_exact_matrix_product():
    x = opened(32, 16, config=DeviceConfig.ideal(initial_state=0.3), seed=8)
    r, c = all_cells(x)
    rng = np.random.default_rng(0)
    x.pulse(r, c, rng.uniform(1.0, 1.5, r.size), 1e-6)
    v = rng.uniform(-0.2, 0.2, (10, 32))
    expected = v @ x.true_conductance()
    assert np.allclose(x.mvm(v), expected, rtol=1e-5, atol=1e-12)
    assert np.allclose(x.mvm(v[0]), expected[0], rtol=1e-5, atol=1e-12)


def test_dac_quantises_inputs_to_its_grid():
    cfg = DeviceConfig.ideal(dac_bits=6, initial_state=0.5)
    x = opened(16, 8, config=cfg, seed=9)
    lsb = cfg.dac_range_v / (2 ** 5 - 1)
    v = np.random.default_rng(1).uniform(-0.2, 0.2, (20, 16))
    vq = np.round(v / lsb) * lsb
    assert np.allclose(x.mvm(v), vq @ x.true_conductance(), rtol=1e-5)
    assert np.array_equal(x.mvm(vq + 0.3 * lsb), x.mvm(vq - 0.3 * lsb))


def test_adc_outputs_are_quantised_and_clipped():
    cfg = DeviceConfig.ideal(adc_bits=8, adc_range_a=50e-6, initial_state=0.5)
    x = opened(16, 8, config=cfg, seed=10)
    lsb = 50e-6 / 127
    v = np.random.default_rng(2).uniform(-0.05, 0.05, (50, 16))
    out = x.mvm(v)
    codes = out / lsb
    assert np.allclose(codes, np.round(codes), atol=1e-3)
    assert np.allclose(out, np.clip(np.round(v @ x.true_conductance() / lsb), -127, 127) * lsb, atol=lsb * 0.51)
    big = x.mvm(np.full((1, 16), 0.2))
    assert np.allclose(big, 127 * lsb, rtol=1e-6)


def test_output_noise_spread_matches_config():
    cfg = DeviceConfig.ideal(output_noise_a=2e-7, initial_state=0.5)
    x = opened(16, 64, config=cfg, seed=11)
    v = np.full((2000, 16), 0.1)
    out = x.mvm(v)
    assert np.std(out - v[:1] @ x.true_conductance()) == pytest.approx(2e-7, rel=0.03)


def test_iv_nonlinearity_follows_configured_law():
    kappa = 2.0
    cfg = DeviceConfig.ideal(iv_nonlinearity_per_v2=kappa, initial_state=0.5)
    x = opened(16, 8, config=cfg, seed=12)
    v = 0.05
    i1 = x.mvm(np.full(16, v))
    i2 = x.mvm(np.full(16, 2 * v))
    assert np.allclose(i2 / i1, 2 * (1 + kappa * 4 * v * v) / (1 + kappa * v * v), rtol=1e-5)
    # reads are referenced to read_reference_v: at that voltage the reading is the conductance itself
    ref = cfg.read_reference_v
    assert np.allclose(x.read(voltage_v=ref), x.true_conductance(), rtol=1e-6)
    assert np.allclose(x.read(voltage_v=0.1), x.true_conductance() * (1 + kappa * 0.01) / (1 + kappa * ref ** 2),
                       rtol=1e-6)


def test_mvm_read_noise_has_configured_spread_between_correlation_times():
    cfg = DeviceConfig.ideal(read_noise_relative=0.02, read_noise_floor_s=0.1e-6, initial_state=0.5)
    x = opened(16, 32, config=cfg, seed=13)
    v = np.full((1, 16), 0.1)
    n = 400
    outs = []
    for _ in range(n):
        x.wait(cfg.read_noise_correlation_s)
        outs.append(x.mvm(v)[0])
    outs = np.array(outs)
    sigma = configured_read_sigma(cfg, x.true_conductance())
    # each column sums 16 independent device fluctuations, each scaled by its row's voltage
    expected = np.sqrt(((v[0][:, None] ** 2) * sigma ** 2).sum(axis=0))
    ratio = outs.var(axis=0, ddof=1) / expected ** 2
    assert ratio.mean() == pytest.approx(1.0, abs=variance_ratio_bound(n, ratio.size))
    assert np.mean(outs, axis=0) == pytest.approx(v[0] @ x.true_conductance(), abs=5 * expected.max() / np.sqrt(n))


def test_mvm_batches_larger_than_the_noise_pool_keep_their_statistics():
    cfg = DeviceConfig.ideal(output_noise_a=1e-7, adc_bits=16, adc_range_a=1e-3, initial_state=0.5)
    x = opened(4, 128, config=cfg, seed=14)
    v = np.full((6000, 4), 0.1)            # 768,000 outputs: more than half the pre-drawn pool
    out = x.mvm(v)
    assert out.shape == (6000, 128) and np.all(np.isfinite(out))
    assert np.std(out - v[:1] @ x.true_conductance()) == pytest.approx(1e-7, rel=0.05)


def test_a_selected_adc_range_refines_the_step_and_clips_at_its_full_scale():
    from drivers import CrossbarError

    xbar = SoftwareCrossbar(16, 16, config=DeviceConfig.ideal(adc_bits=8, dac_bits=None), seed=0).open()
    ranges = xbar.converters().adc_ranges_a
    assert ranges[0] == xbar.adc_range_a and len(ranges) > 3
    v = np.full((1, 16), 0.01)
    exact = v @ xbar.true_conductance()
    levels = 2 ** 7 - 1
    for r in ranges[:4]:
        out = xbar.mvm(v, adc_range_a=r)
        step = r / levels
        assert np.abs(out - np.clip(exact, -r, r)).max() <= step / 2 + 1e-12
        assert np.allclose(out / step, np.round(out / step), atol=1e-3)
    big = xbar.mvm(np.full((1, 16), 0.2), adc_range_a=ranges[-1])
    assert np.allclose(big, ranges[-1] / levels * levels)          # saturated at the selected full scale
    with pytest.raises(CrossbarError, match="not one the instrument offers"):
        xbar.mvm(v, adc_range_a=1.2345e-4)
