"""Programming a 64x64 array through the emulated SMU bench: batched write-verify against cell by cell.

    python benchmarks/bench_program_visa.py [--cells 256] [--latency-s 1e-3] [--seed 0] [--repeats 3]

Both go through the real driver (VisaBenchCrossbar, pyvisa-py, a TCP socket) to the TSP emulator,
which adds ``--latency-s`` to every reply, as a LAN instrument would. Targets are uniform in
20-80 µS, tolerance ±2 µS, default WriteVerifySettings otherwise.

(a) batched: ``write_verify`` over the whole array: each iteration is one read of the array and one
    pulse batch for every cell still out of tolerance. Best of ``--repeats`` runs on fresh copies of the
    chip, against its latency floor (VISA round trips x added latency): the target is at most 3x.
(b) per cell: the same write-verify run on one cell at a time through a 1x1 view of the array, so
    every read and every pulse is a transaction of its own (what a loop over cells costs). It runs
    on ``--cells`` random cells of a fresh copy of the same chip and is extrapolated to all 4096
    cells (its cost per cell does not depend on the other cells); ``--cells 4096`` runs all.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from drivers import CrossbarError, SoftwareCrossbar, WriteVerifySettings, write_verify
from drivers.emulators.faults import Faults
from drivers.interface import Crossbar, CrossbarIdentity
from drivers.emulators.keithley2600 import TspInstrument, TspServer
from drivers.visa_bench import VisaBenchCrossbar

ROWS = COLS = 64
SETTINGS = WriteVerifySettings(tolerance_s=2e-6)


class CellView(Crossbar):
    """One cell of ``parent`` as a 1x1 array: each operation is one transaction on the parent."""

    def __init__(self, parent: Crossbar, row: int, col: int):
        ident = parent.identity
        super().__init__(CrossbarIdentity(backend=ident.backend, instrument_id=f"{ident.instrument_id}[{row},{col}]",
                                          array_id=ident.array_id, rows=1, cols=1), parent.limits)
        self.parent, self.row, self.col = parent, row, col

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _read(self, rows, cols, voltage_v):
        return self.parent.read([self.row], [self.col], voltage_v=voltage_v)

    def _pulse(self, rows, cols, amplitude_v, width_s, compliance_a):
        self.parent.pulse([self.row], [self.col], amplitude_v, width_s, compliance_a=compliance_a)

    def _mvm(self, voltages_v, adc_range_a=None):
        raise CrossbarError(self._name, "mvm", "a cell view does not compute MVMs")


def emulated_bench(seed: int, latency_s: float) -> TspServer:
    return TspServer(TspInstrument(SoftwareCrossbar(ROWS, COLS, seed=seed)), faults=Faults(latency_s=latency_s)).start()


FLOOR_TARGET = 3.0      # batched wall time / latency floor


def batched(targets: np.ndarray, seed: int, latency_s: float) -> dict:
    server = emulated_bench(seed, latency_s)
    try:
        with VisaBenchCrossbar(server.resource, ROWS, COLS) as x:
            before = x.exchanges
            t0 = time.perf_counter()
            result = write_verify(x, targets, SETTINGS)
            seconds = time.perf_counter() - t0
            return {"cells": targets.size, "transactions": result.total_transactions,
                    "round trips": x.exchanges - before, "seconds": seconds, "success": result.success,
                    "iterations": result.iterations}
    finally:
        server.stop()


def per_cell(targets: np.ndarray, cells: np.ndarray, seed: int, latency_s: float) -> dict:
    server = emulated_bench(seed, latency_s)
    success = np.zeros(len(cells), dtype=bool)
    try:
        with VisaBenchCrossbar(server.resource, ROWS, COLS) as x:
            before, calls = x.exchanges, x.total_transactions
            t0 = time.perf_counter()
            for k, (r, c) in enumerate(cells):
                with CellView(x, int(r), int(c)) as cell:
                    success[k] = write_verify(cell, targets[r:r + 1, c:c + 1], SETTINGS).success[0, 0]
            seconds = time.perf_counter() - t0
            return {"cells": len(cells), "transactions": x.total_transactions - calls,
                    "round trips": x.exchanges - before, "seconds": seconds, "success": success}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=256, help="cells the per-cell loop programs (<= 4096)")
    parser.add_argument("--latency-s", type=float, default=1e-3, help="added to every reply of the emulator (s)")
    parser.add_argument("--seed", type=int, default=0, help="the simulated chip")
    parser.add_argument("--repeats", type=int, default=3, help="batched runs, the fastest reported")
    args = parser.parse_args()
    total = ROWS * COLS
    rng = np.random.default_rng(args.seed)
    targets = rng.uniform(20e-6, 80e-6, (ROWS, COLS))
    n = min(max(args.cells, 1), total)
    flat = np.sort(rng.choice(total, n, replace=False))
    cells = np.stack(np.unravel_index(flat, (ROWS, COLS)), axis=1)

    a = min((batched(targets, args.seed, args.latency_s) for _ in range(max(args.repeats, 1))),
            key=lambda r: r["seconds"])
    floor = a["round trips"] * args.latency_s
    b = per_cell(targets, cells, args.seed, args.latency_s)
    scale = total / n
    b_all = {k: b[k] * scale for k in ("transactions", "round trips", "seconds")}
    a_subset = a["success"][cells[:, 0], cells[:, 1]].mean()

    title = (f"write-verify of a {ROWS}x{COLS} array through the emulated SMU bench (VISA, TSP), "
             f"{args.latency_s * 1e3:g} ms added latency per reply; ±{SETTINGS.tolerance_s * 1e6:g} µS, "
             f"targets 20-80 µS")
    table = Table(title=title, title_justify="left")
    for col in ("method", "cells", "transactions", "VISA round trips", "wall time", "in tolerance"):
        table.add_column(col, justify="right")
    table.add_row(f"(a) batched write_verify ({a['iterations']} iterations)", str(total), str(a["transactions"]),
                  str(a["round trips"]), f"{a['seconds']:.2f} s",
                  f"{100 * a['success'].mean():.1f} %" + (f" (the {n} cells of (b): {100 * a_subset:.1f} %)"
                                                            if n < total else ""))
    table.add_row("(b) per cell, measured", str(n), str(b["transactions"]), str(b["round trips"]),
                  f"{b['seconds']:.2f} s", f"{100 * b['success'].mean():.1f} %")
    if n < total:
        table.add_row(f"(b) per cell, extrapolated x{scale:g}", str(total), f"{b_all['transactions']:.0f}",
                      f"{b_all['round trips']:.0f}", f"{b_all['seconds']:.1f} s", "-")
    table.add_row("ratio (b) / (a), whole array", "", f"{b_all['transactions'] / a['transactions']:.0f}x",
                  f"{b_all['round trips'] / a['round trips']:.0f}x", f"{b_all['seconds'] / a['seconds']:.0f}x", "")
    Console(width=160).print(table)
    if floor > 0:
        ratio = a["seconds"] / floor
        print(f"(a) against its latency floor ({a['round trips']} round trips x {args.latency_s * 1e3:g} ms = "
              f"{floor * 1e3:.0f} ms): {a['seconds'] * 1e3:.0f} ms, {ratio:.1f}x (target <= {FLOOR_TARGET:g}x: "
              f"{'met' if ratio <= FLOOR_TARGET else 'not met'})")
    if n < total:
        print(f"(b) ran on {n} random cells of the {total} and was scaled by {scale:g} for the whole array; "
              "run with --cells 4096 to measure it all.")


if __name__ == "__main__":
    main()
