"""The analog-aware layer: exact identity when off, exact quantisers, noise with the calibrated statistics."""

import math

import pytest
import torch
from torch import nn

from calibration.noise_model import (ConductanceWindow, Defects, Drift, NoiseModel, Periphery, ProgrammingNoise,
                                     ReadNoise)
from hil.nn.analog import AnalogLinear, AnalogSpec, configure_analog, perturb_weights
from hil.nn.quantize import absmax_signal, ternary, uniform

G_MIN, G_MAX = 1e-6, 101e-6


def noise_model(prog=0.0, read_floor=0.0, read_rel=0.0, on=0.0, off=0.0, nu=0.0, nu_std=0.0, dac=None, adc=None):
    return NoiseModel(
        array_id="test", rows=8, cols=8,
        window=ConductanceWindow(g_min_s=G_MIN, g_max_s=G_MAX, g_min_spread=0, g_max_spread=0),
        programming=ProgrammingNoise(levels_s=[G_MIN, G_MAX], sigma_s=[prog, prog], bias_s=[0, 0], tolerance_s=1e-6),
        read=ReadNoise(floor_s=read_floor, relative=read_rel),
        drift=Drift(nu_mean=nu, nu_std=nu_std, t0_s=1.0),
        defects=Defects(stuck_on_rate=on, stuck_off_rate=off),
        periphery=Periphery(read_voltage_v=0.2, dac_bits=dac, adc_bits=adc))


def test_without_spec_or_with_a_neutral_spec_the_layer_is_exactly_linear():
    torch.manual_seed(0)
    plain = nn.Linear(7, 5)
    analog = AnalogLinear(7, 5)
    analog.load_state_dict(plain.state_dict())
    x = torch.randn(11, 7)
    assert torch.equal(analog(x), plain(x))
    analog.analog = AnalogSpec()
    assert torch.equal(analog(x), plain(x))
    analog.analog = AnalogSpec(noise_model=noise_model(), noise_scale=0.0)
    analog.train()
    assert torch.equal(analog(x), plain(x))
    analog.analog = AnalogSpec(noise_model=noise_model(prog=1e-6))
    analog.eval()                       # noise is a training-time injection unless asked for in eval
    assert torch.equal(analog(x), plain(x))


def test_ternary_weights_are_exactly_three_values_and_pass_gradients_straight_through():
    w = torch.randn(64, 32, requires_grad=True)
    q = ternary(w)
    values = torch.unique(q.detach())
    assert len(values) == 3
    s = values.max()
    assert torch.equal(values, torch.stack([-s, torch.zeros(()), s]))
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_kbit_weights_lie_on_the_grid():
    w = torch.randn(40, 30)
    q = uniform(w, 4)
    step = w.abs().max() / 7
    codes = q / step
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    assert codes.abs().max() <= 7 + 1e-5
    assert (q - w).abs().max() <= step / 2 + 1e-6


def test_signal_quantiser_has_its_levels():
    x = torch.randn(5, 100)
    q = absmax_signal(x, 3)
    levels = (q / x.abs().amax(dim=-1, keepdim=True) * 3)
    assert torch.allclose(levels, levels.round(), atol=1e-5)


def test_programming_noise_has_the_calibrated_spread_in_each_rows_own_scale():
    sigma = 2e-6
    spec = AnalogSpec(noise_model=noise_model(prog=sigma), read_noise=False, stuck_cells=False)
    w = torch.full((200, 200), 0.5)
    w[:100, 0] = 1.0                    # rows 0..99 map 1.0 to the full window, rows 100.. map 0.5 to it
    error = perturb_weights(w, spec, torch.Generator().manual_seed(1)) - w
    # two devices of the pair, each with sigma, scaled back into weight units by the row's maximum
    per_unit = (2 ** 0.5) * sigma / (G_MAX - G_MIN)
    assert error[:100].std().item() == pytest.approx(per_unit * 1.0, rel=0.03)
    assert error[100:].std().item() == pytest.approx(per_unit * 0.5, rel=0.03)
    assert abs(error.mean().item()) < 0.05 * per_unit


def test_uncompensated_stuck_devices_appear_at_the_calibrated_rate():
    spec = AnalogSpec(noise_model=noise_model(on=0.02, off=0.0), programming_noise=False, read_noise=False,
                      stuck_compensation=False)
    w = torch.zeros(300, 300)
    w[:, 0] = 1.0
    realised = perturb_weights(w, spec, torch.Generator().manual_seed(2))
    # a stuck-on device of a zero weight's pair shows as +-1 (the full window)
    hit = (realised[:, 1:].abs() > 0.99)
    assert hit.float().mean().item() == pytest.approx(2 * 0.02, rel=0.1)


def test_compensated_stuck_devices_cost_at_most_the_weight():
    """With the stuck map known, the partner device is programmed around a stuck one: a zero
    weight stays exactly zero, and no weight moves by more than its own size."""
    spec = AnalogSpec(noise_model=noise_model(on=0.05, off=0.05), programming_noise=False, read_noise=False)
    w = torch.randn(300, 300, generator=torch.Generator().manual_seed(0))
    w[:, :100] = 0.0
    realised = perturb_weights(w, spec, torch.Generator().manual_seed(3))
    uncompensated = perturb_weights(w, spec.model_copy(update={"stuck_compensation": False}),
                                    torch.Generator().manual_seed(3))
    both_stuck_bound = 0.05 ** 2 * 4          # both devices stuck (rare): the pair is fixed
    assert (realised[:, :100] != 0).float().mean() <= both_stuck_bound
    assert ((realised - w).abs() > w.abs() + 1e-6).float().mean() <= both_stuck_bound
    assert (realised - w).abs().mean() < 0.3 * (uncompensated - w).abs().mean()


def test_drift_with_global_compensation_keeps_the_layer_scale():
    """With one exponent for every device, both devices of a pair drift by f = ((t + t0) / t0)^-nu, so
    the pair's difference, and with it every weight, is f times the programmed one; the compensated
    layer must be the programmed weights themselves, weight by weight."""
    t, t0, nu = 3600.0, 1.0, 0.05
    f = ((t + t0) / t0) ** -nu                                  # 0.664
    spec = AnalogSpec(noise_model=noise_model(nu=nu, nu_std=0.0), programming_noise=False, read_noise=False,
                      stuck_cells=False, drift_time_s=t)
    w = torch.randn(50, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    uncompensated = perturb_weights(w, spec.model_copy(update={"drift_compensation": False}))
    torch.testing.assert_close(uncompensated, w * f, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(perturb_weights(w, spec), w, rtol=1e-9, atol=1e-12)


def test_drift_compensation_with_spread_exponents_removes_the_mean_decay():
    """Exponents spread over devices: without compensation the weights shrink on average by the mean of
    the log-normal factor f = e^(-nu L), L = ln((t + t0) / t0), nu ~ N(m, s^2), i.e. exp(-m L + s^2 L^2 / 2);
    the compensated weights have unit gain. Gains are least-squares slopes of realised against programmed
    weights, each within five standard errors of its sampling error, computed from the law of f."""
    t, t0, m, s = 3600.0, 1.0, 0.05, 0.01
    L = math.log((t + t0) / t0)
    mean_f = math.exp(-m * L + s ** 2 * L ** 2 / 2)
    sd_f = math.sqrt(math.exp(-2 * m * L + 2 * s ** 2 * L ** 2) - mean_f ** 2)
    spec = AnalogSpec(noise_model=noise_model(nu=m, nu_std=s), programming_noise=False, read_noise=False,
                      stuck_cells=False, drift_time_s=t)
    w = torch.randn(200, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def gain(realised):
        return float((w * realised).sum() / (w * w).sum())

    # The slope's scatter from the device-to-device spread of f, through the device that carries each weight
    # (the partner at the bottom of the window, 1 % of the span, adds well under 1 % to it).
    se = sd_f * float((w ** 4).sum().sqrt() / (w * w).sum())
    uncompensated = perturb_weights(w, spec.model_copy(update={"drift_compensation": False}),
                                    torch.Generator().manual_seed(1))
    assert gain(uncompensated) == pytest.approx(mean_f, abs=5 * se)
    compensated = perturb_weights(w, spec, torch.Generator().manual_seed(1))
    # the compensation's gain is itself an estimate of 1 / mean_f from the same devices
    assert gain(compensated) == pytest.approx(1.0, abs=5 * 2 * se / mean_f)
    assert abs(gain(compensated) - 1) < abs(gain(uncompensated) - 1) / 20


def test_perturbation_gradient_is_straight_through():
    spec = AnalogSpec(noise_model=noise_model(prog=3e-6, read_rel=0.01))
    w = torch.randn(10, 10, requires_grad=True)
    perturb_weights(w, spec).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_configure_reaches_every_analog_layer():
    model = nn.Sequential(AnalogLinear(3, 4), nn.ReLU(), AnalogLinear(4, 2))
    assert configure_analog(model, AnalogSpec(weights="ternary")) == 2
    assert all(m.analog.weights == "ternary" for m in model if isinstance(m, AnalogLinear))


def test_a_simulated_chip_is_one_fixed_draw_and_seeded():
    from hil.nn.analog import simulated_chip

    layer = AnalogLinear(20, 10)
    layer.analog = AnalogSpec(noise_model=noise_model(prog=2e-6, read_rel=0.01))
    layer.eval()
    x = torch.randn(4, 20)
    clean = layer(x)
    with simulated_chip(layer, seed=3):
        a1, a2 = layer(x), layer(x)
    with simulated_chip(layer, seed=3):
        b = layer(x)
    with simulated_chip(layer, seed=4):
        c = layer(x)
    assert torch.equal(a1, a2) and torch.equal(a1, b) and not torch.equal(a1, c)
    assert not torch.equal(a1, clean) and torch.equal(layer(x), clean)


def test_drift_by_conductance_gives_each_device_its_own_exponent():
    """With the power_g law the low-conductance device of a pair drifts (nu 0.2) and the high one does not
    (nu 0): a full-scale weight grows by the closed form below, where one exponent would shrink it."""
    drift = Drift(law="power_g", nu_mean=0.1, nu_std=0.0, t0_s=1.0, levels_s=[G_MIN, G_MAX],
                  nu_mean_by_level=[0.2, 0.0], nu_std_by_level=[0.0, 0.0])
    model = noise_model().model_copy(update={"drift": drift})
    spec = AnalogSpec(noise_model=model, programming_noise=False, read_noise=False, stuck_cells=False,
                      drift_time_s=3600.0, drift_compensation=False)
    w = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    realised = perturb_weights(w, spec)
    expected = (G_MAX - G_MIN * 3601.0 ** -0.2) / (G_MAX - G_MIN)
    assert realised[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert realised[0, 1].item() == pytest.approx(-expected, rel=1e-6)
    single = perturb_weights(w, spec.model_copy(update={"noise_model": noise_model(nu=0.1)}))
    assert single[0, 0].item() == pytest.approx(3601.0 ** -0.1, rel=1e-6)


def test_flicker_read_noise_is_drawn_at_the_deployment_time():
    """A 1/f read-noise law is evaluated at spec.drift_time_s (else at the model's reference time), and a
    device that drifted keeps the relative 1/f amplitude of the conductance it was programmed to."""
    import math

    from calibration.noise_model import ReadNoise

    q, p, t0, t_read = 0.01, 0.5, 20.0, 1e-6
    read = ReadNoise(law="flicker", floor_s=0.0, relative=0.0, flicker=q, flicker_exponent=p, flicker_g_ref_s=G_MAX,
                     flicker_t0_s=t0, t_read_s=t_read, reference_age_s=1.0)

    def expected(age, drift=1.0):
        # zero weights: both devices of each pair at G_MIN; two independent reads per weight
        sigma = q * G_MAX * (G_MIN / G_MAX) ** p * math.sqrt(math.log((age + t0 + t_read) / (2 * t_read)))
        return math.sqrt(2) * drift * sigma / (G_MAX - G_MIN)

    w = torch.zeros(400, 400, dtype=torch.float64)
    w[:, 0] = 1.0
    for nu, age in ((0.0, None), (0.0, 1e4), (0.1, 1e4)):
        model = noise_model(nu=nu).model_copy(update={"read": read})
        spec = AnalogSpec(noise_model=model, programming_noise=False, stuck_cells=False, drift_time_s=age,
                          drift_compensation=False)
        error = perturb_weights(w, spec, torch.Generator().manual_seed(5))[:, 1:]
        # both devices of a zero weight drift alike (the model's drift t0 is 1 s): only the noise shows
        drift = 1.0 if age is None else (age + 1.0) ** -nu
        assert error.std().item() == pytest.approx(expected(1.0 if age is None else age, drift), rel=0.02)
