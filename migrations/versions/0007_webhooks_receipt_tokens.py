"""Used webhook tokens (Mailgun's signature.token), bound to the body they first came with.

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-24 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "receipt_tokens",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider", "token"),
    )
    with op.batch_alter_table("receipt_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_receipt_tokens_seen_at"), ["seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("receipt_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_receipt_tokens_seen_at"))
    op.drop_table("receipt_tokens")
