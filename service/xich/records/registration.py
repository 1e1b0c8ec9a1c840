"""Registering model versions and the audits they ask for; finding the versions still to audit.

Light on purpose (no torch, no Prefect): the registry hooks, ``xich register`` and the nightly flow's
first step use it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..boundary import check_name, check_spec, escape
from ..engine.config import AuditConfig
from ..errors import XichError
from .locks import named_lock
from . import persist
from .preflight import absolute_uri, preflight
from .persist import file_sha256, register_version, request_run, version_metadata

log = logging.getLogger(__name__)
DEFAULT_SPECS = ("cifar:", "torchvision:")  # XICH_HOOKS_ALLOWED_SPECS' default

# the settings an audit request may give: AuditConfig's fields but the model and data (given apart), and the clustering
REQUEST_SETTINGS = tuple(sorted({f.name for f in fields(AuditConfig)} - {"model", "data", "weights", "data_uri", "weights_uri"}
                                | {"clustering"}))


class OriginConflict(XichError):
    """A version recorded by one registry hook, announced again by the other (a 409 at the receiver)."""


HOOK_ORIGINS = {"mlflow": "the MLflow hook", "generic": "the generic hook"}


def registry_origin(metadata: dict | None) -> str | None:
    """Which hook recorded a version's registry metadata: ``mlflow`` (the MLflow hook's ``registry`` key),
    ``generic`` (the generic hook's ``hook`` key), None for the operator's (``xich register``, ``xich audit``)."""
    if not metadata:
        return None
    if metadata.get("registry") == "mlflow":
        return "mlflow"
    return "generic" if metadata.get("hook") == "generic" else None


def check_origin(*, session: Session, model: str, version: str, registry_metadata: dict | None) -> None:
    """One origin per model version: a version the MLflow hook recorded cannot be recorded again by the generic
    hook, nor the reverse (the generic secret's holder would otherwise rewrite an MLflow version's metadata, which
    the write-back reads, and its registry time). OriginConflict names both."""
    recorded = version_metadata(session=session, model_name=model, version=version)
    was, now = registry_origin(recorded), registry_origin(registry_metadata)
    if was is not None and now is not None and was != now:
        raise OriginConflict(f"{escape(model)} {escape(version)} was recorded by {HOOK_ORIGINS[was]}; "
                             f"{HOOK_ORIGINS[now]} cannot record it again (one origin per model version): "
                             f"announce it as a new version")


@dataclass(frozen=True)
class RequestedAudit:
    """A registered version's audit request: what :func:`register` records and returns (as :meth:`parameters`, the
    plain parameters of the ``audit-model-version`` flow), and what the flow, ``xich register --audit`` and the
    nightly flow read back (:meth:`of`)."""

    model: str
    version: str
    model_spec: str
    weights_uri: str | None
    dataset_uri: str
    settings: dict

    @classmethod
    def of(cls, parameters: dict) -> RequestedAudit:
        """The request in ``audit_model_version``'s parameters (other keys, such as ``shards``, left aside)."""
        return cls(**{f.name: parameters[f.name] for f in fields(cls)})

    def parameters(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def audit_config(self, *, data: str | None = None, weights: str | None = None) -> tuple[AuditConfig, str]:
        """Its AuditConfig (on the local copies ``data`` / ``weights``) and clustering choice (:func:`audit_config`)."""
        return audit_config(model_spec=self.model_spec, dataset_uri=self.dataset_uri, weights_uri=self.weights_uri,
                            settings=self.settings, data=data, weights=weights)


class Records(Protocol):
    """Where registrations are recorded: an engine made (and the database migrated) when first used
    (``run.context.Context``), so a refused registration touches no database."""

    @property
    def engine(self) -> Engine: ...


def audit_config(*, model_spec: str, dataset_uri: str, weights_uri: str | None, settings: dict,
                 data: str | None = None, weights: str | None = None) -> tuple[AuditConfig, str]:
    """The AuditConfig and clustering choice of an audit request (``settings``: see REQUEST_SETTINGS).

    ``data`` / ``weights``: local copies of the URIs (default: the URIs themselves).
    """
    if not isinstance(settings, dict):
        raise XichError(f"settings: give a JSON object of audit settings, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(REQUEST_SETTINGS))
    if unknown:
        raise XichError(f"settings: unknown key(s) {', '.join(unknown)}; use {', '.join(REQUEST_SETTINGS)}")
    options = {k: v for k, v in settings.items() if k != "clustering"}
    try:  # checked as it is made (``classes`` as a list or "a, b"; ``train_split: ""``: none)
        config = AuditConfig(model=model_spec, data=data or dataset_uri, weights=weights or weights_uri,
                             data_uri=dataset_uri, weights_uri=weights_uri, **options)
    except TypeError as exc:
        raise XichError(f"settings: {exc}") from None
    clustering = settings.get("clustering", "auto")
    if not isinstance(clustering, str) or len(clustering) > 300 or not clustering.isprintable():
        raise XichError("settings: clustering must be auto, own or reference:<model-version>")
    return config, clustering


def register(*, records: Records, model: str, version: str, model_spec: str, weights_uri: str | None,
             dataset_uri: str, settings: dict, registry_metadata: dict | None = None,
             registered_at: datetime | None = None, local_weights: str | None = None,
             allowed_specs: list[str] | tuple[str, ...] = DEFAULT_SPECS, hash_weights: bool = True) -> dict:
    """Record a model version and the audit it asks for in ``records``' results database; returns the parameters
    of ``audit_model_version``.

    ``local_weights``: a local copy of ``weights_uri``, hashed so that the version is tied to its weights
    (``hash_weights=False``, the hooks receiver: not hashed here; the worker that audits the version hashes them).
    The name, version, spec kind (``allowed_specs``: XICH_HOOKS_ALLOWED_SPECS) and settings are checked here, so a
    bad request fails at registration, not at night (where the same checks run again on the recorded request).
    """
    check_name(model, "model name")
    check_name(version, "version")
    check_spec(model_spec, list(allowed_specs))
    weights_uri, dataset_uri = absolute_uri(weights_uri, "--weights"), absolute_uri(dataset_uri, "--dataset")
    audit_config(model_spec=model_spec, dataset_uri=dataset_uri, weights_uri=weights_uri, settings=settings)
    local_data = dataset_uri.split(":", 1)[1] if dataset_uri.startswith(("cifar10:", "cifar100:")) else dataset_uri
    if "://" not in local_data and not Path(local_data).exists():
        raise XichError(f"--dataset {dataset_uri}: no such file or folder; give a path or an s3:// URI")
    weights_path = local_weights or weights_uri
    if weights_path and not Path(weights_path).is_file():
        raise XichError(f"--weights {weights_uri}: no such file")
    preflight(model_spec=model_spec, weights=weights_path, dataset_uri=dataset_uri, settings=settings)
    engine = records.engine
    with Session(engine) as session, named_lock(engine, "xich:register"):
        check_origin(session=session, model=model, version=version, registry_metadata=registry_metadata)
        register_version(session=session, name=model, version=version, spec=model_spec, weights_uri=weights_uri,
                         weights_sha256=file_sha256(weights_path) if weights_path and hash_weights else None,
                         dataset_uri=dataset_uri, settings=settings, registry_metadata=registry_metadata,
                         registered_at=registered_at or registry_time(registry_metadata))
    return RequestedAudit(model, version, model_spec, weights_uri, dataset_uri, settings).parameters()


def unaudited(*, engine: Engine, model: str | None = None,
              allowed_specs: list[str] | tuple[str, ...] = DEFAULT_SPECS) -> list[dict]:
    """The parameters of ``audit_model_version`` for every registered audit without a complete run whose recorded
    request passes the checks of :func:`register` again (see :func:`request_plan`); the others are logged."""
    admitted = []
    for item in request_plan(engine=engine, model=model, allowed_specs=allowed_specs):
        request = item["parameters"]
        if item["action"] == "refused":
            log.warning("audit request %s %s left out: %s", escape(request["model"]), escape(request["version"]),
                        item["detail"])
            continue
        admitted.append(request)
    return admitted


def admit_recorded(parameters: dict, allowed_specs: list[str] | tuple[str, ...]) -> None:
    """The checks of :func:`register` on a recorded request (``audit_model_version``'s parameters); XichError."""
    request = RequestedAudit.of(parameters)
    check_spec(request.model_spec, list(allowed_specs))
    request.audit_config()


def request_plan(*, engine: Engine, model: str | None = None,
                 allowed_specs: list[str] | tuple[str, ...] = DEFAULT_SPECS, stale_s: float = 600.0) -> list[dict]:
    """Every registered audit without a complete run, with what the nightly flow does with it (``persist.request_plan``).

    Each request to start is checked again (:func:`admit_recorded`) before anything is imported for it: the table
    is outside input too. One that fails gets the action ``refused`` and the reason. ``stale_s``: XICH_RUN_STALE_S.
    """
    with Session(engine) as session:
        plan = persist.request_plan(session=session, model_name=model, stale_after=timedelta(seconds=stale_s))
    for item in plan:
        if item["action"] != "start":
            continue
        try:
            admit_recorded(item["parameters"], allowed_specs)
        except XichError as exc:
            item["action"], item["detail"] = "refused", escape(exc, 500)
    return plan


def record_request_failure(*, engine: Engine, parameters: dict, error: str) -> dict | None:
    """Record a failed audit on its registered request (``persist.record_request_failure``); returns its failures
    in a row and next try, or None when the audit was not registered."""
    with Session(engine) as session:
        asked = RequestedAudit.of(parameters)
        request = persist.record_request_failure(session=session, model_name=asked.model, version=asked.version,
                                                 dataset_uri=asked.dataset_uri, settings=asked.settings, error=error)
        return None if request is None else {"failures": request.failures, "next_try_at": request.next_try_at}


def audit_status(*, engine: Engine, model: str, version: str, dataset_uri: str, settings: dict
                 ) -> tuple[str, str] | None:
    """(run id, status) of the run serving a registered audit request; None while no run serves it."""
    with Session(engine) as session:
        run = request_run(session=session, model_name=model, version=version, dataset_uri=dataset_uri,
                          settings=settings)
        return (run.id, run.status) if run is not None else None


def recorded_registry_metadata(*, engine: Engine, model: str, version: str) -> dict | None:
    """The registry metadata recorded with a model version (None: no such version)."""
    with Session(engine) as session:
        return version_metadata(session=session, model_name=model, version=version)


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
