"""images: the first release's only table.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("quality", sa.String(16), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("guidance_scale", sa.Float(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("response_format", sa.String(16), nullable=False),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("style", sa.String(64), nullable=True),
        sa.Column("sensitive_word_check", sa.Text(), nullable=True),
        sa.Column("watermark_enabled", sa.Boolean(), nullable=True),
    )
    op.create_index("ix_images_expires_at", "images", ["expires_at"])
    op.create_index("ix_images_user_id", "images", ["user_id"])
    op.create_index("ix_images_request_id", "images", ["request_id"])


def downgrade() -> None:
    op.drop_table("images")
