"""The programming-error law: a Gaussian, or a Gaussian core with a heavy tail, chosen by held-out likelihood.

Synthetic errors are drawn here from their definition (numpy's Gaussian and Laplace generators), not from
calibration.laws; on simulated device families the truth is the hidden conductance error when the
calibration read it, described by the same law fitted here, independently, by maximum likelihood.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize, stats

import calibration.pipeline as pipeline
from calibration.checks import evaluate_checks
from calibration.laws import programming_error
from calibration.noise_model import (ConductanceWindow, Defects, NoiseModel, Periphery, ProgrammingNoise,
                                     ReadNoise)
from calibration.options import CalibrationOptions, ProgrammingOptions
from calibration.pipeline import Calibration, fit_noise_model, run_calibration
from calibration.programming import ProgrammingMeasurement
from calibration.window import WindowMeasurement
from drivers import DeviceConfig, SoftwareCrossbar
from drivers.families import PCMConfig
from hil.nn.analog import AnalogSpec, perturb_weights

US = 1e-6


def reference_errors(rng, n, bias, sigma, fraction, width, with_tail=False):
    """The mixture by its definition: a Gaussian core, and a Laplace tail around the same bias (and which
    draws fell in the tail)."""
    tail = rng.random(n) < fraction
    errors = np.where(tail, rng.laplace(bias, width, n), rng.normal(bias, sigma, n))
    return (errors, tail) if with_tail else errors


def skewed_reference_errors(rng, n, bias, sigma, fraction, kappa, scale, with_tail=False):
    """A Gaussian core and scipy's asymmetric Laplace tail around the same bias: above it a share
    1 / (1 + kappa^2) of mean scale / kappa, below the rest of mean scale kappa."""
    tail = rng.random(n) < fraction
    errors = np.where(tail, stats.laplace_asymmetric.rvs(kappa, loc=bias, scale=scale, size=n, random_state=rng),
                      rng.normal(bias, sigma, n))
    return (errors, tail) if with_tail else errors


def synthetic_calibration(fraction: float, size: int = 128, seed: int = 0, kappa: float | None = None):
    """A calibration whose programming errors follow a known law: 4 levels, 2 rounds, each achieved value
    the mean of 4 reads of white read noise. Returns the fitted law and, per level, the fraction of the
    devices drawn in the tail. The tail is a Laplace distribution of scale 3 µS, or with ``kappa`` scipy's
    asymmetric one of scale 3 µS."""
    rng = np.random.default_rng(seed)
    floor, reads, tolerance = 0.2 * US, 4, 1.0 * US
    low = 1 * US + 0.02 * US * rng.standard_normal((4, size, size))
    high = 100 * US + 0.2 * US * rng.standard_normal((4, size, size))
    window = WindowMeasurement(low, high, 0.2)
    levels = np.array([10, 30, 50, 70]) * US
    index = np.stack([rng.permutation(np.arange(size * size) % 4).reshape(size, size) for _ in range(2)])
    if kappa is None:
        errors, tail = reference_errors(rng, index.size, 0.1 * US, 0.3 * US, fraction, 3 * US, with_tail=True)
    else:
        errors, tail = skewed_reference_errors(rng, index.size, 0.1 * US, 0.3 * US, fraction, kappa, 3 * US,
                                               with_tail=True)
    errors, tail = errors.reshape(index.shape), tail.reshape(index.shape)
    achieved = levels[index] + errors + floor / np.sqrt(reads) * rng.standard_normal(index.shape)
    programming = ProgrammingMeasurement(levels, index, achieved, reads=reads, programmed_at_s=0.0,
                                         write_verify=[{"tolerance_s": tolerance}] * 2)
    options = CalibrationOptions(programming=ProgrammingOptions(g_low_s=10 * US, g_high_s=70 * US),
                                 pulse_response=None, read_noise=None, drift=None, periphery=None, check=None)
    cal = Calibration(options, window=window, programming=programming, stuck_on=window.stuck_on,
                      stuck_off=window.stuck_off, unreadable=window.unreadable,
                      read_fit=ReadNoise(floor_s=floor, relative=0.0))
    drawn = [float(tail[index == k].mean()) for k in range(len(levels))]
    return fit_noise_model(cal, array_id="synthetic", rows=size, cols=size).programming, drawn


@pytest.mark.parametrize("fraction", [0.03, 0.15])
def test_a_known_mixture_is_recovered_and_chosen(fraction):
    prog, drawn = synthetic_calibration(fraction)
    assert prog.law == "mixture" and prog.selection["mixture"] > prog.selection["normal"] + 0.01
    for level, in_tail in zip(prog.levels_s, drawn):
        # sigma is the devices' own: the read noise of each mean of reads (0.1 µS) is taken out
        assert prog.sigma(level) == pytest.approx(0.3 * US, rel=0.15)
        # the fraction of this array's devices drawn in the tail (a level's count scatters by its square root)
        assert prog.tail_fraction_at(level) == pytest.approx(in_tail, rel=0.15)
        assert in_tail == pytest.approx(fraction, rel=0.2)
        assert prog.tail_width_at(level) == pytest.approx(3 * US, rel=0.25)
        assert prog.bias(level) == pytest.approx(0.1 * US, abs=0.05 * US)


def test_gaussian_errors_keep_the_normal_law():
    prog, _ = synthetic_calibration(0.0)
    assert prog.law == "normal" and prog.tail_fraction is None
    assert prog.selection["mixture"] <= prog.selection["normal"] + 0.01
    for level in prog.levels_s:
        assert prog.sigma(level) == pytest.approx(0.3 * US, rel=0.1)


def test_a_model_stored_before_the_mixture_loads_as_normal_and_a_mixture_round_trips():
    old = {"levels_s": [1e-6, 2e-6], "sigma_s": [1e-7, 1e-7], "bias_s": [0, 0], "tolerance_s": 1e-7}
    prog = ProgrammingNoise.model_validate(old)
    assert prog.law == "normal" and prog.selection is None
    assert np.all(prog.tail_fraction_at([1e-6, 1.5e-6]) == 0) and prog.std(1.5e-6) == pytest.approx(1e-7)
    mixture = ProgrammingNoise(law="mixture", tail_fraction=[0.1, 0.2], tail_width_s=[1e-6, 2e-6],
                               selection={"normal": -1.0, "mixture": -0.5}, **old)
    assert ProgrammingNoise.model_validate_json(mixture.model_dump_json()) == mixture
    assert mixture.tail_fraction_at(1.5e-6) == pytest.approx(0.15)
    with pytest.raises(ValueError):
        ProgrammingNoise(law="mixture", **old)                       # a mixture needs its tail
    with pytest.raises(ValueError):
        ProgrammingNoise(tail_fraction=[0.1, 0.1], tail_width_s=[1e-6, 1e-6], **old)


def test_a_known_skewed_tail_is_recovered_and_chosen():
    # kappa 0.5: 80 % of the tail above the bias, of mean 6 µS, the rest below, of mean 1.5 µS
    prog, drawn = synthetic_calibration(0.15, kappa=0.5)
    assert prog.law == "skewed" and prog.selection["skewed"] > prog.selection["mixture"] + 0.01
    for level, in_tail in zip(prog.levels_s, drawn):
        assert prog.sigma(level) == pytest.approx(0.3 * US, rel=0.15)
        assert prog.tail_fraction_at(level) == pytest.approx(in_tail, rel=0.15)
        assert prog.tail_up_at(level) == pytest.approx(0.8, abs=0.05)
        assert prog.tail_width_at(level) == pytest.approx(6 * US, rel=0.15)
        assert prog.tail_width_down_at(level) == pytest.approx(1.5 * US, rel=0.3)
        assert prog.bias(level) == pytest.approx(0.1 * US, abs=0.05 * US)


def test_a_symmetric_tail_keeps_the_mixture_law():
    prog, _ = synthetic_calibration(0.15)
    assert prog.law == "mixture" and prog.selection["skewed"] <= prog.selection["mixture"] + 0.01


def test_skewed_draws_are_scipys_asymmetric_laplace():
    rng = np.random.default_rng(4)
    n = 100_000
    # every device in the tail (f = 1): 80 % above of mean 2, 20 % below of mean 0.5 is kappa 0.5, scale 1
    draws = programming_error(0.3, 0.1, 1.0, 2.0, rng.standard_normal(n), rng.random(n), 0.8, 0.5)
    assert stats.kstest(draws, stats.laplace_asymmetric(0.5, loc=0.3, scale=1.0).cdf).statistic < 0.01
    # a fifth of the devices in it: the rest are the Gaussian core
    draws = programming_error(0.3, 0.1, 0.2, 2.0, rng.standard_normal(n), rng.random(n), 0.8, 0.5)
    x = np.linspace(-3, 8, 200)
    expected = 0.8 * stats.norm(0.3, 0.1).cdf(x) + 0.2 * stats.laplace_asymmetric(0.5, loc=0.3, scale=1.0).cdf(x)
    assert np.max(np.abs(np.searchsorted(np.sort(draws), x) / n - expected)) < 0.01


def test_the_skewed_likelihood_is_the_tail_convolved_with_read_noise():
    from scipy import integrate

    from calibration.programming_fit import LevelFit, log_likelihood
    fit = LevelFit(0.0, 0.2, 1 - 1e-12, 2.0, 0.8, 0.5)
    tail = stats.laplace_asymmetric(0.5, scale=1.0)
    for y, read_var in [(-1.0, 0.3), (0.0, 0.05), (0.7, 0.3), (5.0, 1.0)]:
        r = np.sqrt(read_var)
        numeric, _ = integrate.quad(lambda x: tail.pdf(x) * stats.norm.pdf(y - x, scale=r), -40, 60, points=[0.0],
                                    limit=200)
        assert log_likelihood(np.array([y]), np.array([read_var]), fit)[0] == pytest.approx(np.log(numeric),
                                                                                            abs=1e-6)


def law_by_maximum_likelihood(errors: np.ndarray, scale: float) -> tuple[float, float]:
    """Core sigma and tail fraction of a Gaussian core with a Laplace tail around the same centre, fitted to
    noise-free errors by direct maximisation of the likelihood."""
    e = errors / scale
    inside = np.abs(e) <= 1
    start = [np.median(e[inside]), np.log(e[inside].std()), np.log(0.2 / 0.8),
             np.log(max(np.abs(e[~inside]).mean(), 3 * e[inside].std()))]

    def minus_log_likelihood(p):
        centre, sigma, fraction, width = p[0], np.exp(p[1]), 1 / (1 + np.exp(-p[2])), np.exp(p[3])
        return -np.sum(np.logaddexp(np.log1p(-fraction) + stats.norm.logpdf(e, centre, sigma),
                                    np.log(fraction) + stats.laplace.logpdf(e, centre, width)))

    best = optimize.minimize(minus_log_likelihood, start, method="Nelder-Mead",
                             options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-8})
    return float(np.exp(best.x[1]) * scale), float(1 / (1 + np.exp(-best.x[2])))


FAMILIES = {"pessimistic": lambda: DeviceConfig(preset="pessimistic"), "pcm": PCMConfig}


@pytest.mark.parametrize("family,seed", [("pessimistic", 0), ("pcm", 0)])
def test_tail_and_core_match_the_hidden_truth_and_the_check_passes(family, seed, monkeypatch):
    """Two rounds of write-verify as a calibration runs them; the true state is looked at once each round's
    wait is over, right before its achieved reads. The read-noise and drift stages stay: the read noise
    taken out of the errors is the law they find (PCM's grows with the time since programming)."""
    truths = []
    measure = pipeline.measure_programming

    def measure_and_look(xbar, *args, **kwargs):
        wait = xbar.wait

        def wait_then_look(seconds):
            wait(seconds)
            truths.append(xbar.true_conductance())
        xbar.wait = wait_then_look
        try:
            return measure(xbar, *args, **kwargs)
        finally:
            del xbar.wait

    monkeypatch.setattr(pipeline, "measure_programming", measure_and_look)
    options = CalibrationOptions(pulse_response=None, periphery=None,
                                 drift={"times_s": [1.0, 10.0, 100.0, 1000.0, 3600.0], "reads": 4})
    with SoftwareCrossbar(64, 64, config=FAMILIES[family](), seed=seed) as x:
        cal = run_calibration(x, options, np.random.default_rng(seed))
        model = fit_noise_model(cal, array_id="a", rows=64, cols=64)
    checks = {c.quantity: c for c in evaluate_checks(cal.check, model, options.check, np.random.default_rng(0))}
    assert checks["programming"].verdict == "pass", checks["programming"]

    prog, m = model.programming, cal.programming
    assert prog.law == "mixture"
    true_error = np.stack(truths) - m.targets_s
    used = np.broadcast_to(cal.fitted[None], true_error.shape)
    counts, fitted, truth = [], [], []
    for k, level in enumerate(prog.levels_s):
        errors = true_error[(m.level_index == k) & used]
        counts.append(errors.size)
        fitted.append((prog.sigma(level), prog.tail_fraction_at(level)))
        truth.append(law_by_maximum_likelihood(errors, prog.tolerance_s))
    n, fitted, truth = np.array(counts), np.array(fitted), np.array(truth)
    # Over the array: the fraction of all devices in the tail, and the core sigma as the root mean square
    # over the core's devices. A level is not compared alone: where the tail holds most of a PCM level's
    # devices and read noise exceeds the core sigma, a level's core sigma is beyond what a 64x64 array
    # determines, even from the noise-free truth.
    assert np.sum(n * fitted[:, 1]) / n.sum() == pytest.approx(np.sum(n * truth[:, 1]) / n.sum(), rel=0.15)

    def core_rms(sigma_fraction):
        weight = n * (1 - sigma_fraction[:, 1])
        return np.sqrt(np.sum(weight * sigma_fraction[:, 0] ** 2) / weight.sum())
    # PCM's errors are a continuum from the tolerance out to tens of tolerances rather than a core and a
    # tail, and its read noise is as wide as its core: how the middle of that continuum is shared between
    # the two depends on the read noise on it, by up to a fifth of the core sigma over the array.
    assert core_rms(fitted) == pytest.approx(core_rms(truth), rel=0.15 if family == "pessimistic" else 0.25)


def mixture_model() -> NoiseModel:
    prog = ProgrammingNoise(law="mixture", levels_s=[5 * US, 80 * US], sigma_s=[0.3 * US, 0.6 * US],
                            bias_s=[0.1 * US, -0.2 * US], tolerance_s=1 * US, tail_fraction=[0.1, 0.3],
                            tail_width_s=[2 * US, 4 * US])
    return NoiseModel(array_id="t", rows=8, cols=8,
                      window=ConductanceWindow(g_min_s=1 * US, g_max_s=100 * US, g_min_spread=0, g_max_spread=0),
                      programming=prog, read=ReadNoise(floor_s=0.0, relative=0.0),
                      defects=Defects(stuck_on_rate=0, stuck_off_rate=0), periphery=Periphery(read_voltage_v=0.2))


def test_numpy_and_torch_sample_the_law_as_defined():
    rng = np.random.default_rng(1)
    n = 100_000
    reference = reference_errors(rng, n, 0.1, 0.3, 0.2, 2.0)
    on_numpy = programming_error(0.1, 0.3, 0.2, 2.0, rng.standard_normal(n), rng.random(n))
    g = torch.Generator().manual_seed(1)
    on_torch = programming_error(torch.full((n,), 0.1), torch.full((n,), 0.3), torch.full((n,), 0.2),
                                 torch.full((n,), 2.0), torch.randn(n, generator=g), torch.rand(n, generator=g))
    assert on_torch.dtype == torch.float32
    assert stats.ks_2samp(reference, on_numpy).pvalue > 1e-3
    assert stats.ks_2samp(reference, on_torch.numpy()).pvalue > 1e-3
    # With no tail the law is the Gaussian, draw for draw.
    z = rng.standard_normal(10)
    assert np.array_equal(programming_error(0.1, 0.3, 0.0, 0.0, z, rng.random(10)), 0.1 + 0.3 * z)


def test_noise_aware_training_draws_the_calibrated_mixture():
    """A weight of +1 puts its positive device at the top of the weight window and its negative one at the
    bottom: the realised weight's error is the difference of the two devices' programming errors."""
    model = mixture_model()
    spec = AnalogSpec(noise_model=model, read_noise=False, stuck_cells=False)
    weight = torch.ones(400, 250)
    g = torch.Generator().manual_seed(0)
    realised = perturb_weights(weight, spec, generator=g)
    g_lo, g_hi = model.weight_window()
    observed = ((realised - weight) * (g_hi - g_lo)).numpy().ravel().astype(np.float64)
    rng = np.random.default_rng(2)
    n = observed.size
    top = reference_errors(rng, n, -0.2 * US, 0.6 * US, 0.3, 4 * US)
    bottom = reference_errors(rng, n, 0.1 * US, 0.3 * US, 0.1, 2 * US)
    assert stats.ks_2samp(observed, top - bottom).pvalue > 1e-3
    assert np.std(observed) == pytest.approx(np.sqrt(model.programming.std(g_hi) ** 2
                                                     + model.programming.std(g_lo) ** 2), rel=0.03)


def test_noise_aware_training_draws_the_calibrated_skewed_tail():
    """As above, with the skewed law: each device's error is scipy's asymmetric Laplace in the tail."""
    base = mixture_model()
    prog = base.programming.model_copy(update={"law": "skewed", "tail_up": [0.8, 0.8],
                                               "tail_width_down_s": [0.5 * US, 1 * US]})
    model = base.model_copy(update={"programming": ProgrammingNoise.model_validate(prog.model_dump())})
    spec = AnalogSpec(noise_model=model, read_noise=False, stuck_cells=False)
    weight = torch.ones(400, 250)
    realised = perturb_weights(weight, spec, generator=torch.Generator().manual_seed(0))
    g_lo, g_hi = model.weight_window()
    observed = ((realised - weight) * (g_hi - g_lo)).numpy().ravel().astype(np.float64)
    rng = np.random.default_rng(3)
    n = observed.size
    # 80 % above of mean w, 20 % below of mean w_down: kappa = sqrt(w_down / w), scale = sqrt(w w_down)
    top = skewed_reference_errors(rng, n, -0.2 * US, 0.6 * US, 0.3, 0.5, 2 * US)
    bottom = skewed_reference_errors(rng, n, 0.1 * US, 0.3 * US, 0.1, 0.5, 1 * US)
    assert stats.ks_2samp(observed, top - bottom).pvalue > 1e-3


def test_a_skewed_law_round_trips_and_needs_its_share_and_width_below():
    old = dict(levels_s=[1e-6, 2e-6], sigma_s=[0.1e-6, 0.1e-6], bias_s=[0.0, 0.0], tolerance_s=1e-7)
    skewed = ProgrammingNoise(law="skewed", tail_fraction=[0.1, 0.2], tail_width_s=[1e-6, 2e-6], tail_up=[0.7, 0.9],
                              tail_width_down_s=[0.2e-6, 0.4e-6], **old)
    assert ProgrammingNoise.model_validate_json(skewed.model_dump_json()) == skewed
    assert skewed.tail_up_at(1.5e-6) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="skewed needs tail_up"):
        ProgrammingNoise(law="skewed", tail_fraction=[0.1, 0.2], tail_width_s=[1e-6, 2e-6], **old)
    with pytest.raises(ValueError, match="belong to the programming law skewed"):
        ProgrammingNoise(law="mixture", tail_fraction=[0.1, 0.2], tail_width_s=[1e-6, 2e-6], tail_up=[0.5, 0.5],
                         **old)
