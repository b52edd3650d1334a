"""Audiences: indexes that let segment queries read events and the funnel without scans;
broadcasts and their frozen audiences.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("engagement_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_engagement_events_customer_type_time", ["customer_id", "type", "occurred_at"], unique=False
        )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index("ix_customers_last_purchase_at", ["last_purchase_at"], unique=False)
        batch_op.create_index("ix_customers_created_at", ["created_at"], unique=False)
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("segment", sa.String(length=64), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("local_time", sa.String(length=8), nullable=True),
        sa.Column("audience", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "broadcast_recipients",
        sa.Column("broadcast_id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("workflow_id", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("broadcast_id", "customer_id"),
    )
    op.create_table(
        "segment_memberships",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("segment", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exited_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("segment_memberships", schema=None) as batch_op:
        batch_op.create_index("ix_segment_memberships_open", ["segment", "exited_at", "customer_id"], unique=False)
        batch_op.create_index("ix_segment_memberships_customer", ["customer_id", "segment"], unique=False)


def downgrade() -> None:
    op.drop_table("segment_memberships")
    op.drop_table("broadcast_recipients")
    op.drop_table("broadcasts")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_index("ix_customers_created_at")
        batch_op.drop_index("ix_customers_last_purchase_at")
    with op.batch_alter_table("engagement_events", schema=None) as batch_op:
        batch_op.drop_index("ix_engagement_events_customer_type_time")
