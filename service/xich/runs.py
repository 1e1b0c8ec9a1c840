"""An audit recorded in the results database: begin (or resume) the run, commit each class, finish.

A rerun of the same (model version, dataset, config) finds the stored run: complete → nothing is
recomputed; failed or killed → only the classes not yet stored are audited.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .audit import AuditConfig, OpenedAudit, assemble_result, audit_class, check_config, explainer, open_audit, \
    per_image_result
from .datasets import content_fingerprint
from .db import AuditRun, Clustering, Model, ModelVersion, RunClass, make_engine
from .errors import XichError
from .locks import named_lock
from .migrate import upgrade
from .persist import (begin_run, fail_run, file_sha256, finish_run, frozen_clustering, frozen_membership,
                      get_or_create_dataset, get_or_create_model_version, load_audit, load_classes, stored_classes,
                      store_class, store_per_image)
from .result import AuditResult, ClassResult, Explainer

log = logging.getLogger(__name__)


def worker_name() -> str:
    """host:pid of this process, stored with each class it computes."""
    return f"{socket.gethostname()}:{os.getpid()}"


def recorded_audit(config: AuditConfig, *, database_url: str, model_name: str | None = None,
                   model_version: str | None = None, registry_metadata: dict | None = None,
                   registered_at: datetime | None = None, clustering: str = "auto",
                   progress: Callable[[str, int], None] | None = None,
                   on_class: Callable[[ClassResult, Explainer], None] | None = None,
                   cache_dir: str | Path | None = None) -> AuditResult:
    """Run (or finish, or just read back) the audit of ``config``, stored in ``database_url``.

    ``clustering``: ``own`` (cluster this run), ``reference:<model-version>`` (that version's frozen
    clustering), or ``auto`` (the model's newest frozen clustering on this dataset, else own).
    ``registered_at``: the registry's creation time of the version (else read from ``registry_metadata``'s
    ``created_at`` / ``creation_timestamp``, else the time it is first recorded).

    Other processes may audit the same run at once: each class is computed by whichever process
    takes its lock first, and the others wait for it rather than compute it again.
    """
    check_config(config)
    weights_sha = file_sha256(config.weights) if config.weights and Path(config.weights).is_file() else None
    if config.weights and weights_sha is None:
        raise XichError(f"--weights {config.weights}: no such file")
    upgrade(database_url)  # the database is checked (and migrated) before the first forward pass
    engine = make_engine(database_url)
    try:
        opened = open_audit(config)
        t0 = time.perf_counter()
        splits = [opened.eval_split] + ([opened.train_split] if opened.train_split is not None else [])
        fingerprint, n_images = content_fingerprint(splits, Path(cache_dir) if cache_dir else None)
        fingerprint_s = time.perf_counter() - t0
        with Session(engine, expire_on_commit=False) as session:
            with named_lock(engine, "xich:register"):  # one process at a time creates versions, datasets, runs
                mv = get_or_create_model_version(
                    session=session, name=model_name or config.model,
                    version=model_version or (weights_sha or "none")[:12], spec=config.model,
                    weights_uri=config.weights_uri or config.weights, weights_sha256=weights_sha,
                    registry_metadata=registry_metadata, labels=list(opened.labels.names),
                    labels_source=opened.labels.source,
                    registered_at=registered_at or registry_time(registry_metadata))
                ds = get_or_create_dataset(session=session, uri=config.data_uri or config.data,
                                           fingerprint=fingerprint, n_images=n_images)
                frozen = _frozen(session, clustering, mv, ds, config.eval_split)
                run = begin_run(session=session, run_id=os.urandom(16).hex(), model_version=mv, dataset=ds,
                                settings=opened.settings(), eval_split=config.eval_split,
                                train_split=config.train_split, frozen=frozen, clusters=config.clusters)
            notes = [_clustering_note(clustering, frozen, session.get(Model, mv.model_id).name)]
            already = stored_classes(session=session, run=run)
            if run.status == "complete" and not _missing_per_image(session, run, opened):
                log.info("run %s is complete; reading it back", run.id)
                return _with_notes(load_audit(session=session, run_id=run.id), notes)
            t1 = time.perf_counter()
            try:
                membership = frozen_membership(session=session, clustering=frozen) if frozen else None
                missing = [c for c in opened.classes if membership is not None and c not in membership]
                if missing:
                    raise XichError(f"class(es) {', '.join(missing)} are not in the frozen clustering; audit its "
                                    f"classes (--classes {','.join(sorted(membership))}) or use --clustering own")
                computed = _audit_classes(engine, session, run, opened, membership, progress, on_class)
                _join_per_image(engine, session, run, opened)
            except BaseException as exc:
                fail_run(session=session, run=run, error=f"{type(exc).__name__}: {exc}")
                raise
            classes = load_classes(session=session, run_id=run.id)
            result = assemble_result(opened, classes, run.id, notes=notes)
            with named_lock(engine, f"xich:run:{run.id}:finish"):  # processes finishing together: one writes
                finish_run(session=session, run=run, classes=opened.classes, resolved_config=result.config,
                           train_split=result.dataset["train_split"], summary=result.summary,
                           timings={"fingerprint_s": fingerprint_s, "audit_s": time.perf_counter() - t1,
                                    "resumed_classes": sorted(already & set(opened.classes)),
                                    "computed_classes": computed})
            return result
    finally:
        engine.dispose()


def _with_notes(result: AuditResult, notes: list[str]) -> AuditResult:
    result.notes = notes + ["a complete run with these settings was stored: read back, nothing recomputed"]
    return result


def _class_lock(run: AuditRun, name: str) -> str:
    return f"xich:run:{run.id}:class:{name}"


def _audit_classes(engine: Engine, session: Session, run: AuditRun, opened: OpenedAudit,
                   membership: dict | None, progress, on_class) -> list[str]:
    """Audit and store each selected class not stored yet; returns the classes computed here.

    First pass: take the classes no other process holds. Second pass: wait for the others' classes
    and compute any they left unstored (a process that died).
    """
    computed: list[str] = []
    worker = worker_name()
    for wait in (False, True):
        todo = [c for c in opened.classes if c not in stored_classes(session=session, run=run)]
        for images in opened.iter_classes(todo):
            with named_lock(engine, _class_lock(run, images.name), wait=wait) as got:
                if not got or images.name in stored_classes(session=session, run=run):
                    continue
                if progress:
                    progress(images.name, len(opened.classes))
                cls = audit_class(opened, images, (membership or {}).get(images.name))
                store_class(session=session, run=run, cls=cls, worker=worker)
                computed.append(images.name)
                log.info("class %s computed and stored by %s", images.name, worker)
                if on_class:
                    on_class(cls, explainer(opened, images))
    return computed


def _missing_per_image(session: Session, run: AuditRun, opened: OpenedAudit) -> list[str]:
    """Selected classes whose stored per-image results are not the requested ``--per-image N``."""
    if not opened.config.per_image:
        return []
    stored = {rc.class_name: rc.per_image_n for rc in session.query(RunClass).filter(RunClass.run_id == run.id)}
    return [c for c in opened.classes if stored.get(c) != opened.config.per_image]


def _join_per_image(engine: Engine, session: Session, run: AuditRun, opened: OpenedAudit) -> None:
    """Per-image results (Fig. 3) join the run they extend: computed for stored classes that lack them."""
    for name in _missing_per_image(session, run, opened):
        with named_lock(engine, _class_lock(run, name)):
            if name in _missing_per_image(session, run, opened):
                images = opened.load(name)
                store_per_image(session=session, run=run, class_index=images.index,
                                per_image=per_image_result(opened, images))


def registry_time(metadata: dict | None) -> datetime | None:
    """The version's creation time in registry metadata: ``created_at`` (ISO 8601) or ``creation_timestamp``
    (milliseconds since the epoch, as MLflow writes it); None if absent."""
    if not metadata:
        return None
    value = metadata.get("created_at", metadata.get("creation_timestamp"))
    if value is None:
        return None
    try:
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
        parsed = datetime.fromisoformat(str(value))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise XichError(f"--registry-metadata: created_at/creation_timestamp {value!r} is not a time; give ISO 8601 "
                        f"(2026-11-29T12:00:00Z) or milliseconds since the epoch") from None


def _clustering_note(requested: str, frozen: Clustering | None, model_name: str) -> str:
    if frozen is not None:
        return f"clustering: frozen clustering {frozen.key} (cluster keys mean the same images in every version)"
    if requested == "auto":
        return (f"clustering: own — no frozen clustering of model {model_name!r} on this dataset; "
                f"freeze one with `xich clustering freeze --run RUN` to compare versions on the same clusters")
    return "clustering: own (--clustering own)"


def publish_run(result: AuditResult, *, store_url: str, report_dir: str | Path | None = None, **store_options) -> list[str]:
    """Put the audit document (and the report's files) in the object store under ``runs/<run id>/``."""
    from .store import open_store

    store = open_store(store_url, **store_options)
    prefix = f"runs/{result.run_id}"
    store.put_bytes(f"{prefix}/audit.json", result.to_json().encode())
    keys = [f"{prefix}/audit.json"]
    if report_dir is not None:
        for path in sorted(p for p in Path(report_dir).rglob("*") if p.is_file()):
            keys.append(f"{prefix}/report/{path.relative_to(report_dir).as_posix()}")
            store.put_file(keys[-1], path)
    return keys


def _frozen(session: Session, clustering: str, mv: ModelVersion, ds, eval_split: str) -> Clustering | None:
    model_name = session.get(Model, mv.model_id).name
    if clustering == "own":
        return None
    if clustering == "auto":
        return frozen_clustering(session=session, model_name=model_name, dataset=ds, eval_split=eval_split)
    kind, _, version = clustering.partition(":")
    if kind != "reference" or not version:
        raise XichError(f"--clustering {clustering!r}: use auto, own or reference:<model-version>")
    found = frozen_clustering(session=session, model_name=model_name, dataset=ds, eval_split=eval_split, version=version)
    if found is None:
        raise XichError(f"--clustering {clustering}: model {model_name!r} has no frozen clustering from version "
                        f"{version!r} on this dataset; freeze one with `xich clustering freeze --run RUN`")
    return found
