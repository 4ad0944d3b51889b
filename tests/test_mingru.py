"""MinGRU: log-space scan against the step form, against mingru-pytorch, and its matvec routing."""

import pytest
import torch

from hil.nn.matvec import set_matvec
from hil.nn.mingru import MinGRU, g, log_g

B, L, D_IN, D_H = 3, 40, 5, 7


def make(seed=0, bias=True):
    torch.manual_seed(seed)
    return MinGRU(D_IN, D_H, bias=bias).double()


def run_steps(cell, x, h):
    out = []
    for t in range(x.shape[1]):
        h = cell.step(x[:, t], h)
        out.append(h)
    return torch.stack(out, dim=1)


def test_g_is_positive_continuous_and_log_g_matches():
    v = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    assert (g(v) > 0).all()
    # torch's float64 sigmoid is itself only good to ~1e-9 relative far in the tail
    assert torch.allclose(torch.log(g(v)), log_g(v), atol=1e-8, rtol=0)
    assert g(torch.tensor(0.0)).item() == pytest.approx(0.5)
    assert g(torch.tensor(-1e-9, dtype=torch.float64)).item() == pytest.approx(0.5)


def test_log_g_gradient_is_finite_for_negative_inputs():
    v = torch.tensor([-5.0, -0.6, -0.5, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    log_g(v).sum().backward()
    assert torch.isfinite(v.grad).all()


@pytest.mark.parametrize("with_h0", [False, True])
def test_parallel_scan_equals_step_form(with_h0):
    cell = make()
    x = torch.randn(B, L, D_IN, dtype=torch.float64) * 2
    h0 = torch.rand(B, D_H, dtype=torch.float64) + 0.1 if with_h0 else None
    parallel = cell(x, h0)
    stepped = run_steps(cell, x, h0 if with_h0 else cell.init_state(B))
    assert parallel.shape == (B, L, D_H)
    assert (parallel - stepped).abs().max().item() < 1e-9
    assert (parallel > 0).all()


def test_zero_initial_state_equals_no_initial_state_and_chunks_compose():
    cell = make()
    x = torch.randn(B, L, D_IN, dtype=torch.float64)
    full = cell(x)
    assert torch.allclose(cell(x, cell.init_state(B)), full, atol=1e-12, rtol=0)
    first = cell(x[:, :17])
    second = cell(x[:, 17:], first[:, -1])
    assert torch.allclose(torch.cat([first, second], dim=1), full, atol=1e-12, rtol=0)


def oracle_pair(seed=0):
    """Ours (bias off) and mingru-pytorch's minGRU with the same weights, in float64.

    The package maps dim -> dim·expansion_factor with one bias-free Linear whose first half of
    rows is the candidate and second half the gate; ours puts the gate first.
    """
    minGRU_pytorch = pytest.importorskip("minGRU_pytorch")
    cell = make(seed, bias=False)
    ref = minGRU_pytorch.minGRU(D_IN, expansion_factor=D_H / D_IN, proj_out=False).double()
    assert ref.to_hidden_and_gate.weight.shape == (2 * D_H, D_IN)
    with torch.no_grad():
        w = cell.linear.weight
        ref.to_hidden_and_gate.weight.copy_(torch.cat([w[D_H:], w[:D_H]]))
    return cell, ref


def test_matches_mingru_pytorch_parallel():
    cell, ref = oracle_pair()
    x = torch.randn(B, L, D_IN, dtype=torch.float64) * 2
    assert (cell(x) - ref(x)).abs().max().item() < 1e-12


def test_matches_mingru_pytorch_with_previous_hidden_state():
    cell, ref = oracle_pair(1)
    x = torch.randn(B, L, D_IN, dtype=torch.float64)
    h0 = torch.rand(B, D_H, dtype=torch.float64) + 0.05
    out, last = ref(x, prev_hidden=h0.unsqueeze(1), return_next_prev_hidden=True)
    ours = cell(x, h0)
    assert (ours - out).abs().max().item() < 1e-12
    assert torch.allclose(ours[:, -1], last[:, 0], atol=1e-12, rtol=0)
    # the package's own one-step (sequential) path against our step
    x1 = x[:, :1]
    assert (cell.step(x1[:, 0], h0) - ref(x1, prev_hidden=h0.unsqueeze(1))[:, 0]).abs().max() < 1e-12


def test_step_has_exactly_one_weight_product_through_matvec():
    cell = make()
    calls = []

    def counting(layer, x):
        calls.append((layer, tuple(x.shape)))
        return layer(x)

    set_matvec(cell, counting)
    h = cell.step(torch.randn(B, D_IN, dtype=torch.float64), cell.init_state(B))
    assert calls == [(cell.linear, (B, D_IN))]
    assert h.shape == (B, D_H)


def test_gradients_reach_the_weights():
    cell = make()
    x = torch.randn(B, L, D_IN, dtype=torch.float64, requires_grad=True)
    cell(x, cell.init_state(B)).square().mean().backward()
    for p in (cell.linear.weight, cell.linear.bias, x):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_float32_scan_stays_close_on_long_sequences():
    cell = make().float()
    x = torch.randn(2, 1000, D_IN)
    parallel = cell(x)
    stepped = run_steps(cell, x, cell.init_state(2))
    assert torch.allclose(parallel, stepped, rtol=1e-3, atol=1e-4)
