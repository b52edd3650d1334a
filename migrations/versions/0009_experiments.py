"""Experiments: their planned split, each customer's arm, and the arm on every delivery.

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-30 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("journey_version", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("control_share", sa.Float(), nullable=False),
        sa.Column("planned_split", sa.JSON(), nullable=False),
        sa.Column("convert_on", sa.JSON(), nullable=False),
        sa.Column("window_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "experiment_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("variant", sa.String(length=32), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("workflow_id", sa.String(length=512), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("allocation", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("experiment", "customer_id", name="uq_experiment_assignments_customer"),
    )
    with op.batch_alter_table("experiment_assignments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiment_assignments_experiment"), ["experiment"], unique=False)
        batch_op.create_index(batch_op.f("ix_experiment_assignments_customer_id"), ["customer_id"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("variant")
    with op.batch_alter_table("experiment_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiment_assignments_customer_id"))
        batch_op.drop_index(batch_op.f("ix_experiment_assignments_experiment"))
    op.drop_table("experiment_assignments")
    op.drop_table("experiments")
