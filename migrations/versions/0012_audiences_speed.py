"""Segment speed: event indexes that let a count, sum or "none" rule read one index range.

A behaviour rule ("2 purchases in 365 days", "no click on SMS") compiles to one grouped
subquery over the events of one type. (type, customer_id, occurred_at, channel) hands
them over already grouped by customer for a long window, (type, occurred_at, customer_id,
channel) reads only the recent ones for a short window; both answer without touching the
table (index-only), the channel included for the opens and clicks of one channel.

Revision ID: 0012
Revises: 0008
Create Date: 2026-11-30 20:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_engagement_events_type_customer_time",
        "engagement_events",
        ["type", "customer_id", "occurred_at", "channel"],
    )
    op.create_index(
        "ix_engagement_events_type_time_customer",
        "engagement_events",
        ["type", "occurred_at", "customer_id", "channel"],
    )


def downgrade() -> None:
    op.drop_index("ix_engagement_events_type_time_customer", table_name="engagement_events")
    op.drop_index("ix_engagement_events_type_customer_time", table_name="engagement_events")
