"""Analytics: skipped journey steps with their reasons (the funnel's `skipped`), and the
daily funnel and savings rollups of closed days, with how far each is built.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 20:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
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

    op.create_table(
        "funnel_daily",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("campaign", sa.String(length=128), nullable=True),
        sa.Column("variant", sa.String(length=32), nullable=True),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in ("messages", "sent", "delivered", "opened", "clicked", "failed", "unknown")
        ),
        sa.Column("unsubscribed", sa.Integer(), nullable=False),
        sa.Column("converted", sa.Integer(), nullable=False),
        sa.Column("revenue", sa.Float(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("funnel_daily", schema=None) as batch_op:
        batch_op.create_index("ix_funnel_daily_day_journey", ["day", "journey"], unique=False)
    op.create_table(
        "savings_daily",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("campaign", sa.String(length=128), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("actual", sa.Float(), nullable=False),
        sa.Column("all_usable", sa.Float(), nullable=False),
        sa.Column("dearest", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("savings_daily", schema=None) as batch_op:
        batch_op.create_index("ix_savings_daily_day_journey", ["day", "journey"], unique=False)
    op.create_table(
        "rollup_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("rollup_state")
    op.drop_table("savings_daily")
    op.drop_table("funnel_daily")
    op.drop_table("step_skips")
