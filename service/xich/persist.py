"""Storing audits in the results database and reading them back (sinks never recompute).

Data functions take keyword-only arguments and an explicit session. A run is keyed by
(model version, dataset, config hash, clustering): storing the same audit again adds no row, and a
run that stopped part-way is continued class by class (each class is committed on its own).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import (AuditRun, Cluster, Clustering, ClusterMember, Dataset, Model, ModelVersion, Mosaic, PairDominance,
                 PerImageScore, RunClass, RunCluster, RunRankShare, utcnow)
from .errors import XichError
from .result import AuditResult, ClassResult, ClusterResult, MosaicResult


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint(path: str | Path) -> str:
    """Content fingerprint of a dataset: the file's bytes, or every file's relative path and bytes under a folder."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of the settings that decide an audit's numbers."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def get_or_create_model_version(*, session: Session, name: str, version: str, spec: str, weights_uri: str | None,
                                weights_sha256: str | None, registry_metadata: dict | None = None) -> ModelVersion:
    """The model version ``name``/``version``; an existing one must have the same spec and weights."""
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        model = Model(name=name)
        session.add(model)
        session.flush()
    mv = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version))
    if mv is None:
        mv = ModelVersion(model_id=model.id, version=version, spec=spec, weights_uri=weights_uri,
                          weights_sha256=weights_sha256, registry_metadata=registry_metadata or {})
        session.add(mv)
        session.flush()
    elif (mv.spec, mv.weights_sha256) != (spec, weights_sha256):
        raise XichError(f"--model-version {version}: model {name!r} version {version!r} was recorded with "
                        f"{mv.spec} and weights sha256 {mv.weights_sha256 or 'none'}, not {spec} and "
                        f"{weights_sha256 or 'none'}; give this model a new --model-version")
    elif registry_metadata is not None and registry_metadata != mv.registry_metadata:
        mv.registry_metadata = registry_metadata
    return mv


def get_or_create_dataset(*, session: Session, uri: str, fingerprint: str) -> Dataset:
    ds = session.scalar(select(Dataset).where(Dataset.uri == uri, Dataset.fingerprint == fingerprint))
    if ds is None:
        ds = Dataset(uri=uri, fingerprint=fingerprint)
        session.add(ds)
        session.flush()
    return ds


def begin_run(*, session: Session, run_id: str, model_version: ModelVersion, dataset: Dataset, config: dict,
              eval_split: str, train_split: str | None, frozen: Clustering | None = None) -> AuditRun:
    """The run for this (model version, dataset, config, clustering): the stored one if any, else a new one.

    ``frozen``: reuse that clustering's clusters; otherwise the run gets a clustering of its own. Committed.
    """
    digest = config_hash(config)
    same = select(AuditRun).where(AuditRun.model_version_id == model_version.id, AuditRun.dataset_id == dataset.id,
                                  AuditRun.config_hash == digest)
    # a frozen clustering's own run (the one it was frozen from) is found by the clustering it made
    run = session.scalar(same.where(AuditRun.clustering_id == frozen.id) if frozen
                         else same.where(AuditRun.clustering_key == "own"))
    if run is None:
        clustering_key = frozen.key if frozen else "own"
        clustering = frozen
        if clustering is None:
            clustering = Clustering(key=f"run:{run_id}", frozen=False, model_version_id=model_version.id,
                                    dataset_id=dataset.id, eval_split=eval_split)
            session.add(clustering)
            session.flush()
        run = AuditRun(id=run_id, model_version_id=model_version.id, dataset_id=dataset.id, clustering_key=clustering_key,
                       clustering_id=clustering.id, config_hash=digest, config=config, eval_split=eval_split,
                       train_split=train_split, status="queued")
        session.add(run)
        session.flush()
    if run.status != "complete":
        run.status, run.started_at, run.error = "running", run.started_at or utcnow(), None
    session.commit()
    return run


def stored_classes(*, session: Session, run: AuditRun) -> set[str]:
    return set(session.scalars(select(RunClass.class_name).where(RunClass.run_id == run.id)))


def store_class(*, session: Session, run: AuditRun, cls: ClassResult) -> None:
    """Every number of one class's result, in one transaction; a class already stored is left as it is."""
    if session.get(RunClass, (run.id, cls.index)) is not None:
        return
    try:
        _add_class_rows(session, run, cls)
        session.commit()
    except IntegrityError:  # another process resuming the same run stored this class first: same numbers
        session.rollback()


def _add_class_rows(session: Session, run: AuditRun, cls: ClassResult) -> None:
    pi = cls.per_image or {}
    session.add(RunClass(run_id=run.id, class_index=cls.index, class_name=cls.name, clustering_id=run.clustering_id,
                         excluded_mosaics=cls.excluded_mosaics, spearman_score_train_share=cls.spearman_score_train_share,
                         notes=list(cls.notes), per_image_mosaics=pi.get("mosaics"),
                         **{k: pi.get(k) for k in ("pearson_logit", "spearman_logit", "pearson_softmax", "spearman_softmax")}))
    session.flush()
    clustering = session.get(Clustering, run.clustering_id)
    for c in cls.clusters:
        cluster = session.scalar(select(Cluster).where(Cluster.clustering_id == clustering.id,
                                                       Cluster.class_name == cls.name, Cluster.cluster_index == c.id))
        if cluster is None:  # a frozen clustering already holds its clusters and their members
            cluster = Cluster(clustering_id=clustering.id, class_name=cls.name, cluster_index=c.id,
                              key=f"{clustering.key}/{cls.name}/{c.id}")
            session.add(cluster)
            session.flush()
            session.add_all(ClusterMember(cluster_id=cluster.id, image_id=m) for m in c.members)
        session.add(RunCluster(run_id=run.id, class_index=cls.index, cluster_index=c.id, cluster_id=cluster.id,
                               eval_size=c.eval_size, train_count=c.train_count, train_share=c.train_share,
                               score=c.score, rank=c.rank))
    P = len(cls.clusters)
    counts = {}
    for m in cls.mosaics:
        if m.d is not None:
            counts[tuple(m.pair)] = counts.get(tuple(m.pair), 0) + 1
    session.add_all(
        PairDominance(run_id=run.id, class_index=cls.index, cluster_i=i, cluster_j=j, dominance=cls.dominance[i][j],
                      p_value=cls.p_values[i][j], p_value_holm=cls.p_values_holm[i][j],
                      n_mosaics=counts.get((min(i, j), max(i, j)), 0) if i != j else 0)
        for i in range(P) for j in range(P))
    session.add_all(
        Mosaic(run_id=run.id, class_index=cls.index, position=k, pair_i=m.pair[0], pair_j=m.pair[1],
               image_tl=m.images[0], image_tr=m.images[1], image_bl=m.images[2], image_br=m.images[3],
               cluster_tl=m.clusters[0], cluster_tr=m.clusters[1], cluster_bl=m.clusters[2], cluster_br=m.clusters[3],
               d=m.d)
        for k, m in enumerate(cls.mosaics))
    session.add_all(
        PerImageScore(run_id=run.id, class_index=cls.index, position=k, image_id=r["image"], score=r["score"],
                      logit=r["logit"], softmax=r["softmax"])
        for k, r in enumerate(pi.get("images", [])))


def finish_run(*, session: Session, run: AuditRun, resolved_config: dict, train_split: str | None, summary: dict,
               timings: dict) -> None:
    """Mark the run complete with its summary; only called once every class is stored.

    ``train_split`` is the split actually used (None when the dataset had no such split).
    """
    run.train_split = train_split
    session.execute(RunRankShare.__table__.delete().where(RunRankShare.run_id == run.id))
    session.add_all(RunRankShare(run_id=run.id, rank=r, mean_train_share=v)
                    for r, v in enumerate(summary["train_share_by_rank"]))
    run.mean_spearman, run.resolved_config = summary["mean_spearman"], resolved_config
    run.status, run.finished_at = "complete", utcnow()
    run.timings = {**(run.timings or {}), **timings}
    session.commit()


def fail_run(*, session: Session, run: AuditRun, error: str) -> None:
    session.rollback()
    run.status, run.error = "failed", error
    session.commit()


def freeze_clustering(*, session: Session, run_id: str) -> Clustering:
    """Freeze a complete run's clustering so that later versions' audits reuse its clusters."""
    run = session.get(AuditRun, run_id)
    if run is None or run.status != "complete":
        raise XichError(f"--run {run_id}: no complete audit run with that id (see `xich history`)")
    clustering = session.get(Clustering, run.clustering_id)
    clustering.frozen = True
    session.commit()
    return clustering


def frozen_clustering(*, session: Session, model_name: str, dataset: Dataset, eval_split: str,
                      version: str | None = None) -> Clustering | None:
    """The newest frozen clustering of a model on a dataset's split (of one of its versions, if given)."""
    query = (select(Clustering).join(ModelVersion, ModelVersion.id == Clustering.model_version_id)
             .join(Model, Model.id == ModelVersion.model_id)
             .where(Clustering.frozen.is_(True), Model.name == model_name, Clustering.dataset_id == dataset.id,
                    Clustering.eval_split == eval_split))
    if version is not None:
        query = query.where(ModelVersion.version == version)
    return session.scalars(query.order_by(Clustering.created_at.desc(), Clustering.id.desc())).first()


def frozen_membership(*, session: Session, clustering: Clustering) -> dict[str, dict[str, int]]:
    """class name → (evaluation image id → cluster index) of a clustering."""
    out: dict[str, dict[str, int]] = {}
    rows = session.execute(select(Cluster.class_name, Cluster.cluster_index, ClusterMember.image_id)
                           .join(ClusterMember, ClusterMember.cluster_id == Cluster.id)
                           .where(Cluster.clustering_id == clustering.id))
    for class_name, index, image_id in rows:
        out.setdefault(class_name, {})[image_id] = index
    return out


def load_classes(*, session: Session, run_id: str) -> list[ClassResult]:
    """The stored classes of a run as result objects, in class order."""
    out = []
    for rc in session.scalars(select(RunClass).where(RunClass.run_id == run_id).order_by(RunClass.class_index)):
        rows = session.scalars(select(RunCluster).where(RunCluster.run_id == run_id, RunCluster.class_index == rc.class_index)
                               .order_by(RunCluster.cluster_index)).all()
        clusters = [ClusterResult(id=r.cluster_index, eval_size=r.eval_size, train_count=r.train_count,
                                  train_share=r.train_share, score=r.score, rank=r.rank,
                                  members=sorted(session.scalars(select(ClusterMember.image_id)
                                                                 .where(ClusterMember.cluster_id == r.cluster_id))))
                    for r in rows]
        P = len(clusters)
        D = [[0.5] * P for _ in range(P)]
        p = [[1.0] * P for _ in range(P)]
        q = [[1.0] * P for _ in range(P)]
        for pd in session.scalars(select(PairDominance).where(PairDominance.run_id == run_id,
                                                               PairDominance.class_index == rc.class_index)):
            D[pd.cluster_i][pd.cluster_j], p[pd.cluster_i][pd.cluster_j] = pd.dominance, pd.p_value
            q[pd.cluster_i][pd.cluster_j] = pd.p_value_holm
        mosaics = [MosaicResult(pair=[m.pair_i, m.pair_j], images=[m.image_tl, m.image_tr, m.image_bl, m.image_br],
                                clusters=[m.cluster_tl, m.cluster_tr, m.cluster_bl, m.cluster_br], d=m.d)
                   for m in session.scalars(select(Mosaic).where(Mosaic.run_id == run_id,
                                                                 Mosaic.class_index == rc.class_index)
                                            .order_by(Mosaic.position))]
        per_image = None
        if rc.per_image_mosaics is not None:
            images = [{"image": s.image_id, "score": s.score, "logit": s.logit, "softmax": s.softmax}
                      for s in session.scalars(select(PerImageScore).where(PerImageScore.run_id == run_id,
                                                                           PerImageScore.class_index == rc.class_index)
                                               .order_by(PerImageScore.position))]
            per_image = {"images": images, "mosaics": rc.per_image_mosaics,
                         **{k: getattr(rc, k) for k in ("pearson_logit", "spearman_logit", "pearson_softmax",
                                                        "spearman_softmax")}}
        out.append(ClassResult(
            index=rc.class_index, name=rc.class_name, clusters=clusters, dominance=D, p_values=p, p_values_holm=q,
            hierarchy=[c.id for c in sorted(clusters, key=lambda c: c.rank)],
            spearman_score_train_share=rc.spearman_score_train_share, excluded_mosaics=rc.excluded_mosaics,
            mosaics=mosaics, notes=list(rc.notes), per_image=per_image))
    return out


def load_audit(*, session: Session, run_id: str) -> AuditResult:
    """A complete stored run as the same AuditResult the audit produced."""
    run = session.get(AuditRun, run_id)
    mv = session.get(ModelVersion, run.model_version_id)
    ds = session.get(Dataset, run.dataset_id)
    shares = session.scalars(select(RunRankShare.mean_train_share).where(RunRankShare.run_id == run_id)
                             .order_by(RunRankShare.rank)).all()
    return AuditResult(
        run_id=run.id, model={"spec": mv.spec, "weights": mv.weights_uri},
        dataset={"uri": ds.uri, "eval_split": run.eval_split, "train_split": run.train_split},
        config=dict(run.resolved_config or {}), classes=load_classes(session=session, run_id=run_id),
        summary={"train_share_by_rank": list(shares), "mean_spearman": run.mean_spearman})


