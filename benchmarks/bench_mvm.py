"""Speed of the software crossbar's MVM against a plain numpy matmul, and cost of write-verify.

    python benchmarks/bench_mvm.py [--repeats N]

The MVM runs with every non-ideality on (default DeviceConfig: DAC, I-V
nonlinearity, conductance-dependent read noise, output noise, ADC, drift,
stuck cells) on a 128x128 array. Each row of the table is the median over
interleaved repeats, so the mock and the matmul see the same machine load.
Targets: at batch 256 the mock within 2x the float32 matmul; at batch 1 at
least 50,000 MVMs per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from drivers import SoftwareCrossbar, WriteVerifySettings, write_verify


def per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def bench_mvm(batch: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    xbar = SoftwareCrossbar(128, 128, seed=0).open()
    rows, cols = np.indices(xbar.shape)
    xbar.pulse(rows.ravel(), cols.ravel(), rng.uniform(1.0, 1.5, rows.size), 1e-6)
    v32 = rng.uniform(-0.2, 0.2, (batch, 128)).astype(np.float32)
    w32 = xbar.true_conductance().astype(np.float32)
    v64, w64 = v32.astype(np.float64), w32.astype(np.float64)
    calls = max(50, 20000 // batch)
    kinds = {"mock mvm": lambda: xbar.mvm(v32), "matmul f32": lambda: v32 @ w32, "matmul f64": lambda: v64 @ w64}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for fn in kinds.values():
        per_call(fn, calls)                 # warm-up
    for _ in range(repeats):
        for name, fn in kinds.items():
            times[name].append(per_call(fn, calls))
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_write_verify() -> tuple[float, dict[str, int], int, float]:
    xbar = SoftwareCrossbar(64, 64, seed=0).open()
    targets = np.linspace(5e-6, 80e-6, 8)[np.random.default_rng(0).integers(0, 8, xbar.shape)]
    settings = WriteVerifySettings(tolerance_s=0.02 * 75e-6)
    t0 = time.perf_counter()
    result = write_verify(xbar, targets, settings)
    return (time.perf_counter() - t0, result.transactions, result.iterations,
            result.success_rate(~xbar.truth.stuck))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    console = Console()

    table = Table(title="128x128 MVM, all non-idealities on (median per call)", title_justify="left")
    for col in ("batch", "mock mvm", "matmul f32", "matmul f64", "mock / f32", "mock / f64", "MVMs per s (mock)"):
        table.add_column(col, justify="right")
    for batch in (1, 256):
        t = bench_mvm(batch, args.repeats)
        table.add_row(str(batch), f"{t['mock mvm'] * 1e6:.1f} µs", f"{t['matmul f32'] * 1e6:.1f} µs",
                      f"{t['matmul f64'] * 1e6:.1f} µs", f"{t['mock mvm'] / t['matmul f32']:.2f}x",
                      f"{t['mock mvm'] / t['matmul f64']:.2f}x", f"{batch / t['mock mvm']:,.0f}")
    console.print(table)

    seconds, transactions, iterations, rate = bench_write_verify()
    wv = Table(title="write-verify, 64x64 array, 8 levels, ±2 % of range", title_justify="left")
    for col in ("wall time", "iterations", "read calls", "pulse calls", "total calls", "working cells in tolerance"):
        wv.add_column(col, justify="right")
    wv.add_row(f"{seconds * 1e3:.1f} ms", str(iterations), str(transactions["read"]), str(transactions["pulse"]),
               str(sum(transactions.values())), f"{100 * rate:.2f} %")
    console.print(wv)


if __name__ == "__main__":
    main()
