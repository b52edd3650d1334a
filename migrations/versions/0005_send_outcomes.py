"""Send outcomes: a reason code beside the provider's text, and each channel's health.

`deliveries.failure_code` is what a workflow is told (provider texts quote addresses
and stay in `failure_reason`); `channel_health` keeps the last configuration error
(a refused token) per channel for `python starter.py channels`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure_code", sa.String(length=32), nullable=True))
    op.create_table(
        "channel_health",
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("last_error", sa.String(length=1000), nullable=False),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("recovered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("channel"),
    )


def downgrade() -> None:
    op.drop_table("channel_health")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("failure_code")
