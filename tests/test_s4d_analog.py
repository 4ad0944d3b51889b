"""Analog-aware training of the S4D recurrence."""

import pytest
import torch

from hil.nn.analog import AnalogSpec, configure_analog, simulated_chip
from hil.nn.s4d import S4DModel
from hil.nn.s4d_analog import S4DAnalog, attach
from tests.test_analog import noise_model


def model64():
    torch.manual_seed(0)
    m = S4DModel(1, 3, d_model=8, d_state=8, n_layers=2).double()
    assert attach(m) == 2
    return m


def test_neutral_spec_leaves_the_recurrence_exactly_unchanged():
    m = model64()
    x = torch.randn(4, 20, 1, dtype=torch.float64)
    plain = m(x)
    configure_analog(m, AnalogSpec())
    assert torch.equal(m(x), plain)


def test_a_frozen_chip_is_seen_identically_by_the_parallel_and_the_step_form():
    m = model64()
    configure_analog(m, AnalogSpec(noise_model=noise_model(prog=1e-6, read_rel=0.01), weights="kbit", bits=6))
    m.eval()
    x = torch.randn(3, 17, 1, dtype=torch.float64)
    clean = m(x)
    with simulated_chip(m, seed=5):
        parallel = m(x)
        state = m.init_state(3)
        for t in range(17):
            state = m.step(x[:, t], state)
        streamed = m.readout(state)
    assert torch.allclose(parallel, streamed, atol=1e-9)
    assert not torch.allclose(parallel, clean)


def test_recurrence_perturbation_acts_on_the_stacked_matrix_entries():
    """The block matrix built from the transformed parameters has the realised fused entries."""
    m = model64()
    layer = m.layers[0].s4d if hasattr(m.layers[0], "s4d") else next(
        mod for mod in m.modules() if isinstance(getattr(mod, "param_transform", None), S4DAnalog))
    spec = AnalogSpec(weights="kbit", bits=4)
    layer.param_transform.analog = spec
    blocks = layer.recurrence.block_matrices()          # (H, N+1, N+1)
    n = layer.d_state
    m_half = n // 2
    # each group of entries sits on its own 4-bit grid: alpha/beta, B, C·Ā, skip
    for entries in (torch.cat([blocks[:, :m_half, :m_half].diagonal(dim1=1, dim2=2).reshape(-1),
                               blocks[:, m_half:n, :m_half].diagonal(dim1=1, dim2=2).reshape(-1)]),
                    blocks[:, :n, n].reshape(-1), blocks[:, n, :n].reshape(-1) / 2, blocks[:, n, n]):
        step = entries.abs().max() / 7
        codes = entries / step
        assert torch.allclose(codes, codes.round(), atol=1e-6)


def test_gradients_flow_through_the_transform():
    m = model64()
    configure_analog(m, AnalogSpec(noise_model=noise_model(prog=1e-6), weights="kbit", bits=8))
    m.train()
    m(torch.randn(2, 10, 1, dtype=torch.float64)).sum().backward()
    s4d = next(mod for mod in m.modules() if hasattr(mod, "log_dt"))
    assert s4d.log_dt.grad is not None and s4d.log_dt.grad.abs().sum() > 0
    assert s4d.c_re.grad.abs().sum() > 0
