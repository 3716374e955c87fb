"""Shared rate limits: request log, in-flight slots and worker heartbeats (auth.shared_limits).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_requests",
        sa.Column("subject", sa.String(length=1024), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("subject", "at", "lease_id"),
    )
    with op.batch_alter_table("limit_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_limit_requests_at"), ["at"], unique=False)

    op.create_table(
        "limit_slots",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=1024), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "subject"),
    )
    with op.batch_alter_table("limit_slots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_limit_slots_subject"), ["subject"], unique=False)

    op.create_table(
        "limit_workers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("limit_workers")
    with op.batch_alter_table("limit_slots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_limit_slots_subject"))

    op.drop_table("limit_slots")
    with op.batch_alter_table("limit_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_limit_requests_at"))

    op.drop_table("limit_requests")
