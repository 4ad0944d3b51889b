"""Calibration history: per-device and per-array statistics, fitted noise models.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Frozen like 0001: spelled out here, names wrapped in op.f() so they are used as written.

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("array_fk", sa.Integer(), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("col", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.String(128), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_stats")),
        sa.ForeignKeyConstraint(["run_fk"], ["runs.id"],
                                name=op.f("fk_device_stats_run_fk_runs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["step_fk"], ["run_steps.id"],
                                name=op.f("fk_device_stats_step_fk_run_steps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["array_fk"], ["arrays.id"],
                                name=op.f("fk_device_stats_array_fk_arrays"), ondelete="RESTRICT"),
    )
    op.create_index(op.f("ix_device_stats_array_fk_quantity_row_col"), "device_stats",
                    ["array_fk", "quantity", "row", "col"])
    op.create_index(op.f("ix_device_stats_run_fk"), "device_stats", ["run_fk"])
    op.create_index(op.f("ix_device_stats_step_fk"), "device_stats", ["step_fk"])

    op.create_table(
        "array_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("array_fk", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.String(128), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_array_stats")),
        sa.ForeignKeyConstraint(["run_fk"], ["runs.id"],
                                name=op.f("fk_array_stats_run_fk_runs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["step_fk"], ["run_steps.id"],
                                name=op.f("fk_array_stats_step_fk_run_steps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["array_fk"], ["arrays.id"],
                                name=op.f("fk_array_stats_array_fk_arrays"), ondelete="RESTRICT"),
    )
    op.create_index(op.f("ix_array_stats_array_fk_quantity"), "array_stats", ["array_fk", "quantity"])
    op.create_index(op.f("ix_array_stats_run_fk"), "array_stats", ["run_fk"])

    op.create_table(
        "noise_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("array_fk", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=True),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("source_runs", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_noise_models")),
        sa.ForeignKeyConstraint(["array_fk"], ["arrays.id"],
                                name=op.f("fk_noise_models_array_fk_arrays"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["run_fk"], ["runs.id"],
                                name=op.f("fk_noise_models_run_fk_runs"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["step_fk"], ["run_steps.id"],
                                name=op.f("fk_noise_models_step_fk_run_steps"), ondelete="SET NULL"),
    )
    op.create_index(op.f("ix_noise_models_array_fk_created_at"), "noise_models", ["array_fk", "created_at"])


def downgrade() -> None:
    for table in ("noise_models", "array_stats", "device_stats"):
        op.drop_table(table)
