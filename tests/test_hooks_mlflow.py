"""The registry hooks against a real `mlflow server` (SQLite backend, the settings of
../shared/notes/mlflow-webhooks.md): a registered version is audited by itself, and the audit's tags come back.

End to end: MLflow → webhook → `xich serve-hooks` → a flow run of the audit deployment on a process worker of a
Prefect server backed by PostgreSQL, the checkpoint and CIFAR-10 JPEGs in SeaweedFS, the results in PostgreSQL →
tags on the MLflow version. A recording proxy between MLflow and the receiver keeps each delivery as it was
sent, so that it can be replayed. Prefect clients run in subprocesses (stack.prefect_python).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import text

import stack
from xich.records.db import make_engine
from xich.hooks.receiver import create_app
from xich.records.mlflow_registry import download_artifact, resolve_weights
from builders import AUDITED_RUNS
from xich.settings import get_hook_settings, get_settings

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
from shared_data import SHARED  # noqa: E402
from test_exact_values import least_dominant_share_from_rows  # noqa: E402
from test_hooks import checkpoint  # noqa: E402
SECRET = "whsec-e2e-" + uuid.uuid4().hex
CLASSES = ["cat", "dog"]

DEPLOY = """
\"\"\"python deploy.py REPO NAME POOL: deploy flows/audit.py:audit_model_version from the checkout REPO.\"\"\"
import sys

from prefect import flow

flow.from_source(source=sys.argv[1], entrypoint="flows/audit.py:audit_model_version").deploy(
    name=sys.argv[2], work_pool_name=sys.argv[3], print_next_steps=False)
"""

WAIT = """
\"\"\"python wait.py FLOW_RUN_ID TIMEOUT DEPLOYMENT: wait until the flow run is final; print one JSON line with its
state and the ids of every flow run of the deployment.\"\"\"
import json
import sys
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

run_id, timeout, deployment = UUID(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
t0 = time.monotonic()
with get_client(sync_client=True) as client:
    while True:
        run = client.read_flow_run(run_id)
        if (run.state is not None and run.state.is_final()) or time.monotonic() - t0 > timeout:
            break
        time.sleep(0.5)
    dep = client.read_deployment_by_name(deployment)
    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
print(json.dumps({"state": run.state.type.value if run.state else None, "message": run.state.message if run.state
                  else None, "wait_s": time.monotonic() - t0, "deployment_runs": [str(r.id) for r in runs]}))
"""


class RecordingProxy:
    """Between MLflow and the receiver: forwards each POST as it came and keeps it, with the answer."""

    def __init__(self, target: str):
        self.target, self.deliveries, self.arrived = target, [], threading.Condition()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k: v for k, v in self.headers.items() if k.lower().startswith(("x-mlflow-", "content-type"))}
                request = urllib.request.Request(proxy.target + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=60) as resp:
                        status, answer = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, answer = exc.code, exc.read()
                with proxy.arrived:
                    proxy.deliveries.append({"path": self.path, "headers": headers, "body": body, "status": status,
                                             "answer": json.loads(answer or b"null")})
                    proxy.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, predicate, timeout: float = 60) -> dict:
        """The first recorded delivery for which ``predicate(body_json)`` holds, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for delivery in self.deliveries:
                    if predicate(json.loads(delivery["body"])):
                        return delivery
                if not self.arrived.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"no such delivery in {timeout} s; got {self.deliveries}")


@contextmanager
def recording_proxy(target: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(target)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
        thread.join(timeout=5)


def _skip_without_the_stack() -> None:
    for missing in (stack.prefect_missing(), stack.mlflow_missing()):
        if missing is not None:
            pytest.skip(missing)
    if not (SHARED / "cifar10-jpeg" / "test.tar.gz").is_file():
        pytest.skip(f"no CIFAR-10 JPEG tarballs under {SHARED} (../shared/data)")


@pytest.mark.shared_data
def test_a_new_mlflow_version_is_audited_by_itself(mlflow_server, prefect_server, seaweedfs, results_db, tmp_path,
                                                   record_property):
    """create_webhook → a version whose source is a checkpoint in SeaweedFS → the receiver verifies the delivery,
    records the version and starts a flow run that completes the audit in PostgreSQL → tags on the MLflow version.
    The captured delivery, replayed, starts nothing; the challenger alias finds the audit done."""
    _skip_without_the_stack()
    timings: dict[str, float] = {"mlflow_start_s": mlflow_server.timings["start_s"]}
    suffix = uuid.uuid4().hex[:8]
    bucket, model, pool = f"xich-hooks-{suffix}", f"resnet20-{suffix}", f"xich-hooks-{suffix}"
    deployment = f"audit-model-version/hooks-{suffix}"
    seaweedfs.seed(bucket, stack.cifar_files(SHARED))
    s3 = seaweedfs.client()
    mapping = tmp_path / "hooks.toml"
    mapping.write_text(f'[models."{model}"]\nspec = "cifar:resnet20"\ndataset = "s3://{bucket}/datasets/cifar10-jpeg/"\n'
                       f'settings = {{classes = {json.dumps(CLASSES)}, clusters = 3, mosaics_per_pair = 5, control = false}}\n')  # the control: test_control.py
    # the workers get no MLflow setting: the write-back finds the server the receiver recorded with the version
    xich_env = {"XICH_DATABASE_URL": results_db, "XICH_STORE_URL": f"s3://{bucket}/results",
                "XICH_S3_ENDPOINT": seaweedfs.endpoint, "XICH_S3_ACCESS_KEY": seaweedfs.access_key,
                "XICH_S3_SECRET_KEY": seaweedfs.secret_key}

    began = time.monotonic()
    stack.create_process_pool(prefect_server, pool)
    stack.prefect_python(prefect_server, _write(tmp_path / "deploy.py", DEPLOY), str(REPO), f"hooks-{suffix}", pool,
                         cwd=REPO)
    timings["pool_and_deploy_s"] = time.monotonic() - began
    receiver_env = prefect_server.client_environ({
        **xich_env, "XICH_CACHE_DIR": str(tmp_path / "receiver-cache"), "XICH_HOOKS_SECRET": SECRET,
        "XICH_HOOKS_CONFIG": str(mapping), "XICH_AUDIT_DEPLOYMENT": deployment,
        "XICH_MLFLOW_TRACKING_URI": mlflow_server.tracking_uri,
        "XICH_HOOKS_ALLOWED_SOURCES": f"s3://{bucket}/models/"})  # where the versions' sources may lie
    with ExitStack() as running:
        began = time.monotonic()
        worker = running.enter_context(stack.prefect_worker(
            prefect_server, pool, f"worker-{suffix}", log_dir=tmp_path, wait=False,
            env={**xich_env, "XICH_CACHE_DIR": str(tmp_path / "worker-cache")}))
        hooks = running.enter_context(stack.hooks_receiver(receiver_env, tmp_path))
        proxy = running.enter_context(recording_proxy(hooks.url))
        worker.wait_online()
        timings["worker_and_receiver_s"] = time.monotonic() - began
        logs = lambda: f"--- receiver:\n{stack.log_tail(hooks.log, 30)}\n--- worker:\n{stack.log_tail(worker.log, 40)}"

        client = mlflow_server.client()
        client.create_webhook(name=f"xich-{suffix}", url=f"{proxy.url}/hooks/mlflow",
                              events=["model_version.created", "model_version_alias.created"], secret=SECRET)
        client.create_registered_model(model)
        began = time.monotonic()
        version = client.create_model_version(model, source=f"s3://{bucket}/models/resnet20.th",
                                              tags={"team": "vision"})
        created = proxy.wait_for(lambda doc: doc["action"] == "created" and doc["data"].get("name") == model)
        timings["create_to_answer_s"] = time.monotonic() - began
        assert created["status"] == 202 and created["answer"]["outcome"] == "started", f"{created}\n{logs()}"
        flow_run_id = created["answer"]["flow_run_id"]

        # the delivery as MLflow sent it, again: refused as a repeat, nothing started (MLflow's retry, or a replay)
        status, answer = hooks.post("/hooks/mlflow", created["body"], created["headers"])
        assert status == 409 and answer["error"].endswith(", started): nothing done again"), answer

        done = json.loads(stack.prefect_python(prefect_server, _write(tmp_path / "wait.py", WAIT), flow_run_id, "480",
                                               deployment, timeout=540).splitlines()[-1])
        timings["create_to_audited_s"] = time.monotonic() - began
        assert done["state"] == "COMPLETED", f"{done}\n{logs()}"
        assert done["deployment_runs"] == [flow_run_id]  # one flow run: the replay started none

        tags = client.get_model_version(model, version.version).tags
        client.set_registered_model_alias(model, "challenger", version.version)
        alias = proxy.wait_for(lambda doc: doc["entity"] == "model_version_alias" and doc["data"]["name"] == model)
        assert alias["status"] == 200 and alias["answer"]["outcome"] == "audited", f"{alias}\n{logs()}"

    engine = make_engine(results_db)
    try:
        with engine.connect() as conn:
            runs = conn.execute(text(f"SELECT id, status FROM audit_run WHERE {AUDITED_RUNS}")).all()
            requests = conn.execute(text("SELECT run_id FROM audit_request")).all()
            classes = sorted(conn.execute(text("SELECT class_name FROM run_class WHERE run_id = :run"),
                                          {"run": runs[0].id}).scalars())
            deliveries = conn.execute(text("SELECT event, outcome, flow_run_id FROM hook_delivery ORDER BY id")).all()
            metadata = conn.execute(text("SELECT mv.registry_metadata FROM model_version mv JOIN model m ON "
                                         "m.id = mv.model_id WHERE m.name NOT LIKE 'null:%'")).scalar_one()
            clusters = conn.execute(text("SELECT class_index, train_share, score FROM run_cluster WHERE run_id = :run"),
                                    {"run": runs[0].id}).all()
    finally:
        engine.dispose()
    assert [r.status for r in runs] == ["complete"] and classes == CLASSES
    assert [r.run_id for r in requests] == [runs[0].id]
    assert [tuple(d) for d in deliveries] == [("model_version.created", "started", flow_run_id),
                                              ("model_version_alias.created", "audited", None)]
    assert metadata["registry"] == "mlflow" and metadata["tags"]["team"] == "vision"

    # the write-back: MLflow's version carries the audit
    assert tags["xich.run_id"] == runs[0].id
    assert tags["xich.report"] == f"s3://{bucket}/results/runs/{runs[0].id}/report/index.html"
    assert tags["xich.least_dominant_share"] == f"{least_dominant_share_from_rows(clusters):.4f}"  # the stored run's
    assert s3.stat_object(bucket, f"results/runs/{runs[0].id}/report/index.html").size > 0
    assert SECRET not in hooks.log.read_text() and SECRET not in worker.log.read_text()

    timings["flow_wait_s"] = done["wait_s"]
    for key, value in timings.items():
        record_property(key, round(value, 2))
    log.info("hooks end-to-end timings: %s", {k: round(v, 1) for k, v in timings.items()})


def test_runs_sources_and_aliases_through_the_mlflow_client(mlflow_server, tmp_path, monkeypatch):
    """A version whose source is a run's folder of artifacts (mlflow.pytorch.log_state_dict), announced by the
    challenger alias: the receiver asks MLflow for the version, downloads the folder and finds its checkpoint."""
    import mlflow

    from test_hooks import Client, Recorder, version_created

    suffix = uuid.uuid4().hex[:8]
    model = f"runs-{suffix}"
    client = mlflow_server.client()
    experiment = client.create_experiment(f"xich-{suffix}")
    run = client.create_run(experiment)
    state = tmp_path / "state_dict.pth"
    checkpoint(state)  # a CIFAR ResNet-20 state_dict: registration reads its keys (xich.preflight)
    client.log_artifact(run.info.run_id, str(state), artifact_path="state_dict")
    client.create_registered_model(model)
    source = f"runs:/{run.info.run_id}/state_dict"
    mv = client.create_model_version(model, source=source, run_id=run.info.run_id,
                                     tags={"xich.spec": "cifar:resnet20", "xich.dataset": str(tmp_path)})
    recorder = Recorder()
    monkeypatch.chdir(tmp_path)  # the default cache folder is relative: .xich/cache
    app = Client(create_app(
        get_hook_settings(database_url=f"sqlite:///{tmp_path / 'xich.db'}", hooks_secret=SECRET,
                          mlflow_tracking_uri=mlflow_server.tracking_uri, cache_dir=".xich/cache",
                          hooks_allowed_sources=[str(tmp_path)]),  # the xich.dataset tag's folder
        start_audit=recorder))
    alias = {"entity": "model_version_alias", "action": "created", "timestamp": "2026-11-29T10:45:52+00:00",
             "data": {"name": model, "alias": "challenger", "version": mv.version}}
    answer = app.deliver(alias, secret=SECRET)
    assert answer.status_code == 202, answer.text
    assert recorder.calls[0]["weights_uri"] == f"{source}/state_dict.pth"
    assert recorder.calls[0]["model_spec"] == "cifar:resnet20" and recorder.calls[0]["dataset_uri"] == str(tmp_path)
    # what the worker's fetch task does with that URI: the same bytes
    for uri in (recorder.calls[0]["weights_uri"], f"models:/{model}/{mv.version}/state_dict.pth"):
        fetched = download_artifact(uri, tracking_uri=mlflow_server.tracking_uri, cache_dir=tmp_path / "worker-cache")
        assert fetched.read_bytes() == state.read_bytes(), uri
        assert download_artifact(uri, tracking_uri=mlflow_server.tracking_uri,
                                 cache_dir=tmp_path / "worker-cache") == fetched  # downloaded once
    client.set_registered_model_alias(model, "challenger", mv.version)
    settings = get_settings(mlflow_tracking_uri=mlflow_server.tracking_uri, cache_dir=".xich/cache")
    assert resolve_weights(f"models:/{model}@challenger", weights_file=None, settings=settings)[0] == \
        f"{source}/state_dict.pth"  # recorded as where the version's artifacts live
    assert not (tmp_path / "mlflow.db").exists()  # nothing asked MLflow's default (local) tracking store
    missing = app.deliver(version_created(name=model, version="9", source=f"runs:/{run.info.run_id}/nothing-here",
                                          tags={"xich.spec": "cifar:resnet20", "xich.dataset": str(tmp_path)}),
                          secret=SECRET)
    assert missing.status_code == 422 and "MLflow at http://127.0.0.1:" in missing.json()["reason"], missing.text


def _write(path: Path, text_: str) -> Path:
    path.write_text(text_)
    return path
