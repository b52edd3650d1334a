"""Segment speed: `event_recency`, each customer's latest three events of a type.

"Two purchases in 365 days, none in 90" read every purchase of the year (751,339 index
entries over 10,000,000 events) to count them per customer. The n-th latest purchase
answers "at least n in the window" by itself, and the latest answers "none": this table
keeps the three latest of each type per customer (for all channels together, channel "",
and per channel), written by every writer of events in its own transaction
(cascade/events/recency.py). Built here from the existing events: one INSERT ... SELECT
with a window function (it reads the events table once; on 10,000,000 events, minutes).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 03:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The depth is RECENCY_DEPTH in models/tables.py at the time of this migration.
_FILL = """
INSERT INTO event_recency (customer_id, type, channel, rank, occurred_at)
SELECT customer_id, type, channel, rank, occurred_at FROM (
    SELECT customer_id, type, '' AS channel, occurred_at,
           row_number() OVER (PARTITION BY customer_id, type ORDER BY occurred_at DESC, id DESC) AS rank
    FROM engagement_events WHERE customer_id IS NOT NULL
    UNION ALL
    SELECT customer_id, type, channel, occurred_at,
           row_number() OVER (PARTITION BY customer_id, type, channel ORDER BY occurred_at DESC, id DESC) AS rank
    FROM engagement_events WHERE customer_id IS NOT NULL AND channel IS NOT NULL
) AS ranked
WHERE rank <= 3
"""


def upgrade() -> None:
    op.create_table(
        "event_recency",
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "type", "channel", "rank"),
    )
    op.execute(_FILL)
    op.create_index(
        "ix_event_recency_type_rank_time",
        "event_recency",
        ["type", "channel", "rank", "occurred_at", "customer_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_event_recency_type_rank_time", table_name="event_recency")
    op.drop_table("event_recency")
