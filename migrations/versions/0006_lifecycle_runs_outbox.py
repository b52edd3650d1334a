"""Journey runs record their type, conversion/exit events and outcome; the signal outbox.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-30 13:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("journey_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("workflow_type", sa.String(length=64), nullable=False, server_default="CascadeJourney")
        )
        batch_op.add_column(sa.Column("convert_on", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("exit_on", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("outcome", sa.String(length=32), nullable=True))
    # The server default only filled the existing rows; the model supplies the value from now on.
    with op.batch_alter_table("journey_runs", schema=None) as batch_op:
        batch_op.alter_column("workflow_type", server_default=None)
    op.create_table(
        "signal_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("workflow_id", sa.String(length=512), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("signal", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("signal_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signal_outbox_not_before"), ["not_before"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("signal_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signal_outbox_not_before"))
    op.drop_table("signal_outbox")
    with op.batch_alter_table("journey_runs", schema=None) as batch_op:
        batch_op.drop_column("outcome")
        batch_op.drop_column("exit_on")
        batch_op.drop_column("convert_on")
        batch_op.drop_column("workflow_type")
