"""The noise model's laws: one implementation for numpy and torch, and the read-noise law chosen by the data.

The truths here are closed forms and the PCM family's read noise, IBM's statistical PCM model as coded in
aihwkit: relative sigma Q_s(x) sqrt(ln((t + t0 + t_read) / (2 t_read))), Q_s = min(0.0088 x^-0.65, 0.2),
x = G / g_max, t the time since programming.
"""

import json
import math

import numpy as np
import pytest
import torch

from calibration import laws
from calibration.checks import evaluate_checks
from calibration.noise_model import NoiseModel, ReadNoise
from calibration.options import CalibrationOptions, DriftOptions
from calibration.pipeline import fit_noise_model, run_calibration
from calibration.read_noise import ReadSamples, choose_read_noise, fit_read_noise
from drivers import SoftwareCrossbar
from drivers.families import PCMConfig

# aihwkit pcm.py
PCM_G_MAX, PCM_T0, PCM_T_READ = 25e-6, 20.0, 250e-9


def aihwkit_sigma(g_s, age_s, g_programmed_s=None):
    x = np.abs(g_s if g_programmed_s is None else g_programmed_s) / PCM_G_MAX
    q = np.minimum(0.0088 / np.maximum(x ** 0.65, 1e-3), 0.2)
    return np.abs(g_s) * q * np.sqrt(np.log((age_s + PCM_T0 + PCM_T_READ) / (2 * PCM_T_READ)))


def test_each_law_gives_the_same_values_for_numpy_and_torch():
    rng = np.random.default_rng(0)
    g = rng.uniform(0.1e-6, 50e-6, 500)
    gp = g * rng.uniform(1.0, 1.5, g.size)
    t = rng.uniform(0.01, 1e5, g.size)
    nu = rng.uniform(0.0, 0.1, g.size)
    as_t = torch.from_numpy
    np.testing.assert_allclose(laws.log_age(as_t(t), 20.0, 250e-9).numpy(), laws.log_age(t, 20.0, 250e-9),
                               rtol=1e-13)
    np.testing.assert_allclose(laws.drift_factor(as_t(t), 20.0, as_t(nu)).numpy(), laws.drift_factor(t, 20.0, nu),
                               rtol=1e-13)
    # a Python float time with a tensor of exponents, as noise-aware training calls it
    np.testing.assert_allclose(laws.drift_factor(3600.0, 20.0, as_t(nu)).numpy(), laws.drift_factor(3600.0, 20.0, nu),
                               rtol=1e-13)
    lt = laws.log_age(t, 20.0, 250e-9)
    for kwargs in ({"floor_s": 0.2e-6, "relative": 0.005},
                   {"floor_s": 0.1e-6, "relative": 0.002, "flicker": 0.0088, "flicker_exponent": 0.35,
                    "g_ref_s": PCM_G_MAX}):
        for programmed in (None, gp):
            extra = {} if "flicker" not in kwargs else {"log_age": lt}
            numpy_value = laws.read_sigma(g, **kwargs, **extra, g_programmed_s=programmed)
            torch_extra = {} if "flicker" not in kwargs else {"log_age": as_t(lt)}
            torch_value = laws.read_sigma(as_t(g), **kwargs, **torch_extra,
                                          g_programmed_s=None if programmed is None else as_t(programmed))
            assert isinstance(torch_value, torch.Tensor) and torch_value.dtype == torch.float64
            np.testing.assert_allclose(torch_value.numpy(), numpy_value, rtol=1e-13)


def test_the_flicker_law_is_the_published_pcm_law():
    # q = 0.0088 at g_ref = g_max and p = 1 - 0.65: sigma = g Q_s(g / g_max) sqrt(L(t)), closed form above
    law = ReadNoise(law="flicker", floor_s=0.0, relative=0.0, flicker=0.0088, flicker_exponent=0.35,
                    flicker_g_ref_s=PCM_G_MAX, flicker_t0_s=PCM_T0, t_read_s=PCM_T_READ, reference_age_s=1.0)
    g = np.geomspace(1e-6, 25e-6, 20)
    for age in (1.0, 100.0, 1e4):
        np.testing.assert_allclose(law.sigma(g, age), aihwkit_sigma(g, age), rtol=1e-12)
    # after drift from g_p to g the relative 1/f amplitude stays the programmed state's
    np.testing.assert_allclose(law.sigma(0.7 * g, 1e4, g), aihwkit_sigma(0.7 * g, 1e4, g), rtol=1e-12)
    # without a time the law is evaluated at its reference time
    np.testing.assert_allclose(law.sigma(g), aihwkit_sigma(g, 1.0), rtol=1e-12)
    assert laws.log_age(1.0, PCM_T0, PCM_T_READ) == pytest.approx(math.log((21.0 + PCM_T_READ) / (2 * PCM_T_READ)))


def synthetic_reads(law: ReadNoise, seed: int, devices: int = 3000):
    """Sample variances drawn from ``law`` as a calibration of a 64x64 array takes them with its default
    options: a 50-read set a second after programming and 4-read sets at each drift time. Devices do not
    drift."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(1e-6, 25e-6, devices)
    cells = np.arange(devices)
    sets = []
    for age, reads in [(1.0, 50)] + [(t, 4) for t in DriftOptions().times_s]:
        var = law.variance(g, age) * rng.chisquare(reads - 1, devices) / (reads - 1)
        sets.append(ReadSamples(g, var, reads, age, cells))
    return sets


def test_a_known_flicker_law_is_recovered_and_chosen():
    truth = ReadNoise(law="flicker", floor_s=0.05e-6, relative=0.0, flicker=0.0088, flicker_exponent=0.35,
                      flicker_g_ref_s=PCM_G_MAX, flicker_t0_s=PCM_T0, t_read_s=PCM_T_READ, reference_age_s=1.0)
    sets = synthetic_reads(truth, seed=1)
    chosen = choose_read_noise(fit_read_noise(sets), sets, reference_age_s=1.0)
    assert chosen.law == "flicker"
    assert chosen.selection["flicker"] > chosen.selection["white"] + 0.01
    # q at the fitted reference conductance, against the truth's relative 1/f amplitude there
    g_ref = chosen.flicker_g_ref_s
    q_true = truth.flicker * (g_ref / PCM_G_MAX) ** (truth.flicker_exponent - 1)
    assert chosen.flicker == pytest.approx(q_true, rel=0.15)
    assert chosen.flicker_exponent == pytest.approx(0.35, abs=0.1)
    # and the noise it predicts, early and late, within a few percent
    g = np.array([2e-6, 10e-6, 20e-6])
    for age in (1.0, 1e4):
        np.testing.assert_allclose(chosen.sigma(g, age), truth.sigma(g, age), rtol=0.05)


def test_white_read_noise_keeps_the_white_law():
    truth = ReadNoise(floor_s=0.2e-6, relative=0.005)
    sets = synthetic_reads(truth, seed=2)
    chosen = choose_read_noise(fit_read_noise(sets), sets, reference_age_s=1.0)
    assert chosen.law == "white" and chosen.flicker == 0
    assert chosen.selection["white"] + 0.01 >= chosen.selection["flicker"]
    assert chosen.floor_s == pytest.approx(0.2e-6, rel=0.1) and chosen.relative == pytest.approx(0.005, rel=0.1)


def test_reads_at_one_time_only_keep_the_white_law_without_scores():
    truth = ReadNoise(law="flicker", floor_s=0.0, relative=0.0, flicker=0.0088, flicker_exponent=0.35,
                      flicker_g_ref_s=PCM_G_MAX, flicker_t0_s=PCM_T0, t_read_s=PCM_T_READ, reference_age_s=1.0)
    sets = synthetic_reads(truth, seed=3)[:1]
    # too few devices for the telegraph law: no law to choose from
    few = [ReadSamples(s.mean_s[:150], s.var_s[:150], s.reads, s.age_s, s.cells[:150]) for s in sets]
    chosen = choose_read_noise(fit_read_noise(few), few)
    assert chosen.law == "white" and chosen.selection is None
    # enough for the telegraph law: the flicker law is still no candidate at one time
    chosen = choose_read_noise(fit_read_noise(sets), sets)
    assert chosen.base_law == "white" and set(chosen.selection) == {"white", "telegraph"}


def test_pcm_calibration_chooses_the_flicker_law_and_passes_its_read_noise_check():
    options = CalibrationOptions(pulse_response=None, periphery=None,
                                 drift={"times_s": [1.0, 10.0, 100.0, 1000.0, 10000.0], "reads": 4})
    with SoftwareCrossbar(64, 64, config=PCMConfig(), seed=0) as xbar:
        cal = run_calibration(xbar, options, np.random.default_rng(0))
    model = fit_noise_model(cal, array_id="pcm", rows=64, cols=64)
    read = model.read
    assert read.law == "flicker" and read.selection["flicker"] > read.selection["white"] + 0.01
    assert read.flicker_exponent == pytest.approx(0.35, abs=0.1)
    # the published law at the programmed levels, a second and three hours after programming
    g = np.array([3e-6, 8e-6, 15e-6])
    for age in (1.0, 1e4):
        np.testing.assert_allclose(read.sigma(g, age), aihwkit_sigma(g, age), rtol=0.1)
    checks = {c.quantity: c for c in evaluate_checks(cal.check, model, options.check, np.random.default_rng(0),
                                                     options.drift.times_s)}
    c = checks["read_noise"]
    assert c.verdict == "pass" and c.ks < 0.1 and 0.8 <= c.spread_ratio <= 1.25, c


def test_a_read_noise_law_stored_before_the_flicker_law_loads_as_white():
    stored = {"schema_version": 1, "array_id": "old", "rows": 4, "cols": 4, "created_at": "2025-01-01T00:00:00Z",
              "window": {"g_min_s": 1e-6, "g_max_s": 1e-4, "g_min_spread": 0.05, "g_max_spread": 0.05},
              "read": {"floor_s": 2e-7, "relative": 0.005},
              "defects": {"stuck_on_rate": 0.0, "stuck_off_rate": 0.0}, "periphery": {"read_voltage_v": 0.2}}
    model = NoiseModel.model_validate(json.loads(json.dumps(stored)))
    assert model.schema_version == 1 and model.read.law == "white" and model.read.selection is None
    g = np.array([1e-6, 50e-6])
    np.testing.assert_allclose(model.read.sigma(g), np.sqrt((2e-7) ** 2 + (0.005 * g) ** 2), rtol=1e-14)
    # the white law is the same at every time
    np.testing.assert_allclose(model.read.sigma(g, 1e5), model.read.sigma(g), rtol=0)
    # a flicker law round-trips through JSON
    flicker = model.model_copy(update={"read": ReadNoise(
        law="flicker", floor_s=0.0, relative=0.0, flicker=0.01, flicker_exponent=0.35, flicker_g_ref_s=1e-5,
        flicker_t0_s=20.0, t_read_s=1e-7, reference_age_s=1.0, selection={"white": 1.0, "flicker": 2.0})})
    again = NoiseModel.model_validate_json(json.dumps(flicker.to_json_dict()))
    assert again.read == flicker.read


def test_a_flicker_law_needs_its_time_term():
    with pytest.raises(ValueError, match="flicker needs"):
        ReadNoise(law="flicker", floor_s=0.0, relative=0.0, flicker=0.01)
    with pytest.raises(ValueError, match="belongs to the read-noise law flicker"):
        ReadNoise(floor_s=0.0, relative=0.0, flicker=0.01)
