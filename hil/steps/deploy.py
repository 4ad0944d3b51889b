"""The ``deploy`` step: map a trained model onto the array, program it with write-verify, and record the
mapping with per-tile programming error and yield (the work is in :mod:`hil.deployment`)."""

from __future__ import annotations

from db.models import RunStep
from drivers import WriteVerifySettings

from ..checkpoints import resolve_checkpoint
from ..context import RunContext, StepReport
from ..deployment import Deployed, crossbars_of, load_model, program, shorted_note, stuck_values
from ..executor import CrossbarExecutor
from ..mapping import ArraySlot, map_model
from ..noise_models import load_noise_model_with_id, resolve_noise_model
from ..protocol import DeployStep


def run_deploy(ctx: RunContext, step: DeployStep, row: RunStep) -> StepReport:
    checkpoint = resolve_checkpoint(ctx, step.checkpoint)
    if step.noise_model is not None:
        noise, noise_id = resolve_noise_model(ctx, step.noise_model)
    elif checkpoint.noise_model_fk is not None:
        noise, noise_id = load_noise_model_with_id(ctx.db, model_id=checkpoint.noise_model_fk)
    else:
        raise LookupError(f"checkpoint {checkpoint.id} ({checkpoint.name}) was trained without a noise model: "
                          "give the deploy step a noise_model (the array's calibration sets the weight window)")
    model, task = load_model(checkpoint)
    slots, notes = [], []
    for array_id, xbar in [(ctx.array.array_id, ctx.xbar)] + [(n, ctx.extra_arrays[n][0]) for n in step.arrays]:
        stuck, note = stuck_values(ctx, noise, array_id)
        slots.append(ArraySlot(array_id, *xbar.shape, stuck))
        notes.append(note)
    stuck_note = "; ".join(notes)
    mapping = map_model(model, slots, noise, tiles_per_mvm=step.tiles_per_mvm, max_shared_rows=step.max_shared_rows)
    shorted = shorted_note(mapping)
    if shorted:
        stuck_note += "; " + shorted
    tolerance = step.tolerance_s or (noise.programming.tolerance_s if noise.programming else 0.02 * mapping.span_s)
    settings = WriteVerifySettings.from_options(step, tolerance_s=tolerance, read_voltage_v=step.read_voltage_v)
    executor = CrossbarExecutor(model, mapping, crossbars_of(ctx, mapping), voltage_v=step.mvm_voltage_v,
                                iv_cubic_per_v2=noise.periphery.iv_cubic_per_v2, iv_reference_v=settings.read_voltage_v)
    dep = Deployed(0, checkpoint.id, checkpoint.name, model, mapping, executor, task, 0.0, noise_id, settings)
    summary, results = program(ctx, row, dep, f"programming {checkpoint.name}", extra={"stuck": stuck_note})
    ctx.deployments[step.name] = dep
    n_cells, inside = summary["cells_programmed"], summary["in_tolerance"]
    groups, weight_rms = summary["mvm_groups"], summary["weight_rms_error"]
    return StepReport(
        cells=f"{inside}/{n_cells} ({100 * inside / max(n_cells, 1):.1f}%)",
        iterations=f"{summary['iterations']}/{step.max_iterations}",
        detail=(f"{checkpoint.name}: {len(mapping.tiles)} tiles, {mapping.devices_used():,} devices, {groups} MVMs "
                f"per step; weight rms error {100 * weight_rms:.2f}% of full scale; {stuck_note}; "
                f"deployment {dep.deployment_id}"),
        summary=summary)
