"""XICH as Prefect flows: wiring of ``xich`` functions, no math and no SQL.

    audit_model_version: fetch dataset and weights from the store → open the audit and begin its run
      → per class: load images (I/O) → compute every stage (no retries) → store (I/O) → finish
      → report and audit document to the store → artifacts (a per-class table, a markdown summary)
      → tags on the registry's version when it came from MLflow (run id, least dominant share, report link)
    audit_new_versions: start audit_model_version for every registered version without a complete audit

I/O tasks retry with exponential backoff, and only on errors a later try can fix (a server that did
not answer, a dropped connection); computation never retries. Every task works in its process's context
(``xich.run.context.current_context``: settings from ``XICH_*``, one engine, the database migrated once) and
takes ids and plain data: ``open-run`` holds the recorded run open there and returns its run id, by which the
later tasks find it. ``XICH_AUDIT_DEPLOYMENT`` names the deployment that runs shards and new versions.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from sqlalchemy.exc import DBAPIError

from xich.engine.audit import ClassImages
from xich.boundary import escape
from xich.errors import Unavailable
from xich.records.mlflow_registry import write_back
from xich.records.registration import (RequestedAudit, admit_recorded, record_request_failure,
                                       recorded_registry_metadata, request_plan)
from xich.reports.report import class_table
from xich.reports.summary import summary_markdown
from xich.result import AuditResult, ClassResult
from xich.run.context import current_context
from xich.run.deploy import start_run
from xich.run.pipeline import RecordedRun, held, hold, holding, open_requested_run
from xich.run.publish import publish_with_report

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _transient(task, task_run, state) -> bool:
    """Retry only what may work next time: OS-level I/O, a dropped database connection, a busy store."""
    try:
        state.result()
    except (OSError, Unavailable):
        return True
    except DBAPIError as exc:
        return exc.connection_invalidated or type(exc).__name__ in ("OperationalError", "InterfaceError")
    except BaseException:
        return False
    return False


# tasks take ids and plain data (a run id, a class name, a result), never a live session, so Prefect's default cache
# policy applies; NO_CACHE only where a task must run every time it is called (said at each)
IO = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_transient)


@task(name="fetch", **IO)
def fetch(uri: str | None, model: str | None = None, version: str | None = None, dataset: bool = False) -> str | None:
    """A local copy of an ``s3://`` dataset or checkpoint (cached by ETag), or of an MLflow ``runs:/`` /
    ``models:/`` source of the version ``model``/``version``; local paths unchanged (``Context.local_path``).
    A ``dataset`` that is a folder tree in S3 is not fetched here: each shard fetches its own classes
    (``Context.data_path``)."""
    ctx = current_context()
    return ctx.data_path(uri) if dataset else ctx.local_path(uri, model=model, version=version)


@task(name="open-run", cache_policy=NO_CACHE)  # always: it opens the model in this process, which a cached id would not
def open_run(parameters: dict, data: str | None, weights: str | None) -> str:
    """Prepare the model, record the version, begin (or find) the run; held open in the process's context (its
    run id is what the next tasks get)."""
    ctx = current_context()
    return hold(ctx, open_requested_run(ctx, RequestedAudit.of(parameters), data=data, weights=weights))


@task(name="load-class", task_run_name="load-{name}", **IO)
def load_class(run_id: str, name: str) -> ClassImages:
    return held(current_context(), run_id).opened.load(name)


# NO_CACHE: its input is the class's pixels, which a cache key would hash in full, for nothing (never retried)
@task(name="compute-class", task_run_name="compute-{images.name}", cache_policy=NO_CACHE)
def compute_class(run_id: str, images: ClassImages) -> ClassResult:
    return held(current_context(), run_id).compute(images)


@task(name="store-class", task_run_name="store-{cls.name}", **IO)
def store_class(run_id: str, cls: ClassResult) -> None:
    held(current_context(), run_id).store(cls)


@task(name="finish-run", **IO)
def finish_run(run_id: str) -> AuditResult:
    return held(current_context(), run_id).finish()


@task(name="publish-report", **IO)
def publish_report(run_id: str, result: AuditResult, model: str, version: str) -> str:
    ctx = current_context()
    return publish_with_report(ctx, result, held(ctx, run_id).opened, model=model, version=version)


@task(name="artifacts", cache_policy=NO_CACHE)  # always: a flow run without its artifacts would show nothing
def publish_artifacts(result: AuditResult, model: str, version: str, report_uri: str) -> None:
    key = artifact_key(model)
    create_table_artifact(key=f"{key}-classes", table=class_table(result),
                          description=f"XICH audit of {model} {version}: hierarchy per class")
    create_markdown_artifact(key=f"{key}-summary", description=f"XICH audit of {model} {version}",
                             markdown=summary_markdown(result, model=model, version=version, report_uri=report_uri))


@task(name="registry-tags", **IO)
def tag_registry_version(model: str, version: str, result: AuditResult, report_uri: str) -> dict | None:
    """The audit's tags on the MLflow version it came from (None: the version came from elsewhere)."""
    ctx = current_context()
    metadata = recorded_registry_metadata(engine=ctx.engine, model=model, version=version)
    return write_back(registry_metadata=metadata, model=model, version=version, result=result, report_uri=report_uri,
                      settings=ctx.settings)


def artifact_key(model: str) -> str:
    """``xich-<model>``: Prefect artifact keys take lowercase letters, digits and dashes only."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in model.lower())
    return "xich-" + "-".join(part for part in slug.split("-") if part)


def _audit_classes(rec: RecordedRun, names: list[str], *, wait: bool) -> None:
    """Load, compute and store each of ``names`` that no other process holds (``wait``: or once it lets go)."""
    for name in names:
        with rec.claim(name, wait=wait) as mine:
            if mine:
                store_class(rec.run_id, compute_class(rec.run_id, load_class(rec.run_id, name)))


@flow(name="audit-model-version", log_prints=True)
def audit_model_version(model: str, version: str, model_spec: str, weights_uri: str | None, dataset_uri: str,
                        settings: dict | None = None, shards: int = 1, shard: int | None = None,
                        shard_start_timeout_s: float = 600.0) -> dict:
    """Audit one model version on one dataset and record it; ``shards > 1`` spreads its classes over workers.

    The parent (``shard=None``) starts shards 1…n-1 through the audit deployment, audits shard 0
    itself, waits for the others, takes over any class they left (a shard that failed, or did not
    start within ``shard_start_timeout_s``), then finishes the run: status ``complete`` only when
    every class is stored. A failure marks the run ``failed`` with the error.
    """
    parameters = {"model": model, "version": version, "model_spec": model_spec, "weights_uri": weights_uri,
                  "dataset_uri": dataset_uri, "settings": dict(settings or {})}
    try:
        return _audit_version(parameters, shards, shard, shard_start_timeout_s)
    except Exception as exc:
        if shard is None:  # the parent speaks for the request: the nightly flow backs off from it
            try:
                record_failure(parameters, f"{type(exc).__name__}: {exc}")
            except Exception as record_exc:  # the audit's own error is the one to raise
                get_run_logger().warning("the failure was not recorded on the request: %s", record_exc)
        raise


@task(name="record-failure", **IO)
def record_failure(parameters: dict, error: str) -> None:
    """The failure on the registered audit request (if any): failures in a row, last error, next try."""
    request = record_request_failure(engine=current_context().engine, parameters=parameters, error=error)
    if request is not None:
        get_run_logger().error("audit of %s %s failed (%d time(s) in a row with this error; next try after %s): %s",
                               escape(parameters["model"]), escape(parameters["version"]), request["failures"],
                               request["next_try_at"], escape(error, 500))


def _audit_version(parameters: dict, shards: int, shard: int | None, shard_start_timeout_s: float) -> dict:
    logger = get_run_logger()
    model, version = parameters["model"], parameters["version"]
    admit_recorded(parameters, current_context().settings.hooks_allowed_specs)  # before anything is fetched for it
    run_id = open_run(parameters, fetch(parameters["dataset_uri"], dataset=True),
                      fetch(parameters["weights_uri"], model, version))
    with holding(current_context(), run_id) as rec:  # an error marks the run failed; closed and let go in any case
        if rec.complete:
            logger.info("run %s is complete: nothing to compute", rec.run_id)
        else:
            classes = rec.opened.classes
            children = _start_shards(parameters, shards) if shards > 1 and shard is None else []
            _audit_classes(rec, classes[(shard or 0)::max(1, shards)], wait=False)
            if shard:  # a child shard: the parent finishes the run
                return {"run_id": rec.run_id, "shard": shard, "computed": list(rec.computed)}
            _wait_for(children, shard_start_timeout_s)
            _audit_classes(rec, rec.pending(), wait=True)
        result = finish_run(run_id)
        report_uri = publish_report(run_id, result, model, version)  # a complete run stays complete if this fails
    publish_artifacts(result, model, version, report_uri)
    try:
        if tags := tag_registry_version(model, version, result, report_uri):
            logger.info("tags on the registry's version: %s", tags)
    except Exception as exc:  # the audit is complete and published: a registry that is down does not undo that
        logger.warning("audit of %s %s complete, but its tags were not written to the registry: %s", model, version,
                       exc)
    logger.info("audit of %s %s complete: run %s, report %s", model, version, result.run_id, report_uri)
    return {"run_id": result.run_id, "computed": list(rec.computed), "report": report_uri}


def _start_shards(parameters: dict, shards: int) -> list:
    """Flow runs of shards 1…n-1 through the audit deployment (whichever workers are free take them);
    none when there is no such deployment (no server, or not deployed): the parent audits every class."""
    settings = current_context().settings
    deployment = settings.audit_deployment
    runs = []
    try:
        for k in range(1, shards):
            runs.append(start_run(settings, {**parameters, "shards": shards, "shard": k},
                                  name=f"{parameters['model']}-{parameters['version']}-shard-{k}"))
    except Exception as exc:  # ObjectNotFound, or no API server: the work still gets done, here
        get_run_logger().warning("cannot start shards through deployment %r (%s); auditing every class here",
                                 deployment, exc)
    return runs


def _wait_for(children: list, start_timeout_s: float) -> None:
    """Wait until every child shard ends, or has not started within ``start_timeout_s``."""
    if not children:
        return
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + start_timeout_s
    with get_client(sync_client=True) as client:
        waiting = {run.id for run in children}
        while waiting:
            for run_id in list(waiting):
                state = client.read_flow_run(run_id).state
                if state is None or state.type.value in FINAL:
                    waiting.discard(run_id)
                elif state.type.value in ("SCHEDULED", "PENDING") and time.monotonic() > deadline:
                    get_run_logger().warning("shard run %s did not start in %.0f s; taking over its classes",
                                             run_id, start_timeout_s)
                    waiting.discard(run_id)
            time.sleep(2)


@task(name="find-unaudited", **IO)
def find_unaudited(model: str | None) -> list[dict]:
    """Every registered audit without a complete run, with what to do with it (see ``registration.request_plan``)."""
    ctx = current_context()
    return request_plan(engine=ctx.engine, model=model, allowed_specs=ctx.settings.hooks_allowed_specs,
                        stale_s=ctx.settings.run_stale_s)


@flow(name="audit-new-versions", log_prints=True)
def audit_new_versions(model: str | None = None, shards: int = 1) -> list[str]:
    """Start one audit per registered version without a complete audit on its dataset and settings.

    Through the audit deployment when there is one (each audit on whichever worker is free), else
    in this process, one after another. A request whose run is running is left to it; one that failed
    waits out its back-off, and after repeated identical failures is given up. Each request found is
    logged with what was done with it. Returns ``model/version`` of each audit started.
    """
    logger = get_run_logger()
    settings = current_context().settings
    deployment = settings.audit_deployment
    plan = find_unaudited(model)
    logger.info("%d registered audit(s) without a complete run%s", len(plan), f" of model {model}" if model else "")
    started, failed = [], []
    for item in plan:
        parameters = item["parameters"]
        name = escape(f"{parameters['model']}/{parameters['version']}")
        if item["action"] in ("given-up", "refused"):
            logger.warning("%s: %s%s", name, "refused: " if item["action"] == "refused" else "", escape(item["detail"], 500))
            continue
        if item["action"] != "start":
            logger.info("%s: skipped (%s): %s", name, item["action"], escape(item["detail"], 500))
            continue
        try:
            child = start_run(settings, {**parameters, "shards": shards})
            logger.info("%s: started through deployment %r (flow run %s; %s)", name, deployment, child.id,
                        item["detail"])
        except Exception as exc:
            logger.info("%s: no deployment %r (%s): auditing it here (%s)", name, deployment, type(exc).__name__,
                        item["detail"])
            try:
                audit_model_version(**parameters)
            except Exception as audit_exc:
                logger.error("%s: audit failed: %s", name, audit_exc)
                failed.append(name)
        started.append(name)
    if failed:
        raise RuntimeError(f"audit(s) failed: {', '.join(failed)} (each failure is recorded on its request, "
                           f"which backs off before its next try)")
    return started
