"""Journey runs: which journeys were started for which customer (events find them here).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:41:15.820981
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "journey_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(length=512), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("campaign", sa.String(length=128), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workflow_id", "run_id"),
    )
    with op.batch_alter_table("journey_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_journey_runs_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_journey_runs_journey"), ["journey"], unique=False)
        batch_op.create_index(batch_op.f("ix_journey_runs_workflow_id"), ["workflow_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("journey_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_journey_runs_workflow_id"))
        batch_op.drop_index(batch_op.f("ix_journey_runs_journey"))
        batch_op.drop_index(batch_op.f("ix_journey_runs_customer_id"))

    op.drop_table("journey_runs")
