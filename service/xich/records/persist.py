"""Storing audits in the results database and reading them back (sinks never recompute).

Data functions take keyword-only arguments and an explicit session. A run is keyed by
(model version, dataset, config hash, clustering): storing the same audit again adds no row, and a
run that stopped part-way is continued class by class (each class is committed on its own).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import (AuditRequest, AuditRun, ClassHeartbeat, Cluster, Clustering, ClusterMember, Dataset, Model, ModelVersion, Mosaic, PairDominance,
                 PerImageScore, RunClass, RunCluster, RunRankShare, utcnow)
from ..errors import XichError
from ..result import (AuditedData, AuditedModel, AuditResult, ClassResult, ClusterResult, ImageScore, LabelList,
                      MosaicResult, PerImageResult)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings_key(settings: dict) -> str:
    """sha256 of the canonical JSON of the settings that change an audit's numbers."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _source(spec: str, weights_sha256: str | None, weights_uri: str | None) -> str:
    """A version's model and weights in words, for a refusal: a missing hash is said as what it means."""
    if weights_sha256:
        return f"{spec} with weights sha256 {weights_sha256}"
    return f"{spec} with weights {weights_uri} (not yet hashed)" if weights_uri else f"{spec} without weights"


def get_or_create_model_version(*, session: Session, name: str, version: str, spec: str, weights_uri: str | None,
                                weights_sha256: str | None, registry_metadata: dict | None = None,
                                labels: list[str] | None = None, labels_source: str | None = None,
                                registered_at: datetime | None = None,
                                version_flag: str | None = "--model-version") -> ModelVersion:
    """The model version ``name``/``version``; an existing one must have the same spec, weights and labels.

    ``version_flag``: the command-line flag that names the version, for the refusal of other weights under a
    recorded version (None: the caller is no command line, e.g. a registry hook).

    ``registered_at``: the registry's creation time of the version, which orders versions in the
    history views (else the time the version was first recorded); set once, never moved by a later registration.

    ``weights_sha256`` None with a ``weights_uri``: weights not hashed yet (the hooks receiver answers before a
    multi-GB checkpoint could be hashed); the first caller that gives the hash for the same spec and URI records it,
    and from then on a different hash is refused as before.
    """
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        model = Model(name=name)
        session.add(model)
        session.flush()
    mv = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version))
    if mv is None:
        mv = ModelVersion(model_id=model.id, version=version, spec=spec, weights_uri=weights_uri,
                          weights_sha256=weights_sha256, registry_metadata=registry_metadata or {},
                          labels=labels, labels_source=labels_source, registered_at=registered_at)
        session.add(mv)
        session.flush()
        return mv
    same_source = (mv.spec, mv.weights_uri) == (spec, weights_uri)
    if same_source and weights_uri and mv.weights_sha256 is None:
        mv.weights_sha256 = weights_sha256  # registered unhashed (a hook): the first worker that reads them hashes
    unhashed = weights_sha256 is None and weights_uri is not None
    if (not same_source) if unhashed else (mv.spec, mv.weights_sha256) != (spec, weights_sha256):
        prefix, hint = ((f"{version_flag} {version}: ", f"give this model a new {version_flag}") if version_flag
                        else ("", "register these weights as a new version of the model"))
        raise XichError(f"{prefix}model {name!r} version {version!r} was recorded with "
                        f"{_source(mv.spec, mv.weights_sha256, mv.weights_uri)}, not "
                        f"{_source(spec, weights_sha256, weights_uri)}; {hint}")
    if (labels is not None and mv.labels is not None and _known(labels_source) and _known(mv.labels_source)
            and list(mv.labels) != list(labels)):
        raise XichError(f"--labels: model {name!r} version {version!r} was recorded with another label list "
                        f"({mv.labels_source}: {', '.join(mv.labels[:6])}…), not ({labels_source}: "
                        f"{', '.join(labels[:6])}…); a version's labels are part of the model: pass the same "
                        f"--labels or give a new --model-version")
    if labels is not None and (mv.labels is None or (_known(labels_source) and not _known(mv.labels_source))):
        mv.labels, mv.labels_source = labels, labels_source
    if registry_metadata is not None and registry_metadata != mv.registry_metadata:
        mv.registry_metadata = registry_metadata
    if registered_at is not None and mv.registered_at is None:  # set once: a later announcement cannot move it
        mv.registered_at = registered_at
    return mv


def _known(labels_source: str | None) -> bool:
    """Whether a label list is the model's own (not the dataset's folders standing in for it)."""
    return labels_source is not None and not labels_source.startswith("dataset")


def request_key(dataset_uri: str, settings: dict) -> str:
    """sha256 of an audit request: the dataset's URI and the settings asked for."""
    return settings_key({"dataset_uri": dataset_uri, "settings": settings})


def register_version(*, session: Session, name: str, version: str, spec: str, weights_uri: str | None,
                     weights_sha256: str | None, dataset_uri: str, settings: dict,
                     registry_metadata: dict | None = None, registered_at: datetime | None = None) -> AuditRequest:
    """Record a model version and the audit it asks for (dataset and settings); both are kept if present. Committed."""
    mv = get_or_create_model_version(session=session, name=name, version=version, spec=spec, weights_uri=weights_uri,
                                     weights_sha256=weights_sha256, registry_metadata=registry_metadata,
                                     registered_at=registered_at, version_flag=None)
    request = _request(session, mv, dataset_uri, settings)
    request.failures, request.last_error, request.next_try_at = 0, None, None  # registered again: tried afresh
    session.commit()
    return request


def attach_request(*, session: Session, model_version: ModelVersion, dataset_uri: str, settings: dict,
                   run_id: str) -> AuditRequest:
    """Link the audit request (recorded now if it was not registered) to the run that serves it. Committed."""
    request = _request(session, model_version, dataset_uri, settings)
    request.run_id = run_id
    session.commit()
    return request


def _request(session: Session, mv: ModelVersion, dataset_uri: str, settings: dict) -> AuditRequest:
    key = request_key(dataset_uri, settings)
    request = session.scalar(select(AuditRequest).where(AuditRequest.model_version_id == mv.id,
                                                        AuditRequest.request_key == key))
    if request is None:
        request = AuditRequest(model_version_id=mv.id, dataset_uri=dataset_uri, settings=settings, request_key=key)
        session.add(request)
        session.flush()
    return request


def request_run(*, session: Session, model_name: str, version: str, dataset_uri: str, settings: dict) -> AuditRun | None:
    """The run serving the audit request of this model version, dataset and settings (None: none yet)."""
    return session.scalar(select(AuditRun)
                          .join(AuditRequest, AuditRequest.run_id == AuditRun.id)
                          .join(ModelVersion, ModelVersion.id == AuditRequest.model_version_id)
                          .join(Model, Model.id == ModelVersion.model_id)
                          .where(Model.name == model_name, ModelVersion.version == version,
                                 AuditRequest.request_key == request_key(dataset_uri, settings)))


def version_metadata(*, session: Session, model_name: str, version: str) -> dict | None:
    """The registry metadata recorded with a model version (None: no such version)."""
    return session.scalar(select(ModelVersion.registry_metadata)
                          .join(Model, Model.id == ModelVersion.model_id)
                          .where(Model.name == model_name, ModelVersion.version == version))


# the nightly flow's back-off: after failure n of a request it waits RETRY_AFTER * 2**(n-1); after MAX_FAILURES
# identical failures in a row it gives the request up (registering it again starts afresh)
RETRY_AFTER = timedelta(hours=12)
MAX_FAILURES = 5


def unaudited_requests(*, session: Session, model_name: str | None = None,
                       stale_after: timedelta = timedelta(hours=12)) -> list[dict]:
    """Registered audits to start now, oldest first, as the parameters of ``audit_model_version``
    (those of ``request_plan`` whose action is ``start``)."""
    return [p["parameters"] for p in request_plan(session=session, model_name=model_name, stale_after=stale_after)
            if p["action"] == "start"]


def request_plan(*, session: Session, model_name: str | None = None, stale_after: timedelta = timedelta(seconds=600),
                 now: datetime | None = None) -> list[dict]:
    """Every registered audit without a complete run, oldest first, with what the nightly flow does with it.

    ``{"parameters": <audit_model_version's>, "action": start | running | backed-off | given-up, "detail": str}``.
    A request whose run is ``running`` is left to the processes running it, unless its newest class heartbeat
    (or its start, before any) is more than ``stale_after`` old (XICH_RUN_STALE_S: a process killed without a word
    leaves its run ``running`` and stops beating); one that failed waits
    until its ``next_try_at``, and after ``MAX_FAILURES`` identical failures is given up.
    """
    now = now or utcnow()
    last_beat = (select(func.max(ClassHeartbeat.beat_at)).where(ClassHeartbeat.run_id == AuditRun.id)
                 .correlate(AuditRun).scalar_subquery())
    query = (select(AuditRequest, ModelVersion, Model.name, AuditRun.status,
                    func.coalesce(last_beat, AuditRun.started_at))
             .join(ModelVersion, ModelVersion.id == AuditRequest.model_version_id)
             .join(Model, Model.id == ModelVersion.model_id)
             .outerjoin(AuditRun, AuditRun.id == AuditRequest.run_id)
             .where(AuditRun.status.is_(None) | (AuditRun.status != "complete")))
    if model_name is not None:
        query = query.where(Model.name == model_name)
    out = []
    cutoff = now - stale_after
    for request, mv, name, status, started in session.execute(query.order_by(AuditRequest.created_at, AuditRequest.id)):
        parameters = {"model": name, "version": mv.version, "model_spec": mv.spec, "weights_uri": mv.weights_uri,
                      "dataset_uri": request.dataset_uri, "settings": dict(request.settings or {})}
        if status == "running" and started is not None and _aware(started) > cutoff:
            action, detail = "running", (f"its run {request.run_id} is running (last heartbeat "
                                         f"{_aware(started):%Y-%m-%d %H:%M:%S} UTC)")
        elif request.failures >= MAX_FAILURES:
            action, detail = "given-up", (f"given up after {request.failures} identical failures: {request.last_error}; "
                                          f"fix the cause, then register the version again")
        elif request.next_try_at is not None and _aware(request.next_try_at) > now:
            action, detail = "backed-off", (f"failed {request.failures} time(s) ({request.last_error}); next try after "
                                            f"{_aware(request.next_try_at):%Y-%m-%d %H:%M} UTC")
        else:
            action, detail = "start", ("no run yet" if status is None else f"its run {request.run_id} is {status}")
        out.append({"parameters": parameters, "action": action, "detail": detail})
    return out


def beat_class(*, session: Session, run_id: str, class_name: str, worker: str, now: datetime | None = None) -> None:
    """Record that ``worker`` is computing ``class_name`` of the run now (the row is kept after the class is stored:
    the run's newest beat is its last sign of life). Committed."""
    row = session.get(ClassHeartbeat, (run_id, class_name))
    if row is None:
        session.add(ClassHeartbeat(run_id=run_id, class_name=class_name, worker=worker, beat_at=now or utcnow()))
    else:
        row.worker, row.beat_at = worker, now or utcnow()
    session.commit()


def class_is_stale(*, session: Session, run_id: str, class_name: str, stale_after: timedelta,
                   now: datetime | None = None) -> bool:
    """Whether the class's last heartbeat is older than ``stale_after`` (False without one: nobody claimed it)."""
    beat = session.scalar(select(ClassHeartbeat.beat_at).where(ClassHeartbeat.run_id == run_id,
                                                               ClassHeartbeat.class_name == class_name))
    session.commit()  # a fresh snapshot at the next ask
    return beat is not None and _aware(beat) < (now or utcnow()) - stale_after


def record_request_failure(*, session: Session, model_name: str, version: str, dataset_uri: str, settings: dict,
                           error: str, now: datetime | None = None) -> AuditRequest | None:
    """Count a failed audit of a registered request (identical errors in a row; another error counts 1) and set
    its next try (``RETRY_AFTER * 2**(failures-1)`` later). None: no such request was registered. Committed."""
    request = _find_request(session, model_name, version, dataset_uri, settings)
    if request is None:
        return None
    request.failures = request.failures + 1 if request.last_error == error else 1
    request.last_error = error
    request.next_try_at = (now or utcnow()) + RETRY_AFTER * 2 ** (request.failures - 1)
    session.commit()
    return request


def _find_request(session: Session, model_name: str, version: str, dataset_uri: str, settings: dict
                  ) -> AuditRequest | None:
    return session.scalar(select(AuditRequest)
                          .join(ModelVersion, ModelVersion.id == AuditRequest.model_version_id)
                          .join(Model, Model.id == ModelVersion.model_id)
                          .where(Model.name == model_name, ModelVersion.version == version,
                                 AuditRequest.request_key == request_key(dataset_uri, settings)))


def _aware(t: datetime) -> datetime:
    """SQLite returns naive datetimes; every time stored here is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def get_or_create_dataset(*, session: Session, uri: str, fingerprint: str, n_images: int | None = None) -> Dataset:
    """The dataset with this content fingerprint (wherever it was first seen), or a new one at ``uri``."""
    ds = session.scalar(select(Dataset).where(Dataset.fingerprint == fingerprint))
    if ds is None:
        ds = Dataset(uri=uri, fingerprint=fingerprint, n_images=n_images)
        session.add(ds)
        session.flush()
    return ds


def begin_run(*, session: Session, run_id: str, model_version: ModelVersion, dataset: Dataset, settings: dict,
              eval_split: str, train_split: str | None, frozen: Clustering | None = None,
              clusters: int | None = None) -> AuditRun:
    """The run for this (model version, dataset, settings, clustering): the stored one if any, else a new one.

    ``settings``: the allow-list of settings that change numbers (``OpenedAudit.settings``).
    ``frozen``: reuse that clustering's clusters; otherwise the run gets a clustering of its own, made
    with ``clusters`` (P) per class — P is part of an own clustering's key, as a frozen one fixes it. Committed.
    """
    digest = settings_key(settings)
    config = settings
    same = select(AuditRun).where(AuditRun.model_version_id == model_version.id, AuditRun.dataset_id == dataset.id,
                                  AuditRun.config_hash == digest)
    # a frozen clustering's own run (the one it was frozen from) is found by the clustering it made
    run = session.scalar(same.where(AuditRun.clustering_id == frozen.id) if frozen
                         else same.where(AuditRun.clustering_key == f"own:P={clusters}"))
    if run is None:
        clustering_key = frozen.key if frozen else f"own:P={clusters}"
        clustering = frozen
        if clustering is None:
            clustering = Clustering(key=f"run:{run_id}", frozen=False, model_version_id=model_version.id,
                                    dataset_id=dataset.id, eval_split=eval_split, clusters=clusters)
            session.add(clustering)
            session.flush()
        run = AuditRun(id=run_id, model_version_id=model_version.id, dataset_id=dataset.id, clustering_key=clustering_key,
                       clustering_id=clustering.id, config_hash=digest, config=config, eval_split=eval_split,
                       train_split=train_split, status="queued", method=settings.get("method", "gradcam"))
        session.add(run)
        session.flush()
    if run.status != "complete":
        run.status, run.started_at, run.error = "running", run.started_at or utcnow(), None
    session.commit()
    return run


def stored_classes(*, session: Session, run: AuditRun) -> set[str]:
    return set(session.scalars(select(RunClass.class_name).where(RunClass.run_id == run.id)))


def store_class(*, session: Session, run: AuditRun, cls: ClassResult, worker: str | None = None,
                clustering_id: int | None = None) -> None:
    """Every number of one class's result, in one transaction; a class already stored is left as it is.

    ``worker`` names the process that computed it (Prefect worker and host:pid). ``clustering_id``: the
    clustering its clusters belong to (default: the run's; a class its reference lacks has its own).
    """
    if session.get(RunClass, (run.id, cls.index)) is not None:
        return
    try:
        _add_class_rows(session, run, cls, worker, clustering_id or run.clustering_id)
        session.commit()
    except IntegrityError:  # stored first by a process that did not take the class lock: same numbers
        session.rollback()


PER_IMAGE_STATS = ("pearson_logit", "spearman_logit", "pearson_softmax", "spearman_softmax")


def store_per_image(*, session: Session, run: AuditRun, class_index: int, per_image: PerImageResult) -> None:
    """Per-image results (Fig. 3) of a stored class, replacing any stored before. Committed."""
    rc = session.get(RunClass, (run.id, class_index))
    session.execute(PerImageScore.__table__.delete().where(PerImageScore.run_id == run.id,
                                                          PerImageScore.class_index == class_index))
    _set_per_image(session, rc, per_image)
    session.commit()


def _set_per_image(session: Session, rc: RunClass, pi: PerImageResult) -> None:
    rc.per_image_n, rc.per_image_mosaics = pi.requested, pi.mosaics
    for k in PER_IMAGE_STATS:
        setattr(rc, k, getattr(pi, k))
    session.add_all(
        PerImageScore(run_id=rc.run_id, class_index=rc.class_index, position=k, image_id=r.image, score=r.score,
                      logit=r.logit, softmax=r.softmax)
        for k, r in enumerate(pi.images))


def _add_class_rows(session: Session, run: AuditRun, cls: ClassResult, worker: str | None, clustering_id: int) -> None:
    rc = RunClass(run_id=run.id, class_index=cls.index, class_name=cls.name, clustering_id=clustering_id,
                  excluded_mosaics=cls.excluded_mosaics, spearman_score_train_share=cls.spearman_score_train_share,
                  notes=list(cls.notes), worker=worker, control=cls.control,
                  control_tau=cls.control["tau"] if cls.control else None,
                  looks_signal=cls.looks["signal"] if cls.looks else None, looks=cls.looks, null_model=cls.null,
                  above_null=cls.null["above_null"] if cls.null else None,
                  **{f"tau_{b}": (cls.agreement or {}).get(b) for b in _baseline_names()})
    session.add(rc)
    session.flush()
    clustering = session.get(Clustering, clustering_id)
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
                               train_share_se=c.train_share_se,
                               score=c.score, rank=c.rank, **{b: (c.baselines or {}).get(b) for b in _baseline_names()},
                               control_score=cls.control["scores"][c.id] if cls.control else None,
                               representation_ratio=c.representation_ratio,
                               flagged_rank=(cls.looks["flagged"].index(c.id)
                                             if cls.looks and c.id in cls.looks["flagged"] else None)))
    P = len(cls.clusters)
    counts = {}
    for m in cls.mosaics:
        if m.d is not None:
            counts[tuple(m.pair)] = counts.get(tuple(m.pair), 0) + 1
    session.add_all(
        PairDominance(run_id=run.id, class_index=cls.index, cluster_i=i, cluster_j=j, dominance=cls.dominance[i][j],
                      ci_low=(cls.dominance_ci[i][j] or [None, None])[0], ci_high=(cls.dominance_ci[i][j] or [None, None])[1],
                      p_value=cls.p_values[i][j], p_value_holm=cls.p_values_holm[i][j],
                      n_mosaics=counts.get((min(i, j), max(i, j)), 0) if i != j else 0,
                      n_sets=cls.distinct_sets[i][j])
        for i in range(P) for j in range(P))
    session.add_all(
        Mosaic(run_id=run.id, class_index=cls.index, position=k, pair_i=m.pair[0], pair_j=m.pair[1],
               image_tl=m.images[0], image_tr=m.images[1], image_bl=m.images[2], image_br=m.images[3],
               cluster_tl=m.clusters[0], cluster_tr=m.clusters[1], cluster_bl=m.clusters[2], cluster_br=m.clusters[3],
               d=m.d)
        for k, m in enumerate(cls.mosaics))
    if cls.per_image is not None:
        _set_per_image(session, rc, cls.per_image)


def finish_run(*, session: Session, run: AuditRun, classes: list[str], resolved_config: dict, train_split: str | None,
               summary: dict, timings: dict) -> None:
    """Mark the run complete with its summary, if every one of ``classes`` is stored; else XichError.

    ``train_split`` is the split actually used (None when the dataset had no such split).
    """
    missing = sorted(set(classes) - stored_classes(session=session, run=run))
    if missing:
        raise XichError(f"run {run.id}: class(es) {', '.join(missing)} are not stored, so the run is not complete; "
                        f"rerun the same audit to finish it")
    session.refresh(run)
    if run.status == "complete":
        return  # another process finished it first
    run.train_split = train_split
    session.execute(RunRankShare.__table__.delete().where(RunRankShare.run_id == run.id))
    session.add_all(RunRankShare(run_id=run.id, rank=r, mean_train_share=v)
                    for r, v in enumerate(summary["train_share_by_rank"]))
    run.mean_spearman, run.resolved_config = summary["mean_spearman"], resolved_config
    run.status, run.finished_at = "complete", utcnow()
    run.timings = {**(run.timings or {}), **timings}
    session.commit()


UNPUBLISHED = "not published: "  # the error of a complete run whose publish failed (mark_published)


def mark_published(*, session: Session, run_id: str, error: str | None) -> None:
    """Whether a complete run's document and report reached the store. ``error`` (the publish failed): a complete
    run becomes ``failed`` with ``not published: ERROR``, so that no run is complete with nothing in the store; the
    next audit with its settings finds every class stored, finishes it again and publishes (the nightly flow retries
    it like any failed run). None (published): a run failed that way alone is complete again (a retried publish).
    Committed."""
    session.rollback()
    run = session.get(AuditRun, run_id)
    if run is not None and error is not None and run.status == "complete":
        run.status, run.error = "failed", UNPUBLISHED + error
    elif run is not None and error is None and run.status == "failed" and (run.error or "").startswith(UNPUBLISHED):
        run.status, run.error = "complete", None
    session.commit()


def fail_run(*, session: Session, run: AuditRun, error: str) -> None:
    """Mark the run failed with ``error`` (unless another process completed it meanwhile)."""
    session.rollback()
    session.refresh(run)
    if run.status != "complete":
        run.status, run.error = "failed", error
    session.commit()


def set_reference(*, session: Session, run_id: str) -> Clustering:
    """Make a complete run's clustering its model's reference on that dataset, split and P (``xich clustering
    use``): later audits with ``clustering = auto`` reuse its clusters. Committed."""
    run = session.get(AuditRun, run_id)
    if run is None or run.status != "complete":
        raise XichError(f"--run {run_id}: no complete audit run with that id (see `xich history` or `xich clustering "
                        f"show --model NAME`)")
    clustering = session.get(Clustering, run.clustering_id)
    clustering.frozen, clustering.reference_at = True, utcnow()
    session.commit()
    return clustering


freeze_clustering = set_reference  # its name before reference clusterings were made by default


def promote_first_reference(*, session: Session, run: AuditRun) -> Clustering | None:
    """A complete run with its own clustering becomes the reference of its model on (dataset, eval split, P)
    when there is none yet; returns that clustering (None: a reference exists). Committed."""
    clustering = session.get(Clustering, run.clustering_id)
    mv = session.get(ModelVersion, run.model_version_id)
    if clustering.frozen or reference_clustering(session=session, model_id=mv.model_id, dataset_id=run.dataset_id,
                                                  eval_split=run.eval_split, clusters=clustering.clusters) is not None:
        return None
    clustering.frozen, clustering.reference_at = True, utcnow()
    session.commit()
    return clustering


def reference_clustering(*, session: Session, model_id: int, dataset_id: int, eval_split: str,
                         clusters: int | None = None, version: str | None = None) -> Clustering | None:
    """The reference clustering of a model on a dataset's split: the one made reference last, with P =
    ``clusters`` if given; of one of its versions if ``version`` is given (any it made reference)."""
    query = (select(Clustering).join(ModelVersion, ModelVersion.id == Clustering.model_version_id)
             .where(Clustering.frozen.is_(True), ModelVersion.model_id == model_id,
                    Clustering.dataset_id == dataset_id, Clustering.eval_split == eval_split))
    if clusters is not None:
        query = query.where(Clustering.clusters == clusters)
    if version is not None:
        query = query.where(ModelVersion.version == version)
    return session.scalars(query.order_by(Clustering.reference_at.desc(), Clustering.id.desc())).first()


def own_clustering(*, session: Session, run: AuditRun, clusters: int) -> Clustering:
    """The clustering of a run on a reference for the classes that reference lacks (key ``run:<id>``). Committed."""
    key = f"run:{run.id}"
    clustering = session.scalar(select(Clustering).where(Clustering.key == key))
    if clustering is None:
        clustering = Clustering(key=key, frozen=False, model_version_id=run.model_version_id,
                                dataset_id=run.dataset_id, eval_split=run.eval_split, clusters=clusters)
        session.add(clustering)
        session.commit()
    return clustering


def references(*, session: Session, model_name: str) -> list[dict]:
    """Every clustering a model has had as reference, newest first, with whether it is the current one."""
    rows = session.execute(
        select(Clustering, ModelVersion.version, Dataset.uri, AuditRun.id)
        .join(ModelVersion, ModelVersion.id == Clustering.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id).join(Dataset, Dataset.id == Clustering.dataset_id)
        .outerjoin(AuditRun, (AuditRun.clustering_id == Clustering.id) & (AuditRun.model_version_id == ModelVersion.id)
                   & AuditRun.clustering_key.like("own:%"))
        .where(Model.name == model_name, Clustering.frozen.is_(True))
        .order_by(Clustering.reference_at.desc(), Clustering.id.desc())).all()
    out, seen, current = [], set(), set()
    for clustering, version, uri, run_id in rows:
        if clustering.id in seen:
            continue
        seen.add(clustering.id)
        key = (clustering.dataset_id, clustering.eval_split, clustering.clusters)
        classes = sorted(set(session.scalars(select(Cluster.class_name).where(Cluster.clustering_id == clustering.id))))
        out.append({"dataset": uri, "eval_split": clustering.eval_split, "clusters": clustering.clusters,
                    "version": version, "run_id": run_id, "since": clustering.reference_at, "classes": classes,
                    "current": key not in current})
        current.add(key)
    return out


def frozen_membership(*, session: Session, clustering: Clustering) -> dict[str, dict[str, int]]:
    """class name → (evaluation image id → cluster index) of a clustering."""
    out: dict[str, dict[str, int]] = {}
    rows = session.execute(select(Cluster.class_name, Cluster.cluster_index, ClusterMember.image_id)
                           .join(ClusterMember, ClusterMember.cluster_id == Cluster.id)
                           .where(Cluster.clustering_id == clustering.id))
    for class_name, index, image_id in rows:
        out.setdefault(class_name, {})[image_id] = index
    return out


def load_classes(*, session: Session, run_id: str, names: list[str] | None = None) -> list[ClassResult]:
    """The stored classes of a run (or those of ``names``) as result objects, in class order."""
    out = []
    which = select(RunClass).where(RunClass.run_id == run_id)
    if names is not None:
        which = which.where(RunClass.class_name.in_(names))
    for rc in session.scalars(which.order_by(RunClass.class_index)):
        rows = session.scalars(select(RunCluster).where(RunCluster.run_id == run_id, RunCluster.class_index == rc.class_index)
                               .order_by(RunCluster.cluster_index)).all()
        clusters = [ClusterResult(id=r.cluster_index, eval_size=r.eval_size, train_count=r.train_count,
                                  train_share=r.train_share, train_share_se=r.train_share_se, score=r.score, rank=r.rank,
                                  members=sorted(session.scalars(select(ClusterMember.image_id)
                                                                 .where(ClusterMember.cluster_id == r.cluster_id))),
                                  baselines=_baselines(r), representation_ratio=r.representation_ratio)
                    for r in rows]
        P = len(clusters)
        D = [[0.5] * P for _ in range(P)]
        ci = [[None] * P for _ in range(P)]
        p = [[1.0] * P for _ in range(P)]
        q = [[1.0] * P for _ in range(P)]
        n_sets = [[0] * P for _ in range(P)]
        for pd in session.scalars(select(PairDominance).where(PairDominance.run_id == run_id,
                                                               PairDominance.class_index == rc.class_index)):
            i, j = pd.cluster_i, pd.cluster_j
            D[i][j], p[i][j], q[i][j], n_sets[i][j] = pd.dominance, pd.p_value, pd.p_value_holm, pd.n_sets
            ci[i][j] = None if pd.ci_low is None else [pd.ci_low, pd.ci_high]
        mosaics = [MosaicResult(pair=[m.pair_i, m.pair_j], images=[m.image_tl, m.image_tr, m.image_bl, m.image_br],
                                clusters=[m.cluster_tl, m.cluster_tr, m.cluster_bl, m.cluster_br], d=m.d)
                   for m in session.scalars(select(Mosaic).where(Mosaic.run_id == run_id,
                                                                 Mosaic.class_index == rc.class_index)
                                            .order_by(Mosaic.position))]
        per_image = None
        if rc.per_image_mosaics is not None:
            images = [ImageScore(image=s.image_id, score=s.score, logit=s.logit, softmax=s.softmax)
                      for s in session.scalars(select(PerImageScore).where(PerImageScore.run_id == run_id,
                                                                           PerImageScore.class_index == rc.class_index)
                                               .order_by(PerImageScore.position))]
            per_image = PerImageResult(requested=rc.per_image_n, images=images, mosaics=rc.per_image_mosaics,
                                       **{k: getattr(rc, k) for k in PER_IMAGE_STATS})
        out.append(ClassResult(
            index=rc.class_index, name=rc.class_name, clusters=clusters, dominance=D, dominance_ci=ci, p_values=p,
            p_values_holm=q, distinct_sets=n_sets,
            hierarchy=[c.id for c in sorted((c for c in clusters if c.rank is not None), key=lambda c: c.rank)],
            spearman_score_train_share=rc.spearman_score_train_share, excluded_mosaics=rc.excluded_mosaics,
            mosaics=mosaics, notes=list(rc.notes), per_image=per_image,
            agreement={b: getattr(rc, f"tau_{b}") for b in _baseline_names()} if any(c.baselines for c in clusters) else None,
            control=dict(rc.control) if rc.control is not None else None,
            looks=dict(rc.looks) if rc.looks is not None else None,
            null=dict(rc.null_model) if rc.null_model is not None else None))
    return out


def _baselines(row: RunCluster) -> dict[str, float | None] | None:
    """A stored cluster's baselines; None for a run stored before they were computed (every one NULL)."""
    values = {b: getattr(row, b) for b in _baseline_names()}
    return values if any(v is not None for v in values.values()) else None


def load_audit(*, session: Session, run_id: str) -> AuditResult:
    """A complete stored run as the same AuditResult the audit produced (its summary derived from the classes
    by the same function, so the stored ``run_rank_share`` rows and this document agree)."""
    run = session.get(AuditRun, run_id)
    mv = session.get(ModelVersion, run.model_version_id)
    ds = session.get(Dataset, run.dataset_id)
    classes = load_classes(session=session, run_id=run_id)
    return AuditResult.assemble(
        run.id, model=AuditedModel(mv.spec, mv.weights_uri), labels=LabelList(mv.labels_source, list(mv.labels or [])),
        dataset=AuditedData(ds.uri, run.eval_split, run.train_split), config=dict(run.resolved_config or {}),
        classes=classes, timings={k: v for k, v in (run.timings or {}).items() if isinstance(v, (int, float))})


def _baseline_names() -> tuple[str, ...]:
    """``method.baselines.BASELINES``, imported when rows are written or read (it loads numpy and scipy, which
    registration, using this module, does not need)."""
    from ..method.baselines import BASELINES

    return BASELINES
