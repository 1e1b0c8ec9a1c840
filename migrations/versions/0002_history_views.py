"""SQL views for querying audit history: dominance_history, pairwise_dominance, hierarchy_drift

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DOMINANCE_HISTORY = """
CREATE VIEW dominance_history AS
SELECT m.name AS model_name, mv.version AS model_version, mv.created_at AS version_created_at,
       r.id AS run_id, r.finished_at AS run_finished_at, d.uri AS dataset_uri, rc.class_name AS class_name,
       c.key AS cluster_key, rcl.score AS score, rcl.rank AS rank, rcl.train_share AS train_share,
       rcl.eval_size AS eval_size
FROM run_cluster rcl
JOIN audit_run r ON r.id = rcl.run_id
JOIN run_class rc ON rc.run_id = rcl.run_id AND rc.class_index = rcl.class_index
JOIN cluster c ON c.id = rcl.cluster_id
JOIN model_version mv ON mv.id = r.model_version_id
JOIN model m ON m.id = mv.model_id
JOIN dataset d ON d.id = r.dataset_id
WHERE r.status = 'complete'
"""

PAIRWISE_DOMINANCE = """
CREATE VIEW pairwise_dominance AS
SELECT r.id AS run_id, m.name AS model_name, mv.version AS model_version, rc.class_name AS class_name,
       pd.cluster_i AS cluster_i, pd.cluster_j AS cluster_j, pd.dominance AS dominance, pd.p_value AS p_value,
       pd.p_value_holm AS p_value_holm, pd.n_mosaics AS n_mosaics
FROM pair_dominance pd
JOIN audit_run r ON r.id = pd.run_id
JOIN run_class rc ON rc.run_id = pd.run_id AND rc.class_index = pd.class_index
JOIN model_version mv ON mv.id = r.model_version_id
JOIN model m ON m.id = mv.model_id
WHERE r.status = 'complete' AND pd.cluster_i <> pd.cluster_j
"""

# Consecutive audited versions (by version creation time) of one model on one clustering and config;
# ranks are tie-free, so Spearman's rho is 1 - 6 sum(d^2) / (n (n^2 - 1)).
HIERARCHY_DRIFT = """
CREATE VIEW hierarchy_drift AS
WITH runs AS (
    SELECT r.id AS run_id, m.name AS model_name, mv.version AS version, r.clustering_id AS clustering_id,
           LAG(r.id) OVER w AS prev_run_id, LAG(mv.version) OVER w AS prev_version
    FROM audit_run r
    JOIN model_version mv ON mv.id = r.model_version_id
    JOIN model m ON m.id = mv.model_id
    WHERE r.status = 'complete'
    WINDOW w AS (PARTITION BY m.id, r.clustering_id, r.config_hash ORDER BY mv.created_at, mv.id)
), pairs AS (
    SELECT runs.model_name AS model_name, rc.class_name AS class_name, runs.prev_version AS from_version,
           runs.version AS to_version, a.rank AS rank_from, b.rank AS rank_to
    FROM runs
    JOIN run_cluster a ON a.run_id = runs.prev_run_id
    JOIN run_cluster b ON b.run_id = runs.run_id AND b.cluster_id = a.cluster_id
    JOIN run_class rc ON rc.run_id = b.run_id AND rc.class_index = b.class_index
)
SELECT model_name, class_name, from_version, to_version,
       CASE WHEN COUNT(*) > 1 THEN
           1.0 - 6.0 * CAST(SUM((rank_to - rank_from) * (rank_to - rank_from)) AS FLOAT)
                 / CAST(COUNT(*) * (COUNT(*) * COUNT(*) - 1) AS FLOAT)
       END AS spearman_rank_correlation,
       SUM(CASE WHEN rank_to > rank_from THEN 1 ELSE 0 END) AS clusters_lost_rank
FROM pairs
GROUP BY model_name, class_name, from_version, to_version
"""

VIEWS = {"dominance_history": DOMINANCE_HISTORY, "pairwise_dominance": PAIRWISE_DOMINANCE,
         "hierarchy_drift": HIERARCHY_DRIFT}


def upgrade() -> None:
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
