"""Time per sequence step on the mock crossbar against the digital step form.

    python benchmarks/bench_executor.py [--steps 32] [--repeats 3]

For S4D and mGRADE (the loop protocols' sizes, random weights) mapped onto one 512x512 default mock
array (programmed exactly, so that only inference is timed, and a minute old): the digital step form and the same step
with every weight product a crossbar MVM (DAC scaling, one MVM per tile group, differential
read-out and digital rescale), at batch 1 and 256. Prints milliseconds per step, the ratio against
its target (at most 5x at batch 1, 3x at batch 256), and instrument transactions per step (which do
not grow with the batch). Groups laid out alike go to the mock as one stack of MVMs
(``Crossbar.mvm_stack``), so transactions are counted per MVM but cost a call per stack.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from calibration.noise_model import (ConductanceWindow, Defects, NoiseModel, Periphery, ProgrammingNoise,
                                     ReadNoise)
from drivers import DeviceConfig, SoftwareCrossbar
from hil.executor import CrossbarExecutor
from hil.mapping import ArraySlot, map_model
from hil.nn.matvec import digital_matvec, set_matvec
from hil.nn.s4d_analog import attach
from hil.nn.zoo import MGradeConfig, S4DConfig, build_model

TARGETS = {1: 5.0, 256: 3.0}     # crossbar / digital, per batch size
MODELS = {"S4D (H 64, N 16, 2 layers)": S4DConfig(d_model=64, d_state=16, n_layers=2),
          "mGRADE (d 32, 2 layers)": MGradeConfig(d_model=32, n_layers=2, max_delay=16, taps=4)}


def window_model(cfg: DeviceConfig) -> NoiseModel:
    """The default device's window and converters, as calibration would report them."""
    return NoiseModel(array_id="bench", rows=512, cols=512,
                      window=ConductanceWindow(g_min_s=cfg.g_min_s, g_max_s=cfg.g_max_s, g_min_spread=0,
                                               g_max_spread=0),
                      programming=ProgrammingNoise(levels_s=[5e-6, 80e-6], sigma_s=[0, 0], bias_s=[0, 0],
                                                   tolerance_s=1.5e-6),
                      read=ReadNoise(floor_s=0, relative=0), defects=Defects(stuck_on_rate=0, stuck_off_rate=0),
                      periphery=Periphery(read_voltage_v=0.2, dac_bits=cfg.dac_bits, adc_bits=cfg.adc_bits))


def per_step(model, batch: int, steps: int, repeats: int) -> float:
    x = torch.randn(batch, steps, 1)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            state = model.init_state(batch)
            t0 = time.perf_counter()
            for t in range(steps):
                state = model.step(x[:, t], state)
            best = min(best, (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    table = Table(title="one sequence step: digital against the mock crossbar (512x512, default device)")
    for col in ("model", "batch", "digital (ms)", "crossbar (ms)", "crossbar / digital", "target", "MVMs per step",
                "tiles"):
        table.add_column(col, justify="left" if col == "model" else "right")
    cfg = DeviceConfig()
    for name, model_cfg in MODELS.items():
        torch.manual_seed(0)
        model = build_model(model_cfg, 1, 10)
        attach(model)
        model.eval()
        xbar = SoftwareCrossbar(512, 512, config=cfg, seed=0).open()
        mapping = map_model(model, [ArraySlot("bench", 512, 512)], window_model(cfg))
        xbar.program_exactly(mapping.targets(0))
        # inference a minute after programming: in the first seconds the mock re-evaluates drift far more
        # often (relaxation is logarithmic in the cells' age), which no deployment lives in for long
        xbar.wait(60.0)
        # as deploy builds it: input voltages pre-distorted by the I-V curvature calibration would find
        executor = CrossbarExecutor(model, mapping, [xbar], iv_cubic_per_v2=cfg.iv_nonlinearity_per_v2,
                                    iv_reference_v=cfg.read_reference_v)
        for batch in (1, 256):
            set_matvec(model, digital_matvec)
            digital = per_step(model, batch, args.steps, args.repeats)
            set_matvec(model, executor)
            before = executor.stats.transactions
            crossbar = per_step(model, batch, args.steps, args.repeats)
            mvms = (executor.stats.transactions - before) / (args.steps * args.repeats)
            set_matvec(model, digital_matvec)
            ratio, target = crossbar / digital, TARGETS[batch]
            table.add_row(name, str(batch), f"{1e3 * digital:.2f}", f"{1e3 * crossbar:.2f}", f"{ratio:.1f}x",
                          f"<= {target:g}x: {'met' if ratio <= target else 'not met'}", f"{mvms:.0f}",
                          str(len(mapping.tiles)))
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
