"""Random telegraph noise: the read-noise law "telegraph", against closed forms and the VCM family's hidden traps.

The VCM family (drivers/families/vcm.py) gives each cell Poisson(0.5) two-state traps (at most 4), dwell times
log-uniform in 1e-4..1e2 s, dG/G log-normal over traps. Over a burst of n reads dt apart, a trap filled a
fraction p of the time and switching at rate r = 1/tau_a + 1/tau_b adds to the expected sample variance

    (dG/G g)^2 p (1 - p) (1 - 2 / (n (n - 1)) sum_{k=1}^{n-1} (n - k) exp(-r dt k))

(the two-state chain's autocorrelation is exp(-r |t|)). What 50 reads 1 ms apart identify is the part of the
devices whose telegraph variance is comparable to their white variance: the truth compared here is the
fraction of devices whose expected telegraph variance in the burst is at least their white variance, and the
median telegraph amplitude (rms relative to g, referred to the law's reference conductance) of those.
"""

import numpy as np
import pytest
import torch
from scipy import stats

from calibration import laws
from calibration.checks import evaluate_checks
from calibration.noise_model import NoiseModel, ReadNoise
from calibration.options import CalibrationOptions
from calibration.pipeline import fit_noise_model, run_calibration
from calibration.read_noise import (ReadSamples, choose_read_noise, expected_log_variance, fit_read_noise,
                                    sample_variance_cdf, sample_variance_logpdf)
from drivers import SoftwareCrossbar
from drivers.families import VCMConfig
from hil.nn.analog import AnalogSpec, perturb_weights

TELEGRAPH = ReadNoise(law="telegraph", floor_s=0.05e-6, relative=0.01, reference_age_s=1.0, telegraph_fraction=0.1,
                      telegraph_amplitude=0.01, telegraph_sigma_ln=1.0, telegraph_exponent=0.5,
                      telegraph_g_ref_s=50e-6, telegraph_reads=50)


def test_the_telegraph_law_gives_the_same_values_for_numpy_and_torch():
    rng = np.random.default_rng(0)
    g = rng.uniform(1e-6, 100e-6, 400)
    u, z = rng.random(g.size), rng.standard_normal(g.size)
    a = laws.telegraph_amplitude(u, z, 0.3, 0.004, 1.2)
    a_t = laws.telegraph_amplitude(torch.from_numpy(u), torch.from_numpy(z), 0.3, 0.004, 1.2)
    assert isinstance(a_t, torch.Tensor) and a_t.dtype == torch.float64
    np.testing.assert_allclose(a_t.numpy(), a, rtol=1e-13)
    assert np.mean(a > 0) == pytest.approx(0.3, abs=0.07)
    kwargs = {"floor_s": 0.05e-6, "relative": 0.01, "telegraph_exponent": 0.5, "telegraph_g_ref_s": 50e-6}
    value = laws.read_sigma(g, **kwargs, telegraph=a)
    value_t = laws.read_sigma(torch.from_numpy(g), **kwargs, telegraph=a_t)
    np.testing.assert_allclose(value_t.numpy(), value, rtol=1e-13)
    # closed form: white variance plus (a g_ref (g / g_ref)^beta)^2
    np.testing.assert_allclose(value ** 2, (0.05e-6) ** 2 + (0.01 * g) ** 2 + (a * 50e-6) ** 2 * (g / 50e-6),
                               rtol=1e-12)
    # no telegraph amplitude: exactly the white law
    np.testing.assert_array_equal(laws.read_sigma(g, 0.05e-6, 0.01), laws.read_sigma(g, 0.05e-6, 0.01, telegraph=0.0))


def test_the_mixture_distribution_matches_its_closed_form_and_draws():
    g = np.full(3, 40e-6)
    dof = np.full(3, 49.0)
    var = np.array([0.5, 1.0, 3.0]) * TELEGRAPH.variance(g)
    # a spread of 0: two Gammas, weighted by the fraction
    narrow = TELEGRAPH.model_copy(update={"telegraph_sigma_ln": 0.0})
    extra = narrow.telegraph_variance(g, narrow.telegraph_amplitude)
    base = narrow.variance(g)
    expected = 0.9 * stats.chi2(49).cdf(49 * var / base) + 0.1 * stats.chi2(49).cdf(49 * var / (base + extra))
    np.testing.assert_allclose(sample_variance_cdf(narrow, g, var, dof, 1.0), expected, rtol=1e-10)
    density = 0.9 * 49 / base * stats.chi2(49).pdf(49 * var / base) + \
        0.1 * 49 / (base + extra) * stats.chi2(49).pdf(49 * var / (base + extra))
    np.testing.assert_allclose(np.exp(sample_variance_logpdf(narrow, g, var, dof, 1.0)), density, rtol=1e-10)
    # the log-normal mixture against draws of devices and their reads
    rng = np.random.default_rng(1)
    n = 200_000
    gd = np.full(n, 40e-6)
    a = laws.telegraph_amplitude(rng.random(n), rng.standard_normal(n), **TELEGRAPH.telegraph_distribution())
    sigma2 = TELEGRAPH.variance(gd) + TELEGRAPH.telegraph_variance(gd, a)
    draws = sigma2 * rng.chisquare(49, n) / 49
    probe = np.quantile(draws, [0.1, 0.5, 0.9, 0.97, 0.995])
    predicted = sample_variance_cdf(TELEGRAPH, np.full(5, 40e-6), probe, np.full(5, 49.0), 1.0)
    np.testing.assert_allclose(predicted, [0.1, 0.5, 0.9, 0.97, 0.995], atol=4e-3)
    assert expected_log_variance(TELEGRAPH, g[:1], dof[:1], 1.0)[0] == pytest.approx(np.mean(np.log(draws)), abs=5e-3)


def synthetic(law: ReadNoise, seed: int, devices: int = 3000):
    """A 50-read set per device drawn from ``law`` (telegraph amplitudes drawn per device)."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(5e-6, 80e-6, devices)
    a = laws.telegraph_amplitude(rng.random(devices), rng.standard_normal(devices), **law.telegraph_distribution())
    var = (law.variance(g) + law.telegraph_variance(g, a)) * rng.chisquare(49, devices) / 49
    return [ReadSamples(g, var, 50, 1.0, np.arange(devices))]


def test_a_known_telegraph_law_is_recovered_and_chosen():
    sets = synthetic(TELEGRAPH, seed=2)
    chosen = choose_read_noise(fit_read_noise(sets), sets, reference_age_s=1.0)
    assert chosen.law == "telegraph" and chosen.selection["telegraph"] > chosen.selection["white"] + 0.01
    assert chosen.telegraph_fraction == pytest.approx(0.1, rel=0.15)
    assert chosen.telegraph_exponent == pytest.approx(0.5, abs=0.25)
    assert chosen.telegraph_sigma_ln == pytest.approx(1.0, rel=0.15)
    assert chosen.relative == pytest.approx(0.01, rel=0.05)
    # the median amplitude at the truth's reference conductance
    at_ref = chosen.telegraph_amplitude * (50e-6 / chosen.telegraph_g_ref_s) ** (chosen.telegraph_exponent - 1)
    assert at_ref == pytest.approx(0.01, rel=0.15)
    # white reads keep the white law, with the telegraph law's score recorded
    white = ReadNoise(floor_s=0.05e-6, relative=0.01)
    sets = synthetic(white, seed=3)
    kept = choose_read_noise(fit_read_noise(sets), sets, reference_age_s=1.0)
    assert kept.law == "white" and kept.selection["white"] + 0.01 >= kept.selection["telegraph"]


def test_a_telegraph_law_round_trips_and_needs_its_fields():
    stored = {"schema_version": 1, "array_id": "t", "rows": 4, "cols": 4, "created_at": "2025-01-01T00:00:00Z",
              "window": {"g_min_s": 1e-6, "g_max_s": 1e-4, "g_min_spread": 0.05, "g_max_spread": 0.05},
              "read": TELEGRAPH.model_dump(mode="json"),
              "defects": {"stuck_on_rate": 0.0, "stuck_off_rate": 0.0}, "periphery": {"read_voltage_v": 0.2}}
    model = NoiseModel.model_validate(stored)
    assert NoiseModel.model_validate_json(model.model_dump_json()).read == TELEGRAPH
    with pytest.raises(ValueError, match="telegraph needs"):
        ReadNoise(law="telegraph", floor_s=0.0, relative=0.01)
    with pytest.raises(ValueError, match="belong to the read-noise law telegraph"):
        ReadNoise(floor_s=0.0, relative=0.01, telegraph_fraction=0.1)


def test_noise_aware_training_gives_a_fraction_of_devices_telegraph_noise():
    model = NoiseModel(array_id="t", rows=4, cols=4, read=TELEGRAPH.model_copy(update={"telegraph_fraction": 0.3}),
                       window={"g_min_s": 1e-6, "g_max_s": 100e-6, "g_min_spread": 0.0, "g_max_spread": 0.0},
                       defects={"stuck_on_rate": 0.0, "stuck_off_rate": 0.0}, periphery={"read_voltage_v": 0.2})
    spec = AnalogSpec(noise_model=model, programming_noise=False, stuck_cells=False)
    weight = torch.ones(400, 500, dtype=torch.float64)
    # every device of a positive weight pair: g_hi on the positive side, g_lo on the negative one
    error = (perturb_weights(weight, spec, torch.Generator().manual_seed(0)) - weight).numpy()
    g_lo, g_hi = model.weight_window()
    white = model.read.variance(np.array([g_hi, g_lo]))
    white_error = np.sqrt(white.sum()) / (g_hi - g_lo)
    # the white part alone is Gaussian with this spread; the telegraph devices make the tails heavy
    z = error.ravel() / white_error
    assert np.median(np.abs(z)) == pytest.approx(stats.norm.ppf(0.75), rel=0.1)
    assert np.mean(np.abs(z) > 4) > 20 * 2 * stats.norm.sf(4)
    # the variance over devices: white plus the fraction times the mean telegraph variance
    a, w = model.read.telegraph_nodes(201)
    mean_extra = 0.3 * (model.read.telegraph_variance(np.array([g_hi, g_lo])[:, None], a[None, :]) @ w).sum()
    assert np.var(error) == pytest.approx((white.sum() + mean_extra) / (g_hi - g_lo) ** 2, rel=0.1)


def _burst_truth(xbar, g, reads: int, dt: float) -> np.ndarray:
    """Expected telegraph variance (S^2) of each cell over a burst of ``reads`` reads ``dt`` apart, from the
    simulator's hidden traps (closed form in the module docstring)."""
    cfg = xbar.config
    p, rate, present = xbar._trap_p, xbar._trap_rate, xbar._trap_present
    rho = np.exp(-rate * dt)
    k = np.arange(1, reads)[:, None, None, None]
    seen = 1 - 2 / (reads * (reads - 1)) * np.sum((reads - k) * rho[None] ** k, axis=0)
    rel = cfg.rtn_amplitude_ref * (np.maximum(g, 1e-30) / cfg.rtn_g_ref_s) ** -cfg.rtn_alpha
    rel = rel * np.exp(cfg.rtn_sigma_ln * xbar._trap_z)
    return (present * rel ** 2 * p * (1 - p) * seen).sum(axis=0) * g ** 2


@pytest.mark.parametrize("seed", [0, 1])
def test_vcm_telegraph_noise_is_chosen_recovered_and_passes_its_check(seed):
    cfg = VCMConfig()
    options = CalibrationOptions(pulse_response=None, periphery=None, drift=None)
    with SoftwareCrossbar(64, 64, config=cfg, seed=seed) as xbar:
        cal = run_calibration(xbar, options, np.random.default_rng(seed))
        g = cal.read_noise.mean_s
        extra_true = _burst_truth(xbar, g, options.read_noise.reads, cfg.read_time_s)
    model = fit_noise_model(cal, array_id="vcm", rows=64, cols=64)
    read = model.read
    assert read.law == "telegraph" and read.selection["telegraph"] > read.selection["white"] + 0.01
    # the white part is the simulator's, no longer pulled up by the telegraph devices
    assert read.relative == pytest.approx(cfg.read_noise_relative, rel=0.05)
    assert read.telegraph_exponent == pytest.approx(1 - cfg.rtn_alpha, abs=0.25)
    # identifiable: devices whose telegraph variance over the burst is at least their white variance
    used = cal.fitted & (g > 0)
    g, extra_true = g[used], extra_true[used]
    white_true = cfg.read_noise_floor_s ** 2 + (cfg.read_noise_relative * g) ** 2
    shown = extra_true >= white_true
    g_ref, beta = read.telegraph_g_ref_s, read.telegraph_exponent
    amp_true = np.median(np.sqrt(extra_true[shown]) / (g_ref * (g[shown] / g_ref) ** beta))
    rng = np.random.default_rng(0)
    draws = 100
    a = laws.telegraph_amplitude(rng.random((draws, g.size)), rng.standard_normal((draws, g.size)),
                                 **read.telegraph_distribution())
    fitted_shown = read.telegraph_variance(g[None], a) >= read.variance(g)[None]
    assert fitted_shown.mean() == pytest.approx(shown.mean(), rel=0.15)
    assert np.median(a[fitted_shown]) == pytest.approx(amp_true, rel=0.15)
    checks = {c.quantity: c for c in evaluate_checks(cal.check, model, options.check, np.random.default_rng(0))}
    c = checks["read_noise"]
    assert c.verdict == "pass" and c.ks < 0.1 and 0.8 <= c.spread_ratio <= 1.25, c
    # the white law alone fails the same check
    white = model.model_copy(update={"read": fit_read_noise([(g, cal.read_noise.std_s[used] ** 2, 50)])})
    assert {c.quantity: c for c in evaluate_checks(cal.check, white, options.check,
                                                   np.random.default_rng(0))}["read_noise"].verdict == "warn"
