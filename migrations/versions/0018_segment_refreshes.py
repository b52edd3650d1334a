"""Segment counts from the memberships: `segment_refreshes` records when each segment was
last refreshed for everyone and for which definition (a digest of its compiled query), so
`cascade segments count` and GET /v1/segments/{name} can count the open memberships (an
index range) and say as of when, instead of running the segment's query over every
customer and event.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 06:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "segment_refreshes",
        sa.Column("segment", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.String(length=64), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("segment"),
    )


def downgrade() -> None:
    op.drop_table("segment_refreshes")
