"""Indexes on the times a corrected segment count looks for changes since a refresh.

An exact count (`cascade segments count --exact`) corrects the last refresh's memberships
for the customers touched since (cascade/audiences/corrected.py): profiles updated or
created since, contact points added or re-marked, consents changed, merges. Each is a
range of one of these indexes; without them, each is a scan of its whole table on every
count. (Events received since use 0019's index; events leaving a window, 0012's.)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01 09:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = [
    ("ix_customers_updated_at", "customers", "updated_at"),
    ("ix_contact_points_created_at", "contact_points", "created_at"),
    ("ix_contact_points_status_changed_at", "contact_points", "status_changed_at"),
    ("ix_consents_changed_at", "consents", "changed_at"),
    ("ix_customer_merges_merged_at", "customer_merges", "merged_at"),
]


def upgrade() -> None:
    for name, table, column in _INDEXES:
        op.create_index(name, table, [column])


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
