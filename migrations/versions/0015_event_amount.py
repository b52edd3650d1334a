"""Segment speed: a typed `amount` on events, computed by the database, in the index.

"Amount spent in 365 days > 300" summed `properties->>'amount'` parsed per event. The
amount is now a generated column (the JSON number, NULL when absent or not a number), so
every writer (ingest, merges moving events, erasure blanking properties) keeps it exact
without code of its own; it joins the (type, customer, time, channel) index, which then
answers a sum rule without reading the table. Adding it fills it for existing rows
(PostgreSQL rewrites the table once: a lock for as long as that takes; SQLite computes
it on read).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 23:55:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG = (
    "ALTER TABLE engagement_events ADD COLUMN amount DOUBLE PRECISION GENERATED ALWAYS AS"
    " (CASE WHEN json_typeof(properties -> 'amount') = 'number'"
    " THEN CAST(properties ->> 'amount' AS DOUBLE PRECISION) END) STORED"
)
# SQLite can add only a VIRTUAL generated column; it can be indexed all the same.
_SQLITE = (
    "ALTER TABLE engagement_events ADD COLUMN amount FLOAT GENERATED ALWAYS AS"
    " (CASE WHEN json_type(properties, '$.amount') IN ('integer', 'real')"
    " THEN json_extract(properties, '$.amount') END)"
)


def upgrade() -> None:
    op.execute(_PG if op.get_bind().dialect.name == "postgresql" else _SQLITE)
    op.drop_index("ix_engagement_events_type_customer_time", table_name="engagement_events")
    op.create_index(
        "ix_engagement_events_type_customer_time_amount",
        "engagement_events",
        ["type", "customer_id", "occurred_at", "channel", "amount"],
    )


def downgrade() -> None:
    op.drop_index("ix_engagement_events_type_customer_time_amount", table_name="engagement_events")
    op.create_index(
        "ix_engagement_events_type_customer_time",
        "engagement_events",
        ["type", "customer_id", "occurred_at", "channel"],
    )
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("engagement_events", "amount")
    else:
        with op.batch_alter_table("engagement_events") as batch_op:
            batch_op.drop_column("amount")
