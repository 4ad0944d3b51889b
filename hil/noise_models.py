"""Load a stored NoiseModel: by its id, the newest one fitted for an array, or the one a protocol step names."""

from __future__ import annotations

from calibration.noise_model import NoiseModel
from db import Database, records

from .protocol import NoiseModelRef


def load_noise_model_with_id(db: Database, *, model_id: int | None = None,
                             array_id: str | None = None) -> tuple[NoiseModel, int]:
    """``model_id`` picks one model; ``array_id`` alone picks that array's latest. LookupError if none."""
    if (model_id is None) == (array_id is None):
        raise ValueError("give exactly one of model_id or array_id")
    with db.session() as session:
        row = (records.get_noise_model(session, model_id) if model_id is not None
               else records.latest_noise_model(session, array_id))
        return NoiseModel.model_validate(row.params), row.id


def load_noise_model(db: Database, *, model_id: int | None = None, array_id: str | None = None) -> NoiseModel:
    return load_noise_model_with_id(db, model_id=model_id, array_id=array_id)[0]


def resolve_noise_model(ctx, ref: NoiseModelRef | None) -> tuple[NoiseModel | None, int | None]:
    """The noise model ``ref`` names (by calibration step of this run, id, or latest for an array); (None, None)
    without a reference. ``ctx`` is the run context (its database and this run's fitted models)."""
    if ref is None:
        return None, None
    if ref.from_step is not None:
        return load_noise_model_with_id(ctx.db, model_id=ctx.noise_models[ref.from_step])
    if ref.id is not None:
        return load_noise_model_with_id(ctx.db, model_id=ref.id)
    return load_noise_model_with_id(ctx.db, array_id=ref.latest_for)
