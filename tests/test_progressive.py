"""Progressive fine-tuning: layers written one at a time, each later layer trained on the measured outputs
of those before it. Checked against what the array holds (read back) and against a known upstream error."""

import numpy as np
import torch

from drivers import SoftwareCrossbar, WriteVerifySettings
from drivers.device_model import DeviceConfig
from hil.executor import CrossbarExecutor
from hil.finetune import digital_logits, logits_on_array
from hil.mapping import ArraySlot, map_model
from hil.nn.blocks import array_parameters, crossbar_layers
from hil.nn.mgrade import MGradeModel
from hil.progressive import progressive

from test_executor import noise_model

SETTINGS = WriteVerifySettings(tolerance_s=0.3e-6)


def test_each_layer_is_written_with_weights_trained_on_the_measured_outputs_before_it():
    """The encoder's cells hold its weights times a column gain s_j (a known error no later layer saw in
    training). Stage 0 trains everything after the encoder on the encoder's measured outputs, towards the
    labels the digital model gives; the later layers are written with the new weights. Afterwards: the
    encoder's cells are untouched, every later layer's cells hold its new weights (read back), the
    encoder's own weights never moved, and on held-out sequences the array's outputs are closer to the
    digital model's labels."""
    torch.manual_seed(0)
    model = MGradeModel(1, 3, d_model=6, n_layers=1, max_delay=4, taps=2).double().eval()
    layers = crossbar_layers(model)
    names = list(layers)
    xbar = SoftwareCrossbar(64, 64, config=DeviceConfig.ideal(), seed=0).open()
    mapping = map_model(model, [ArraySlot("a0", 64, 64)], noise_model())
    targets = mapping.targets(0)
    scale = np.array([0.6, 1.3, 0.8, 1.2, 0.7, 1.4])
    for tile in mapping.layer_tiles("encoder"):
        for out, pos, neg in zip(tile.outputs, tile.pos_cols, tile.neg_cols):
            targets[tile.rows, pos] = mapping.g_lo_s + (targets[tile.rows, pos] - mapping.g_lo_s) * scale[out]
            targets[tile.rows, neg] = mapping.g_lo_s + (targets[tile.rows, neg] - mapping.g_lo_s) * scale[out]
    xbar.program_exactly(targets)
    executor = CrossbarExecutor(model, mapping, [xbar])
    executor.reference()

    x = torch.randn(128, 10, 1, dtype=torch.float64)
    y = digital_logits(model, x, 128).argmax(-1)          # the labels the model gives digitally
    x, y, held_x, held_y = x[:64], y[:64], x[64:], y[64:]
    encoder_weight = model.encoder.weight.detach().clone()
    before_cells = xbar.true_conductance().copy()
    loss_before = torch.nn.functional.cross_entropy(logits_on_array(model, executor, held_x, 64), held_y)

    stages = progressive(model, executor, SETTINGS, x, y, epochs=6, lr=5e-3, batch_size=16)

    assert [s.written for s in stages] == names[1:]
    assert all(s.sequence_passes == 6 * 64 for s in stages)
    encoder_cells = np.zeros(xbar.shape, bool)
    for tile in mapping.layer_tiles("encoder"):
        encoder_cells[np.ix_(tile.rows, np.r_[tile.pos_cols, tile.neg_cols])] = True
    np.testing.assert_array_equal(xbar.true_conductance()[encoder_cells], before_cells[encoder_cells])
    torch.testing.assert_close(model.encoder.weight, encoder_weight)
    assert stages[0].weight_change > 0.01 and stages[0].cells > 0
    # every later layer holds its new weights: the pair difference read back, in units of its scale
    g = xbar.true_conductance()
    for name in names[1:]:
        for tile in mapping.layer_tiles(name):
            realised = tile.realised_weight(g[np.ix_(tile.rows, tile.pos_cols)].T, g[np.ix_(tile.rows, tile.neg_cols)].T,
                                            mapping.span_s)
            np.testing.assert_allclose(realised, tile.weight, atol=0.02 * max(tile.scale.max(), 1e-12))
    assert not executor._digital                            # all on the array again
    # on sequences it did not train on, the array now does what the digital model does more closely
    loss_after = torch.nn.functional.cross_entropy(logits_on_array(model, executor, held_x, 64), held_y)
    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)


def test_a_layers_array_parameters_are_what_its_cells_hold():
    model = MGradeModel(1, 3, d_model=6, n_layers=1, max_delay=4, taps=2)
    layers = crossbar_layers(model)
    assert array_parameters(layers["decoder"]) == [layers["decoder"].weight]
    taps = layers["blocks.0.conv.taps"]
    assert {id(p) for p in array_parameters(taps)} == {id(p) for n, p in taps.named_parameters()
                                                          if not n.endswith("bias")}
