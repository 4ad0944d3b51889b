"""mGRADE and its baselines: streaming equals parallel, every weight product goes through matvec,
memory accounting, optimiser groups, and a delayed-recall task learnt in a couple of seconds."""

import copy

import pytest
import torch
from torch.nn import functional as F

from hil.nn.analog import AnalogLinear
from hil.nn.delay_conv import DelayConv1d, DelayTaps, clamp_delay_positions, set_delay_sigma, sigma_schedule
from hil.nn.matvec import digital_matvec, set_matvec
from hil.nn.mgrade import ConvModel, MGradeBlock, MGradeModel, RecurrentModel
from hil.nn.mingru import MinGRU

B, L, D_IN, D_OUT = 3, 25, 3, 4


def models():
    return {
        "mgrade": MGradeModel(D_IN, D_OUT, d_model=8, n_layers=2, max_delay=6, taps=3, d_hidden=10),
        "conv": ConvModel(D_IN, D_OUT, d_model=8, n_layers=2, max_delay=12, taps=4),
        "recurrent": RecurrentModel(D_IN, D_OUT, d_model=8, n_layers=2, d_hidden=6),
    }


@pytest.fixture(params=["mgrade", "conv", "recurrent"])
def model(request):
    torch.manual_seed(0)
    return models()[request.param].double().eval()


def stream(model, x):
    state = model.init_state(x.shape[0])
    for t in range(x.shape[1]):
        state = model.step(x[:, t], state)
    return state


def test_block_step_form_equals_parallel_form():
    torch.manual_seed(0)
    block = MGradeBlock(8, max_delay=5, taps=2, d_hidden=12, mlp_ratio=3).double().eval()
    x = torch.randn(B, L, 8, dtype=torch.float64)
    state, out = block.init_state(B), []
    for t in range(L):
        y, state = block.step(x[:, t], state)
        out.append(y)
    assert (block(x) - torch.stack(out, dim=1)).abs().max().item() < 1e-9
    assert state["past"].shape == (B, 8, 4) and state["hidden"].shape == (B, 12)


def test_model_step_form_equals_parallel_form(model):
    x = torch.randn(B, L, D_IN, dtype=torch.float64)
    state = stream(model, x)
    assert state.steps == L
    assert (model.readout(state) - model(x)).abs().max().item() < 1e-9
    # the running mean is the mean of the per-step features at every prefix
    assert torch.allclose(state.mean, model.features(x).mean(dim=1), atol=1e-12, rtol=0)


def weight_layers(model):
    return [m for m in model.modules() if isinstance(m, (AnalogLinear, DelayTaps))]


def test_every_weight_product_of_the_step_goes_through_matvec(model):
    """A matvec that answers with another model's weights: if the step multiplied by any weight
    itself, it would not reproduce the other model's parallel output."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for m in other.modules():
            if isinstance(m, (AnalogLinear, DelayConv1d)):
                for p in m.parameters(recurse=False):
                    p.mul_(1.3).add_(0.05)
    twin = dict(zip(map(id, weight_layers(model)), weight_layers(other)))
    calls = {id(layer): 0 for layer in weight_layers(model)}

    def redirect(layer, x):
        calls[id(layer)] += 1
        assert x.dim() == 2
        return digital_matvec(twin[id(layer)], x)

    set_matvec(model, redirect)
    x = torch.randn(B, L, D_IN, dtype=torch.float64)
    state = stream(model, x)
    stepped_calls = dict(calls)
    logits = model.readout(state)
    assert (logits - other(x)).abs().max().item() < 1e-9
    assert (logits - model(x)).abs().max().item() > 1e-3
    # one product per weight layer per step; the decoder only at readout
    decoder = id(model.decoder)
    assert all(n == L for k, n in stepped_calls.items() if k != decoder)
    assert stepped_calls[decoder] == 0 and calls[decoder] == 1


def test_streaming_state_bytes_counts_the_state_tensors(model):
    state = model.init_state(2, dtype=torch.float32)
    numbers = sum(t.numel() for s in state.blocks for t in s.values()) + state.mean.numel()
    assert model.streaming_state_bytes(batch=2) == 4 * numbers
    assert model.streaming_state_bytes(batch=2, dtype=torch.float16) == 2 * numbers


def test_memory_formulas():
    m = models()
    d = 8
    assert m["mgrade"].streaming_state_numbers() == 2 * ((6 - 1) * d + 10) + d
    assert m["conv"].streaming_state_numbers() == 2 * (12 - 1) * d + d
    assert m["recurrent"].streaming_state_numbers() == 2 * 6 + d


def test_parameter_counts_match_the_architecture_counted_by_hand():
    """Parameters counted layer by layer from the architecture the module docstring describes: a
    layer the model forgot to register, or one it registered twice, changes the count."""
    d, d_in, d_out, inner = 8, D_IN, D_OUT, 2 * 8          # mlp_ratio 2

    def linear(n_in, n_out):            # weight and bias
        return n_in * n_out + n_out

    def norm(n):                        # LayerNorm: scale and shift
        return 2 * n

    def delay_conv(taps):               # a weight and a position per tap and channel
        return 2 * d * taps

    def mingru(d_hidden):               # gate and candidate rows from one linear layer
        return linear(d, 2 * d_hidden)

    def mlp(d_mix):
        return linear(d_mix, inner) + linear(inner, d)

    ends = linear(d_in, d) + norm(d) + linear(d, d_out)     # encoder, final norm, decoder
    mgrade_block = norm(d) + delay_conv(3) + mingru(10) + norm(10) + mlp(10)
    conv_block = norm(d) + delay_conv(4) + norm(d) + mlp(d)
    recurrent_block = norm(d) + mingru(6) + norm(6) + mlp(6)
    expected = {"mgrade": ends + 2 * mgrade_block, "conv": ends + 2 * conv_block,
                "recurrent": ends + 2 * recurrent_block}
    # the same sums written out as numbers, so a slip in the helpers above cannot hide
    assert expected == {"mgrade": 1236, "conv": 836, "recurrent": 852}
    for name, model in models().items():
        assert model.parameter_count() == expected[name], name


def test_param_groups_cover_every_parameter_once(model):
    groups = model.param_groups(1e-3, position_lr_factor=50.0, weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    by_name = {g["name"]: g for g in groups}
    positions = [c.positions for c in model.modules() if isinstance(c, DelayConv1d)]
    if positions:
        assert {id(p) for p in by_name["positions"]["params"]} == {id(p) for p in positions}
        assert by_name["positions"]["lr"] == pytest.approx(0.05)
        assert by_name["positions"]["weight_decay"] == 0.0
    else:
        assert "positions" not in by_name
    assert by_name["weights"]["weight_decay"] == 0.01 and by_name["no_decay"]["weight_decay"] == 0.0
    torch.optim.AdamW(groups)


def test_gradients_reach_positions_and_weights():
    torch.manual_seed(0)
    model = models()["mgrade"]
    x = torch.randn(B, L, D_IN)
    F.cross_entropy(model(x), torch.randint(0, D_OUT, (B,))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert all(isinstance(m.rnn, MinGRU) and m.conv.positions.grad.abs().min() > 0 for m in model.blocks)


@pytest.fixture
def one_thread():
    # with two cores shared, oversubscribed threads make tiny models many times slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def delayed_recall(n, length, lag, generator):
    """Channel 0 is noise, channel 1 marks one step τ; the label is the sign of the noise at τ - lag.

    Solving it needs both parts of mGRADE: a tap at delay ``lag`` brings v_{τ-lag} level with the
    marker, and the minGRU must hold it from τ to the end for the mean readout.
    """
    v = torch.randn(n, length, generator=generator)
    tau = torch.randint(lag, length - 4, (n,), generator=generator)
    marker = torch.zeros(n, length)
    marker[torch.arange(n), tau] = 1.0
    label = (v[torch.arange(n), tau - lag] > 0).long()
    return torch.stack([v, marker], dim=-1), label


def test_mgrade_learns_a_delayed_recall_task(one_thread):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = MGradeModel(2, 2, d_model=16, n_layers=1, max_delay=8, taps=2, sigma=2.0)
    opt = torch.optim.AdamW(model.param_groups(1e-2, position_lr_factor=10.0))
    steps = 200
    for i in range(steps):
        set_delay_sigma(model, sigma_schedule(i, 2.0, steps // 2, sigma_end=0.5))
        x, y = delayed_recall(64, 16, 5, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        clamp_delay_positions(model)
    x, y = delayed_recall(1000, 16, 5, gen)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
        # the streaming form classifies the same way
        streamed = model.readout(stream(model, x[:200])).argmax(-1)
    assert accuracy > 0.95
    assert torch.equal(streamed, model(x[:200]).argmax(-1))
    # some tap has moved next to the delay of 5
    assert (model.blocks[0].conv.positions - 5).abs().min() < 1.0
