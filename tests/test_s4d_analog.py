"""Analog-aware training of the S4D recurrence."""

import numpy as np
import torch

from hil.nn.analog import AnalogSpec, configure_analog, simulated_chip
from hil.nn.s4d import S4DModel
from hil.nn.s4d_analog import _perturbed_pole, attach, input_gain
from tests.test_analog import G_MAX, G_MIN, noise_model


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


def test_recurrence_perturbation_acts_on_the_rows_the_crossbar_holds():
    """Quantisation lands on the crossbar's lines, each on its own grid: per mode
    [Re Ā - 1, -Im Ā, Re B̄ g] and [Im Ā, Re Ā - 1, Im B̄ g] (g: the input gain) and per channel the
    output row [C·Ā entries, skip g]."""
    m = model64()
    layer = m.layers[0].s4d
    layer.param_transform.analog = AnalogSpec(weights="kbit", bits=4)
    res = layer.recurrence.crossbar_matrices()          # (H, N+1, N+1)
    n = layer.d_state
    half = n // 2
    for mode in range(half):
        # real row of the mode: (Re Ā - 1) at the mode, -Im Ā at its imaginary partner, Re B̄ on u
        # B̄'s column is balanced against the pole's by its input gain (from the unquantised values)
        exact = layer.exact_discretization()
        gain = input_gain(torch.maximum((exact["alpha"][:, mode] - 1).abs(), exact["beta"][:, mode].abs()),
                          torch.maximum(exact["b_re"][:, mode].abs(), exact["b_im"][:, mode].abs()))
        lines = [torch.stack([res[:, mode, mode], res[:, mode, mode + half], res[:, mode, n] * gain], dim=-1),
                 torch.stack([res[:, mode + half, mode], res[:, mode + half, mode + half],
                              res[:, mode + half, n] * gain], dim=-1)]                 # (H, 3) each
        assert torch.equal(res[:, mode + half, mode + half], res[:, mode, mode])
        for line in lines:
            codes = line / (line.abs().amax(dim=-1, keepdim=True) / 7)
            assert torch.allclose(codes, codes.round(), atol=1e-6)
    exact = layer.exact_discretization()
    a, c = torch.complex(exact["alpha"], exact["beta"]), torch.complex(exact["c_re"], exact["c_im"])
    skip = 2 * (c * torch.complex(exact["b_re"], exact["b_im"])).real.sum(-1) + exact["d"]
    out_row = res[:, n, :].clone()                                                     # (H, N+1)
    out_row[:, -1] *= input_gain(2 * torch.cat([(c * a).real, (c * a).imag], -1).abs().amax(-1), skip.abs())
    codes = out_row / (out_row.abs().amax(dim=-1, keepdim=True) / 7)
    assert torch.allclose(codes, codes.round(), atol=1e-6)


def test_noise_on_a_slow_pole_scales_with_its_distance_from_one():
    """The array holds Ā - 1: programming noise moves a pole near the unit circle by a fraction
    of |Ā - 1| (and of the mode's B̄), not of |Ā|, so the noisy poles stay inside the circle."""
    torch.manual_seed(0)
    m = S4DModel(1, 3, d_model=16, d_state=16, n_layers=1).double()
    attach(m)
    layer = m.layers[0].s4d
    with torch.no_grad():
        layer.log_dt.fill_(torch.log(torch.tensor(1e-3)))    # slow channels: |Ā| ≈ 0.9995
    clean = layer.exact_discretization()
    configure_analog(m, AnalogSpec(noise_model=noise_model(prog=2e-6, read_rel=0.01), stuck_cells=False))
    m.eval()
    radius = []
    for seed in range(20):
        with simulated_chip(m, seed=seed):
            p = layer.discretize()
            radius.append(torch.complex(p["alpha"], p["beta"]).abs())
    radius = torch.stack(radius)                                   # (draws, H, M)
    clean_radius = torch.complex(clean["alpha"], clean["beta"]).abs()
    error = (radius - clean_radius).abs()
    # Mode 0 is a real pole (Im Ā = 0): its row is [Ā - 1, 0, B̄], all of order Δ, and the noise
    # (a few % of the row's largest entry) never pushes it out of the circle.
    assert (radius[..., 0] < 1).all()
    assert error[..., 0].max() < 0.2 * (1 - clean_radius[..., 0]).min()
    # Rotating modes carry Im Ā ≈ Δ·πn on their rows: errors scale with that, still far below the
    # ~3% of |Ā| that holding Ā itself on the array would give at this noise.
    row_scale = torch.stack([clean["alpha"] - 1, clean["beta"], clean["b_re"], clean["b_im"]]).abs().amax(0)
    per_unit = 2 ** 0.5 * 2e-6 / (G_MAX - G_MIN)
    assert error.max() < 5 * per_unit * row_scale.max()
    assert error.max() < 0.1 * per_unit


def test_gradients_flow_through_the_transform():
    m = model64()
    configure_analog(m, AnalogSpec(noise_model=noise_model(prog=1e-6), weights="kbit", bits=8))
    m.train()
    m(torch.randn(2, 10, 1, dtype=torch.float64)).sum().backward()
    s4d = next(mod for mod in m.modules() if hasattr(mod, "log_dt"))
    assert s4d.log_dt.grad is not None and s4d.log_dt.grad.abs().sum() > 0
    assert s4d.c_re.grad.abs().sum() > 0


def _b_errors(layer, m, clean):
    errors = []
    for seed in range(20):
        with simulated_chip(m, seed=seed):
            p = layer.discretize()
            errors.append(torch.complex(p["b_re"] - clean["b_re"], p["b_im"] - clean["b_im"]).abs())
    return torch.stack(errors)


def test_input_noise_scales_with_b_not_with_the_pole(monkeypatch):
    """B̄ = (Ā - 1)/λ is ~1/(πn) of the pole's entries for mode n; balanced by its input gain, its
    programming noise stays a fraction of B̄ itself, not of the pole as without the gain."""
    torch.manual_seed(0)
    m = S4DModel(1, 3, d_model=8, d_state=16, n_layers=1).double()
    attach(m)
    layer = m.layers[0].s4d
    clean = layer.exact_discretization()
    configure_analog(m, AnalogSpec(noise_model=noise_model(prog=2e-6), stuck_cells=False))
    m.eval()
    b = torch.complex(clean["b_re"], clean["b_im"]).abs().detach()
    pole = torch.maximum((clean["alpha"] - 1).abs(), clean["beta"].abs()).detach()
    high = pole / b > 10                       # the modes an unbalanced row would hurt most
    assert high.sum() > 10
    per_unit = 2 ** 0.5 * 2e-6 / (G_MAX - G_MIN)
    balanced = _b_errors(layer, m, clean)[:, high] / b[high]
    assert balanced.max() < 6 * per_unit
    monkeypatch.setattr("hil.nn.s4d_analog.input_gain", lambda state, inp: torch.ones_like(torch.as_tensor(inp)))
    unbalanced = _b_errors(layer, m, clean)[:, high] / b[high]
    assert balanced.std() < unbalanced.std() / 5


def test_perturbed_pole_is_the_dominant_eigenvalue_of_the_perturbed_block():
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.05, 0, 2000)
    b = rng.choice([-1, 1], 2000) * 10 ** rng.uniform(-4, 0, 2000)
    d = 3e-3 * rng.standard_normal((4, 2000))
    a1, b1, b2, a2 = a + d[0], b + d[1], b + d[2], a + d[3]
    alpha, beta = _perturbed_pole(*(torch.from_numpy(v) for v in (a1, b1, b2, a2)))
    blocks = np.stack([np.stack([1 + a1, -b1], -1), np.stack([b2, 1 + a2], -1)], -2)      # (n, 2, 2)
    eig = np.linalg.eigvals(blocks)
    top = eig[np.arange(2000), np.abs(eig).argmax(-1)]
    got = alpha.numpy() + 1j * beta.numpy()
    assert np.allclose(np.abs(got), np.abs(top), rtol=0, atol=1e-12)
    assert np.allclose(got.real, top.real, atol=1e-12) and np.allclose(np.abs(got.imag), np.abs(top.imag), atol=1e-12)
    split = np.abs(eig[:, 0].imag) < 1e-15
    assert split.sum() > 50 and np.all(beta.numpy()[split] == 0)     # slow rotations split into real poles
    assert (np.sign(beta.numpy()) == np.sign(b1))[~split].all()


def test_perturbed_pole_passes_the_shared_error_gradient():
    a1, a2 = (torch.tensor([-0.01, -0.2], dtype=torch.float64, requires_grad=True) for _ in range(2))
    b1, b2 = (torch.tensor([0.3, 1e-4], dtype=torch.float64, requires_grad=True) for _ in range(2))
    alpha, beta = _perturbed_pole(a1, b1, b2, a2)
    (alpha.sum() + 2 * beta.sum()).backward()
    for t, expected in ((a1, 0.5), (a2, 0.5), (b1, 1.0), (b2, 1.0)):
        assert torch.allclose(t.grad, torch.full_like(t.grad, expected))
