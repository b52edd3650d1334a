"""Indexes of the analytics queries: attribution by customer and send time, date ranges.

Revision ID: 0010
Revises: 0007
Create Date: 2026-11-30 17:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_deliveries_customer_sent", "deliveries", ["customer_id", "sent_at"])
    op.create_index("ix_deliveries_created_at", "deliveries", ["created_at"])
    op.create_index("ix_engagement_events_type_customer", "engagement_events", ["type", "customer_id"])
    op.create_index("ix_journey_runs_started_at", "journey_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_journey_runs_started_at", table_name="journey_runs")
    op.drop_index("ix_engagement_events_type_customer", table_name="engagement_events")
    op.drop_index("ix_deliveries_created_at", table_name="deliveries")
    op.drop_index("ix_deliveries_customer_sent", table_name="deliveries")
