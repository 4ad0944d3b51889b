"""Initial schema: instruments, arrays, runs, run steps, measurements, device results.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Migrations are frozen history: the schema is spelled out here, never taken from db.models.
# Names are wrapped in op.f() so that they are used as written, not run again through
# the naming convention of whatever metadata env.py happens to carry.

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUS_CHECK = "status IN ('running', 'completed', 'failed', 'interrupted')"


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "instruments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("instrument_id", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("firmware", sa.String(255), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instruments")),
        sa.UniqueConstraint("backend", "instrument_id", name=op.f("uq_instruments_backend_instrument_id")),
    )

    op.create_table(
        "arrays",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("array_id", sa.String(255), nullable=False),
        sa.Column("instrument_fk", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("cols", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_arrays")),
        sa.UniqueConstraint("array_id", name=op.f("uq_arrays_array_id")),
        sa.ForeignKeyConstraint(["instrument_fk"], ["instruments.id"],
                                name=op.f("fk_arrays_instrument_fk_instruments"), ondelete="RESTRICT"),
    )
    op.create_index(op.f("ix_arrays_instrument_fk"), "arrays", ["instrument_fk"])

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("protocol_name", sa.String(255), nullable=False),
        sa.Column("protocol_path", sa.String(1024), nullable=True),
        sa.Column("protocol_text", sa.Text(), nullable=False),
        sa.Column("protocol_hash", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("code_version", sa.String(255), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("array_fk", sa.Integer(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.CheckConstraint(_STATUS_CHECK, name=op.f("ck_runs_status")),
        sa.ForeignKeyConstraint(["array_fk"], ["arrays.id"],
                                name=op.f("fk_runs_array_fk_arrays"), ondelete="SET NULL"),
    )
    op.create_index(op.f("ix_runs_protocol_hash"), "runs", ["protocol_hash"])
    op.create_index(op.f("ix_runs_status"), "runs", ["status"])
    op.create_index(op.f("ix_runs_array_fk"), "runs", ["array_fk"])

    op.create_table(
        "run_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_steps")),
        sa.UniqueConstraint("run_fk", "index", name=op.f("uq_run_steps_run_fk_index")),
        sa.CheckConstraint(_STATUS_CHECK, name=op.f("ck_run_steps_status")),
        sa.ForeignKeyConstraint(["run_fk"], ["runs.id"],
                                name=op.f("fk_run_steps_run_fk_runs"), ondelete="CASCADE"),
    )

    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("array_fk", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("dtype", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=True),
        sa.Column("mean", sa.Float(), nullable=True),
        sa.Column("std", sa.Float(), nullable=True),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("nan_count", sa.Integer(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_measurements")),
        sa.ForeignKeyConstraint(["run_fk"], ["runs.id"],
                                name=op.f("fk_measurements_run_fk_runs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["step_fk"], ["run_steps.id"],
                                name=op.f("fk_measurements_step_fk_run_steps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["array_fk"], ["arrays.id"],
                                name=op.f("fk_measurements_array_fk_arrays"), ondelete="SET NULL"),
    )
    op.create_index(op.f("ix_measurements_run_fk"), "measurements", ["run_fk"])
    op.create_index(op.f("ix_measurements_step_fk"), "measurements", ["step_fk"])
    op.create_index(op.f("ix_measurements_array_fk"), "measurements", ["array_fk"])

    op.create_table(
        "device_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("step_fk", sa.Integer(), nullable=False),
        sa.Column("array_fk", sa.Integer(), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("col", sa.Integer(), nullable=False),
        sa.Column("target_s", sa.Float(), nullable=True),
        sa.Column("achieved_s", sa.Float(), nullable=True),
        sa.Column("error_s", sa.Float(), nullable=True),
        sa.Column("iterations", sa.Integer(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_results")),
        sa.ForeignKeyConstraint(["run_fk"], ["runs.id"],
                                name=op.f("fk_device_results_run_fk_runs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["step_fk"], ["run_steps.id"],
                                name=op.f("fk_device_results_step_fk_run_steps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["array_fk"], ["arrays.id"],
                                name=op.f("fk_device_results_array_fk_arrays"), ondelete="RESTRICT"),
    )
    op.create_index(op.f("ix_device_results_run_fk"), "device_results", ["run_fk"])
    op.create_index(op.f("ix_device_results_step_fk"), "device_results", ["step_fk"])
    op.create_index(op.f("ix_device_results_array_fk_row_col"), "device_results", ["array_fk", "row", "col"])


def downgrade() -> None:
    # Children before parents; each table's indexes go with it.
    for table in ("device_results", "measurements", "run_steps", "runs", "arrays", "instruments"):
        op.drop_table(table)
