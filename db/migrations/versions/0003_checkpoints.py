"""Trained model checkpoints: weights, configuration, the noise model they were trained against.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=True),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("noise_model_fk", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("model_kind", sa.String(64), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("code_version", sa.String(128), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.ForeignKeyConstraint(["run_fk"], ["runs.id"],
                                name=op.f("fk_checkpoints_run_fk_runs"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["step_fk"], ["run_steps.id"],
                                name=op.f("fk_checkpoints_step_fk_run_steps"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["noise_model_fk"], ["noise_models.id"],
                                name=op.f("fk_checkpoints_noise_model_fk_noise_models"), ondelete="SET NULL"),
    )
    op.create_index(op.f("ix_checkpoints_name_created_at"), "checkpoints", ["name", "created_at"])
    op.create_index(op.f("ix_checkpoints_run_fk"), "checkpoints", ["run_fk"])
    op.create_index(op.f("ix_checkpoints_step_fk"), "checkpoints", ["step_fk"])
    op.create_index(op.f("ix_checkpoints_noise_model_fk"), "checkpoints", ["noise_model_fk"])


def downgrade() -> None:
    op.drop_table("checkpoints")
