"""A trained model on the array: load it from its checkpoint, map it, program it with write-verify, and
record the deployment with per-tile programming error and yield. The ``deploy`` and ``infer`` steps (and
any step that reprograms a deployment) use it."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import TypeAdapter
from torch import nn

from calibration.noise_model import NoiseModel
from db import records
from db.models import RunStep
from drivers import WriteVerifySettings, write_verify

from .context import RunContext
from .executor import CrossbarExecutor
from .mapping import Mapping
from .nn.analog import configure_analog
from .nn.s4d_analog import attach
from .nn.zoo import ModelConfig, build_model
from .protocol import AnalogTraining, TaskSpec
from .training import analog_specs


@dataclass
class Deployed:
    """What an ``infer`` step needs of a deployment made earlier in the run."""

    deployment_id: int
    checkpoint_id: int
    checkpoint_name: str
    model: nn.Module
    mapping: Mapping
    executor: CrossbarExecutor
    task: TaskSpec
    programmed_at_s: float       # the instrument's clock when programming ended
    noise_model_id: int | None = None
    settings: WriteVerifySettings | None = None    # how it was programmed, to program it again alike
    finetune_id: int | None = None     # the fine-tuning now in effect (hil.finetune), None as trained offline


def load_model(checkpoint) -> tuple[nn.Module, TaskSpec]:
    """The checkpoint's model in eval mode, quantised as it was trained (no training noise)."""
    from .nn.tasks import load_task

    config = checkpoint.config
    task = TaskSpec(**config["task"])
    model_config = TypeAdapter(ModelConfig).validate_python(config["model"])
    data = load_task(task.name, task.seed)
    # checkpoints stored before tasks chose their readout all pooled by the mean
    model = build_model(model_config, data.d_input, data.n_classes, pool=config.get("pool", "mean"))
    attach(model)
    model.load_state_dict(torch.load(io.BytesIO(checkpoint.state), weights_only=True))
    analog = AnalogTraining(**config["analog"]) if config.get("analog") else None
    configure_analog(model, *analog_specs(analog, None))
    return model.eval(), task


def stuck_values(ctx: RunContext, noise: NoiseModel, array_id: str | None = None) -> tuple[np.ndarray | None, str]:
    """An array's stuck devices from its latest calibration (conductance where stuck, NaN elsewhere); the
    run's main array unless ``array_id`` names another."""
    array_id = array_id or ctx.array.array_id
    try:
        with ctx.db.session() as session:
            grids, run_id = records.latest_device_map(session, array_id, ["stuck_on", "stuck_off", "g_min_s", "g_max_s"])
    except LookupError:
        return None, f"no calibration of {array_id} on record: its stuck devices are not avoided"
    on, off = grids["stuck_on"] == 1, grids["stuck_off"] == 1
    value = np.full(on.shape, np.nan)
    value[on] = np.where(np.isfinite(grids["g_max_s"]), grids["g_max_s"], noise.window.g_max_s)[on]
    value[off] = np.where(np.isfinite(grids["g_min_s"]), grids["g_min_s"], noise.window.g_min_s)[off]
    return value, (f"{int(on.sum())} stuck-on and {int(off.sum())} stuck-off devices of {array_id} from run {run_id} "
                   "avoided")


SHORTED_FACTOR = 1.5    # a stuck device this far above the window's top cannot be compensated by its partner


def shorted_note(mapping: Mapping) -> str:
    """A warning for stuck devices inside MVM groups that conduct well beyond the window (a shorted
    filament): no partner can cancel them, so every output of their column is off by their current."""
    limit = SHORTED_FACTOR * mapping.g_max_s
    worst, count = 0.0, 0
    for a, slot in enumerate(mapping.arrays):
        if slot.stuck_value_s is None:
            continue
        targets = mapping.targets(a)
        used = np.isfinite(targets) & np.isfinite(slot.stuck_value_s) & (slot.stuck_value_s > limit)
        count += int(used.sum())
        worst = max(worst, float(slot.stuck_value_s[used].max(initial=0.0)))
    if not count:
        return ""
    return (f"warning: {count} stuck device(s) in MVM groups conduct beyond {SHORTED_FACTOR:g}x the window's top "
            f"(up to {1e6 * worst:.0f} uS against {1e6 * mapping.g_max_s:.0f} uS): their columns' outputs are off "
            "by up to that many full scales")


def tile_records(mapping: Mapping, achieved: list[np.ndarray], success: list[np.ndarray]) -> list[dict]:
    """Per tile: where it sits (array, rows, columns), how many stuck devices it holds and how well it was
    programmed; ``achieved`` and ``success`` per array of the mapping."""
    out = []
    stuck_maps = [a.stuck() for a in mapping.arrays]
    for i, t in enumerate(mapping.tiles):
        stuck, got_array, ok = stuck_maps[t.array], achieved[t.array], success[t.array]
        cells = np.r_[t.pos_cols, t.neg_cols]
        got = got_array[np.ix_(t.rows, cells)]
        want = np.concatenate([t.target_pos_s, t.target_neg_s]).T
        err = got - want
        realised = t.realised_weight(got_array[np.ix_(t.rows, t.pos_cols)].T, got_array[np.ix_(t.rows, t.neg_cols)].T,
                                     mapping.span_s)
        scale = np.where(t.scale > 0, t.scale, 1.0)[:, None]
        out.append({"tile": i, "array": mapping.arrays[t.array].array_id, "layer": t.layer, "mvm_group": t.group,
                    "row_min": int(t.rows.min()), "row_max": int(t.rows.max()), "col_min": int(cells.min()),
                    "col_max": int(cells.max()), "inputs": len(t.inputs), "outputs": len(t.outputs),
                    "stuck_devices": int(stuck[np.ix_(t.rows, cells)].sum()),
                    "in_tolerance": float(ok[np.ix_(t.rows, cells)].mean()),
                    "rms_error_s": float(np.sqrt(np.mean(err ** 2))), "max_error_s": float(np.abs(err).max()),
                    "weight_rms_error": float(np.sqrt(np.mean(((realised - t.weight) / scale) ** 2)))})
    return out


def crossbars_of(ctx: RunContext, mapping: Mapping) -> list:
    """The opened crossbars of a mapping's arrays, in its order: the run's main array or its further ones."""
    out = []
    for slot in mapping.arrays:
        if slot.array_id == ctx.array.array_id:
            out.append(ctx.xbar)
        elif slot.array_id in ctx.extra_arrays:
            out.append(ctx.extra_arrays[slot.array_id][0])
        else:
            raise LookupError(f"the mapping uses array {slot.array_id!r}, which this run has not opened")
    return out


def program(ctx: RunContext, row: RunStep, dep: Deployed, label: str, *, erase_first: bool = False,
            extra: dict | None = None):
    """Write-verify ``dep``'s mapping onto its arrays (after RESETting its cells to the window's low end
    if ``erase_first``, for a programming independent of the last), record the measured conductances
    and a new deployment row with per-tile error and yield (and which array each tile sits on), and take
    the executor's drift reference. Sets ``dep.deployment_id`` and ``dep.programmed_at_s``; returns
    (summary, write-verify results, one per array)."""
    mapping, settings = dep.mapping, dep.settings
    results, n_cells, inside = [], 0, 0
    for a, xbar in enumerate(crossbars_of(ctx, mapping)):
        targets = mapping.targets(a)
        name = mapping.arrays[a].array_id
        if erase_first:
            erase(xbar, targets, settings)
        where = f" on {name}" if len(mapping.arrays) > 1 else ""
        with ctx.progress.task(label + where, total=settings.max_iterations, unit="iterations") as task:
            result = write_verify(xbar, targets, settings,
                                  on_iteration=lambda it, outside, total: task.update(
                                      it, note=f"{total - outside}/{total} cells in tolerance"))
        suffix = f"_{name}" if a else ""
        record = ctx.extra_arrays[name][1] if a else None
        ctx.save(row, "targets" + suffix, "target_conductance", "S", targets, on_array=record)
        ctx.save(row, "achieved" + suffix, "conductance", "S", result.achieved_s, on_array=record,
                 read_voltage_v=settings.read_voltage_v)
        results.append(result)
        n_cells += int(np.isfinite(targets).sum())
        inside += int(result.success.sum())
    # the arrays' clocks move together from here (programming took each its own time)
    ctx.wait(0.0)

    tiles = tile_records(mapping, [r.achieved_s for r in results], [r.success for r in results])
    groups = len({(t.layer, t.array, t.group) for t in mapping.tiles})
    weight_rms = float(np.sqrt(np.mean([t["weight_rms_error"] ** 2 for t in tiles])))
    transactions: dict[str, int] = {}
    for r in results:
        for k, v in r.transactions.items():
            transactions[k] = transactions.get(k, 0) + v
    error_s = np.concatenate([r.error_s[np.isfinite(r.error_s)] for r in results])
    summary = {"checkpoint_id": dep.checkpoint_id, "checkpoint": dep.checkpoint_name,
               "noise_model_id": dep.noise_model_id, "tiles": len(mapping.tiles), "devices": mapping.devices_used(),
               "arrays": [a.array_id for a in mapping.arrays],
               "cells_programmed": n_cells, "in_tolerance": inside, "fraction_in_tolerance": inside / max(n_cells, 1),
               "mvm_groups": groups, "tolerance_s": settings.tolerance_s,
               "iterations": max(r.iterations for r in results), "transactions": transactions,
               "weight_rms_error": weight_rms, "rms_error_s": float(np.sqrt(np.mean(error_s ** 2))),
               "erased_first": erase_first, "iv_cubic_per_v2": dep.executor.iv_cubic_per_v2,
               "verify_read_voltage_v": settings.read_voltage_v, **(extra or {})}
    with ctx.db.session() as session:
        deployment = records.add_deployment(session, run=ctx.run, step=row, crossbar_array=ctx.array,
                                            mapping=mapping.to_bytes(), checkpoint_id=dep.checkpoint_id,
                                            noise_model_id=dep.noise_model_id, summary=summary, tiles=tiles)
        dep.deployment_id = deployment.id
    dep.executor.reference()
    dep.programmed_at_s = ctx.xbar.now()
    summary["deployment_id"] = dep.deployment_id
    return summary, results


ERASE_PULSES = 4


def erase(xbar, targets: np.ndarray, settings: WriteVerifySettings) -> None:
    """RESET every cell with a target to the low end of its window: a few full RESET pulses, one
    transaction each, so that the next write-verify starts from scratch rather than from the last result."""
    rows, cols = np.nonzero(np.isfinite(targets))
    for _ in range(ERASE_PULSES):
        xbar.pulse(rows, cols, -settings.max_reset_voltage_v, settings.pulse_width_s)
