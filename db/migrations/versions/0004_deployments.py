"""Deployments of trained models onto arrays, their programmed tiles, and inference on the arrays.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"),
                                   ondelete=ondelete)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("array_fk", sa.Integer(), nullable=False),
        sa.Column("checkpoint_fk", sa.Integer(), nullable=True),
        sa.Column("noise_model_fk", sa.Integer(), nullable=True),
        sa.Column("mapping", sa.LargeBinary(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        _fk("deployments", "run_fk", "runs", "CASCADE"),
        _fk("deployments", "step_fk", "run_steps", "CASCADE"),
        _fk("deployments", "array_fk", "arrays", "RESTRICT"),
        _fk("deployments", "checkpoint_fk", "checkpoints", "SET NULL"),
        _fk("deployments", "noise_model_fk", "noise_models", "SET NULL"),
    )
    for column in ("run_fk", "step_fk", "array_fk", "checkpoint_fk", "noise_model_fk"):
        op.create_index(op.f(f"ix_deployments_{column}"), "deployments", [column])

    op.create_table(
        "deployment_tiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_fk", sa.Integer(), nullable=False),
        sa.Column("tile", sa.Integer(), nullable=False),
        sa.Column("layer", sa.String(255), nullable=False),
        sa.Column("mvm_group", sa.Integer(), nullable=False),
        sa.Column("row_min", sa.Integer(), nullable=False),
        sa.Column("row_max", sa.Integer(), nullable=False),
        sa.Column("col_min", sa.Integer(), nullable=False),
        sa.Column("col_max", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.Integer(), nullable=False),
        sa.Column("outputs", sa.Integer(), nullable=False),
        sa.Column("stuck_devices", sa.Integer(), nullable=False),
        sa.Column("in_tolerance", sa.Float(), nullable=False),
        sa.Column("rms_error_s", sa.Float(), nullable=False),
        sa.Column("max_error_s", sa.Float(), nullable=False),
        sa.Column("weight_rms_error", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_tiles")),
        _fk("deployment_tiles", "deployment_fk", "deployments", "CASCADE"),
    )
    op.create_index(op.f("ix_deployment_tiles_deployment_fk"), "deployment_tiles", ["deployment_fk"])

    op.create_table(
        "inferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("deployment_fk", sa.Integer(), nullable=False),
        sa.Column("time_s", sa.Float(), nullable=False),
        sa.Column("drift_compensation", sa.Boolean(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("crossbar_accuracy", sa.Float(), nullable=False),
        sa.Column("digital_accuracy", sa.Float(), nullable=False),
        sa.Column("confusion", sa.JSON(), nullable=False),
        sa.Column("step_latency_s", sa.Float(), nullable=False),
        sa.Column("transactions_per_step", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inferences")),
        _fk("inferences", "run_fk", "runs", "CASCADE"),
        _fk("inferences", "step_fk", "run_steps", "CASCADE"),
        _fk("inferences", "deployment_fk", "deployments", "CASCADE"),
    )
    for column in ("run_fk", "step_fk", "deployment_fk"):
        op.create_index(op.f(f"ix_inferences_{column}"), "inferences", [column])


def downgrade() -> None:
    op.drop_table("inferences")
    op.drop_table("deployment_tiles")
    op.drop_table("deployments")
