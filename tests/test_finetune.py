"""Fine-tuning on the array's forward passes: the straight-through product has the array's value and the
digital model's gradient, and per-column corrections learnt on the array undo a known column gain error."""

import numpy as np
import pytest
import torch

from drivers import SoftwareCrossbar
from drivers.device_model import DeviceConfig
from hil.executor import CrossbarExecutor
from hil.finetune import (ArrayInTheLoop, ColumnCorrections, digital_logits, finetune, logits_on_array,
                          stream_logits, trainable)
from hil.mapping import ArraySlot, map_model
from hil.nn.matvec import digital_matvec, set_matvec
from hil.nn.mgrade import MGradeModel

from test_executor import noise_model


def small_model():
    torch.manual_seed(3)
    return MGradeModel(2, 3, d_model=6, n_layers=1, max_delay=4, taps=2).double().eval()


def deploy(model, column_scale: dict[str, np.ndarray] | None = None):
    """Programmed exactly on an ideal array, except that every output j of the named layers has both its
    columns scaled by column_scale[layer][j]: the array then computes s_j times that output's product."""
    xbar = SoftwareCrossbar(64, 64, config=DeviceConfig.ideal(), seed=0).open()
    mapping = map_model(model, [ArraySlot("a0", 64, 64)], noise_model())
    targets = mapping.targets(0)
    for name, scale in (column_scale or {}).items():
        for tile in mapping.layer_tiles(name):
            for out, pos, neg in zip(tile.outputs, tile.pos_cols, tile.neg_cols):
                targets[tile.rows, pos] *= scale[out]
                targets[tile.rows, neg] *= scale[out]
    xbar.program_exactly(targets)
    return CrossbarExecutor(model, mapping, [xbar])


def test_the_straight_through_product_has_the_arrays_value_and_the_digital_gradient():
    model = small_model()
    scale = np.array([0.8, 1.1, 0.9])
    executor = deploy(model, {"decoder": scale})
    layer = model.decoder
    x = torch.randn(4, layer.in_features, dtype=torch.float64, requires_grad=True)
    y = ArrayInTheLoop(executor)(layer, x)
    # value: the array's, which here is s_j times the digital product, plus the bias
    expected = (x @ layer.weight.T) * torch.from_numpy(scale) + layer.bias
    torch.testing.assert_close(y.detach(), expected.detach(), rtol=1e-6, atol=1e-9)
    # gradient: the digital layer's (d/dx sum(y * g) = g @ W), not the scaled array's
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    torch.testing.assert_close(gx, g @ layer.weight.detach(), rtol=1e-9, atol=1e-12)


def test_column_corrections_learnt_on_the_array_undo_a_column_gain_error():
    """The decoder's outputs come off the array scaled by s_j; fine-tuning only its column corrections
    towards the digital model's logits has gain 1/s_j and offset 0 as its unique minimiser. Where an
    output's product varies little over the sequences gain and offset trade against each other and the
    optimiser gets there slowly, so the gains are checked to 5 %, and the array's logits must then be the
    digital model's to a tenth of their error before."""
    model = small_model()
    scale = np.array([0.75, 1.15, 0.9])
    executor = deploy(model, {"decoder": scale})
    x = torch.randn(24, 6, 2, dtype=torch.float64)
    y = torch.zeros(24, dtype=torch.long)
    digital = digital_logits(model, x[16:], 8)
    before = (logits_on_array(model, ArrayInTheLoop(executor), x[16:], 8) - digital).abs().max()
    result = finetune(model, executor, x[:16], y[:16], x[16:], y[16:], groups=["columns"], columns_of=["decoder"],
                      epochs=30, lr=0.1, batch_size=4, target="digital")
    gain = executor.corrections.gain["decoder"].detach().numpy()
    np.testing.assert_allclose(gain, 1 / scale, rtol=0.05)
    assert len(result.history) == 30 and result.history[-1].sequence_passes == 30 * 16
    # the inference path (the executor as the infer step uses it) applies the corrections too
    set_matvec(model, executor)
    with torch.no_grad():
        after = (stream_logits(model, x[16:]) - digital).abs().max()
    set_matvec(model, digital_matvec)
    assert after < 0.1 * before, (float(before), float(after))


def test_nothing_but_the_chosen_groups_moves_and_no_cell_is_written(monkeypatch):
    model = small_model()
    executor = deploy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(8, 6, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    xbar = executor.crossbars[0]
    pulses = []
    monkeypatch.setattr(xbar, "pulse", lambda *a, **k: pulses.append(a))
    conductance = xbar.read(voltage_v=0.2)
    finetune(model, executor, x, y, x, y, groups=["bias"], epochs=2, lr=0.1, batch_size=8)
    assert pulses == []
    np.testing.assert_array_equal(xbar.read(voltage_v=0.2), conductance)       # ideal device: no read noise
    biases = {id(p) for p in trainable(model, executor, ["bias"])["bias"]}
    for name, p in model.named_parameters():
        if id(p) not in biases:
            torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
    assert all(p.requires_grad for p in model.parameters())     # restored as they were


def test_unknown_groups_are_named():
    model = small_model()
    with pytest.raises(ValueError, match="unknown parameter group.*weights"):
        trainable(model, deploy(model), ["bias", "weights"])


def test_corrections_start_as_the_identity():
    c = ColumnCorrections({"a.b": 3})
    p = torch.randn(2, 3)
    torch.testing.assert_close(c.apply("a.b", p), p)
