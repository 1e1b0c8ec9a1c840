"""Registry hook deliveries: each one acted on, unique per source and delivery id, so a repeat acts nothing.

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("delivery_id", sa.String(length=255), nullable=False),
        sa.Column("event", sa.String(length=255), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("version", sa.String(length=255), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("outcome IN ('processing', 'started', 'registered', 'audited', 'ignored', 'unmapped', "
                           "'refused')", name=op.f("ck_hook_delivery_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_delivery")),
        sa.UniqueConstraint("source", "delivery_id", name=op.f("uq_hook_delivery_source")),
    )


def downgrade() -> None:
    op.drop_table("hook_delivery")
