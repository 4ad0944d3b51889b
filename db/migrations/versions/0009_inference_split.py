"""Which split an inference evaluated (validation for development, test for what is reported).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every inference recorded before this revision streamed the test split.
    with op.batch_alter_table("inferences") as batch:
        batch.add_column(sa.Column("split", sa.String(8), nullable=False, server_default="test"))


def downgrade() -> None:
    with op.batch_alter_table("inferences") as batch:
        batch.drop_column("split")
