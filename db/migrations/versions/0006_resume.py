"""Resumable runs: a step may run again as a new attempt, and a run keeps a record of its resumes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_STATUS_CHECK = "status IN ('running', 'completed', 'failed', 'interrupted')"


def _run_steps(with_attempt: bool) -> sa.Table:
    """run_steps as it stands before the change (batch mode on SQLite rebuilds the table from this,
    so offline SQL can be generated without reflecting a live database)."""
    columns = [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
    ]
    if with_attempt:
        columns.append(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
    unique = (sa.UniqueConstraint("run_fk", "index", "attempt", name=op.f("uq_run_steps_run_fk_index_attempt"))
              if with_attempt else sa.UniqueConstraint("run_fk", "index", name=op.f("uq_run_steps_run_fk_index")))
    return sa.Table(
        "run_steps", sa.MetaData(), *columns,
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_steps")), unique,
        sa.CheckConstraint(_STATUS_CHECK, name=op.f("ck_run_steps_status")),
        sa.ForeignKeyConstraint(["run_fk"], ["runs.id"], name=op.f("fk_run_steps_run_fk_runs"), ondelete="CASCADE"))


def upgrade() -> None:
    with op.batch_alter_table("run_steps", copy_from=_run_steps(with_attempt=False)) as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
        batch.drop_constraint("uq_run_steps_run_fk_index", type_="unique")
        batch.create_unique_constraint("uq_run_steps_run_fk_index_attempt", ["run_fk", "index", "attempt"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("resumes", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("resumes")
    # Earlier attempts cannot live under the old one-row-per-index rule: only the latest is kept.
    op.execute('DELETE FROM run_steps WHERE attempt < (SELECT MAX(s.attempt) FROM run_steps AS s '
               'WHERE s.run_fk = run_steps.run_fk AND s."index" = run_steps."index")')
    with op.batch_alter_table("run_steps", copy_from=_run_steps(with_attempt=True)) as batch:
        batch.drop_constraint("uq_run_steps_run_fk_index_attempt", type_="unique")
        batch.create_unique_constraint("uq_run_steps_run_fk_index", ["run_fk", "index"])
        batch.drop_column("attempt")
