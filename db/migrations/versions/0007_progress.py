"""Run progress: the step a run is in and how far that step has got, for other processes to follow it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("current_step_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("current_step", sa.String(255), nullable=True))
        batch.add_column(sa.Column("progress", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("progress")
        batch.drop_column("current_step")
        batch.drop_column("current_step_index")
