"""The looks an audit flags and where each class stands against the null model.

run_cluster: representation_ratio (training share / evaluation share, method.looks) and flagged_rank (the cluster's
place among its class's flagged looks, 0 = most in need; NULL: not flagged). run_class: looks_signal (the signal the
audit led with), looks (the whole ``looks`` section: flagged clusters, their numbers, examples and training images),
null_model (the ``null`` comparison: the null model's numbers, the model's, ``above_null``, ``pairs_above_null``) and
above_null. ``dominance_history`` shows them beside each cluster's score; ``look_drift`` follows each cluster (by its
key, on a shared clustering) from one version to the next in the signal's own numbers. NULL in rows stored before
this revision.

Revision ID: 0009
Revises: 0008
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

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
       rcl.control_score AS control_score, rc.control_tau AS control_tau,
       rcl.representation_ratio AS representation_ratio, rcl.flagged_rank AS flagged_rank,
       rc.looks_signal AS looks_signal, rc.above_null AS above_null
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

# consecutive complete runs of one model on one dataset, clustering and settings (as hierarchy_drift pairs them),
# joined cluster by cluster: what happened to each look, in the numbers the looks signal reads
LOOK_DRIFT = """
CREATE VIEW look_drift AS
WITH runs AS (
    SELECT r.id AS run_id, m.name AS model_name, mv.version AS version, r.clustering_id AS clustering_id,
           r.config_hash AS settings_key,
           LAG(r.id) OVER w AS prev_run_id, LAG(mv.version) OVER w AS prev_version
    FROM audit_run r
    JOIN model_version mv ON mv.id = r.model_version_id
    JOIN model m ON m.id = mv.model_id
    WHERE r.status = 'complete'
    WINDOW w AS (PARTITION BY m.id, r.dataset_id, r.clustering_id, r.config_hash
                 ORDER BY COALESCE(mv.registered_at, mv.created_at), mv.id)
)
SELECT runs.model_name AS model_name, b.class_name AS class_name, runs.prev_version AS from_version,
       runs.version AS to_version, runs.prev_run_id AS from_run_id, runs.run_id AS to_run_id,
       runs.settings_key AS settings_key, c.key AS cluster_key, b.looks_signal AS looks_signal,
       ka.flagged_rank AS flagged_rank_from, kb.flagged_rank AS flagged_rank_to,
       ka.accuracy AS accuracy_from, kb.accuracy AS accuracy_to,
       ka.mean_logit AS mean_logit_from, kb.mean_logit AS mean_logit_to,
       ka.representation_ratio AS representation_ratio_from, kb.representation_ratio AS representation_ratio_to,
       ka.rank AS rank_from, kb.rank AS rank_to, a.above_null AS above_null_from, b.above_null AS above_null_to
FROM runs
JOIN run_class b ON b.run_id = runs.run_id
JOIN run_class a ON a.run_id = runs.prev_run_id AND a.class_name = b.class_name
JOIN run_cluster ka ON ka.run_id = a.run_id AND ka.class_index = a.class_index
JOIN run_cluster kb ON kb.run_id = b.run_id AND kb.class_index = b.class_index AND kb.cluster_id = ka.cluster_id
JOIN cluster c ON c.id = kb.cluster_id
"""

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _module(name: str):
    """A revision's module, read from its file (its name starts with a digit)."""
    path = next(Path(__file__).parent.glob(f"{name}_*.py"))
    spec = importlib.util.spec_from_file_location(f"_xich_revision_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _views_0008() -> dict[str, str]:
    """The views as 0007 left them (0008 did not change them)."""
    views = dict(_module("0003").VIEWS)
    views["dominance_history"] = _module("0007").DOMINANCE_HISTORY
    return views


def upgrade() -> None:
    views = _views_0008()
    for name in reversed(list(views)):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("run_class") as t:
        t.add_column(sa.Column("looks_signal", sa.String(length=32), nullable=True))
        t.add_column(sa.Column("looks", JSON, nullable=True))
        t.add_column(sa.Column("null_model", JSON, nullable=True))
        t.add_column(sa.Column("above_null", sa.Boolean(), nullable=True))
    with op.batch_alter_table("run_cluster") as t:
        t.add_column(sa.Column("representation_ratio", sa.Float(), nullable=True))
        t.add_column(sa.Column("flagged_rank", sa.Integer(), nullable=True))
    for name, sql in views.items():
        op.execute(DOMINANCE_HISTORY if name == "dominance_history" else sql)
    op.execute(LOOK_DRIFT)


def downgrade() -> None:
    views = _views_0008()
    op.execute("DROP VIEW look_drift")
    for name in reversed(list(views)):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("run_cluster") as t:
        t.drop_column("flagged_rank")
        t.drop_column("representation_ratio")
    with op.batch_alter_table("run_class") as t:
        for name in ("above_null", "null_model", "looks", "looks_signal"):
            t.drop_column(name)
    for sql in views.values():
        op.execute(sql)
