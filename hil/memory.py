"""How much memory a protocol will need, estimated from the protocol alone before anything runs.

The schema bounds each number, but not their products: a 4096x4096 read with ``repeats: 10000``
is valid field by field and asks for a terabyte. Each step's estimate counts the arrays it holds
at its peak (conductance maps of ``rows x cols`` float64, times how many it keeps, times the copies
made while stacking and compressing them for the database), plus the interpreter's own baseline
(larger once torch is loaded). The coefficients were measured on the software crossbar
(``benchmarks/bench_memory.py`` prints estimate against measured peak); the estimate is meant to
be within a factor of two, which is what a refusal needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .protocol import (CalibrateStep, DeployStep, FinetuneStep, InferStep, MaintainStep, ProgramStep, Protocol,
                       ReadStep, TrainStep)

__all__ = ["BUDGET_ENV", "DEFAULT_BUDGET_BYTES", "StepEstimate", "budget_bytes", "estimate", "format_bytes"]

GIB = 1 << 30
# Well under the 16-32 GiB of a typical bench computer, and far above what any shipped protocol needs
# (the largest, the loop protocols, peak under 1.5 GiB); override with --memory-budget or the variable.
DEFAULT_BUDGET_BYTES = 8 * GIB
BUDGET_ENV = "HIL_MEMORY_BUDGET_GIB"

_F64 = 8
# Resident size of the process before a step allocates anything: interpreter, numpy, SQLAlchemy and
# numba (the mock's kernels); matplotlib and scipy for calibration; torch for the steps that need it
# (measured with benchmarks/bench_memory.py, rounded up).
BASE_BYTES = 170 << 20
CALIBRATION_BYTES = 110 << 20
TORCH_BYTES = 300 << 20
# Storing an array compresses it: np.save into a buffer, the buffer's copy, then zlib's output.
_STORE_COPIES = 3


@dataclass(frozen=True)
class StepEstimate:
    index: int
    name: str
    kind: str
    bytes: int
    detail: str     # what dominates, for the message


def estimate(protocol: Protocol) -> list[StepEstimate]:
    """Peak resident memory of each step of ``protocol``, in bytes (baseline included)."""
    cells = protocol.array.rows * protocol.array.cols
    cell_map = cells * _F64
    out = []
    for index, step in enumerate(protocol.steps):
        size, detail = _step_bytes(step, protocol, cells, cell_map)
        base = BASE_BYTES + (TORCH_BYTES if isinstance(step, (TrainStep, DeployStep, InferStep, FinetuneStep, MaintainStep)) else
                             CALIBRATION_BYTES if isinstance(step, CalibrateStep) else 0)
        out.append(StepEstimate(index, step.name, step.kind, int(base + size), detail))
    return out


def _step_bytes(step, protocol: Protocol, cells: int, cell_map: int) -> tuple[float, str]:
    shape = f"{protocol.array.rows}x{protocol.array.cols}"
    if isinstance(step, ReadStep):
        # every read kept, stacked into one array, then compressed for the database
        maps = step.repeats * (2 + _STORE_COPIES)
        return maps * cell_map, f"{step.repeats} read(s) of {shape} cells, stacked and stored"
    if isinstance(step, ProgramStep):
        # targets, read-backs, masks and per-cell write-verify state, plus per-device result rows
        return 24 * cell_map, f"write-verify state of {shape} cells"
    if isinstance(step, CalibrateStep):
        return _calibrate_bytes(step, cell_map), f"calibration measurements of {shape} cells"
    if isinstance(step, TrainStep):
        model = step.model
        seq = {"digits": 64, "digits_permuted": 64, "mnist1d": 40, "period": 48, "cue": 204}[step.task.name]
        width = max(model.d_model, getattr(model, "d_state", 0), getattr(model, "d_hidden", None) or 0)
        # activations kept for the backward pass: a few dozen tensors of batch x length x width per layer
        activations = 48 * 4 * step.batch_size * seq * width * model.n_layers
        return activations, f"training activations (batch {step.batch_size} x {seq} steps)"
    if isinstance(step, DeployStep):
        return 16 * cell_map, f"mapping and write-verify state of {shape} cells"
    if isinstance(step, InferStep):
        return 16 * cell_map + 8 * _F64 * step.batch_size * protocol.array.rows, \
            f"executor buffers (batch {step.batch_size} over {protocol.array.rows} rows)"
    if isinstance(step, MaintainStep):
        batch = step.evaluate.batch_size if step.evaluate else step.probes
        return 16 * cell_map + 8 * _F64 * batch * protocol.array.rows, \
            f"executor buffers and write-verify state of {shape} cells"
    if isinstance(step, FinetuneStep):
        # the executor's buffers, and the step form's graph kept for the backward pass: every step's
        # activations of the batch, up to ~20k numbers per sample and step (S4D, H 64, N 16, 2 layers,
        # keeps ~17k) over the longest streamed task of 204 steps
        graph = 20_000 * _F64 * step.batch_size * 204
        return 16 * cell_map + 8 * _F64 * step.batch_size * protocol.array.rows + graph, \
            f"executor buffers and the step form's graph (batch {step.batch_size})"
    return 0.0, ""


def _calibrate_bytes(step: CalibrateStep, cell_map: int) -> float:
    """Maps the calibration keeps until it has fitted and reported, plus the largest transient."""
    kept = transient = 0.0
    if step.window:
        kept += 2 * step.window.reads
        transient = max(transient, step.window.reads)
    if step.programming:
        kept += 2 * step.programming.repeats
        transient = max(transient, step.programming.reads)
    if step.read_noise:
        kept += step.read_noise.reads
        transient = max(transient, step.read_noise.reads * (1 + _STORE_COPIES))
    if step.drift:
        kept += len(step.drift.times_s)
        transient = max(transient, step.drift.reads)
    # derived per-device statistics and figures: a dozen maps
    return (kept + transient + 12) * cell_map


def budget_bytes(given_gib: float | None = None) -> int:
    """The memory budget: ``given_gib`` if given, else ``$HIL_MEMORY_BUDGET_GIB``, else the default.
    ``ValueError`` naming the source if it is not a positive, finite number."""
    source, text = ("--memory-budget", given_gib) if given_gib is not None else (BUDGET_ENV, os.environ.get(BUDGET_ENV))
    if text is None or text == "":
        return DEFAULT_BUDGET_BYTES
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{source} must be a number of GiB, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"{source} must be a positive number of GiB, got {text!r}")
    return int(value * GIB)


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", GIB), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} KiB"
