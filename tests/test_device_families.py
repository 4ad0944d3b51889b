"""Device families of the software crossbar, measured on simulated arrays against the published laws.

The PCM laws are those of IBM's statistical PCM model as coded in aihwkit
(src/aihwkit/inference/noise/pcm.py; Nandakumar et al., ICECS 2019; Joshi et al., Nat. Commun. 2020),
written out again here rather than imported, so the simulator is checked against the publication.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from drivers import DeviceConfig, SoftwareCrossbar
from drivers.families import PCMConfig, VCMConfig
from hil.protocol import MockSpec
from hil.protocol_loader import ProtocolError, load_protocol

G_MAX = 25e-6
# No spread or faults, an exact periphery: what is measured is the device law alone.
CLEAN = dict(window_spread=0.0, stuck_low_rate=0.0, stuck_high_rate=0.0, stuck_mid_rate=0.0,
             iv_nonlinearity_per_v2=0.0, dac_bits=None, adc_bits=None, output_noise_a=0.0)


def published_prog_sigma(x):
    return (0.26348 + 1.9650 * x - 1.1731 * x ** 2) * 1e-6          # uS at g_max = 25 uS


def published_nu(x):
    mu = min(max(-0.0155 * math.log(x) + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * math.log(x) - 0.0059, 0.008), 0.045)
    return mu, sd


def folded_normal(mu, sd):
    """Mean and sigma of |N(mu, sd^2)|, closed form."""
    phi = 0.5 * (1 + math.erf(-mu / (sd * math.sqrt(2))))
    mean = sd * math.sqrt(2 / math.pi) * math.exp(-mu ** 2 / (2 * sd ** 2)) + mu * (1 - 2 * phi)
    return mean, math.sqrt(mu ** 2 + sd ** 2 - mean ** 2)


def published_read_rel(x, t_since_programming, t0=20.0, t_read=250e-9):
    q = min(0.0088 / max(x ** 0.65, 1e-3), 0.2)
    t = t_since_programming + t0
    return q * math.sqrt(math.log((t + t_read) / (2 * t_read)))


def pcm(rows=96, cols=64, seed=0, **kw):
    return SoftwareCrossbar(rows, cols, config=PCMConfig(**{**CLEAN, **kw}), seed=seed).open()


def bands(x, values):
    """Targets with one value per band of rows (each band thousands of cells)."""
    targets = np.empty(x.shape)
    for k, band in enumerate(np.array_split(np.arange(x.shape[0]), len(values))):
        targets[band] = values[k]
    return targets, np.array_split(np.arange(x.shape[0]), len(values))


def test_pcm_family_is_chosen_by_config_and_keeps_the_crossbar_interface():
    x = pcm(16, 16)
    assert type(x).__name__ == "PCMCrossbar" and isinstance(x, SoftwareCrossbar)
    assert "PCM" in x.identity.model
    assert type(SoftwareCrossbar(8, 8, config=DeviceConfig(), seed=0)) is SoftwareCrossbar


@pytest.mark.parametrize("xs", [(1.0, 0.5, 0.1)])
def test_pcm_programming_noise_matches_the_published_polynomial(xs):
    x = pcm(seed=1)
    targets, rows = bands(x, [v * G_MAX for v in xs])
    x.program_with_noise(targets)
    g = x.true_conductance()                 # no time has passed: no drift
    for v, band in zip(xs, rows):
        err = g[band] - v * G_MAX
        n = err.size
        assert abs(err.mean()) < 4 * published_prog_sigma(v) / math.sqrt(n)
        assert err.std() == pytest.approx(published_prog_sigma(v), rel=4 / math.sqrt(2 * n))


def test_pcm_drift_exponent_mean_and_spread_depend_on_conductance_as_published():
    xs = (1.0, 0.3, 0.1, 0.03)
    x = pcm(128, 64, seed=2)
    targets, rows = bands(x, [v * G_MAX for v in xs])
    x.program_exactly(targets)
    t = 86_400.0
    x.wait(t)
    nu = -np.log(x.true_conductance() / targets) / math.log((t + 20.0) / 20.0)
    for v, band in zip(xs, rows):
        mean, sd = folded_normal(*published_nu(v))
        n = nu[band].size
        assert nu[band].mean() == pytest.approx(mean, abs=4 * sd / math.sqrt(n))
        assert nu[band].std() == pytest.approx(sd, rel=5 / math.sqrt(2 * n))
    # both grow towards low conductance
    assert nu[rows[-1]].mean() > nu[rows[0]].mean() and nu[rows[-1]].std() > 3 * nu[rows[0]].std()


def test_pcm_read_noise_is_1_over_f_and_grows_with_time_since_programming():
    xs = (1.0, 0.5, 0.1)
    x = pcm(seed=3)
    targets, rows = bands(x, [v * G_MAX for v in xs])
    x.program_exactly(targets)
    read_time = x.config.read_time_s
    measured = {}
    for wait in (0.0, 3600.0, 86_400.0):
        x.wait(wait)
        age = x.now() + read_time               # the read's own duration passes before it samples
        g_true = x.true_conductance()
        rel = x.read(voltage_v=0.2) / g_true - 1
        for v, band in zip(xs, rows):
            expected = published_read_rel(v, age)
            n = rel[band].size
            assert rel[band].std() == pytest.approx(expected, rel=4 / math.sqrt(2 * n)), (v, wait)
            measured[v, wait] = rel[band].std()
    for v in xs:
        assert measured[v, 0.0] < measured[v, 86_400.0]


def test_pcm_window_is_near_25_uS_and_set_is_gradual_reset_abrupt():
    x = pcm(64, 64, seed=4)
    r, c = (a.ravel() for a in np.indices(x.shape))
    medians = []
    for _ in range(8):
        x.pulse(r, c, 1.0, 1e-6)
        medians.append(np.median(x.read(voltage_v=0.2)))
    assert np.all(np.diff(medians[:4]) > 0)                      # partial SET accumulates
    assert medians[0] < 0.8 * G_MAX
    assert medians[-1] == pytest.approx(G_MAX, rel=0.05)
    x.pulse(r, c, -1.6, 1e-7)                                    # one full melt-quench RESET
    assert np.median(x.read(voltage_v=0.2)) < 0.05 * G_MAX


def test_pcm_mvm_goes_through_the_same_periphery():
    x = pcm(64, 32, seed=5, read_noise_scale=0.0)
    x.program_exactly(np.random.default_rng(0).uniform(2e-6, 20e-6, x.shape))
    v = np.random.default_rng(1).uniform(-0.2, 0.2, (4, 64))
    np.testing.assert_allclose(x.mvm(v), v @ x.true_conductance(), rtol=1e-5, atol=1e-12)
    y = SoftwareCrossbar(64, 32, config=PCMConfig(**{**CLEAN, "adc_bits": 6}), seed=5).open()
    y.program_exactly(x.true_conductance())
    lsb = y.adc_range_a / (2 ** 5 - 1)
    assert np.all(np.abs(np.round(y.mvm(v) / lsb) - y.mvm(v) / lsb) < 1e-3)       # quantised to ADC codes


@pytest.mark.parametrize("config", [PCMConfig(preset="pessimistic"), DeviceConfig(preset="pessimistic"),
                                    VCMConfig(preset="pessimistic")], ids=["pcm", "rram", "vcm"])
def test_pessimistic_preset_has_about_ten_percent_faulty_devices(config):
    x = SoftwareCrossbar(128, 128, config=config, seed=6).open()
    stuck = x.truth.stuck
    p, n = 0.11, stuck.size                      # Li et al. 2018: 11 % unresponsive
    assert stuck.mean() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    before = x.true_conductance()
    r, c = (a.ravel() for a in np.indices(x.shape))
    x.pulse(r, c, 1.5, 1e-6)
    x.pulse(r, c, -1.6, 1e-6)
    after = x.true_conductance()
    assert np.array_equal(after[stuck], before[stuck]) or np.allclose(after[stuck], before[stuck], rtol=1e-6)
    # frozen anywhere in the window a cell is operated in, not only at its bounds (a gap model's window
    # ends where SET stops under compliance, below its closed gap)
    mid = x.truth.stuck_mid
    lo, hi = x._fault_window() if hasattr(x, "_fault_window") else (x.truth.g_min_s, x.truth.g_max_s)
    frac = (before[mid] - lo[mid]) / (hi[mid] - lo[mid])
    assert 0.4 < np.median(frac) < 0.6 and frac.min() >= 0 and frac.max() <= 1


def test_an_explicit_field_beats_the_preset():
    assert PCMConfig(preset="pessimistic", stuck_mid_rate=0.0).stuck_mid_rate == 0.0
    assert PCMConfig(preset="pessimistic").g_max_s == 10.35e-6
    assert DeviceConfig(preset="pessimistic", stuck_on_rate=0.0).stuck_off_rate == 0.055


def test_a_protocol_without_family_is_the_rram_device_unchanged():
    spec = MockSpec.model_validate({"device": {"g_min_s": 2e-6}})
    assert spec.device == DeviceConfig(g_min_s=2e-6) and MockSpec().device == DeviceConfig()
    assert type(MockSpec.model_validate({"device": {"family": "pcm"}}).device) is PCMConfig
    assert type(MockSpec.model_validate({"device": {"family": "vcm"}}).device) is VCMConfig


@pytest.mark.parametrize("bad", [{"family": "pcm", "g_max_s": "25e-6"}, {"family": "pcm", "drift_scale": math.inf},
                                 {"family": "pcm", "t_read_s": math.nan}, {"family": "vcm", "i0_a": "1e-3"},
                                 {"family": "vcm", "rtn_alpha": -math.inf}, {"family": "pcm", "bogus": 1.0},
                                 {"family": "memristor"}, {"family": "pcm", "g_min_s": 30e-6}])
def test_a_family_config_is_strict_and_finite(bad):
    with pytest.raises(ValidationError):
        MockSpec.model_validate({"device": bad})


PCM_PROTOCOL = """name: pcm_smoke
array: {rows: 16, cols: 16}
limits: {max_read_voltage_v: 0.25, max_write_voltage_v: 2.0, compliance_current_a: 1.0e-3}
mock:
  seed: 3
  device: {family: pcm%s}
steps:
  - kind: program
    pattern: {kind: levels, levels: 4, g_low_s: 3.0e-6, g_high_s: 18.0e-6}
    tolerance: 0.1
    max_iterations: 10
  - kind: read
    repeats: 2
"""


def test_a_pcm_protocol_loads_and_runs_end_to_end(tmp_path):
    path = tmp_path / "pcm.yaml"
    path.write_text(PCM_PROTOCOL % "", encoding="utf-8")
    loaded = load_protocol(path)
    protocol = getattr(loaded, "protocol", loaded)
    assert type(protocol.mock.device) is PCMConfig
    bad = tmp_path / "bad.yaml"
    bad.write_text(PCM_PROTOCOL % ", g_max_s: .inf", encoding="utf-8")
    with pytest.raises(ProtocolError):
        load_protocol(bad)
    proc = subprocess.run([sys.executable, "-m", "hil.run", str(path), "--backend", "mock",
                           "--db", f"sqlite:///{tmp_path / 'runs.db'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "completed" in proc.stdout


# ------------------------------------------------------------------ filamentary VCM (Stanford-PKU)
VCM_CLEAN = dict(stuck_low_rate=0.0, stuck_high_rate=0.0, stuck_mid_rate=0.0, gap_spread_m=0.0, gap_c2c_m=0.0)


def vcm(rows=16, cols=16, seed=1, **kw):
    return SoftwareCrossbar(rows, cols, config=VCMConfig(**{**VCM_CLEAN, **kw}), seed=seed).open()


def test_vcm_gap_velocity_is_the_stanford_pku_law():
    x = vcm()
    q, kb = 1.602176634e-19, 1.380649e-23
    for gap, v in [(1.5e-9, 1.6), (0.8e-9, -1.3), (0.4e-9, 1.0)]:
        i = 1e-3 * math.exp(-gap / 0.25e-9) * math.sinh(v / 0.25)
        t = 298 + abs(v * i) * 2.1e3
        gamma = 16 - 0.8 * (gap / 1e-9) ** 3
        gamma = 0.0 if gamma * abs(v) / 12e-9 < 1.4e9 else gamma
        expected = -10 * math.exp(-0.6 * q / (kb * t)) * math.sinh(gamma * 0.25e-9 / 12e-9 * q * v / (kb * t))
        rate, temp = x.gap_rate(np.array([gap]), np.array([v]))
        assert rate[0] == pytest.approx(expected, rel=1e-9) and temp[0] == pytest.approx(t, rel=1e-12)


def test_vcm_set_is_abrupt_and_reset_gradual():
    def level(g):
        return math.log(np.median(g))

    set_levels, reset_levels = [], []
    for v in np.arange(1.0, 2.0, 0.02):
        x = vcm()
        r, c = (a.ravel() for a in np.indices(x.shape))
        x.pulse(r, c, float(v), 1e-6)
        set_levels.append(level(x.true_conductance()))
    for v in np.arange(0.9, 1.6, 0.02):
        x = vcm()
        r, c = (a.ravel() for a in np.indices(x.shape))
        x.pulse(r, c, 1.8, 1e-6)
        x.pulse(r, c, -float(v), 1e-6)
        reset_levels.append(level(x.true_conductance()))
    # position in the log window between the fresh HRS and the compliance-limited LRS
    lo, hi = set_levels[0], set_levels[-1]
    set_levels, reset_levels = [(q - lo) / (hi - lo) for q in set_levels], [(q - lo) / (hi - lo) for q in reset_levels]
    assert hi - lo > math.log(10)
    between = lambda levels: sum(0.15 < q < 0.85 for q in levels)
    assert between(set_levels) <= 1                     # one amplitude step takes HRS to LRS
    assert between(reset_levels) >= 4                   # RESET passes through many levels
    assert np.all(np.diff(reset_levels) <= 1e-9)


def test_vcm_relaxation_broadens_both_ways_with_log_time():
    x = vcm(64, 64, seed=2)
    r, c = (a.ravel() for a in np.indices(x.shape))
    x.pulse(r, c, 1.8, 1e-6)
    x.pulse(r, c, -1.2, 1e-6)
    before = x.true_conductance()
    t = 86_400.0
    x.wait(t)
    shift = x.true_conductance() - before
    n = shift.size
    log_t = math.log1p(t / 1.0)
    # aihwkit ReRamCMONoiseModel: mean -0.0890 uS per ln t, spread 0.41183 uS + 0.04201 uS per ln t
    sigma = 0.41183e-6 * t / (t + 1.0) + 0.04201e-6 * log_t
    assert shift.mean() == pytest.approx(-0.0890e-6 * log_t, abs=4 * sigma / math.sqrt(n))
    assert shift.std() == pytest.approx(sigma, rel=4 / math.sqrt(2 * n))
    assert 0.05 < (shift > 0).mean() < 0.5


def test_vcm_random_telegraph_noise_is_discrete_with_the_configured_amplitude():
    x = vcm(32, 32, seed=3, read_noise_relative=0.0, read_noise_floor_s=0.0, rtn_traps_per_cell=0.5,
            rtn_sigma_ln=0.3, iv_nonlinearity_per_v2=0.0, relax_mean_per_ln_s=0.0, relax_sigma0_s=0.0,
            relax_sigma_per_ln_s=0.0)
    r, c = (a.ravel() for a in np.indices(x.shape))
    x.pulse(r, c, 1.8, 1e-6)
    g_true = x.true_conductance()
    reads = []
    for _ in range(300):
        x.wait(1.0)
        reads.append(x.read(voltage_v=0.2))
    reads = np.array(reads)
    distinct = np.array([[len(np.unique(np.round(reads[:, i, j] / g_true[i, j], 12))) for j in range(32)]
                         for i in range(32)])
    assert np.all(distinct <= 2 ** 4)                          # at most four traps, each two-state
    two = distinct == 2                                        # one trap that switched
    assert two.sum() > 50 and (distinct == 1).sum() > 200      # Poisson(0.5): most cells have none
    amp = (reads.max(axis=0) - reads.min(axis=0))[two] / reads.max(axis=0)[two]
    expected = 0.01 * (g_true[two] / 100e-6) ** -0.5            # A0 (G / G_ref)^-alpha, median of the log-normal
    assert np.median(np.log(amp / expected)) == pytest.approx(0.0, abs=4 * 1.25 * 0.3 / math.sqrt(two.sum()))


def test_vcm_read_offset_can_read_zero_or_negative_and_cells_open_intermittently():
    x = vcm(32, 32, seed=4, read_offset_a=-1e-6, read_noise_relative=0.0, read_noise_floor_s=0.0,
            rtn_traps_per_cell=0.0, iv_nonlinearity_per_v2=0.0)
    g = x.true_conductance()
    read = x.read(voltage_v=0.2)
    np.testing.assert_allclose(read, g - 1e-6 / 0.2, rtol=0, atol=1e-15)
    assert np.all(read < 0)                                     # HRS (~5 uS) below |I_off| / V = 5 uS
    y = vcm(64, 64, seed=5, intermittent_rate=0.2, read_noise_relative=0.0, read_noise_floor_s=0.0,
            rtn_traps_per_cell=0.0, iv_nonlinearity_per_v2=0.0)
    r, c = (a.ravel() for a in np.indices(y.shape))
    y.pulse(r, c, 1.8, 1e-6)
    opened = y.read(voltage_v=0.2) == y.truth.g_min_s
    assert opened.mean() == pytest.approx(0.2, abs=4 * math.sqrt(0.16 / opened.size))


def test_vcm_program_and_mvm_through_the_periphery():
    x = vcm(32, 16, seed=6, read_noise_relative=0.0, read_noise_floor_s=0.0, rtn_traps_per_cell=0.0,
            iv_nonlinearity_per_v2=0.0, dac_bits=None, adc_bits=None, output_noise_a=0.0)
    x.program_exactly(np.random.default_rng(0).uniform(10e-6, 100e-6, x.shape))
    v = np.random.default_rng(1).uniform(-0.2, 0.2, (3, 32))
    np.testing.assert_allclose(x.mvm(v), v @ x.true_conductance(), rtol=1e-5, atol=1e-12)


def test_vcm_stuck_high_cells_sit_where_a_full_set_under_compliance_ends():
    # Stuck-at-1 is the SET state of normal operation, not the closed gap's ~2 mS (a short): a healthy
    # cell SET with the model's own pulses at 2 V under 1 mA compliance ends where stuck-high cells sit.
    x = vcm(64, 64, seed=7, stuck_high_rate=0.2, gap_spread_m=0.02e-9)
    r, c = (a.ravel() for a in np.indices(x.shape))
    for _ in range(4):
        x.pulse(r, c, 2.0, 1e-5, compliance_a=1e-3)
    g, stuck = x.true_conductance(), x.truth.stuck_on
    assert 500 < stuck.sum() < 1100
    assert np.median(g[stuck]) == pytest.approx(np.median(g[~stuck]), rel=0.15)
    assert g[stuck].max() < 2 * np.percentile(g[~stuck], 99)
