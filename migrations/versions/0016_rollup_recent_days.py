"""Analytics: provisional rollup rows for the recent days (not yet closed), refreshed in the
background; `rollup_state.recent_until` says up to when (and as of when) they hold the log.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 03:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollup_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recent_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Recent rows without their state would be read as closed days: drop them with it.
    bind = op.get_bind()
    state = sa.table("rollup_state", sa.column("name", sa.String), sa.column("until", sa.DateTime(timezone=True)))
    for name, until in bind.execute(sa.select(state.c.name, state.c.until)).all():
        if name in ("funnel_daily", "reaction_daily", "runs_daily", "savings_daily"):
            table = sa.table(name, sa.column("day", sa.Date))
            bind.execute(sa.delete(table).where(table.c.day >= until.date()))
    with op.batch_alter_table("rollup_state", schema=None) as batch_op:
        batch_op.drop_column("recent_until")
