"""The results database: SQLAlchemy 2 models of audits across model versions (schema managed by Alembic).

One row per fact, keyed so that storing the same audit twice changes nothing:
model → model_version; dataset; clustering → cluster → cluster_member; audit_run (unique per model
version, dataset, config and clustering) → run_class, run_cluster, mosaic, pair_dominance, per_image_score;
audit_request: a registered version's audit to run (dataset and settings), linked to the run that serves it;
hook_delivery: each registry hook delivery acted on, so that a repeated one acts nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, CheckConstraint, DateTime, Float, ForeignKey, ForeignKeyConstraint, Index, Integer,
                        MetaData, String, Text, UniqueConstraint, create_engine, event)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, declared_attr, mapped_column

RUN_STATUSES = ("queued", "running", "complete", "failed")
# what a registry hook did with a delivery (xich.hooks): "processing" while it acts, then one of the others
DELIVERY_OUTCOMES = ("processing", "started", "registered", "audited", "ignored", "unmapped", "refused")

# JSONB on PostgreSQL (indexable, compared by value), JSON text elsewhere
JSONDoc = JSON().with_variant(JSONB(), "postgresql")


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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)  # first recorded
    registered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # the registry's creation time
    registry_metadata: Mapped[dict] = mapped_column(JSONDoc, default=dict)
    labels: Mapped[list | None] = mapped_column(JSONDoc)  # class names in output order
    labels_source: Mapped[str | None] = mapped_column(String(255))


class Dataset(Base):
    """A dataset is its images' content: the same images in another folder or bucket are the same dataset."""

    __tablename__ = "dataset"
    id: Mapped[int] = mapped_column(primary_key=True)
    uri: Mapped[str] = mapped_column(Text)  # where it was first seen
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the manifest (split, image id, sha256)
    n_images: Mapped[int | None] = mapped_column(Integer)


class Clustering(Base):
    """A set of clusters per class: made by one run, or frozen so later versions reuse it."""

    __tablename__ = "clustering"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"), index=True)
    eval_split: Mapped[str] = mapped_column(String(255))  # image ids are relative to this split
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    clusters: Mapped[int | None] = mapped_column(Integer)  # P per class
    # when it became its model's reference on (dataset, eval split, P): the newest such one is the reference
    reference_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Cluster(Base):
    __tablename__ = "cluster"
    __table_args__ = (UniqueConstraint("clustering_id", "class_name", "cluster_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clustering.id", ondelete="CASCADE"))
    class_name: Mapped[str] = mapped_column(String(255))
    cluster_index: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(300))
    center: Mapped[list | None] = mapped_column(JSONDoc)


class ClusterMember(Base):
    __tablename__ = "cluster_member"
    cluster_id: Mapped[int] = mapped_column(ForeignKey("cluster.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[str] = mapped_column(String(1000), primary_key=True)


class AuditRun(Base):
    """One audit: keyed by model version, dataset, clustering and the settings that change numbers."""

    __tablename__ = "audit_run"
    __table_args__ = (UniqueConstraint("model_version_id", "dataset_id", "config_hash", "clustering_key"),
                      CheckConstraint("status IN ('queued', 'running', 'complete', 'failed')", name="status"))
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"), index=True)
    clustering_key: Mapped[str] = mapped_column(String(255))  # "own", or the key of a frozen clustering
    clustering_id: Mapped[int | None] = mapped_column(ForeignKey("clustering.id"), index=True)
    config_hash: Mapped[str] = mapped_column(String(64))  # the settings key: sha256 of ``config``
    config: Mapped[dict] = mapped_column(JSONDoc)  # the settings that change numbers (AuditConfig's allow-list)
    resolved_config: Mapped[dict | None] = mapped_column(JSONDoc)  # the document's "config" (layer, cam, sizes…)
    eval_split: Mapped[str] = mapped_column(String(255))
    train_split: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    timings: Mapped[dict] = mapped_column(JSONDoc, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    mean_spearman: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str | None] = mapped_column(String(32))  # --method (NULL: a run from before it, Grad-CAM)


class AuditRequest(Base):
    """A registered version's audit to run: its dataset and settings (``xich register``, the registry hooks).

    ``audit_new_versions`` starts every request whose run is missing or not complete; the run that
    serves a request is linked when it begins.
    """

    __tablename__ = "audit_request"
    __table_args__ = (UniqueConstraint("model_version_id", "request_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id", ondelete="CASCADE"), index=True)
    dataset_uri: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict] = mapped_column(JSONDoc, default=dict)  # AuditConfig fields asked for, and clustering
    request_key: Mapped[str] = mapped_column(String(64))  # sha256 of (dataset_uri, settings)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("audit_run.id", ondelete="SET NULL"), index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # consecutive, same error
    last_error: Mapped[str | None] = mapped_column(Text)
    next_try_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # backed off until then


class ClassHeartbeat(Base):
    """A class a process is computing: claimed with the class's lock, ``beat_at`` refreshed while it works, deleted
    when it is stored. A run whose newest beat is older than XICH_RUN_STALE_S is taken over (persist.request_plan)."""

    __tablename__ = "class_heartbeat"
    run_id: Mapped[str] = mapped_column(ForeignKey("audit_run.id", ondelete="CASCADE"), primary_key=True)
    class_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    worker: Mapped[str] = mapped_column(String(255))
    beat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HookDelivery(Base):
    """A registry hook's delivery that was authentic, fresh and new, and what was done with it.

    Remembered so that a delivery sent again (MLflow retries; an attacker replays) acts nothing: the
    pair (source, delivery id) is unique. Refused requests (bad signature, stale, malformed) leave no row.
    """

    __tablename__ = "hook_delivery"
    __table_args__ = (UniqueConstraint("source", "delivery_id"),
                      CheckConstraint("outcome IN ('processing', 'started', 'registered', 'audited', 'ignored', "
                                      "'unmapped', 'refused')", name="outcome"))
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(32))  # "mlflow" or "generic"
    delivery_id: Mapped[str] = mapped_column(String(255))
    event: Mapped[str] = mapped_column(String(255))  # e.g. model_version.created
    model: Mapped[str | None] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16), default="processing")
    reason: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))  # the audit's Prefect flow run, when one was started
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


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
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clustering.id"), index=True)
    excluded_mosaics: Mapped[int] = mapped_column(Integer)
    spearman_score_train_share: Mapped[float | None] = mapped_column(Float)
    notes: Mapped[list] = mapped_column(JSONDoc, default=list)
    worker: Mapped[str | None] = mapped_column(String(255))  # host:pid of the process that computed the class
    per_image_n: Mapped[int | None] = mapped_column(Integer)  # --per-image N of the stored per-image results
    per_image_mosaics: Mapped[int | None] = mapped_column(Integer)
    pearson_logit: Mapped[float | None] = mapped_column(Float)
    spearman_logit: Mapped[float | None] = mapped_column(Float)
    pearson_softmax: Mapped[float | None] = mapped_column(Float)
    spearman_softmax: Mapped[float | None] = mapped_column(Float)
    # Kendall's tau of the clusters' scores against each baseline (method.baselines), and the randomized control
    tau_mean_logit: Mapped[float | None] = mapped_column(Float)
    tau_mean_softmax: Mapped[float | None] = mapped_column(Float)
    tau_accuracy: Mapped[float | None] = mapped_column(Float)
    tau_mean_margin: Mapped[float | None] = mapped_column(Float)
    control_tau: Mapped[float | None] = mapped_column(Float)
    control: Mapped[dict | None] = mapped_column(JSONDoc)  # ClassResult.control; NULL: --no-control
    looks_signal: Mapped[str | None] = mapped_column(String(32))  # ClassResult.looks: its signal and the section
    looks: Mapped[dict | None] = mapped_column(JSONDoc)
    null_model: Mapped[dict | None] = mapped_column(JSONDoc)  # ClassResult.null; NULL: --no-null (or before 0009)
    above_null: Mapped[bool | None] = mapped_column(Boolean)


class _ClassRow:
    """Columns and key of rows that belong to one class of one run."""

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    class_index: Mapped[int] = mapped_column(Integer, primary_key=True)

    @declared_attr.directive
    def __table_args__(cls) -> tuple:
        # the primary keys lead with the row's own position, so reaching a run's rows needs this index
        return (ForeignKeyConstraint(["run_id", "class_index"], ["run_class.run_id", "run_class.class_index"],
                                     ondelete="CASCADE"),
                Index(f"ix_{cls.__tablename__}_run_id_class_index", "run_id", "class_index"))


class RunCluster(_ClassRow, Base):
    """A cluster's result in one run: dominance score, rank in the hierarchy, training distribution."""

    __tablename__ = "run_cluster"
    cluster_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("cluster.id"), index=True)
    eval_size: Mapped[int] = mapped_column(Integer)
    train_count: Mapped[int | None] = mapped_column(Integer)
    train_share: Mapped[float | None] = mapped_column(Float)
    train_share_se: Mapped[float | None] = mapped_column(Float)  # under --train-per-class; NULL before 0008
    score: Mapped[float | None] = mapped_column(Float)  # NULL: no evidence against any other cluster
    rank: Mapped[int | None] = mapped_column(Integer)
    mean_logit: Mapped[float | None] = mapped_column(Float)  # baselines (method.baselines); NULL before 0007
    mean_softmax: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    mean_margin: Mapped[float | None] = mapped_column(Float)
    control_score: Mapped[float | None] = mapped_column(Float)  # the score under the randomized control
    representation_ratio: Mapped[float | None] = mapped_column(Float)  # train share / eval share; NULL before 0009
    flagged_rank: Mapped[int | None] = mapped_column(Integer)  # place among the class's flagged looks; NULL: not flagged


class PairDominance(_ClassRow, Base):
    """D_ij (eq. 8) with its 95 % CI and t-test p-values, for every ordered pair i ≠ j and the diagonal.

    ``dominance`` is NULL for a pair without evidence (no mosaic with a non-zero map); the CI is NULL
    where fewer than two distinct image sets (or no spread) leave it undefined.
    """

    __tablename__ = "pair_dominance"
    cluster_i: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_j: Mapped[int] = mapped_column(Integer, primary_key=True)
    dominance: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    p_value_holm: Mapped[float] = mapped_column(Float)
    n_mosaics: Mapped[int] = mapped_column(Integer)  # mosaics with a defined d
    n_sets: Mapped[int] = mapped_column(Integer, default=0)  # distinct image sets among them


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
    score: Mapped[float | None] = mapped_column(Float)
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


@contextmanager
def session_for(url: str) -> Iterator[Session]:
    """A session on an engine of its own for ``url``, disposed afterwards: for tests and tools that read a database
    apart from any context (the service's own code uses ``run.context.Context.session``)."""
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()
