"""Reference clusterings and request back-off: a clustering's P and the time it became its model's reference
on a dataset; an audit request's consecutive failures, last error and next try.

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# P of the clusterings made before this revision: the run that made one is keyed "own:P=<P>"
BACKFILL_CLUSTERS = """
UPDATE clustering SET clusters = (
    SELECT CAST(SUBSTR(r.clustering_key, 7) AS INTEGER) FROM audit_run r
    WHERE r.clustering_id = clustering.id AND r.clustering_key LIKE 'own:P=%' LIMIT 1)
"""


NEW_COLUMNS = {
    "clustering": [sa.Column("clusters", sa.Integer(), nullable=True),
                   sa.Column("reference_at", sa.DateTime(timezone=True), nullable=True)],
    "audit_request": [sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
                      sa.Column("last_error", sa.Text(), nullable=True),
                      sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True)],
}


# Plain ADD / DROP COLUMN, not a batch: SQLite's batch copies and renames the table, which the views that
# read ``clustering`` forbid (SQLite >= 3.35 drops a column in place).
def upgrade() -> None:
    for table, columns in NEW_COLUMNS.items():
        for column in columns:
            op.add_column(table, column)
    op.execute(BACKFILL_CLUSTERS)
    # a clustering frozen before this revision is its model's reference from the time it was made
    op.execute("UPDATE clustering SET reference_at = created_at WHERE frozen")


def downgrade() -> None:
    for table, columns in NEW_COLUMNS.items():
        for column in reversed(columns):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column.name}")
