"""DelayConv1d: Gaussian kernel against the DCLS package, causality, streaming, gradients."""

import copy
import io

import pytest
import torch
from torch.nn import functional as F

from hil.nn.delay_conv import (
    DelayConv1d,
    clamp_delay_positions,
    round_delay_positions,
    set_delay_sigma,
    sigma_schedule,
)
from hil.nn.matvec import set_matvec

B, L, C, K, T = 3, 30, 4, 9, 3


def make(seed=0, sigma=1.5, max_delay=K):
    torch.manual_seed(seed)
    return DelayConv1d(C, max_delay, T, sigma=sigma).double()


def run_steps(conv, x):
    past, out = conv.init_state(x.shape[0]), []
    for t in range(x.shape[1]):
        y, past = conv.step(x[:, t], past)
        out.append(y)
    return torch.stack(out, dim=1)


def test_defaults_each_tap_normalised_and_kernel_shape():
    conv = DelayConv1d(C, 12, T)
    assert float(conv.sigma) == pytest.approx(4.0)                  # max_delay / 3
    assert ((conv.positions >= 0) & (conv.positions <= 11)).all()
    phi = conv.interpolation()
    assert phi.shape == (C, T, 12)
    assert torch.allclose(phi.sum(-1), torch.ones(C, T))
    assert conv.kernel().shape == conv.taps.kernel().shape == (C, 12)


def test_output_is_causal_and_spans_max_delay():
    conv = make()
    x = torch.randn(B, L, C, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 10] += 1.0
    diff = (conv(x2) - conv(x)).abs().amax(dim=(0, 2))
    assert (diff[:10] == 0).all()
    assert (diff[10:10 + K] > 0).all()
    assert (diff[10 + K:] == 0).all()


def test_integer_delays_are_exact_shifts():
    conv = make()
    conv.set_sigma(0.23)
    round_delay_positions(conv)
    d, w = conv.delays(), conv.weight.detach()
    x = torch.randn(B, L, C, dtype=torch.float64)
    xp = F.pad(x, (0, 0, K, 0))                                      # zeros before t = 0
    expected = torch.zeros_like(x)
    for c in range(C):
        for j in range(T):
            expected[:, :, c] += w[c, j] * xp[:, K - d[c, j]:K - d[c, j] + L, c]
    assert torch.allclose(conv(x), expected, atol=1e-12, rtol=0)
    assert (conv.kernel() != 0).sum(-1).le(T).all()


@pytest.mark.parametrize("max_delay", [1, 2, K])
@pytest.mark.parametrize("integer", [False, True])
def test_step_form_equals_parallel_form(max_delay, integer):
    conv = make(max_delay=max_delay)
    if integer:
        conv.round_positions()
    x = torch.randn(B, L, C, dtype=torch.float64)
    assert (conv(x) - run_steps(conv, x)).abs().max().item() < 1e-9
    assert conv.init_state(B).shape == (B, C, max_delay - 1)


def test_step_product_goes_through_matvec_with_the_taps_layer():
    conv = make()
    calls = []

    def counting(layer, x):
        calls.append((layer, tuple(x.shape)))
        return layer(x)

    set_matvec(conv, counting)
    window = torch.randn(B, C * K, dtype=torch.float64)
    y, past = conv.step(window[:, :C], conv.init_state(B))
    assert calls == [(conv.taps, (B, C * K))]
    # the taps layer behaves as a (C, C·K) block-diagonal linear layer without bias
    taps = conv.taps
    assert (taps.in_features, taps.out_features, taps.bias) == (C * K, C, None)
    assert torch.allclose(taps(window), window @ taps.effective_weight().T, atol=1e-12, rtol=0)
    assert torch.allclose(taps(window.view(B, C, K)), taps(window), atol=0, rtol=0)


def test_taps_follow_the_current_parameters_through_deepcopy_and_pickling():
    conv = make()
    clone = copy.deepcopy(conv)
    with torch.no_grad():
        clone.weight.mul_(2)
    assert torch.allclose(clone.taps.kernel(), 2 * conv.taps.kernel())
    assert list(conv.modules()) == [conv, conv.taps]
    buffer = io.BytesIO()
    torch.save(clone, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        loaded.weight.mul_(0.5)
    assert torch.allclose(loaded.taps.kernel(), conv.kernel())


def dcls_twin(conv: DelayConv1d, sigma: float):
    """The DCLS package's Dcls1d built from ``conv``'s weights, delays and σ.

    Package conventions mapped here: its kernel index i (0..K-1) is read by a cross-correlation,
    so on an input left-padded by K-1 index i multiplies x_{t-(K-1-i)}: delay d ↔ i = K-1-d. Its
    positions are centred, i = P + K//2, so P = K-1-d - K//2. Its Gaussian width is |SIG| + 0.27,
    so SIG = σ - 0.27 (needs σ ≥ 0.27). It normalises each tap over i like ours, but adds 1e-7
    to the sum.
    """
    modules = pytest.importorskip("DCLS.construct.modules")
    k = conv.max_delay
    ref = modules.Dcls1d(C, C, kernel_count=T, dilated_kernel_size=k, groups=C, bias=False,
                         padding=0, version="gauss").double()
    with torch.no_grad():
        ref.weight.copy_(conv.weight.detach().unsqueeze(1))                          # (C, 1, T)
        ref.P.copy_((k - 1 - conv.positions.detach() - k // 2).reshape(1, C, 1, T))
        ref.SIG.fill_(sigma - 0.27)
    return ref


@pytest.mark.parametrize("sigma", [0.4, 1.0, 3.0])
def test_matches_dcls_package_gaussian_kernel_and_convolution(sigma):
    conv = make(seed=2, sigma=sigma)
    ref = dcls_twin(conv, sigma)
    ref_kernel = ref.DCK(ref.weight, ref.P, ref.SIG)[:, 0, :]                      # (C, K), by index i
    ours = conv.kernel().flip(-1)
    # only the package's 1e-7 regulariser on tap sums ≥ ~0.5 separates the two
    assert torch.allclose(ours, ref_kernel, rtol=1e-6, atol=1e-12)
    x = torch.randn(B, L, C, dtype=torch.float64)
    ref_out = ref(F.pad(x.transpose(1, 2), (K - 1, 0))).transpose(1, 2)
    assert (conv(x) - ref_out).abs().max().item() < 1e-6 * x.abs().max().item()


def test_gradients_to_positions_and_weights_match_finite_differences():
    conv = make(sigma=1.2)
    x = torch.randn(2, 12, C, dtype=torch.float64)

    def f(weight, positions):
        return torch.func.functional_call(conv, {"weight": weight, "positions": positions}, (x,))

    w = conv.weight.detach().clone().requires_grad_()
    p = conv.positions.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (w, p))
    conv(x).square().sum().backward()
    assert conv.positions.grad.abs().min() > 0 and conv.weight.grad.abs().min() > 0


def test_clamp_and_far_out_positions_stay_finite():
    conv = make()
    with torch.no_grad():
        conv.positions[0, 0] = 40.0
        conv.positions[1, 0] = -40.0
    assert torch.isfinite(conv.kernel()).all()
    clamp_delay_positions(conv)
    assert conv.positions[0, 0].item() == K - 1 and conv.positions[1, 0].item() == 0


def test_sigma_schedule_and_setter():
    s0 = 3.0
    assert sigma_schedule(0, s0, 10) == pytest.approx(s0)
    assert sigma_schedule(10, s0, 10) == pytest.approx(0.23)
    assert sigma_schedule(25, s0, 10) == pytest.approx(0.23)
    ratios = [sigma_schedule(e + 1, s0, 10) / sigma_schedule(e, s0, 10) for e in range(10)]
    assert max(ratios) == pytest.approx(min(ratios))                 # geometric
    conv = make()
    set_delay_sigma(conv, 0.5)
    assert float(conv.sigma) == 0.5 and "sigma" in conv.state_dict()


def test_an_analog_spec_reaches_the_taps_in_both_forms():
    """A simulated chip perturbs the kernel once, per channel row; parallel and step forms see it alike."""
    from hil.nn.analog import AnalogSpec, configure_analog, simulated_chip
    from tests.test_analog import noise_model

    conv = make(sigma=0.8)
    assert configure_analog(conv, AnalogSpec(noise_model=noise_model(prog=2e-6, read_rel=0.01))) == 1
    conv.eval()
    x = torch.randn(B, L, C, dtype=torch.float64)
    clean = conv(x)
    assert torch.equal(conv.taps.kernel(), conv.kernel())          # noise is off in eval
    with simulated_chip(conv, seed=1):
        chip_kernel = conv.taps.kernel()
        parallel, streamed = conv(x), run_steps(conv, x)
    assert torch.allclose(parallel, streamed, atol=1e-12)
    assert not torch.allclose(parallel, clean)
    error = (chip_kernel - conv.kernel()).abs()
    row_max = conv.kernel().abs().amax(-1, keepdim=True)
    assert (error < 0.2 * row_max).all()
    configure_analog(conv, AnalogSpec(weights="ternary"))
    assert len(torch.unique(conv.taps.kernel().detach())) <= 3
