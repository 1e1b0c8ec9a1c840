"""Baselines per cluster, their agreement with the hierarchy, the randomized control and the CAM method.

run_cluster: mean_logit, mean_softmax, accuracy, mean_margin (one forward pass per image) and control_score
(the cluster's score under the re-initialised architecture); run_class: Kendall's tau of the scores against
each baseline, the control's tau and the whole control document; audit_run: the CAM method (--method).
``dominance_history`` shows them beside each cluster's score. NULL in rows stored before this revision.

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BASELINES = ("mean_logit", "mean_softmax", "accuracy", "mean_margin")
CLUSTER_COLUMNS = (*BASELINES, "control_score")
CLASS_COLUMNS = (*(f"tau_{b}" for b in BASELINES), "control_tau")

# clustering_key: the cluster's own clustering (a class the reference lacks is clustered in its run, not the reference)
DOMINANCE_HISTORY = """
CREATE VIEW dominance_history AS
SELECT m.name AS model_name, mv.version AS model_version,
       COALESCE(mv.registered_at, mv.created_at) AS version_created_at,
       r.id AS run_id, r.finished_at AS run_finished_at, r.config_hash AS settings_key,
       COALESCE(r.method, 'gradcam') AS method,
       cl.key AS clustering_key, d.uri AS dataset_uri, rc.class_name AS class_name,
       c.key AS cluster_key, rcl.score AS score, rcl.rank AS rank, rcl.train_share AS train_share,
       rcl.eval_size AS eval_size, rcl.mean_logit AS mean_logit, rcl.mean_softmax AS mean_softmax,
       rcl.accuracy AS accuracy, rcl.mean_margin AS mean_margin, rc.tau_mean_logit AS tau_mean_logit,
       rcl.control_score AS control_score, rc.control_tau AS control_tau
FROM run_cluster rcl
JOIN audit_run r ON r.id = rcl.run_id
JOIN run_class rc ON rc.run_id = rcl.run_id AND rc.class_index = rcl.class_index
JOIN cluster c ON c.id = rcl.cluster_id
JOIN clustering cl ON cl.id = c.clustering_id
JOIN model_version mv ON mv.id = r.model_version_id
JOIN model m ON m.id = mv.model_id
JOIN dataset d ON d.id = r.dataset_id
WHERE r.status = 'complete'
"""


def _views_0003() -> dict[str, str]:
    """The 0003 views, read from that revision's file (its module name starts with a digit)."""
    path = Path(__file__).with_name("0003_trustworthy_results.py")
    spec = importlib.util.spec_from_file_location("xich_migration_0003", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.VIEWS)


def _drop_views(views: dict[str, str]) -> None:
    # SQLite rebuilds a table to drop a column, which its views would block
    for name in reversed(list(views)):
        op.execute(f"DROP VIEW {name}")


def upgrade() -> None:
    views = _views_0003()
    _drop_views(views)
    with op.batch_alter_table("audit_run") as t:
        t.add_column(sa.Column("method", sa.String(length=32), nullable=True))
    with op.batch_alter_table("run_class") as t:
        for name in CLASS_COLUMNS:
            t.add_column(sa.Column(name, sa.Float(), nullable=True))
        t.add_column(sa.Column("control", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))
    with op.batch_alter_table("run_cluster") as t:
        for name in CLUSTER_COLUMNS:
            t.add_column(sa.Column(name, sa.Float(), nullable=True))
    for name, sql in views.items():
        op.execute(DOMINANCE_HISTORY if name == "dominance_history" else sql)


def downgrade() -> None:
    views = _views_0003()
    _drop_views(views)
    with op.batch_alter_table("run_cluster") as t:
        for name in reversed(CLUSTER_COLUMNS):
            t.drop_column(name)
    with op.batch_alter_table("run_class") as t:
        t.drop_column("control")
        for name in reversed(CLASS_COLUMNS):
            t.drop_column(name)
    with op.batch_alter_table("audit_run") as t:
        t.drop_column("method")
    for sql in views.values():
        op.execute(sql)
