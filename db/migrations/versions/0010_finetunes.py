"""Fine-tuning of deployments on the array (chip in the loop), and which fine-tuning an inference ran with.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"),
                                   ondelete=ondelete)


def _inferences(with_finetune: bool) -> sa.Table:
    """inferences as it stands (batch mode on SQLite rebuilds the table from this, so offline SQL can be
    generated without reflecting a live database)."""
    columns = [
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
        sa.Column("split", sa.String(8), nullable=False, server_default="test"),
    ]
    constraints = [sa.PrimaryKeyConstraint("id", name=op.f("pk_inferences")),
                   _fk("inferences", "run_fk", "runs", "CASCADE"),
                   _fk("inferences", "step_fk", "run_steps", "CASCADE"),
                   _fk("inferences", "deployment_fk", "deployments", "CASCADE")]
    if with_finetune:
        columns.append(sa.Column("finetune_fk", sa.Integer(), nullable=True))
        constraints.append(_fk("inferences", "finetune_fk", "finetunes", "SET NULL"))
    indexed = ("run_fk", "step_fk", "deployment_fk") + (("finetune_fk",) if with_finetune else ())
    indexes = [sa.Index(op.f(f"ix_inferences_{c}"), c) for c in indexed]
    return sa.Table("inferences", sa.MetaData(), *columns, *constraints, *indexes)


def upgrade() -> None:
    op.create_table(
        "finetunes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("deployment_fk", sa.Integer(), nullable=False),
        sa.Column("base_checkpoint_fk", sa.Integer(), nullable=True),
        sa.Column("checkpoint_fk", sa.Integer(), nullable=True),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("corrections", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finetunes")),
        _fk("finetunes", "run_fk", "runs", "CASCADE"),
        _fk("finetunes", "step_fk", "run_steps", "CASCADE"),
        _fk("finetunes", "deployment_fk", "deployments", "CASCADE"),
        _fk("finetunes", "base_checkpoint_fk", "checkpoints", "SET NULL"),
        _fk("finetunes", "checkpoint_fk", "checkpoints", "SET NULL"),
    )
    for column in ("run_fk", "step_fk", "deployment_fk", "base_checkpoint_fk", "checkpoint_fk"):
        op.create_index(op.f(f"ix_finetunes_{column}"), "finetunes", [column])
    with op.batch_alter_table("inferences", copy_from=_inferences(with_finetune=False)) as batch:
        batch.add_column(sa.Column("finetune_fk", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_inferences_finetune_fk_finetunes"), "finetunes", ["finetune_fk"], ["id"],
                                 ondelete="SET NULL")
        batch.create_index(op.f("ix_inferences_finetune_fk"), ["finetune_fk"])


def downgrade() -> None:
    with op.batch_alter_table("inferences", copy_from=_inferences(with_finetune=True)) as batch:
        batch.drop_index(op.f("ix_inferences_finetune_fk"))
        batch.drop_constraint(op.f("fk_inferences_finetune_fk_finetunes"), type_="foreignkey")
        batch.drop_column("finetune_fk")
    op.drop_table("finetunes")
