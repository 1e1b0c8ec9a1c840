"""Trustworthy results: evidence and confidence intervals, label lists, content-identified datasets,
settings-keyed runs, registry time, indexes for per-run reads, JSONB on PostgreSQL, a CHECK on run status,
and views that compare consecutive versions on one clustering and one settings key.

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON_COLUMNS = {"model_version": ["registry_metadata"], "cluster": ["center"],
                "audit_run": ["config", "resolved_config", "timings"], "run_class": ["notes"]}
PER_CLASS_TABLES = ("run_cluster", "pair_dominance", "mosaic", "per_image_score")

DOMINANCE_HISTORY = """
CREATE VIEW dominance_history AS
SELECT m.name AS model_name, mv.version AS model_version,
       COALESCE(mv.registered_at, mv.created_at) AS version_created_at,
       r.id AS run_id, r.finished_at AS run_finished_at, r.config_hash AS settings_key,
       cl.key AS clustering_key, d.uri AS dataset_uri, rc.class_name AS class_name,
       c.key AS cluster_key, rcl.score AS score, rcl.rank AS rank, rcl.train_share AS train_share,
       rcl.eval_size AS eval_size
FROM run_cluster rcl
JOIN audit_run r ON r.id = rcl.run_id
JOIN run_class rc ON rc.run_id = rcl.run_id AND rc.class_index = rcl.class_index
JOIN cluster c ON c.id = rcl.cluster_id
JOIN clustering cl ON cl.id = r.clustering_id
JOIN model_version mv ON mv.id = r.model_version_id
JOIN model m ON m.id = mv.model_id
JOIN dataset d ON d.id = r.dataset_id
WHERE r.status = 'complete'
"""

PAIRWISE_DOMINANCE = """
CREATE VIEW pairwise_dominance AS
SELECT r.id AS run_id, m.name AS model_name, mv.version AS model_version, r.config_hash AS settings_key,
       rc.class_name AS class_name, pd.cluster_i AS cluster_i, pd.cluster_j AS cluster_j,
       pd.dominance AS dominance, pd.ci_low AS ci_low, pd.ci_high AS ci_high, pd.p_value AS p_value,
       pd.p_value_holm AS p_value_holm, pd.n_mosaics AS n_mosaics, pd.n_sets AS n_sets
FROM pair_dominance pd
JOIN audit_run r ON r.id = pd.run_id
JOIN run_class rc ON rc.run_id = pd.run_id AND rc.class_index = pd.class_index
JOIN model_version mv ON mv.id = r.model_version_id
JOIN model m ON m.id = mv.model_id
WHERE r.status = 'complete' AND pd.cluster_i <> pd.cluster_j
"""

# Consecutive audited versions of one model (by registry creation time, else first audit) on one
# dataset, one clustering and one settings key, whatever their architecture: one row per class they
# share (matched by name: output indices may differ between versions). Only clusters ranked in both
# runs are compared (``clusters_compared``; 0 when a class has no evidence in either); they are
# re-ranked among themselves so Spearman's rho is 1 - 6 sum(d^2) / (n (n^2 - 1)) on tie-free ranks.
HIERARCHY_DRIFT = """
CREATE VIEW hierarchy_drift AS
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
), class_pairs AS (
    SELECT runs.model_name AS model_name, runs.settings_key AS settings_key, runs.clustering_id AS clustering_id,
           runs.prev_version AS from_version, runs.version AS to_version, runs.prev_run_id AS from_run_id,
           runs.run_id AS to_run_id, b.class_name AS class_name, a.class_index AS from_class_index,
           b.class_index AS to_class_index
    FROM runs
    JOIN run_class b ON b.run_id = runs.run_id
    JOIN run_class a ON a.run_id = runs.prev_run_id AND a.class_name = b.class_name
), both_ranked AS (
    SELECT cp.from_run_id AS from_run_id, cp.to_run_id AS to_run_id, cp.class_name AS class_name,
           a.rank AS rank_a, b.rank AS rank_b
    FROM class_pairs cp
    JOIN run_cluster a ON a.run_id = cp.from_run_id AND a.class_index = cp.from_class_index
    JOIN run_cluster b ON b.run_id = cp.to_run_id AND b.class_index = cp.to_class_index AND b.cluster_id = a.cluster_id
    WHERE a.rank IS NOT NULL AND b.rank IS NOT NULL
), reranked AS (
    SELECT from_run_id, to_run_id, class_name,
           RANK() OVER (PARTITION BY from_run_id, to_run_id, class_name ORDER BY rank_a) - 1 AS rank_from,
           RANK() OVER (PARTITION BY from_run_id, to_run_id, class_name ORDER BY rank_b) - 1 AS rank_to
    FROM both_ranked
), compared AS (
    SELECT from_run_id, to_run_id, class_name, COUNT(*) AS n,
           SUM((rank_to - rank_from) * (rank_to - rank_from)) AS d2,
           SUM(CASE WHEN rank_to > rank_from THEN 1 ELSE 0 END) AS lost
    FROM reranked
    GROUP BY from_run_id, to_run_id, class_name
)
SELECT cp.model_name AS model_name, cp.class_name AS class_name, cp.from_version AS from_version,
       cp.to_version AS to_version, cp.from_run_id AS from_run_id, cp.to_run_id AS to_run_id,
       cp.settings_key AS settings_key, cl.key AS clustering_key, COALESCE(c.n, 0) AS clusters_compared,
       CASE WHEN c.n > 1 THEN 1.0 - 6.0 * CAST(c.d2 AS FLOAT) / CAST(c.n * (c.n * c.n - 1) AS FLOAT)
       END AS spearman_rank_correlation,
       COALESCE(c.lost, 0) AS clusters_lost_rank
FROM class_pairs cp
JOIN clustering cl ON cl.id = cp.clustering_id
LEFT JOIN compared c ON c.from_run_id = cp.from_run_id AND c.to_run_id = cp.to_run_id AND c.class_name = cp.class_name
"""

VIEWS = {"dominance_history": DOMINANCE_HISTORY, "pairwise_dominance": PAIRWISE_DOMINANCE,
         "hierarchy_drift": HIERARCHY_DRIFT}


def _json_to(type_, using: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in JSON_COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=type_, postgresql_using=f"{column}::{using}")


def upgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    _json_to(JSONB(), "jsonb")
    with op.batch_alter_table("model_version") as t:
        t.add_column(sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("labels", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))
        t.add_column(sa.Column("labels_source", sa.String(length=255), nullable=True))
    with op.batch_alter_table("dataset") as t:
        t.drop_constraint("uq_dataset_uri", type_="unique")
        t.add_column(sa.Column("n_images", sa.Integer(), nullable=True))
        t.create_unique_constraint("uq_dataset_fingerprint", ["fingerprint"])
    with op.batch_alter_table("clustering") as t:
        t.create_index("ix_clustering_model_version_id", ["model_version_id"])
        t.create_index("ix_clustering_dataset_id", ["dataset_id"])
    with op.batch_alter_table("audit_run") as t:
        t.create_check_constraint(op.f("ck_audit_run_status"), "status IN ('queued', 'running', 'complete', 'failed')")
        t.create_index("ix_audit_run_dataset_id", ["dataset_id"])
        t.create_index("ix_audit_run_clustering_id", ["clustering_id"])
    with op.batch_alter_table("run_class") as t:
        t.add_column(sa.Column("worker", sa.String(length=255), nullable=True))
        t.add_column(sa.Column("per_image_n", sa.Integer(), nullable=True))
        t.create_index("ix_run_class_clustering_id", ["clustering_id"])
    with op.batch_alter_table("run_cluster") as t:
        t.alter_column("score", existing_type=sa.Float(), nullable=True)
        t.alter_column("rank", existing_type=sa.Integer(), nullable=True)
        t.create_index("ix_run_cluster_cluster_id", ["cluster_id"])
    with op.batch_alter_table("pair_dominance") as t:
        t.alter_column("dominance", existing_type=sa.Float(), nullable=True)
        t.add_column(sa.Column("ci_low", sa.Float(), nullable=True))
        t.add_column(sa.Column("ci_high", sa.Float(), nullable=True))
        t.add_column(sa.Column("n_sets", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("pair_dominance") as t:
        t.alter_column("n_sets", existing_type=sa.Integer(), server_default=None)
    with op.batch_alter_table("per_image_score") as t:
        t.alter_column("score", existing_type=sa.Float(), nullable=True)
    for table in PER_CLASS_TABLES:
        op.create_index(f"ix_{table}_run_id_class_index", table, ["run_id", "class_index"])
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    for table in PER_CLASS_TABLES:
        op.drop_index(f"ix_{table}_run_id_class_index", table_name=table)
    # 0002 had no "no evidence": it stored a tie (0.5) and ranked by cluster id
    op.execute("UPDATE per_image_score SET score = 0.5 WHERE score IS NULL")
    op.execute("UPDATE pair_dominance SET dominance = 0.5 WHERE dominance IS NULL")
    op.execute("UPDATE run_cluster SET score = 0.5 WHERE score IS NULL")
    op.execute("UPDATE run_cluster SET rank = cluster_index WHERE rank IS NULL")
    with op.batch_alter_table("per_image_score") as t:
        t.alter_column("score", existing_type=sa.Float(), nullable=False)
    with op.batch_alter_table("pair_dominance") as t:
        t.drop_column("n_sets")
        t.drop_column("ci_high")
        t.drop_column("ci_low")
        t.alter_column("dominance", existing_type=sa.Float(), nullable=False)
    with op.batch_alter_table("run_cluster") as t:
        t.drop_index("ix_run_cluster_cluster_id")
        t.alter_column("rank", existing_type=sa.Integer(), nullable=False)
        t.alter_column("score", existing_type=sa.Float(), nullable=False)
    with op.batch_alter_table("run_class") as t:
        t.drop_index("ix_run_class_clustering_id")
        t.drop_column("per_image_n")
        t.drop_column("worker")
    with op.batch_alter_table("audit_run") as t:
        t.drop_index("ix_audit_run_clustering_id")
        t.drop_index("ix_audit_run_dataset_id")
        t.drop_constraint(op.f("ck_audit_run_status"), type_="check")
    with op.batch_alter_table("clustering") as t:
        t.drop_index("ix_clustering_dataset_id")
        t.drop_index("ix_clustering_model_version_id")
    with op.batch_alter_table("dataset") as t:
        t.drop_constraint("uq_dataset_fingerprint", type_="unique")
        t.drop_column("n_images")
        t.create_unique_constraint("uq_dataset_uri", ["uri", "fingerprint"])
    with op.batch_alter_table("model_version") as t:
        t.drop_column("labels_source")
        t.drop_column("labels")
        t.drop_column("registered_at")
    _json_to(sa.JSON(), "json")
    for sql in _views_0002():
        op.execute(sql)


def _views_0002() -> list[str]:
    """The 0002 views, read from that revision's file (its module name starts with a digit)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("0002_history_views.py")
    spec = importlib.util.spec_from_file_location("xich_migration_0002", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.VIEWS.values())
