"""Training throughput of the parallel forms against the streaming step forms at length 784.

    python benchmarks/bench_seq.py [--batch 16] [--length 784] [--repeats 3]

For each model: one training iteration (forward, cross-entropy, backward) on a batch of
sequences, once through the parallel form (FFT convolution / log-space scan) and once by
unrolling the step form over every time step. Prints sequences per second and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F

from hil.nn.zoo import MGradeConfig, RecurrentConfig, S4DConfig, build_model


def unrolled(model, x):
    state = model.init_state(x.shape[0])
    for t in range(x.shape[1]):
        state = model.step(x[:, t], state)
    return model.readout(state)


def iteration_time(model, x, y, forward, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        F.cross_entropy(forward(model, x), y).backward()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=784)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.length, 1)
    y = torch.randint(0, 10, (args.batch,))
    table = Table(title=f"training iteration, batch {args.batch}, length {args.length} (best of {args.repeats})",
                  title_justify="left")
    for col in ("model", "parallel", "step (unrolled)", "parallel seq/s", "step seq/s", "parallel / step speed"):
        table.add_column(col, justify="right")
    for name, cfg in (("S4D", S4DConfig(d_model=64, d_state=64)), ("mGRADE", MGradeConfig(d_model=64)),
                      ("minGRU stack", RecurrentConfig(d_model=64))):
        model = build_model(cfg, 1, 10).train()
        t_par = iteration_time(model, x, y, lambda m, v: m(v), args.repeats)
        t_step = iteration_time(model, x, y, unrolled, max(1, args.repeats - 2))
        table.add_row(name, f"{t_par:.3f} s", f"{t_step:.2f} s", f"{args.batch / t_par:.1f}",
                      f"{args.batch / t_step:.2f}", f"{t_step / t_par:.0f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
