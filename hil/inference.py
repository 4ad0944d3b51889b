"""A deployment at work: a split streamed through the model's step form with every weight product on the
array, at each (time after programming, drift compensation) condition, each result recorded as it comes."""

from __future__ import annotations

import time

import numpy as np
import torch

from db import records
from db.models import RunStep

from .context import RunContext
from .deployment import Deployed
from .nn.matvec import digital_matvec, set_matvec
from .protocol import InferStep


def stream(model, x: torch.Tensor, batch_size: int, on_batch) -> tuple[np.ndarray, float, int]:
    """Predictions over ``x`` (N, L, d) by the model's step form; (predictions, seconds in steps, steps)."""
    predictions, seconds, steps = [], 0.0, 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            state = model.init_state(xb.shape[0])
            for t in range(xb.shape[1]):
                t0 = time.perf_counter()
                state = model.step(xb[:, t], state)
                seconds += time.perf_counter() - t0
                steps += 1
            predictions.append(model.readout(state).argmax(dim=-1).numpy())
            on_batch(xb.shape[0])
    return np.concatenate(predictions), seconds, steps


def confusion(y: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(out, (y, predicted), 1)
    return out


def evaluate(ctx: RunContext, step: InferStep, row: RunStep, dep: Deployed, x, y, classes: int, conditions,
             digital_accuracy: float, label: str) -> list[dict]:
    """The split on the array as now programmed, at each (time, compensated) condition."""
    model, executor, xbar = dep.model, dep.executor, ctx.xbar
    results = []
    try:
        set_matvec(model, executor)
        with ctx.progress.task(f"inference{label}", total=len(y) * len(conditions), unit="sequences") as task:
            for t, compensated in conditions:
                wait = dep.programmed_at_s + t - xbar.now()
                if wait > 0:
                    ctx.wait(wait)
                executor.drift_compensation = compensated
                gains = executor.compensate() if compensated else None
                task.update(note=f"t = {t:g} s{' compensated' if compensated else ''}")
                before = executor.stats.transactions
                predicted, seconds, steps = stream(model, x, step.batch_size, lambda n: task.update(advance=n))
                per_step = (executor.stats.transactions - before) / max(steps, 1)
                results.append({"time_s": t, "drift_compensation": compensated, "split": step.split,
                                "samples": len(y),
                                "crossbar_accuracy": float((predicted == y).mean()),
                                "digital_accuracy": digital_accuracy,
                                "confusion": confusion(y, predicted, classes).tolist(),
                                "step_latency_s": seconds / max(steps, 1), "transactions_per_step": per_step,
                                "gain": None if gains is None else float(np.mean(gains)),
                                "deployment_id": dep.deployment_id})
                with ctx.db.session() as session:
                    records.add_inference(session, run=ctx.run, step=row, deployment_id=dep.deployment_id,
                                          finetune_fk=dep.finetune_id,
                                          **{k: v for k, v in results[-1].items()
                                             if k not in ("gain", "deployment_id")})
    finally:
        set_matvec(model, digital_matvec)
        executor.drift_compensation = False
    return results


def by_condition(results: list[dict]) -> list[tuple[tuple[float, bool], list[dict]]]:
    """Results grouped by (time, compensated), in order of first appearance."""
    groups: dict[tuple[float, bool], list[dict]] = {}
    for r in results:
        groups.setdefault((r["time_s"], r["drift_compensation"]), []).append(r)
    return list(groups.items())
