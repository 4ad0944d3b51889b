"""Memory tasks read out the last step: the streaming and parallel forms agree under that readout,
a model whose receptive field ends before the cue cannot see it, and checkpoints stored without a
readout keep the mean pool."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from hil.nn.mgrade import ConvModel, MGradeModel, RecurrentModel
from hil.nn.s4d import S4DModel
from hil.nn.tasks import load_task
from hil.nn.zoo import ConvConfig, build_model
from hil.deployment import load_model

D64 = torch.float64
CUE_STEPS, LENGTH, SYMBOLS = 4, 204, 4


def small(kind: str, pool: str):
    torch.manual_seed(0)
    model = {"mgrade": lambda: MGradeModel(SYMBOLS, SYMBOLS, d_model=8, n_layers=2, max_delay=6, taps=3, pool=pool),
             "conv": lambda: ConvModel(SYMBOLS, SYMBOLS, d_model=8, n_layers=2, max_delay=8, taps=3, pool=pool),
             "recurrent": lambda: RecurrentModel(SYMBOLS, SYMBOLS, d_model=8, n_layers=2, pool=pool),
             "s4d": lambda: S4DModel(SYMBOLS, SYMBOLS, d_model=8, d_state=8, n_layers=2, pool=pool)}[kind]()
    return model.double().eval()


def stream(model, x: torch.Tensor) -> torch.Tensor:
    state = model.init_state(x.shape[0])
    for t in range(x.shape[1]):
        state = model.step(x[:, t], state)
    return model.readout(state)


def cue_batch(classes: list[int], length: int = LENGTH) -> torch.Tensor:
    """Sequences as the ``cue`` task makes them: a one-hot cue in the first steps, then distractors."""
    gen = torch.Generator().manual_seed(1)
    x = 0.5 * torch.randn(len(classes), length, SYMBOLS, generator=gen, dtype=D64)
    x[torch.arange(len(classes)), :CUE_STEPS, torch.tensor(classes)] += 2.0
    return x


@pytest.mark.parametrize("kind", ["mgrade", "conv", "recurrent", "s4d"])
@pytest.mark.parametrize("pool", ["last", "mean"])
def test_streaming_and_parallel_forms_agree(kind, pool):
    model = small(kind, pool)
    x = torch.randn(3, 30, SYMBOLS, dtype=D64)
    with torch.no_grad():
        assert (stream(model, x) - model(x)).abs().max() < 1e-9


@pytest.mark.parametrize("kind", ["conv", "s4d"])
def test_last_readout_is_the_last_step_of_the_features(kind):
    """The readout of a prefix under ``last`` is that of the whole sequence cut there: nothing
    before the last step enters except through the model's own memory."""
    model = small(kind, "last")
    x = torch.randn(2, 20, SYMBOLS, dtype=D64)
    with torch.no_grad():
        cut = model(x[:, :12])
        mean_model = small(kind, "mean")
        assert (cut - model(x)).abs().max() > 1e-6 and (cut - mean_model(x[:, :12])).abs().max() > 1e-6
        assert (stream(model, x[:, :12]) - cut).abs().max() < 1e-9


def swap_cues(x: torch.Tensor) -> torch.Tensor:
    """Every sequence now shows another one's cue; the distractors stay."""
    swapped = x.clone()
    swapped[:, :CUE_STEPS] = x[[1, 2, 3, 0], :CUE_STEPS]
    return swapped


def test_a_short_receptive_field_cannot_see_the_cue():
    # Two layers of delays up to 7 steps: each output reads the last 15 inputs; the cue ended 200 steps earlier.
    x = cue_batch([0, 1, 2, 3])
    last, mean = small("conv", "last"), small("conv", "mean")
    with torch.no_grad():
        assert torch.allclose(last(x), last(swapped := swap_cues(x)), rtol=0, atol=1e-12)
        # pooled by the mean, the same model carries the cue to the end: the readout moves with it
        assert (mean(x) - mean(swapped)).abs().max() > 1e-3
        # a model with memory beyond its receptive field (slow S4D poles) still sees it under `last`
        s4d = small("s4d", "last")
        assert (s4d(x) - s4d(swapped)).abs().max() > 1e-6
        # the streaming form alike (shorter, still well past the 15-step receptive field)
        short = cue_batch([0, 1, 2, 3], length=40)
        assert torch.allclose(stream(last, short), stream(last, swap_cues(short)), rtol=0, atol=1e-12)


def test_tasks_declare_their_readout():
    assert load_task("cue").pool == "last"
    assert load_task("period").pool == "mean"
    cfg = ConvConfig(d_model=8, n_layers=1, max_delay=4, taps=2)
    assert build_model(cfg, 4, 4).pool == "mean"
    assert build_model(cfg, 4, 4, pool="last").pool == "last"
    with pytest.raises(ValueError, match="pool"):
        build_model(cfg, 4, 4, pool="max")


@pytest.mark.parametrize("stored", [None, "mean", "last"])
def test_checkpoints_load_with_their_readout(stored):
    cfg = ConvConfig(d_model=8, n_layers=1, max_delay=4, taps=2)
    torch.manual_seed(0)
    trained = build_model(cfg, SYMBOLS, SYMBOLS, pool=stored or "mean").eval()
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    config = {"task": {"name": "cue", "seed": 0}, "model": cfg.model_dump(), "analog": None}
    if stored is not None:
        config["pool"] = stored
    model, _ = load_model(SimpleNamespace(config=config, state=buffer.getvalue()))
    assert model.pool == (stored or "mean")
    x = torch.randn(2, 10, SYMBOLS)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
