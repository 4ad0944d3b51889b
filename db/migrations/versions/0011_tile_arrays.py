"""Which array each programmed tile sits on (a model may be spread over several arrays of a run).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Tiles recorded before this revision all sat on their deployment's array (NULL: that one).
    with op.batch_alter_table("deployment_tiles") as batch:
        batch.add_column(sa.Column("array", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployment_tiles") as batch:
        batch.drop_column("array")
