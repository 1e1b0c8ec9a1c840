"""Sampled training shares and class heartbeats.

run_cluster.train_share_se: the standard error of the cluster's training share when ``--train-per-class``
sampled the training split (0: every training image was placed; NULL in rows stored before this revision).
class_heartbeat: one row per class a process is computing, its ``beat_at`` refreshed while it works; the nightly
flow takes a ``running`` run over once its newest heartbeat is older than the stale time (XICH_RUN_STALE_S).

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("run_cluster", sa.Column("train_share_se", sa.Float(), nullable=True))
    op.create_table(
        "class_heartbeat",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("class_name", sa.String(length=255), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["audit_run.id"], name=op.f("fk_class_heartbeat_run_id_audit_run"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "class_name", name=op.f("pk_class_heartbeat")),
    )


def downgrade() -> None:
    op.drop_table("class_heartbeat")
    op.drop_column("run_cluster", "train_share_se")  # native on SQLite >= 3.35: the views never name it
