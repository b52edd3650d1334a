"""Routing decisions (why each optichannel step went out on its channel) and stated preferences (issue 16).

Revision ID: 0011
Revises: 0007
Create Date: 2026-11-30 17:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=600), nullable=False),
        sa.Column("workflow_id", sa.String(length=512), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("chosen", sa.String(length=32), nullable=True),
        sa.Column("explored", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.String(length=2000), nullable=False),
        sa.Column("ranking", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("routing_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routing_decisions_workflow_id"), ["workflow_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_routing_decisions_customer_id"), ["customer_id"], unique=False)
    op.create_table(
        "preference_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("preference_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_preference_changes_customer_id"), ["customer_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("preference_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_preference_changes_customer_id"))
    op.drop_table("preference_changes")
    with op.batch_alter_table("routing_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routing_decisions_customer_id"))
        batch_op.drop_index(batch_op.f("ix_routing_decisions_workflow_id"))
    op.drop_table("routing_decisions")
