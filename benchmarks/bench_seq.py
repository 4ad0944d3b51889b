"""Throughput of the parallel forms against the streaming step forms at length 784.

    python benchmarks/bench_seq.py [--batch 16] [--length 784] [--warmup 1] [--repeats 3] [--threads 1]

Two tables, every form timed with the same warm-up and the same repeats (taken round-robin, so
that a change of load on the machine hits all forms alike), best time reported:

* training iteration (forward, cross-entropy, backward) per model: the parallel form (FFT
  convolution / log-space scan) against unrolling the step form over every time step; the ratio
  is each form's time over its model's parallel form. For S4D both step forms: the O(N) diagonal
  recurrence (what the digital matvec runs) and the stacked (N+1)x(N+1) matrices (what a crossbar
  matvec receives), which under autograd are rebuilt at every step.
* S4D streaming inference (eval, no gradient): the step with the stacked matrices rebuilt at every
  step (the reference: how every step ran before the discretisation was cached), the stacked
  matrices built once per sequence, the O(N) diagonal recurrence, and the parallel form; the
  ratio is the reference's time over each form's (speed-up).

Torch runs on one intra-op thread unless ``--threads`` says otherwise: the step forms are many small
operations that gain nothing from a second thread, and on a machine busy with other work a thread
waiting for a descheduled partner slows them by an order of magnitude, which would distort the
comparison with the parallel forms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F

from hil.nn.matvec import digital_matvec, set_matvec
from hil.nn.s4d import S4DRecurrence
from hil.nn.zoo import MGradeConfig, RecurrentConfig, S4DConfig, build_model


def unrolled(model, x):
    state = model.init_state(x.shape[0])
    for t in range(x.shape[1]):
        state = model.step(x[:, t], state)
    return model.readout(state)


def parallel(model, x):
    return model(x)


def stacked(layer, x):
    """A digital stand-in for a crossbar matvec: not the digital matvec, so the S4D step sends the
    stacked product to it, and computes that product in torch."""
    return layer(x)


def rebuilt(layer, x):
    """As :func:`stacked`, but building the S4D step matrices from the parameters at every call."""
    if isinstance(layer, S4DRecurrence):
        return torch.einsum("hij,bhj->bhi", layer.crossbar_matrices(), x)
    return layer(x)


def measure(forms: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, float]:
    """Best wall time of each form over ``repeats`` rounds after ``warmup`` rounds, round-robin."""
    best = dict.fromkeys(forms, float("inf"))
    for r in range(warmup + repeats):
        for name, fn in forms.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def training_form(model, matvec, forward, x, y) -> Callable[[], None]:
    def run():
        set_matvec(model, matvec)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(forward(model, x), y).backward()
    return run


def inference_form(model, matvec, forward, x) -> Callable[[], None]:
    def run():
        set_matvec(model, matvec)
        with torch.no_grad():
            forward(model, x)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=784)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.length, 1)
    y = torch.randint(0, 10, (args.batch,))
    timing = (f"batch {args.batch}, length {args.length}, {args.threads} thread(s), best of {args.repeats} after "
              f"{args.warmup} warm-up (all forms)")
    legend = ("diagonal: the O(N) recurrence the digital matvec runs; stacked: the (N+1)x(N+1) product a "
              "crossbar matvec receives, here computed digitally")
    console = Console(width=110)

    table = Table(title=f"training iteration (forward, loss, backward), {timing}", title_justify="left",
                  caption=legend + "; under autograd the stacked matrices are rebuilt at every step",
                  caption_justify="left")
    for col in ("model", "form", "time", "seq/s", "time / parallel"):
        table.add_column(col, justify="right" if col not in ("model", "form") else "left")
    s4d_step_forms = {"step: diagonal O(N)": digital_matvec, "step: stacked, rebuilt every step": stacked}
    for name, cfg, step_forms in (
            ("S4D", S4DConfig(d_model=64, d_state=64), s4d_step_forms),
            ("mGRADE", MGradeConfig(d_model=64), {"step (unrolled)": digital_matvec}),
            ("minGRU stack", RecurrentConfig(d_model=64), {"step (unrolled)": digital_matvec})):
        model = build_model(cfg, 1, 10).train()
        forms = {"parallel": training_form(model, digital_matvec, parallel, x, y)}
        forms |= {label: training_form(model, mv, unrolled, x, y) for label, mv in step_forms.items()}
        times = measure(forms, args.warmup, args.repeats)
        for label, t in times.items():
            table.add_row(name, label, f"{t:.3f} s", f"{args.batch / t:.2f}", f"{t / times['parallel']:.1f}x")
        set_matvec(model, digital_matvec)
    console.print(table)

    model = build_model(S4DConfig(d_model=64, d_state=64), 1, 10).eval()
    reference = "step: stacked, rebuilt every step (reference)"
    forms = {reference: inference_form(model, rebuilt, unrolled, x),
             "step: stacked, built once": inference_form(model, stacked, unrolled, x),
             "step: diagonal O(N), discretised once": inference_form(model, digital_matvec, unrolled, x),
             "parallel (FFT convolution)": inference_form(model, digital_matvec, parallel, x)}
    times = measure(forms, args.warmup, args.repeats)
    table = Table(title=f"S4D inference (eval, no gradient; d_model 64, d_state 64), {timing}",
                  title_justify="left", caption=legend + "; reference: how every step ran before caching",
                  caption_justify="left")
    for col in ("form", "time", "per step", "seq/s", "speed-up vs reference"):
        table.add_column(col, justify="left" if col == "form" else "right")
    for label, t in times.items():
        table.add_row(label, f"{t:.3f} s", f"{1e6 * t / args.length:.0f} µs", f"{args.batch / t:.1f}",
                      f"{times[reference] / t:.1f}x")
    console.print(table)


if __name__ == "__main__":
    main()
