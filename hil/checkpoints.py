"""Find a stored checkpoint: by id, the newest under a name, or the one a train step of this run stored."""

from __future__ import annotations

from .context import RunContext
from .protocol import CheckpointRef


def resolve_checkpoint(ctx: RunContext, ref: CheckpointRef):
    """The checkpoint row ``ref`` names, detached from its session. LookupError if there is none."""
    from db import records

    with ctx.db.session() as session:
        if ref.from_step is not None:
            if ref.from_step not in ctx.checkpoints:
                raise LookupError(f"step {ref.from_step!r} stored no checkpoint in this run")
            row = records.get_checkpoint(session, ctx.checkpoints[ref.from_step])
        elif ref.id is not None:
            row = records.get_checkpoint(session, ref.id)
        else:
            row = records.latest_checkpoint(session, ref.name)
        session.expunge(row)
    return row
