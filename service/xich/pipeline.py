"""The order of stages and sinks of a recorded audit, shared by the CLI and the Prefect flows.

``open_recorded_run`` opens the audit and begins (or finds) its run in the results database; the caller
then computes and stores the pending classes, one at a time, and finishes the run. A rerun of the same
(model version, dataset, settings, clustering) finds the stored run: complete → nothing is recomputed;
failed or killed → only the classes not yet stored are audited. Persistence (``persist.py``) only
reads and writes rows; it never runs an audit.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .audit import ClassImages, OpenedAudit, assemble_result, audit_class, open_audit, per_image_result
from .config import AuditConfig, check_config
from .datasets import content_fingerprint
from .db import AuditRun, Clustering, Model, ModelVersion, RunClass, make_engine
from .errors import XichError
from .locks import named_lock
from .migrate import upgrade
from .persist import (attach_request, begin_run, fail_run, file_sha256, finish_run, frozen_clustering,
                      frozen_membership, get_or_create_dataset, get_or_create_model_version, load_audit, load_classes,
                      stored_classes, store_class, store_per_image)
from .registration import registry_time
from .result import AuditResult, ClassResult

log = logging.getLogger(__name__)


def worker_name() -> str:
    """host:pid of this process, stored with each class it computes."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RecordedRun:
    """An opened audit and its run in the results database, between begin and finish.

    Other processes may work on the same run at once: each class is computed by whichever process
    claims its lock first (``claim``), and the others skip it or wait for it.
    """

    opened: OpenedAudit
    engine: Engine
    session: Session
    run: AuditRun
    membership: dict[str, dict[str, int]] | None  # a frozen clustering's class → (image id → cluster)
    notes: list[str]
    resumed: set[str]  # classes stored before this process began
    fingerprint_s: float
    started: float = field(default_factory=time.perf_counter)
    computed: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run.id

    @property
    def complete(self) -> bool:
        """Stored complete, with the per-image results asked for: nothing to compute."""
        return self.run.status == "complete" and not self.missing_per_image()

    def pending(self, names: list[str] | None = None) -> list[str]:
        """Selected classes (or ``names``) not stored yet, in model output order."""
        stored = stored_classes(session=self.session, run=self.run)
        return [c for c in self.opened.classes if c not in stored and (names is None or c in names)]

    @contextmanager
    def claim(self, name: str, *, wait: bool) -> Iterator[bool]:
        """Hold class ``name``'s lock; yields whether this process should compute it (locked and not stored)."""
        with named_lock(self.engine, f"xich:run:{self.run.id}:class:{name}", wait=wait) as got:
            yield got and name not in stored_classes(session=self.session, run=self.run)

    def compute(self, images: ClassImages) -> ClassResult:
        """Every stage of one class (with the frozen clustering's membership, if any). No database write."""
        return audit_class(self.opened, images, (self.membership or {}).get(images.name))

    def store(self, cls: ClassResult) -> None:
        """Commit one class's rows (a class already stored is left as it is)."""
        try:
            store_class(session=self.session, run=self.run, cls=cls, worker=worker_name())
        except BaseException:
            self.session.rollback()
            raise
        self.computed.append(cls.name)
        log.info("class %s computed and stored by %s", cls.name, worker_name())

    def audit_pending(self, names: list[str] | None = None, *, wait: bool = True) -> Iterator[tuple[ClassImages, ClassResult]]:
        """Compute and store the pending classes (or those of ``names``); yields each one computed here.

        First pass: the classes no other process holds. Second pass (``wait``): wait for the others'
        classes and compute any they left unstored (a process that died).
        """
        for waiting in (False, True) if wait else (False,):
            for images in self.opened.iter_classes(self.pending(names)):
                with self.claim(images.name, wait=waiting) as mine:
                    if not mine:
                        continue
                    cls = self.compute(images)
                    self.store(cls)
                yield images, cls

    def missing_per_image(self) -> list[str]:
        """Selected classes whose stored per-image results are not the requested ``--per-image N``."""
        if not self.opened.config.per_image:
            return []
        stored = {rc.class_name: rc.per_image_n
                  for rc in self.session.query(RunClass).filter(RunClass.run_id == self.run.id)}
        return [c for c in self.opened.classes if stored.get(c) != self.opened.config.per_image]

    def finish(self) -> AuditResult:
        """Per-image results joined, summary written, status ``complete`` — only when every class is stored."""
        if self.run.status == "complete" and not self.missing_per_image():
            log.info("run %s is complete; reading it back", self.run.id)
            result = load_audit(session=self.session, run_id=self.run.id)
            result.notes = self.notes + ["a complete run with these settings was stored: read back, nothing recomputed"]
            return result
        self._join_per_image()
        classes = load_classes(session=self.session, run_id=self.run.id)
        result = assemble_result(self.opened, classes, self.run.id, notes=self.notes)
        with named_lock(self.engine, f"xich:run:{self.run.id}:finish"):  # processes finishing together: one writes
            finish_run(session=self.session, run=self.run, classes=self.opened.classes, resolved_config=result.config,
                       train_split=result.dataset["train_split"], summary=result.summary,
                       timings={"fingerprint_s": self.fingerprint_s, "audit_s": time.perf_counter() - self.started,
                                **self.opened.timings,  # CAM seconds: the model's (cam_s) and the control's
                                "resumed_classes": sorted(self.resumed & set(self.opened.classes)),
                                "computed_classes": self.computed})
        return result

    def fail(self, exc: BaseException) -> None:
        """Mark the run failed with the error (unless another process completed it meanwhile)."""
        fail_run(session=self.session, run=self.run, error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    def _join_per_image(self) -> None:
        """Per-image results (Fig. 3) join the run they extend: computed for stored classes that lack them."""
        for name in self.missing_per_image():
            with named_lock(self.engine, f"xich:run:{self.run.id}:class:{name}"):
                if name in self.missing_per_image():
                    images = self.opened.load(name)
                    store_per_image(session=self.session, run=self.run, class_index=images.index,
                                    per_image=per_image_result(self.opened, images))


def open_recorded_run(config: AuditConfig, *, database_url: str, model_name: str | None = None,
                      model_version: str | None = None, registry_metadata: dict | None = None,
                      registered_at: datetime | None = None, clustering: str = "auto",
                      cache_dir: str | Path | None = None, request: dict | None = None) -> RecordedRun:
    """Open ``config``'s audit and begin (or find) its run in ``database_url``; the caller must ``close()`` it.

    ``clustering``: ``own`` (cluster this run), ``reference:<model-version>`` (that version's frozen
    clustering), or ``auto`` (the model's newest frozen clustering on this dataset, else own).
    ``registered_at``: the registry's creation time of the version (else read from ``registry_metadata``'s
    ``created_at`` / ``creation_timestamp``, else the time it is first recorded).
    ``request``: the registered audit request this run serves (``{"dataset_uri", "settings"}``, see
    ``persist.register_version``); the run is linked to it.
    """
    check_config(config)
    weights_sha = file_sha256(config.weights) if config.weights and Path(config.weights).is_file() else None
    if config.weights and weights_sha is None:
        raise XichError(f"--weights {config.weights}: no such file")
    upgrade(database_url)  # the database is checked (and migrated) before the first forward pass
    engine = make_engine(database_url)
    session = Session(engine, expire_on_commit=False)
    try:
        opened = open_audit(config)
        t0 = time.perf_counter()
        splits = [opened.eval_split] + ([opened.train_split] if opened.train_split is not None else [])
        fingerprint, n_images = content_fingerprint(splits, Path(cache_dir) if cache_dir else None)
        fingerprint_s = time.perf_counter() - t0
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
            if request is not None:
                attach_request(session=session, model_version=mv, dataset_uri=request["dataset_uri"],
                               settings=request["settings"], run_id=run.id)
        notes = [_clustering_note(clustering, frozen, session.get(Model, mv.model_id).name)]
        membership = frozen_membership(session=session, clustering=frozen) if frozen else None
        missing = [c for c in opened.classes if membership is not None and c not in membership]
        if missing:
            error = XichError(f"class(es) {', '.join(missing)} are not in the frozen clustering; audit its classes "
                              f"(--classes {','.join(sorted(membership))}) or use --clustering own")
            fail_run(session=session, run=run, error=str(error))
            raise error
        return RecordedRun(opened, engine, session, run, membership, notes,
                           stored_classes(session=session, run=run), fingerprint_s)
    except BaseException:
        session.close()
        engine.dispose()
        raise


def recorded_audit(config: AuditConfig, **options) -> AuditResult:
    """Run (or finish, or just read back) the audit of ``config``, stored in the results database.

    ``options``: those of ``open_recorded_run``. A failure marks the run ``failed`` with the error.
    """
    rec = open_recorded_run(config, **options)
    try:
        try:
            if not rec.complete:
                for _ in rec.audit_pending():
                    pass
            return rec.finish()
        except BaseException as exc:
            rec.fail(exc)
            raise
    finally:
        rec.close()



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


def publish_with_report(result: AuditResult, opened: OpenedAudit, *, store_url: str, **store_options) -> str:
    """Write the report (mosaics rendered again from the stored manifests) and publish it with the audit
    document under ``runs/<run id>/``; returns the report page's URI in the store."""
    import tempfile

    from .audit import explain_stored
    from .report import collect_examples, write_report
    from .store import open_store

    with tempfile.TemporaryDirectory(prefix="xich-report-") as tmp:
        examples = {cls.name: collect_examples(cls, explain) for cls, explain in explain_stored(opened, result.classes)}
        write_report(result, tmp, examples)
        publish_run(result, store_url=store_url, report_dir=tmp, **store_options)
    return open_store(store_url, **store_options).uri(f"runs/{result.run_id}/report/index.html")


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
