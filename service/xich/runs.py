"""An audit recorded in the results database: begin (or resume) the run, commit each class, finish.

A rerun of the same (model version, dataset, config) finds the stored run: complete → nothing is
recomputed; failed or killed → only the classes not yet stored are audited.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from sqlalchemy.orm import Session

from .audit import AuditConfig, check_config, run_audit, summarize
from .db import Clustering, Model, ModelVersion, make_engine
from .errors import XichError
from .migrate import upgrade
from .persist import (begin_run, fail_run, file_sha256, finish_run, frozen_clustering, frozen_membership,
                      get_or_create_dataset, get_or_create_model_version, load_audit, load_classes, source_fingerprint,
                      stored_classes, store_class)
from .result import AuditResult, ClassResult, Explainer

log = logging.getLogger(__name__)

# settings that change no number, or that are identified by their own rows (model version, dataset)
_NOT_HASHED = ("batch_size", "device", "weights", "data", "weights_uri", "data_uri")


def recorded_audit(config: AuditConfig, *, database_url: str, model_name: str | None = None,
                   model_version: str | None = None, registry_metadata: dict | None = None,
                   clustering: str = "auto", progress: Callable[[str, int], None] | None = None,
                   on_class: Callable[[ClassResult, Explainer], None] | None = None) -> AuditResult:
    """Run (or finish, or just read back) the audit of ``config``, stored in ``database_url``.

    ``clustering``: ``own`` (cluster this run), ``reference:<model-version>`` (that version's frozen
    clustering), or ``auto`` (the model's newest frozen clustering on this dataset, else own).
    """
    check_config(config)
    weights_sha = file_sha256(config.weights) if config.weights and Path(config.weights).is_file() else None
    if config.weights and weights_sha is None:
        raise XichError(f"--weights {config.weights}: no such file")
    data_path = config.data.partition(":")[2] if config.data.startswith(("cifar10:", "cifar100:")) else config.data
    if not Path(data_path).exists():
        raise XichError(f"--data {config.data}: no such file or folder")
    upgrade(database_url)  # idempotent; the embedded SQLite needs no separate step
    engine = make_engine(database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            t0 = time.perf_counter()
            mv = get_or_create_model_version(
                session=session, name=model_name or config.model, version=model_version or (weights_sha or "none")[:12],
                spec=config.model, weights_uri=config.weights_uri or config.weights, weights_sha256=weights_sha,
                registry_metadata=registry_metadata)
            ds = get_or_create_dataset(session=session, uri=config.data_uri or config.data,
                                       fingerprint=source_fingerprint(data_path))
            frozen = _frozen(session, clustering, mv, ds, config.eval_split)
            hashed = {k: v for k, v in asdict(config).items() if k not in _NOT_HASHED}
            run = begin_run(session=session, run_id=uuid.uuid4().hex, model_version=mv, dataset=ds, config=hashed,
                            eval_split=config.eval_split, train_split=config.train_split, frozen=frozen)
            fingerprint_s = time.perf_counter() - t0
            if run.status == "complete":
                log.info("run %s is complete; reading it back", run.id)
                return load_audit(session=session, run_id=run.id)
            done = frozenset(stored_classes(session=session, run=run))

            def store(cls: ClassResult, explain: Explainer) -> None:
                store_class(session=session, run=run, cls=cls)
                if on_class:
                    on_class(cls, explain)

            t1 = time.perf_counter()
            try:
                membership = frozen_membership(session=session, clustering=frozen) if frozen else None
                result = run_audit(config, progress, store, skip_classes=done, run_id=run.id, frozen=membership)
            except BaseException as exc:
                fail_run(session=session, run=run, error=f"{type(exc).__name__}: {exc}")
                raise
            classes = load_classes(session=session, run_id=run.id)
            finish_run(session=session, run=run, resolved_config=result.config,
                       train_split=result.dataset["train_split"], summary=summarize(classes),
                       timings={"fingerprint_s": fingerprint_s, "audit_s": time.perf_counter() - t1,
                                "resumed_classes": sorted(done)})
            return replace(result, classes=classes, summary=summarize(classes))
    finally:
        engine.dispose()


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
