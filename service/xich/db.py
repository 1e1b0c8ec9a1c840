"""The results database: SQLAlchemy 2 models of audits across model versions (schema managed by Alembic).

One row per fact, keyed so that storing the same audit twice changes nothing:
model → model_version; dataset; clustering → cluster → cluster_member; audit_run (unique per model
version, dataset, config and clustering) → run_class, run_cluster, mosaic, pair_dominance, per_image_score.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, ForeignKeyConstraint, Integer, MetaData, String, Text,
                        UniqueConstraint, create_engine, event)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

RUN_STATUSES = ("queued", "running", "complete", "failed")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s"})


class Model(Base):
    __tablename__ = "model"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)


class ModelVersion(Base):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(255))
    spec: Mapped[str] = mapped_column(String(500))
    weights_uri: Mapped[str | None] = mapped_column(Text)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    registry_metadata: Mapped[dict] = mapped_column(JSON, default=dict)


class Dataset(Base):
    __tablename__ = "dataset"
    __table_args__ = (UniqueConstraint("uri", "fingerprint"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))


class Clustering(Base):
    """A set of clusters per class: made by one run, or frozen so later versions reuse it."""

    __tablename__ = "clustering"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    eval_split: Mapped[str] = mapped_column(String(255))  # image ids are relative to this split
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Cluster(Base):
    __tablename__ = "cluster"
    __table_args__ = (UniqueConstraint("clustering_id", "class_name", "cluster_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clustering.id", ondelete="CASCADE"))
    class_name: Mapped[str] = mapped_column(String(255))
    cluster_index: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(300))
    center: Mapped[list | None] = mapped_column(JSON)


class ClusterMember(Base):
    __tablename__ = "cluster_member"
    cluster_id: Mapped[int] = mapped_column(ForeignKey("cluster.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[str] = mapped_column(String(1000), primary_key=True)


class AuditRun(Base):
    __tablename__ = "audit_run"
    __table_args__ = (UniqueConstraint("model_version_id", "dataset_id", "config_hash", "clustering_key"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    clustering_key: Mapped[str] = mapped_column(String(255))  # "own", or the key of a frozen clustering
    clustering_id: Mapped[int | None] = mapped_column(ForeignKey("clustering.id"))
    config_hash: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JSON)  # what the hash covers: the audit's settings and inputs
    resolved_config: Mapped[dict | None] = mapped_column(JSON)  # the document's "config" (layer, cam, sizes…)
    eval_split: Mapped[str] = mapped_column(String(255))
    train_split: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    mean_spearman: Mapped[float | None] = mapped_column(Float)


class RunRankShare(Base):
    """Mean train share at each dominance rank across the run's classes (Fig. 5)."""

    __tablename__ = "run_rank_share"
    run_id: Mapped[str] = mapped_column(ForeignKey("audit_run.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    mean_train_share: Mapped[float] = mapped_column(Float)


class RunClass(Base):
    __tablename__ = "run_class"
    run_id: Mapped[str] = mapped_column(ForeignKey("audit_run.id", ondelete="CASCADE"), primary_key=True)
    class_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_name: Mapped[str] = mapped_column(String(255))
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clustering.id"))
    excluded_mosaics: Mapped[int] = mapped_column(Integer)
    spearman_score_train_share: Mapped[float | None] = mapped_column(Float)
    notes: Mapped[list] = mapped_column(JSON, default=list)
    per_image_mosaics: Mapped[int | None] = mapped_column(Integer)
    pearson_logit: Mapped[float | None] = mapped_column(Float)
    spearman_logit: Mapped[float | None] = mapped_column(Float)
    pearson_softmax: Mapped[float | None] = mapped_column(Float)
    spearman_softmax: Mapped[float | None] = mapped_column(Float)


class _ClassRow:
    """Columns and key of rows that belong to one class of one run."""

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    class_index: Mapped[int] = mapped_column(Integer, primary_key=True)

    @declared_attr.directive
    def __table_args__(cls) -> tuple:
        return (ForeignKeyConstraint(["run_id", "class_index"], ["run_class.run_id", "run_class.class_index"],
                                     ondelete="CASCADE"),)


class RunCluster(_ClassRow, Base):
    """A cluster's result in one run: dominance score, rank in the hierarchy, training distribution."""

    __tablename__ = "run_cluster"
    cluster_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("cluster.id"))
    eval_size: Mapped[int] = mapped_column(Integer)
    train_count: Mapped[int | None] = mapped_column(Integer)
    train_share: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)


class PairDominance(_ClassRow, Base):
    """D_ij (eq. 8) with its t-test p-values, for every ordered pair i ≠ j and the diagonal."""

    __tablename__ = "pair_dominance"
    cluster_i: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_j: Mapped[int] = mapped_column(Integer, primary_key=True)
    dominance: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    p_value_holm: Mapped[float] = mapped_column(Float)
    n_mosaics: Mapped[int] = mapped_column(Integer)


class Mosaic(_ClassRow, Base):
    """One mosaic's manifest and its dominance d of ``pair_i`` over ``pair_j`` (NULL when excluded)."""

    __tablename__ = "mosaic"
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_i: Mapped[int] = mapped_column(Integer)
    pair_j: Mapped[int] = mapped_column(Integer)
    image_tl: Mapped[str] = mapped_column(String(1000))
    image_tr: Mapped[str] = mapped_column(String(1000))
    image_bl: Mapped[str] = mapped_column(String(1000))
    image_br: Mapped[str] = mapped_column(String(1000))
    cluster_tl: Mapped[int] = mapped_column(Integer)
    cluster_tr: Mapped[int] = mapped_column(Integer)
    cluster_bl: Mapped[int] = mapped_column(Integer)
    cluster_br: Mapped[int] = mapped_column(Integer)
    d: Mapped[float | None] = mapped_column(Float)


class PerImageScore(_ClassRow, Base):
    __tablename__ = "per_image_score"
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str] = mapped_column(String(1000))
    score: Mapped[float] = mapped_column(Float)
    logit: Mapped[float] = mapped_column(Float)
    softmax: Mapped[float] = mapped_column(Float)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created and foreign keys are enforced."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _fk_on(dbapi_conn, _record):
            dbapi_conn.execute("PRAGMA foreign_keys=ON")
    return engine
