"""Training settings a protocol turns into: the analog layers' specs of an ``analog`` section, and the fixed
thread count that makes a seed reproduce its weights."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from calibration.noise_model import NoiseModel

from .nn.analog import AnalogSpec
from .protocol import AnalogTraining


def analog_specs(analog: AnalogTraining | None, noise: NoiseModel | None) -> tuple[AnalogSpec | None, AnalogSpec | None]:
    """The (dense, recurrent) specs of an ``analog`` training section, with ``noise`` (None: quantisation only)."""
    a = analog
    if a is None:
        return None, None
    common = dict(noise_model=noise, noise_scale=a.noise_scale, drift_time_s=a.drift_time_s, dac_bits=a.dac_bits,
                  adc_bits=a.adc_bits)
    dense = AnalogSpec(weights=a.weights, bits=a.bits, **common)
    recurrent = AnalogSpec(weights=a.recurrent_weights, bits=a.recurrent_bits, **common)
    return dense, recurrent


@contextmanager
def fixed_threads(threads: int):
    """Train at a fixed intra-op thread count, whatever the machine has: the order in which threads add
    partial sums changes the weights in the last bits, and training amplifies that into other accuracies."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def numerics(threads: int) -> dict:
    """What a rerun from the same seed must match to give the same weights bit for bit."""
    return {"torch": torch.__version__, "threads": threads, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
