"""Analytics: the time-to-react histogram and the runs by outcome of closed days
(reaction_daily, runs_daily), the index the console's journey pages read the recent days of
one journey's messages with, and a partial index of the runs a closed day's rollup cannot
hold (still running, or longer than 34 days).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here (a migration does not import the models): the models' Index says the same.
OPEN_OR_LONG_PG = "outcome IS NULL OR finished_at IS NULL OR finished_at - started_at >= interval '34 days'"
OPEN_OR_LONG_SQLITE = "outcome IS NULL OR finished_at IS NULL OR julianday(finished_at) - julianday(started_at) >= 34"


def upgrade() -> None:
    op.create_table(
        "reaction_daily",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("campaign", sa.String(length=128), nullable=True),
        sa.Column("variant", sa.String(length=32), nullable=True),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("reactions", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reaction_daily", schema=None) as batch_op:
        batch_op.create_index("ix_reaction_daily_day_journey", ["day", "journey"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_journey_created_at", ["journey", "created_at"], unique=False)
    op.create_table(
        "runs_daily",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("campaign", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runs_daily", schema=None) as batch_op:
        batch_op.create_index("ix_runs_daily_day_journey", ["day", "journey"], unique=False)
    # The same predicates analytics.funnel writes (LONG_OR_OPEN), so the planner uses the index.
    op.create_index(
        "ix_journey_runs_open_or_long",
        "journey_runs",
        ["journey", "started_at"],
        postgresql_where=sa.text(OPEN_OR_LONG_PG),
        sqlite_where=sa.text(OPEN_OR_LONG_SQLITE),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Without statistics on the duration PostgreSQL guesses a third of the runs match the
        # predicate and plans a parallel scan whose start costs more than the few rows it reads.
        op.execute(
            "CREATE STATISTICS IF NOT EXISTS journey_runs_duration ON (finished_at - started_at) FROM journey_runs"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS journey_runs_duration")
    op.drop_index("ix_journey_runs_open_or_long", table_name="journey_runs")
    op.drop_table("runs_daily")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_journey_created_at")
    op.drop_table("reaction_daily")
