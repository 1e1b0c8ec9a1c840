"""The service on its native stack: a Prefect server on PostgreSQL, a process pool with two workers, SeaweedFS.

The Prefect clients (deploy, trigger, read back) run in a subprocess (tests/stack.py ``prefect_python``), so
that no Prefect setting, logger or thread enters the pytest process.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from builders import AUDITED_RUNS
from sqlalchemy import text

from stack import (cifar_files, create_process_pool, log_tail, prefect_cli, prefect_missing, prefect_python,
                   prefect_worker)
from xich.records.db import make_engine

if (_missing := prefect_missing()) is not None:
    pytest.skip(f"native Prefect stack not tested: {_missing}", allow_module_level=True)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
from shared_data import SHARED  # noqa: E402
CLASSES = ["airplane", "automobile", "bird", "cat"]
SETTINGS = {"classes": CLASSES, "clusters": 3, "mosaics_per_pair": 5, "train_split": "", "normalize": "imagenet"}

DRIVER = """
\"\"\"python driver.py FLOW_RUN_ID TIMEOUT MODEL: wait until the audit's flow run and its shards are final, then
print one JSON line: every flow run of the audit deployment, and the model's artifacts.\"\"\"
import json
import sys
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

parent_id, timeout, model = UUID(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
t0 = time.monotonic()
with get_client(sync_client=True) as client:
    while True:
        runs = client.read_flow_runs(limit=50)
        mine = [r for r in runs if r.id == parent_id or r.parent_task_run_id is not None or "shard" in r.name]
        if all(r.state is not None and r.state.is_final() for r in mine) and any(r.id == parent_id for r in mine):
            break
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(1)
    keys = [f"xich-{model}-summary", f"xich-{model}-classes"]
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
print(json.dumps({"wait_s": time.monotonic() - t0, "runs": [
    {"id": str(r.id), "name": r.name, "state": r.state.type.value if r.state else None,
     "message": r.state.message if r.state else None, "labels": dict(r.labels or {}),
     "parameters": r.parameters} for r in mine],
    "artifacts": [{"key": a.key, "data": a.data} for a in artifacts]}))
"""


@pytest.mark.shared_data
def test_sharded_audit_on_two_process_workers(prefect_server, seaweedfs, results_db, tmp_path, record_property):
    """prefect.yaml deployed to a process pool; `xich register --audit --shards 2` of the public ResNet-20 on
    CIFAR-10 JPEGs held in S3: both workers audit a shard, one run is complete with every class, and the
    artifacts are in Prefect."""
    if not (SHARED / "cifar10-jpeg" / "test.tar.gz").is_file():
        pytest.skip(f"no CIFAR-10 JPEG tarballs under {SHARED} (../shared/data)")
    timings: dict[str, float] = {"server_start_s": prefect_server.timings["start_s"]}
    suffix = uuid.uuid4().hex[:8]
    bucket, model = f"xich-{suffix}", f"resnet20-{suffix}"
    seaweedfs.seed(bucket, cifar_files(SHARED))
    s3 = seaweedfs.client()
    xich_env = {"XICH_DATABASE_URL": results_db, "XICH_STORE_URL": f"s3://{bucket}/results",
                "XICH_S3_ENDPOINT": seaweedfs.endpoint, "XICH_S3_ACCESS_KEY": seaweedfs.access_key,
                "XICH_S3_SECRET_KEY": seaweedfs.secret_key, "OMP_NUM_THREADS": "1"}

    began = time.monotonic()
    create_process_pool(prefect_server, "xich-process")
    prefect_cli(prefect_server, "deploy", "--name", "audit", cwd=REPO)  # the repository's own prefect.yaml
    timings["pool_and_deploy_s"] = time.monotonic() - began
    names = [f"worker-a-{suffix}", f"worker-b-{suffix}"]
    with ExitStack() as started:
        workers = [started.enter_context(prefect_worker(prefect_server, "xich-process", name, log_dir=tmp_path,
                                                        env={**xich_env, "XICH_CACHE_DIR": str(tmp_path / name)},
                                                        wait=False))
                   for name in names]
        for worker in workers:
            worker.wait_online()
        began = time.monotonic()
        registered = subprocess.run(
            [str(Path(sys.executable).with_name("xich")), "register", "--model", model, "--version", "1",
             "--spec", "cifar:resnet20", "--weights", f"s3://{bucket}/models/resnet20.th",
             "--dataset", f"s3://{bucket}/datasets/cifar10-jpeg/", "--settings", json.dumps(SETTINGS),
             "--audit", "--shards", "2"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env=prefect_server.client_environ({**xich_env, "XICH_CACHE_DIR": str(tmp_path / "client")}))
        assert registered.returncode == 0, registered.stderr
        parent_id = re.search(r"flow run \S+ \(([0-9a-f-]{36})\)", registered.stdout).group(1)
        result = json.loads(prefect_python(prefect_server, _write(tmp_path / "driver.py", DRIVER), parent_id, "400",
                                           model, timeout=450).splitlines()[-1])
        timings["register_to_final_s"] = time.monotonic() - began
    logs = "\n".join(f"--- {w.log.name}:\n{log_tail(w.log, 40)}" for w in workers)

    runs = {r["id"]: r for r in result["runs"]}
    parent = runs[parent_id]
    shards = [r for r in result["runs"] if r["parameters"].get("shard") == 1]
    assert parent["state"] == "COMPLETED", f"{parent}\n{logs}"
    assert len(shards) == 1 and shards[0]["state"] == "COMPLETED", f"{result['runs']}\n{logs}"
    ran_by = sorted(r["labels"].get("prefect.worker.name") for r in (parent, shards[0]))
    assert ran_by == sorted(names), f"parent and shard ran on {ran_by}, not one each:\n{logs}"

    engine = make_engine(results_db)
    try:
        with engine.connect() as conn:
            run_rows = conn.execute(text(f"SELECT id, status, timings FROM audit_run WHERE {AUDITED_RUNS}")).all()
            classes = conn.execute(text("SELECT class_name, worker FROM run_class WHERE run_id = "
                                        f"(SELECT id FROM audit_run WHERE {AUDITED_RUNS})")).all()
            request = conn.execute(text("SELECT run_id FROM audit_request")).all()
            null = conn.execute(text("SELECT r.status, rc.class_name FROM audit_run r JOIN run_class rc ON "
                                     f"rc.run_id = r.id WHERE NOT r.{AUDITED_RUNS}")).all()
    finally:
        engine.dispose()
    assert len(run_rows) == 1 and run_rows[0].status == "complete"
    # the null model, computed by the shards class by class beside the model's classes, each class once
    assert sorted(c for _, c in null) == CLASSES and {s for s, _ in null} == {"complete"}
    assert sorted(c.class_name for c in classes) == CLASSES
    assert len({c.worker for c in classes}) == 2, f"classes computed by {classes}: one shard did nothing\n{logs}"
    assert {c.worker.partition("@")[0] for c in classes} == set(names)  # the Prefect worker that ran each class
    assert sorted(run_rows[0].timings["computed_classes"]) == CLASSES  # the shard's classes too, not the parent's only
    assert [r.run_id for r in request] == [run_rows[0].id]  # the registered request is served by this run

    keys = {a["key"]: a["data"] for a in result["artifacts"]}
    assert run_rows[0].id in keys[f"xich-{model}-summary"]
    assert all(c in keys[f"xich-{model}-classes"] for c in CLASSES)
    report = s3.stat_object(bucket, f"results/runs/{run_rows[0].id}/report/index.html")
    assert report.size > 0

    timings["wait_s"] = result["wait_s"]
    for key, value in timings.items():
        record_property(key, round(value, 2))
    log.info("sharded audit timings: %s", {k: round(v, 1) for k, v in timings.items()})


def _write(path: Path, text_: str) -> Path:
    path.write_text(text_)
    return path
