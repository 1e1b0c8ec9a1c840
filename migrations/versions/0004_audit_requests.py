"""Audit requests: a registered model version's dataset and settings, linked to the run that serves it.

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("dataset_uri", sa.Text(), nullable=False),
        sa.Column("settings", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("request_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_version.id"], ondelete="CASCADE",
                                name=op.f("fk_audit_request_model_version_id_model_version")),
        sa.ForeignKeyConstraint(["run_id"], ["audit_run.id"], ondelete="SET NULL",
                                name=op.f("fk_audit_request_run_id_audit_run")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_request")),
        sa.UniqueConstraint("model_version_id", "request_key", name=op.f("uq_audit_request_model_version_id")),
    )
    op.create_index(op.f("ix_audit_request_model_version_id"), "audit_request", ["model_version_id"])
    op.create_index(op.f("ix_audit_request_run_id"), "audit_request", ["run_id"])


def downgrade() -> None:
    op.drop_table("audit_request")
