"""S4D: the parallel (FFT) and streaming (one MVM per step) forms agree, with each other and with
independent references, for any real parameters; the model's step routes every weight product
through the pluggable matvec; the layer learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hil.nn.analog import AnalogLinear
from hil.nn.matvec import digital_matvec, set_matvec
from hil.nn.s4d import S4D, S4DModel, S4DRecurrence, causal_fft_conv, complex_powers

D64 = torch.float64


def make_layer(h=3, n=8, seed=0) -> S4D:
    torch.manual_seed(seed)
    layer = S4D(h, n).to(D64)
    with torch.no_grad():
        # Spread the poles: some decay fast, some barely (|Ā| close to 1), varied Δ.
        layer.log_neg_real.add_(torch.randn_like(layer.log_neg_real))
        layer.imag.add_(torch.randn_like(layer.imag))
        layer.log_dt.copy_(torch.linspace(math.log(1e-3), math.log(0.5), h, dtype=D64))
    return layer


def perturbing_transform(seed: int):
    """Adds fixed random offsets to every discrete parameter: the result is no ZOH of any λ (|Ā|
    may exceed 1, B̄ is unrelated to Ā), so agreement cannot rely on that structure. The offsets
    to Ā stay small only to keep |Ā|^L, and so the absolute error, bounded over the lengths used."""
    offsets = {}

    def transform(params):
        if not offsets:  # drawn once, so both forms see the same system
            gen = torch.Generator().manual_seed(seed)
            for k, v in params.items():
                scale = 0.03 if k in ("alpha", "beta") else 0.3
                offsets[k] = scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)
        return {k: v + offsets[k] for k, v in params.items()}

    return transform


def run_steps(layer: S4D, u: torch.Tensor) -> torch.Tensor:
    """u (B, L, H) -> y (B, L, H) by the streaming step."""
    state = layer.init_state(u.shape[0])
    ys = []
    for t in range(u.shape[1]):
        y, state = layer.step(u[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1)


def reference_loop(params, u: torch.Tensor) -> torch.Tensor:
    """x_k = Ā x_{k-1} + B̄ u_k, y_k = 2 Re(C x_k) + D u_k in plain complex numpy; u (B, L, H)."""
    p = {k: v.detach().numpy() for k, v in params.items()}
    a = p["alpha"] + 1j * p["beta"]
    b = p["b_re"] + 1j * p["b_im"]
    c = p["c_re"] + 1j * p["c_im"]
    u = u.numpy()
    batch, length, h = u.shape
    x = np.zeros((batch, h, a.shape[1]), dtype=complex)
    y = np.zeros((batch, length, h))
    for k in range(length):
        x = a * x + b * u[:, k, :, None]
        y[:, k] = 2 * (c * x).sum(-1).real + p["d"] * u[:, k]
    return torch.from_numpy(y)


@pytest.mark.parametrize("length", [1, 2, 17, 64])
@pytest.mark.parametrize("perturbed", [False, True])
def test_parallel_and_step_forms_agree(length, perturbed):
    layer = make_layer()
    if perturbed:
        layer.param_transform = perturbing_transform(seed=length)
    u = torch.randn(2, length, 3, dtype=D64)
    with torch.no_grad():
        y_par = layer(u)
        y_step = run_steps(layer, u)
    assert y_par.shape == y_step.shape == (2, length, 3)
    assert (y_par - y_step).abs().max() < 1e-10


@pytest.mark.parametrize("perturbed", [False, True])
def test_kernel_against_complex_loop(perturbed):
    layer = make_layer(seed=1)
    if perturbed:
        layer.param_transform = perturbing_transform(seed=7)
    u = torch.randn(2, 40, 3, dtype=D64)
    with torch.no_grad():
        params = layer.discretize()
        expected = reference_loop(params, u)
        assert (layer(u) - expected).abs().max() < 1e-10
        # The impulse response of the loop without the skip is the kernel itself, K_0 included.
        impulse = torch.zeros(1, 40, 3, dtype=D64)
        impulse[0, 0] = 1
        response = reference_loop({**params, "d": torch.zeros_like(params["d"])}, impulse)[0].T
        assert (layer.kernel(40) - response).abs().max() < 1e-10


def test_zoh_matches_closed_form():
    layer = S4D(3, 8).to(D64)
    with torch.no_grad():
        layer.log_neg_real.copy_(torch.log(torch.tensor([[0.5, 0.1, 2.0, 7.0]] * 3, dtype=D64)))
        layer.imag.copy_(torch.tensor([[0.0, 3.0, -20.0, 100.0]] * 3, dtype=D64))
        layer.log_dt.copy_(torch.log(torch.tensor([1e-3, 0.05, 1.0], dtype=D64)))
        p = layer.discretize()
    lam = -np.exp(layer.log_neg_real.detach().numpy()) + 1j * layer.imag.detach().numpy()
    dt = np.exp(layer.log_dt.detach().numpy())[:, None]
    a_bar = np.exp(dt * lam)
    b_bar = (np.exp(dt * lam) - 1) / lam
    np.testing.assert_allclose(p["alpha"].numpy() + 1j * p["beta"].numpy(), a_bar, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p["b_re"].numpy() + 1j * p["b_im"].numpy(), b_bar, rtol=1e-10, atol=1e-15)


def test_zoh_keeps_precision_for_tiny_steps():
    # For |Δλ| << 1, B̄ ≈ Δ(1 + Δλ/2): the naive (exp(Δλ) - 1)/λ would lose most digits here.
    layer = S4D(1, 2)
    with torch.no_grad():
        layer.log_neg_real.fill_(math.log(0.5))
        layer.imag.fill_(0.0)
        layer.log_dt.fill_(math.log(1e-6))
        p = layer.discretize()
    dt, lam = 1e-6, -0.5
    expected = dt * (1 + dt * lam / 2)
    assert abs(p["b_re"].item() - expected) / expected < 1e-6
    assert p["b_im"].item() == 0


def test_fft_convolution_is_causal_conv1d():
    torch.manual_seed(0)
    for length in (1, 5, 32):
        u = torch.randn(2, 4, length, dtype=D64)  # (B, H, L)
        k = torch.randn(4, length, dtype=D64)
        expected = F.conv1d(F.pad(u, (length - 1, 0)), k.flip(-1)[:, None, :], groups=4)
        assert (causal_fft_conv(u, k) - expected).abs().max() < 1e-12


def test_powers_of_any_complex_number_including_zero():
    a = torch.tensor([0.9 + 0.3j, -1.2 + 0.0j, 0.0 + 0.0j, 0.0 - 0.5j], dtype=torch.complex128, requires_grad=True)
    powers = complex_powers(a, 6)
    expected = torch.stack([a.detach() ** l for l in range(6)], dim=-1)
    assert (powers - expected).abs().max() < 1e-12
    # d(Σ_l a^l)/da at a = 0 is 1 (from a^1 alone): a quantised-to-zero pole still gets a gradient.
    powers[2].real.sum().backward()
    assert torch.isfinite(a.grad).all() and abs(a.grad[2].real.item() - 1) < 1e-12


def test_zero_pole_forms_agree():
    layer = make_layer()
    layer.param_transform = lambda p: {**p, "alpha": torch.zeros_like(p["alpha"]), "beta": torch.zeros_like(p["beta"])}
    u = torch.randn(1, 9, 3, dtype=D64)
    y_par = layer(u)
    assert torch.isfinite(y_par).all()
    assert (y_par - run_steps(layer, u)).abs().max() < 1e-12


def test_block_matrices_layout():
    layer = make_layer(h=2, n=4)
    rec = layer.recurrence
    assert isinstance(rec, S4DRecurrence) and list(rec.parameters()) == []
    blocks = rec.block_matrices()
    assert blocks.shape == (2, 5, 5)
    p = layer.discretize()
    # Mode 0 of channel 1 is the rotation-scaling [[α, -β], [β, α]] on (p_0, q_0).
    a, b = p["alpha"][1, 0], p["beta"][1, 0]
    assert torch.equal(blocks[1, [0, 2]][:, [0, 2]], torch.stack([torch.stack([a, -b]), torch.stack([b, a])]))
    # The parent is not a submodule: the tree (and state_dict) stays acyclic.
    assert set(dict(layer.named_modules())) == {"", "recurrence"}


def test_state_shape_and_dtype():
    layer = make_layer(h=3, n=8)
    state = layer.init_state(5)
    assert state.shape == (5, 3, 8) and state.dtype == D64
    y, new = layer.step(torch.zeros(5, 3, dtype=D64), state)
    assert y.shape == (5, 3) and new.shape == (5, 3, 8)


def test_odd_state_size_is_rejected():
    with pytest.raises(ValueError, match="even"):
        S4D(4, 7)


def make_model(prenorm=False, seed=0) -> S4DModel:
    torch.manual_seed(seed)
    model = S4DModel(d_input=2, d_output=3, d_model=6, d_state=8, n_layers=2, dropout=0.1, prenorm=prenorm).to(D64)
    for layer in model.layers:
        with torch.no_grad():
            layer.s4d.log_dt.uniform_(math.log(1e-2), math.log(0.5))
    return model.eval()


def stream(model: S4DModel, x: torch.Tensor) -> torch.Tensor:
    state = model.init_state(x.shape[0])
    for t in range(x.shape[1]):
        state = model.step(x[:, t], state)
    return model.readout(state)


@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("length", [1, 23])
def test_model_streaming_equals_parallel(prenorm, length):
    model = make_model(prenorm)
    x = torch.randn(4, length, 2, dtype=D64)
    with torch.no_grad():
        logits = model(x)
        streamed = stream(model, x)
    assert logits.shape == (4, 3)
    assert (logits - streamed).abs().max() < 1e-10


def test_every_dense_weight_is_analog():
    model = make_model()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, AnalogLinear) for m in linears)


def test_step_routes_every_weight_product_through_matvec():
    model = make_model()
    calls = []

    def counting(layer, x):
        calls.append(layer)
        return digital_matvec(layer, x)

    set_matvec(model, counting)
    x = torch.randn(2, 5, 2, dtype=D64)
    with torch.no_grad():
        state = model.init_state(2)
        per_step = [model.encoder]
        for layer in model.layers:
            per_step += [layer.s4d.recurrence, layer.out_linear]
        for t in range(5):
            calls.clear()
            state = model.step(x[:, t], state)
            assert calls == per_step
        calls.clear()
        model.readout(state)
        assert calls == [model.decoder]


def test_step_uses_weights_only_inside_matvec():
    # Every weight-bearing parameter is nan except while a matvec call runs: any product with a
    # weight computed elsewhere in the step would turn the logits into nan.
    model = make_model()
    x = torch.randn(3, 7, 2, dtype=D64)
    with torch.no_grad():
        expected = model(x)
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    weights = [p for p in model.parameters() if id(p) not in norms]
    saved = [p.detach().clone() for p in weights]

    def poison():
        for p in weights:
            p.fill_(float("nan"))

    def guarded(layer, x):
        for p, v in zip(weights, saved):
            p.copy_(v)
        try:
            return digital_matvec(layer, x)
        finally:
            poison()

    set_matvec(model, guarded)
    with torch.no_grad():
        poison()
        try:
            streamed = stream(model, x)
        finally:
            for p, v in zip(weights, saved):
                p.copy_(v)
    assert (streamed - expected).abs().max() < 1e-10


def test_gradients_reach_ssm_parameters():
    model = make_model().train()
    x = torch.randn(4, 16, 2, dtype=D64)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    for layer in model.layers:
        for name in ("log_dt", "log_neg_real", "imag", "c_re", "c_im", "d"):
            grad = getattr(layer.s4d, name).grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_memory_and_parameter_helpers():
    model = S4DModel(d_input=1, d_output=10, d_model=16, d_state=8, n_layers=3)
    state = model.init_state(2)
    numel = sum(s.numel() for s in state["ssm"]) + state["sum"].numel()
    assert model.streaming_state_bytes(batch=2) == 4 * numel == 4 * 2 * (3 * 8 * 16 + 16)
    assert model.streaming_state_bytes(dtype=torch.float64) == 8 * (3 * 8 * 16 + 16)
    per_s4d = 16 * (1 + 4 * 4 + 1)  # log_dt, (log_neg_real, imag, c_re, c_im) x M=4, d
    per_layer = per_s4d + 16 * 32 + 32 + 2 * 16
    assert model.parameter_count() == (16 + 16) + 3 * per_layer + (16 * 10 + 10)


def test_param_groups():
    model = make_model()
    groups = model.param_groups(lr=1e-2, ssm_lr=1e-3, weight_decay=0.05)
    ssm, decay, no_decay = groups
    expected_ssm = {id(getattr(l.s4d, n)) for l in model.layers for n in ("log_dt", "log_neg_real", "imag")}
    assert {id(p) for p in ssm["params"]} == expected_ssm
    assert ssm["lr"] == 1e-3 and ssm["weight_decay"] == 0
    assert decay["lr"] == 1e-2 and decay["weight_decay"] == 0.05
    assert id(model.layers[0].s4d.c_re) in {id(p) for p in decay["params"]}
    assert no_decay["weight_decay"] == 0 and id(model.layers[0].s4d.d) in {id(p) for p in no_decay["params"]}
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())
    torch.optim.AdamW(groups, lr=1e-2)  # accepted as is


def test_learns_sign_of_sum():
    torch.manual_seed(0)
    x = torch.randint(0, 2, (256, 33, 1)).float() * 2 - 1  # odd length: the sum is never 0
    y = (x.sum(dim=(1, 2)) > 0).long()
    model = S4DModel(d_input=1, d_output=2, d_model=16, d_state=8, n_layers=1)
    opt = torch.optim.AdamW(model.param_groups(lr=1e-2, ssm_lr=1e-3), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
    assert accuracy > 0.9
