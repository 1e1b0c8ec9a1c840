"""The recorded-run sequence, the one every entry point (CLI, flows, demo, tests) uses.

``with open_recorded_run(ctx, config, ...) as rec:`` opens the audit and begins (or finds) its run in the
context's results database; inside, the caller computes and stores the pending classes, one at a time, and
finishes the run; an error marks the run failed, and the run's session is always closed. ``recorded_audit``
is that sequence without anything between; ``open_requested_run`` opens it for a registered request. Steps that
pass plain data (Prefect tasks) give the run id: ``hold`` keeps the run open in the process's context, ``held``
finds it, ``holding`` lets it go. A rerun of the same (model version, dataset, settings, clustering) finds the
stored run: complete → nothing is recomputed; failed or killed → only the classes not yet stored are audited.
Persistence (``persist.py``) only reads and writes rows; it never runs an audit.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from .context import Context

from ..engine.audit import (ClassImages, OpenedAudit, assemble_result, audit_class, compare_with_null, null_seed,
                            open_audit, per_image_result)
from ..engine.config import AuditConfig
from ..engine.datasets import content_fingerprint
from ..records.db import AuditRun, Clustering, Model, ModelVersion, RunClass
from ..records.db import Dataset as DatasetRow
from ..errors import XichError
from ..records.locks import heartbeat, named_lock
from ..records.persist import (attach_request, beat_class, begin_run, class_is_stale, fail_run, file_sha256,
                               finish_run, frozen_membership, get_or_create_dataset, get_or_create_model_version,
                               load_audit, load_classes, own_clustering,
                      promote_first_reference, reference_clustering, stored_classes, store_class, store_per_image)
from ..records.registration import RequestedAudit, registry_time
from ..result import AuditResult, ClassResult

log = logging.getLogger(__name__)


def worker_name() -> str:
    """``<Prefect worker>@host:pid`` of this process (``host:pid`` outside a worker), stored with each class it
    computes; a Prefect worker names itself to the flow runs it starts in ``PREFECT__WORKER_NAME``."""
    here = f"{socket.gethostname()}:{os.getpid()}"
    prefect_worker = os.environ.get("PREFECT__WORKER_NAME")
    return f"{prefect_worker}@{here}" if prefect_worker else here


@dataclass
class RecordedRun:
    """An opened audit and its run in the results database, between begin and finish.

    Other processes may work on the same run at once: each class is computed by whichever process
    claims its lock first (``claim``), and the others skip it or wait for it. Used in ``with``: an error
    inside marks the run failed (:meth:`fail`), and the session is closed in any case.
    """

    opened: OpenedAudit
    engine: Engine
    session: Session
    run: AuditRun
    membership: dict[str, dict[str, int]] | None  # the reference clustering's class → (image id → cluster)
    notes: list[str]
    resumed: set[str]  # classes stored before this process began
    fingerprint_s: float
    clustering: str = "auto"  # as asked: auto, own or reference:<version>
    own_clustering_id: int | None = None  # for the classes the reference lacks: clustered in this run
    started: float = field(default_factory=time.perf_counter)
    computed: list[str] = field(default_factory=list)
    stale_s: float = 600.0  # XICH_RUN_STALE_S: a class whose holder has not beaten this long is taken over
    null: RecordedRun | None = None  # the null model's run (stored once, shared by every version): None with --no-null

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
        """Hold class ``name``'s lock; yields whether this process should compute it (locked and not stored).

        While it computes, a thread beats the class's heartbeat every fifth of ``stale_s``; a process that waits
        for the class takes it over once the holder's heartbeat is ``stale_s`` old (``locks.named_lock``).
        """
        run_id, stale_after = self.run.id, timedelta(seconds=self.stale_s)

        def stale() -> bool:
            with Session(self.engine) as s:
                return class_is_stale(session=s, run_id=run_id, class_name=name, stale_after=stale_after)

        def beat() -> None:
            with Session(self.engine) as s:
                beat_class(session=s, run_id=run_id, class_name=name, worker=worker_name())

        with named_lock(self.engine, f"xich:run:{run_id}:class:{name}", wait=wait, stale=stale,
                        poll_s=min(5.0, self.stale_s / 5)) as got:
            mine = got and name not in stored_classes(session=self.session, run=self.run)
            if not mine:
                yield False
                return
            with heartbeat(beat, self.stale_s / 5):
                yield True

    @property
    def own_classes(self) -> list[str]:
        """Selected classes the run's reference clustering lacks: clustered in this run."""
        if self.membership is None:
            return []
        return [c for c in self.opened.classes if c not in self.membership]

    def compute(self, images: ClassImages) -> ClassResult:
        """Every stage of one class (with the reference clustering's membership, if it has the class). No
        database write."""
        cls = audit_class(self.opened, images, (self.membership or {}).get(images.name))
        if images.name in self.own_classes:
            cls.notes.append("clustered in this run: the reference clustering lacks this class")
        if self.null is not None:
            with self.opened.timed("null_s"):
                cls.null = compare_with_null(cls, self.null.class_for(images))
        return cls

    def class_for(self, images: ClassImages) -> ClassResult:
        """This run's result for ``images``' class: read back if stored (by any process), else computed on these
        images and stored (under the class's lock, so that processes sharing the run compute it once)."""
        with self.claim(images.name, wait=True) as mine:
            if mine:
                cls = self.compute(images)
                self.store(cls)
                return cls
        return load_classes(session=self.session, run_id=self.run.id, names=[images.name])[0]

    def store(self, cls: ClassResult) -> None:
        """Commit one class's rows (a class already stored is left as it is)."""
        try:
            store_class(session=self.session, run=self.run, cls=cls, worker=worker_name(),
                        clustering_id=self.own_clustering_id if cls.name in self.own_classes else None)
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
        result.timings = {"fingerprint_s": round(self.fingerprint_s, 3),
                          "audit_s": round(time.perf_counter() - self.started, 3), **result.timings}
        stored = stored_classes(session=self.session, run=self.run)
        with named_lock(self.engine, f"xich:run:{self.run.id}:finish"):  # processes finishing together: one writes
            finish_run(session=self.session, run=self.run, classes=self.opened.classes, resolved_config=result.config,
                       train_split=result.dataset.train_split, summary=result.summary,
                       timings={**result.timings,  # seconds: the fingerprint, the audit, each stage in this process
                                "resumed_classes": sorted(self.resumed & set(self.opened.classes)),
                                # by this process and every shard that worked on the run meanwhile
                                "computed_classes": [c for c in self.opened.classes
                                                     if c in stored and c not in self.resumed],
                                "computed_here": self.computed, "own_clustering_classes": self.own_classes})
        if self.null is not None and self.null.run.status != "complete" and not self.null.pending():
            self.null.finish()  # every class of the null is stored: it is complete, for the next version to read
        if self.clustering == "auto" and self.membership is None:
            with named_lock(self.engine, "xich:register"):
                if (made := promote_first_reference(session=self.session, run=self.run)) is not None:
                    log.info("run %s: its clustering %s is now the reference of this model on this dataset (P=%s)",
                             self.run.id, made.key, made.clusters)
                    result.notes.append(f"clustering: this run's clustering {made.key} became the model's reference "
                                        f"on this dataset (P={made.clusters}); later versions are audited on it")
        return result

    def audit_all(self) -> AuditResult:
        """Compute and store every pending class (none when complete), then :meth:`finish`."""
        if not self.complete:
            for _ in self.audit_pending():
                pass
        return self.finish()

    def fail(self, exc: BaseException) -> None:
        """Mark the run failed with the error (unless another process completed it meanwhile), and its null's: one
        line, without the SQL statement and parameters a database error carries."""
        fail_run(session=self.session, run=self.run, error=failure_line(exc))
        if self.null is not None:
            self.null.fail(exc)

    def close(self) -> None:
        self.session.close()
        if self.null is not None:
            self.null.close()

    def __enter__(self) -> RecordedRun:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        try:
            if exc is not None:
                try:
                    self.fail(exc)
                except SQLAlchemyError as why:  # the database is gone or refuses writes: the first error is raised
                    self.session.rollback()
                    log.warning("run %s could not be marked failed (%s); it stays unfinished, and the nightly flow "
                                "starts it again once its heartbeat is XICH_RUN_STALE_S old",
                                inspect(self.run).identity[0], failure_line(why))  # no load from the database
        finally:
            self.close()

    def _join_per_image(self) -> None:
        """Per-image results (Fig. 3) join the run they extend: computed for stored classes that lack them."""
        for name in self.missing_per_image():
            with named_lock(self.engine, f"xich:run:{self.run.id}:class:{name}"):
                if name in self.missing_per_image():
                    images = self.opened.load(name)
                    store_per_image(session=self.session, run=self.run, class_index=images.index,
                                    per_image=per_image_result(self.opened, images))


def failure_line(exc: BaseException) -> str:
    """``Type: message`` of an error; of a database error, its first line (the driver's error and message),
    without the SQL statement, parameters and documentation link SQLAlchemy appends on lines of their own."""
    if not isinstance(exc, DBAPIError):
        return f"{type(exc).__name__}: {exc}"
    lines = [line for line in str(exc).splitlines()  # an autoflush's error leads with a line of SQLAlchemy's advice
             if not line.startswith("(raised as a result of Query-invoked autoflush")] or [""]
    return f"{type(exc).__name__}: {' '.join(lines[0].split())}"[:2000]


def open_recorded_run(ctx: Context, config: AuditConfig, *, model_name: str | None = None,
                      model_version: str | None = None, registry_metadata: dict | None = None,
                      registered_at: datetime | None = None, clustering: str = "auto",
                      request: dict | None = None) -> RecordedRun:
    """Open ``config``'s audit and begin (or find) its run in the context's results database (migrated when the
    context opened, before the first forward pass); use it in ``with``.

    ``clustering``: ``own`` (cluster this run), ``reference:<model-version>`` (that version's frozen
    clustering), or ``auto`` (the model's newest frozen clustering on this dataset, else own).
    ``registered_at``: the registry's creation time of the version (else read from ``registry_metadata``'s
    ``created_at`` / ``creation_timestamp``, else the time it is first recorded).
    ``request``: the registered audit request this run serves (``{"dataset_uri", "settings"}``, see
    ``persist.register_version``); the run is linked to it. Classes are claimed with the context's
    XICH_RUN_STALE_S (``RecordedRun.claim``).
    """
    weights_sha = file_sha256(config.weights) if config.weights and Path(config.weights).is_file() else None
    if config.weights and weights_sha is None:
        raise XichError(f"--weights {config.weights}: no such file")
    engine, cache_dir = ctx.engine, ctx.settings.cache_dir  # (migrated on first use) before the first forward pass
    session = ctx.session(expire_on_commit=False)
    try:
        opened = open_audit(config, ctx.data_source(config.data), **ctx.settings.data_limits())
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
            frozen = _frozen(session, clustering, mv, ds, config.eval_split, config.clusters)
            run = begin_run(session=session, run_id=os.urandom(16).hex(), model_version=mv, dataset=ds,
                            settings=opened.settings(), eval_split=config.eval_split,
                            train_split=config.train_split, frozen=frozen, clusters=config.clusters)
            if request is not None:
                attach_request(session=session, model_version=mv, dataset_uri=request["dataset_uri"],
                               settings=request["settings"], run_id=run.id)
        notes = [_clustering_note(clustering, frozen, session.get(Model, mv.model_id).name)]
        membership = frozen_membership(session=session, clustering=frozen) if frozen else None
        rec = RecordedRun(opened, engine, session, run, membership, notes, stored_classes(session=session, run=run),
                          fingerprint_s, clustering=clustering, stale_s=ctx.settings.run_stale_s)
        if rec.own_classes:
            rec.own_clustering_id = own_clustering(session=session, run=run, clusters=config.clusters).id
            notes.append(f"clustering: class(es) {', '.join(rec.own_classes)} are not in the reference clustering "
                         f"{frozen.key}: clustered in this run (clustering run:{run.id})")
        if opened.null is not None and not rec.complete:
            rec.null = _open_null_run(ctx, opened, ds.id)
            notes.append(f"null model: run {rec.null.run_id} ({'stored, reused' if rec.null.complete else 'computed'}"
                         f" — {config.model} with random weights, seed {null_seed(config.seed)}, audited end to end)")
        return rec
    except BaseException:
        session.close()
        raise


def _open_null_run(ctx: Context, opened: OpenedAudit, dataset_id: int) -> RecordedRun:
    """The null model's run on this dataset with these settings: stored once as the run of model
    ``null:<spec>``, version ``seed-<null seed>-outputs-<K>``, and found again by every version audited the same way
    (its cache key is (spec, dataset fingerprint, settings key, null seed); the trained weights are no part of it)."""
    config, null = opened.config, opened.null
    seed = null_seed(config.seed)
    settings = {k: v for k, v in opened.settings().items() if k != "control"} | {"null_seed": seed}
    session = ctx.session(expire_on_commit=False)
    try:
        with named_lock(ctx.engine, "xich:register"):
            mv = get_or_create_model_version(
                session=session, name=f"null:{config.model}", version=f"seed-{seed}-outputs-{len(opened.labels.names)}",
                spec=config.model, weights_uri=None, weights_sha256=None, labels=list(opened.labels.names),
                labels_source="dataset (null model: random weights)", version_flag=None)
            run = begin_run(session=session, run_id=os.urandom(16).hex(), model_version=mv,
                            dataset=session.get(DatasetRow, dataset_id), settings=settings,
                            eval_split=config.eval_split, train_split=config.train_split, clusters=config.clusters)
        return RecordedRun(null, ctx.engine, session, run, None, [], stored_classes(session=session, run=run), 0.0,
                           clustering="own", stale_s=ctx.settings.run_stale_s)
    except BaseException:
        session.close()
        raise


def open_requested_run(ctx: Context, request: RequestedAudit, *, data: str | None, weights: str | None
                       ) -> RecordedRun:
    """:func:`open_recorded_run` for a registered audit request (on the local copies ``data`` / ``weights`` of its
    sources), linked to the request: the step the flow and ``xich register --audit`` share."""
    config, clustering = request.audit_config(data=data, weights=weights)
    return open_recorded_run(ctx, config, model_name=request.model, model_version=request.version,
                             clustering=clustering,
                             request={"dataset_uri": request.dataset_uri, "settings": request.settings})


def hold(ctx: Context, rec: RecordedRun) -> str:
    """Keep ``rec`` open in the process's context, so that steps given only its run id (Prefect tasks, which pass
    plain data) find it with :func:`held`; returns the run id. Let go by :func:`holding`."""
    ctx.runs[rec.run_id] = rec
    return rec.run_id


def held(ctx: Context, run_id: str) -> RecordedRun:
    """The recorded run ``run_id`` this process holds open (:func:`hold`)."""
    try:
        return ctx.runs[run_id]
    except KeyError:
        raise XichError(f"run {run_id} is not open in this process; open it first (open_recorded_run)") from None


@contextmanager
def holding(ctx: Context, run_id: str) -> Iterator[RecordedRun]:
    """The held run in ``with``: an error inside marks it failed; it is closed and let go in any case."""
    rec = held(ctx, run_id)
    try:
        with rec:
            yield rec
    finally:
        ctx.runs.pop(run_id, None)


def recorded_audit(ctx: Context, config: AuditConfig, **options) -> AuditResult:
    """Run (or finish, or just read back) the audit of ``config``, stored in the context's results database.

    ``options``: those of ``open_recorded_run``. A failure marks the run ``failed`` with the error.
    """
    with open_recorded_run(ctx, config, **options) as rec:
        return rec.audit_all()


def _clustering_note(requested: str, frozen: Clustering | None, model_name: str) -> str:
    if frozen is not None:
        return (f"clustering: reference clustering {frozen.key} (cluster keys mean the same images in every version; "
                f"see `xich clustering show --model {model_name}`)")
    if requested == "auto":
        return (f"clustering: own — no reference clustering of model {model_name!r} on this dataset with this P; "
                f"once complete, this run's clustering becomes the reference later versions are audited on")
    return "clustering: own (--clustering own): not a reference for later versions"


def _frozen(session: Session, clustering: str, mv: ModelVersion, ds, eval_split: str, clusters: int
            ) -> Clustering | None:
    """The reference clustering the run uses: for ``auto`` the model's current one on (dataset, eval split, P)."""
    if clustering == "own":
        return None
    if clustering == "auto":
        return reference_clustering(session=session, model_id=mv.model_id, dataset_id=ds.id, eval_split=eval_split,
                                    clusters=clusters)
    kind, _, version = clustering.partition(":")
    if kind != "reference" or not version:
        raise XichError(f"--clustering {clustering!r}: use auto, own or reference:<model-version>")
    found = reference_clustering(session=session, model_id=mv.model_id, dataset_id=ds.id, eval_split=eval_split,
                                 version=version)
    if found is None:
        model_name = session.get(Model, mv.model_id).name
        raise XichError(f"--clustering {clustering}: model {model_name!r} has no reference clustering from version "
                        f"{version!r} on this dataset; make one with `xich clustering use --run RUN`")
    return found


def audit_registered(ctx: Context, parameters: dict) -> dict:
    """Audit a registered version in this process (``xich register --audit`` without a Prefect server): the
    sequence of the ``audit-model-version`` flow without Prefect — recorded request checked again, sources
    fetched, classes computed and stored, run finished, report published, registry tags written back.

    ``parameters``: those :func:`~xich.records.registration.register` returns. Returns the run id and report URI;
    a failure is recorded on the request (it backs off before the nightly flow tries again) and raised.
    """
    from ..records.mlflow_registry import write_back
    from ..records.registration import admit_recorded, record_request_failure, recorded_registry_metadata
    from .publish import publish_with_report

    request = RequestedAudit.of(parameters)
    model, version = request.model, request.version
    try:
        admit_recorded(parameters, ctx.settings.hooks_allowed_specs)
        with open_requested_run(ctx, request, data=ctx.data_path(request.dataset_uri),
                                weights=ctx.local_path(request.weights_uri, model=model, version=version)) as rec:
            result = rec.audit_all()
            report = publish_with_report(ctx, result, rec.opened, model=model, version=version)
    except Exception as exc:
        record_request_failure(engine=ctx.engine, parameters=parameters, error=f"{type(exc).__name__}: {exc}")
        raise
    try:
        write_back(registry_metadata=recorded_registry_metadata(engine=ctx.engine, model=model, version=version),
                   model=model, version=version, result=result, report_uri=report, settings=ctx.settings)
    except Exception as exc:  # the audit is complete and published: a registry that is down does not undo that
        log.warning("audit of %s %s complete, but its tags were not written to the registry: %s", model, version, exc)
    return {"run_id": result.run_id, "report": report}
