"""The parent of a sharded audit takes over the classes of a shard that never starts and of one that fails, and
the sharded run stores the numbers an unsharded run stores (flows/audit.py under a temporary Prefect server).

The audit deployment here belongs to a process pool without workers: the shard's flow run is created and stays
SCHEDULED — a shard that never starts. For a shard that fails, its run is moved to FAILED through the API while
the parent waits (as a worker reports a flow run whose process died), without a worker process of its own.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import select

from xich.records.db import AuditRun, session_for
from xich.records.persist import load_audit

pytest.importorskip("prefect", reason="prefect not installed (pip install -e .)")

from test_flows import weights  # noqa: E402,F401  (the module-scoped ResNet-20 checkpoint fixture)

SETTINGS = {"clusters": 3, "mosaics_per_pair": 3, "per_image": 0, "train_split": "", "device": "cpu", "null": False,
            "classes": ["circle", "square", "triangle"]}


@pytest.fixture
def deployment_without_workers(ephemeral_prefect, monkeypatch) -> str:
    """``audit-model-version/<name>`` in a process pool that no worker polls; XICH_AUDIT_DEPLOYMENT names it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    name = f"no-workers-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        flow_id = client.create_flow_from_name("audit-model-version")
        client.create_deployment(flow_id=flow_id, name=name, work_pool_name=name,
                                 entrypoint="flows/audit.py:audit_model_version")
    monkeypatch.setenv("XICH_AUDIT_DEPLOYMENT", f"audit-model-version/{name}")
    return name


def _shard_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))


def _audit(url: str, synth_data, weights: str, monkeypatch, **kw) -> dict:
    from flows.audit import audit_model_version

    monkeypatch.setenv("XICH_DATABASE_URL", url)
    return audit_model_version(model="shapes", version="v1", model_spec="cifar:resnet20", weights_uri=weights,
                               dataset_uri=str(synth_data), settings=SETTINGS, **kw)


def _stored(url: str, run_id: str) -> dict:
    with session_for(url) as session:
        assert session.scalars(select(AuditRun.status)).all() == ["complete"]
        doc = load_audit(session=session, run_id=run_id).to_dict()
    return {k: v for k, v in doc.items() if k not in ("notes", "run_id", "timings")}  # timings: seconds


@pytest.fixture(scope="module")
def unsharded(ephemeral_prefect, synth_data, weights, tmp_path_factory) -> dict:
    url = f"sqlite:///{tmp_path_factory.mktemp('unsharded') / 'xich.db'}"
    with pytest.MonkeyPatch.context() as mp:
        done = _audit(url, synth_data, weights, mp)
    return _stored(url, done["run_id"])


def test_a_shard_that_never_starts_is_taken_over(deployment_without_workers, unsharded, synth_data, weights,
                                                 tmp_path, monkeypatch, caplog, one_torch_thread):
    url = f"sqlite:///{tmp_path / 'xich.db'}"
    done = _audit(url, synth_data, weights, monkeypatch, shards=2, shard_start_timeout_s=3)
    [child] = _shard_runs(deployment_without_workers)
    assert child.parameters["shard"] == 1 and child.state.type.value == "SCHEDULED"  # it never ran
    assert "did not start in 3 s; taking over its classes" in caplog.text
    assert sorted(done["computed"]) == ["circle", "square", "triangle"]  # shard 0's two and the child's one
    assert _stored(url, done["run_id"]) == unsharded


def test_a_shard_that_fails_is_taken_over(deployment_without_workers, unsharded, synth_data, weights, tmp_path,
                                          monkeypatch, one_torch_thread):
    """The child's run fails while the parent waits (start timeout 10 min: only its failure ends the wait)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    failed = []

    def fail_the_shard():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not failed:
            for run in _shard_runs(deployment_without_workers):
                with get_client(sync_client=True) as client:
                    client.set_flow_run_state(run.id, Failed(message="worker process died"), force=True)
                failed.append(run.id)
            time.sleep(0.5)

    thread = threading.Thread(target=fail_the_shard, daemon=True)
    thread.start()
    url = f"sqlite:///{tmp_path / 'xich.db'}"
    began = time.monotonic()
    done = _audit(url, synth_data, weights, monkeypatch, shards=2, shard_start_timeout_s=600)
    thread.join(timeout=5)
    assert failed and time.monotonic() - began < 300
    [child] = _shard_runs(deployment_without_workers)
    assert child.state.type.value == "FAILED"
    assert sorted(done["computed"]) == ["circle", "square", "triangle"]
    assert _stored(url, done["run_id"]) == unsharded
