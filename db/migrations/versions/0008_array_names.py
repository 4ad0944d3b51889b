"""Named arrays: where an array came from (wafer, die), and who ran a run and why (operator, notes).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("arrays") as batch:
        batch.add_column(sa.Column("wafer", sa.String(255), nullable=True))
        batch.add_column(sa.Column("die", sa.String(255), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("operator", sa.String(255), nullable=True))
        batch.add_column(sa.Column("notes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("notes")
        batch.drop_column("operator")
    with op.batch_alter_table("arrays") as batch:
        batch.drop_column("die")
        batch.drop_column("wafer")
