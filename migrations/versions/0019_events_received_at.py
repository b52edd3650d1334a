"""The recent refresh finds the events received since the previous one by this index.

The background refresh of the rollups' recent days (analytics/changes.py) rebuilds only
the days whose messages changed since its previous run; a late receipt, open, click,
unsubscribe or purchase is found as an event *received* since then, whatever time it
says it happened. Without an index that is a scan of every event, every 10 minutes.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 06:10:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_engagement_events_received_at", "engagement_events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_engagement_events_received_at", table_name="engagement_events")
