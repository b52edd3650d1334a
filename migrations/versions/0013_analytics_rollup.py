"""Analytics: skipped journey steps with their reasons (the funnel's `skipped`), and the
indexes the funnel by variant and segment reads.

Revision ID: 0013
Revises: 0008
Create Date: 2026-11-30 20:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "step_skips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(length=512), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("campaign", sa.String(length=128), nullable=True),
        sa.Column("variant", sa.String(length=32), nullable=True),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("skipped_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workflow_id", "run_id", "step"),
    )
    with op.batch_alter_table("step_skips", schema=None) as batch_op:
        batch_op.create_index("ix_step_skips_journey_time", ["journey", "skipped_at"], unique=False)
        batch_op.create_index("ix_step_skips_time", ["skipped_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_step_skips_customer_id"), ["customer_id"], unique=False)


def downgrade() -> None:
    op.drop_table("step_skips")
