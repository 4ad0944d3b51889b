"""The S4D streaming step: the O(N) diagonal recurrence (digital matvec) and the stacked-matrix
product (any other matvec, e.g. a crossbar) agree with independent references; the discrete system
is built once per parameter state outside autograd and rebuilt when the parameters or the
transform's state change."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from hil.nn.analog import AnalogSpec, configure_analog, simulated_chip
from hil.nn.s4d import S4D, S4DModel
from hil.nn.s4d_analog import attach
from tests.test_analog import noise_model

D64 = torch.float64


def random_layer(h=4, n=10, seed=0) -> S4D:
    """Random poles (fast and slow decay, varied rotation), Δ from 1e-2 to 0.5, random C and D."""
    torch.manual_seed(seed)
    layer = S4D(h, n).to(D64)
    with torch.no_grad():
        layer.log_neg_real.add_(torch.randn_like(layer.log_neg_real))
        layer.imag.add_(3 * torch.randn_like(layer.imag))
        layer.log_dt.copy_(torch.linspace(math.log(1e-2), math.log(0.5), h, dtype=D64))
    return layer


def zoh(layer: S4D):
    """Ā, B̄, C, D in numpy complex numbers, from the raw parameters: Ā = exp(Δλ), B̄ = (Ā - 1)/λ."""
    g = lambda t: t.detach().numpy()  # noqa: E731
    lam = -np.exp(g(layer.log_neg_real)) + 1j * g(layer.imag)
    dt = np.exp(g(layer.log_dt))[:, None]
    a = np.exp(dt * lam)
    return a, (a - 1) / lam, g(layer.c_re) + 1j * g(layer.c_im), g(layer.d)


def numpy_recurrence(layer: S4D, u: np.ndarray) -> np.ndarray:
    """x_k = Ā x_{k-1} + B̄ u_k, y_k = 2 Re(C x_k) + D u_k; u (B, L, H) -> y (B, L, H)."""
    a, b, c, d = zoh(layer)
    batch, length, h = u.shape
    x = np.zeros((batch, h, a.shape[1]), dtype=complex)
    y = np.empty((batch, length, h))
    for k in range(length):
        x = a * x + b * u[:, k, :, None]
        y[:, k] = 2 * (c * x).sum(-1).real + d * u[:, k]
    return y


def numpy_convolution(layer: S4D, u: np.ndarray) -> np.ndarray:
    """y_t = Σ_{l<=t} K_l u_{t-l} + D u_t with K_l = 2 Re Σ_n C_n B̄_n Ā_n^l, all by explicit loops."""
    a, b, c, d = zoh(layer)
    batch, length, h = u.shape
    kernel = np.empty((h, length))
    power = np.ones_like(a)
    for lag in range(length):
        kernel[:, lag] = 2 * (c * b * power).sum(-1).real
        power = power * a
    y = d * u
    for t in range(length):
        for lag in range(t + 1):
            y[:, t] += kernel[:, lag] * u[:, t - lag]
    return y


class Recorder:
    """A matvec that is not the digital one (so the step takes the stacked form, as on a crossbar)
    and computes the product digitally, recording which layers it was asked for."""

    def __init__(self):
        self.calls = []

    def __call__(self, layer, x):
        self.calls.append((layer, tuple(x.shape)))
        return layer(x)


def run(layer: S4D, u: torch.Tensor) -> torch.Tensor:
    state = layer.init_state(u.shape[0])
    ys = []
    for t in range(u.shape[1]):
        y, state = layer.step(u[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagonal_step_reproduces_the_convolution_and_the_stacked_step(seed):
    layer = random_layer(seed=seed)
    u = torch.randn(3, 50, 4, dtype=D64)
    with torch.no_grad():
        diagonal = run(layer, u)
        parallel = layer(u)
        layer.matvec = Recorder()
        stacked = run(layer, u)
    recurrence = numpy_recurrence(layer, u.numpy())
    convolution = numpy_convolution(layer, u.numpy())
    assert np.abs(recurrence - convolution).max() < 1e-11          # the two references agree
    assert np.abs(diagonal.numpy() - convolution).max() < 1e-11
    assert np.abs(stacked.numpy() - recurrence).max() < 1e-11
    assert (diagonal - parallel).abs().max() < 1e-11
    assert (diagonal - stacked).abs().max() < 1e-12


def test_digital_step_never_builds_the_stacked_matrices(monkeypatch):
    layer = random_layer()

    def dense(*args, **kwargs):
        raise AssertionError("the digital step built the (N+1)x(N+1) matrices")

    monkeypatch.setattr(layer.recurrence, "block_matrices", dense)
    with torch.no_grad():
        run(layer, torch.randn(2, 5, 4, dtype=D64))


def test_a_crossbar_matvec_receives_the_stacked_product():
    torch.manual_seed(0)
    model = S4DModel(d_input=2, d_output=3, d_model=4, d_state=6, n_layers=2).double().eval()
    recorder = Recorder()
    for m in model.modules():
        if hasattr(m, "matvec"):
            m.matvec = recorder
    x = torch.randn(5, 7, 2, dtype=D64)
    with torch.no_grad():
        state = model.init_state(5)
        for t in range(7):
            state = model.step(x[:, t], state)
        streamed = model.readout(state)
        expected = model(x)
    for layer in model.layers:
        seen = [shape for m, shape in recorder.calls if m is layer.s4d.recurrence]
        assert seen == [(5, 4, 7)] * 7           # one (B, H, N+1) product per step
    assert (streamed - expected).abs().max() < 1e-10


def count_discretizations(layer: S4D) -> list:
    calls = []
    exact = layer.exact_discretization

    def counted():
        calls.append(1)
        return exact()

    layer.exact_discretization = counted
    return calls


@pytest.mark.parametrize("stacked", [False, True])
def test_inference_discretizes_once_and_training_every_step(stacked):
    layer = random_layer()
    if stacked:
        layer.matvec = Recorder()
    calls = count_discretizations(layer)
    u = torch.randn(2, 30, 4, dtype=D64)
    layer.eval()
    with torch.no_grad():
        first = run(layer, u)
        second = run(layer, u)
    assert len(calls) == 1 and torch.equal(first, second)
    # under autograd each step builds its own graph, as the gradient needs
    calls.clear()
    layer.train()
    run(layer, u).sum().backward()
    assert len(calls) == 30 and layer.log_dt.grad.abs().sum() > 0


@pytest.mark.parametrize("stacked", [False, True])
def test_an_optimiser_step_invalidates_the_cache(stacked):
    torch.manual_seed(3)
    model = S4DModel(d_input=1, d_output=2, d_model=4, d_state=6, n_layers=1).double()
    layer = model.layers[0].s4d
    if stacked:
        layer.matvec = Recorder()
    u = torch.randn(2, 40, 4, dtype=D64)
    layer.eval()
    with torch.no_grad():
        before = run(layer, u)                    # fills the cache
    assert np.abs(before.numpy() - numpy_recurrence(layer, u.numpy())).max() < 1e-11
    opt = torch.optim.AdamW(model.param_groups(lr=0.1, ssm_lr=0.1), lr=0.1)
    x = torch.randn(8, 40, 1, dtype=D64)
    model.train()
    F.cross_entropy(model(x), torch.randint(0, 2, (8,))).backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        after = run(layer, u)
        parallel = layer(u)
    assert (after - before).abs().max() > 1e-3     # the parameters did move
    assert np.abs(after.numpy() - numpy_recurrence(layer, u.numpy())).max() < 1e-11
    assert (after - parallel).abs().max() < 1e-11


def test_in_place_edits_and_dtype_changes_invalidate_the_cache():
    layer = random_layer()
    u = torch.randn(2, 20, 4, dtype=D64)
    with torch.no_grad():
        run(layer, u)
        layer.c_re.mul_(-2.0)
        layer.log_dt.add_(0.3)
        assert np.abs(run(layer, u).numpy() - numpy_recurrence(layer, u.numpy())).max() < 1e-11
        layer.float()
        y32 = run(layer, u.float())
    assert y32.dtype == torch.float32
    assert np.abs(y32.double().numpy() - numpy_recurrence(layer, u.numpy())).max() < 1e-4


@pytest.mark.parametrize("stacked", [False, True])
def test_a_simulated_chip_is_seen_and_left_behind(stacked):
    torch.manual_seed(0)
    model = S4DModel(1, 3, d_model=4, d_state=6, n_layers=1).double()
    attach(model)
    configure_analog(model, AnalogSpec(noise_model=noise_model(prog=2e-6, read_rel=0.01), weights="kbit", bits=6))
    model.eval()
    layer = model.layers[0].s4d
    if stacked:
        layer.matvec = Recorder()
    u = torch.randn(2, 25, 4, dtype=D64)
    with torch.no_grad():
        clean = run(layer, u)
        assert (clean - layer(u)).abs().max() < 1e-11
        for seed in (1, 2):
            with simulated_chip(model, seed=seed):
                chip = run(layer, u)
                assert (chip - layer(u)).abs().max() < 1e-11
            assert (chip - clean).abs().max() > 1e-6
        assert torch.equal(run(layer, u), clean)


def test_noise_drawn_per_call_is_not_cached():
    torch.manual_seed(0)
    model = S4DModel(1, 3, d_model=4, d_state=6, n_layers=1).double()
    attach(model)
    configure_analog(model, AnalogSpec(noise_model=noise_model(prog=2e-6), noise_in_eval=True))
    model.eval()
    layer = model.layers[0].s4d
    calls = count_discretizations(layer)
    with torch.no_grad():
        run(layer, torch.randn(1, 6, 4, dtype=D64))
    assert len(calls) == 6
