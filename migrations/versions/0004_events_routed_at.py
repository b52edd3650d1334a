"""Events remember when they were routed, so a retry after a failed routing routes again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 12:50:26.207205
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("engagement_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("routed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("engagement_events", schema=None) as batch_op:
        batch_op.drop_column("routed_at")
