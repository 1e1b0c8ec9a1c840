"""The Prefect flows (flows/audit.py) under one Prefect test server: same numbers as the CLI, I/O retries
then a failed run, and the nightly flow starting exactly the unaudited versions."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
import torch
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

pytest.importorskip("prefect", reason="prefect not installed (pip install -e .)")

from prefect.artifacts import Artifact  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName  # noqa: E402

from flows.audit import artifact_key, audit_model_version, audit_new_versions  # noqa: E402
from builders import context_for, numbers
from xich.cli import main  # noqa: E402
from xich.records.db import AuditRequest, AuditRun, ModelVersion, make_engine, session_for  # noqa: E402
from xich.records.migrate import upgrade  # noqa: E402
from xich.engine.models import build_model  # noqa: E402
from xich.records.persist import load_audit  # noqa: E402
from xich.records.registration import register, unaudited  # noqa: E402

SETTINGS = {"clusters": 3, "mosaics_per_pair": 3, "per_image": 3, "device": "cpu", "null": False}  # one run each


@pytest.fixture(scope="module")
def prefect_server(ephemeral_prefect):
    """The module's temporary Prefect server (conftest's ephemeral_prefect)."""
    yield


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    torch.save(build_model("cifar:resnet20", 3).state_dict(), path)
    return str(path)


def _stored(url: str, run_id: str):
    with session_for(url) as session:
        return load_audit(session=session, run_id=run_id)


def _only_run(url: str) -> AuditRun:
    with session_for(url) as session:
        return session.scalars(select(AuditRun)).one()


def test_flow_stores_the_numbers_the_cli_stores(prefect_server, synth_data, weights, tmp_path, monkeypatch,
                                                one_torch_thread):
    cli_db, flow_db = f"sqlite:///{tmp_path / 'cli.db'}", f"sqlite:///{tmp_path / 'flow.db'}"
    monkeypatch.setenv("XICH_DATABASE_URL", cli_db)
    assert main(["audit", "--model", "cifar:resnet20", "--weights", weights, "--data", str(synth_data),
                 "--clusters", "3", "--mosaics-per-pair", "3", "--per-image", "3", "--device", "cpu",
                 "--model-name", "shapes", "--model-version", "v1", "--no-null"]) == 0
    monkeypatch.setenv("XICH_DATABASE_URL", flow_db)
    out = audit_model_version(model="shapes", version="v1", model_spec="cifar:resnet20", weights_uri=weights,
                              dataset_uri=str(synth_data), settings=SETTINGS)
    via_cli, via_flow = _stored(cli_db, _only_run(cli_db).id), _stored(flow_db, out["run_id"])
    assert numbers(via_flow, without=("notes", "timings", "run_id")) == numbers(via_cli, without=("notes", "timings", "run_id"))
    assert out["computed"] == ["circle", "square", "triangle"]
    assert out["report"].endswith(f"runs/{out['run_id']}/report/index.html")
    assert "<h2>triangle</h2>" in Path(urlparse(out["report"]).path).read_text()  # the published report

    summary = Artifact.get(f"{artifact_key('shapes')}-summary")
    table = Artifact.get(f"{artifact_key('shapes')}-classes")
    assert summary is not None and out["run_id"] in summary.data and out["report"] in summary.data
    assert table is not None and all(name in table.data for name in ("circle", "square", "triangle"))

    again = audit_model_version(model="shapes", version="v1", model_spec="cifar:resnet20", weights_uri=weights,
                                dataset_uri=str(synth_data), settings=SETTINGS)
    assert again["run_id"] == out["run_id"] and again["computed"] == []  # complete: read back, not recomputed


@pytest.fixture
def locked_pg(postgres_url):
    """The flow's PostgreSQL database, with ``run_cluster`` write-locked by another session for the test.

    A statement that waits for a lock longer than 300 ms is cancelled (lock_timeout in the URL): the
    class's store task meets a real OperationalError, as with a database that stays busy.
    """
    upgrade(postgres_url)
    conn = psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute("LOCK TABLE run_cluster IN EXCLUSIVE MODE")
    yield postgres_url + "?options=-c%20lock_timeout%3D300"
    conn.rollback()
    conn.close()
    from xich.records.migrate import downgrade

    downgrade(postgres_url)


def test_class_store_fails_on_io_is_retried_then_the_run_is_failed(prefect_server, locked_pg, synth_data, weights,
                                                                  monkeypatch, one_torch_thread):
    monkeypatch.setenv("XICH_DATABASE_URL", locked_pg)
    with pytest.raises(OperationalError, match="lock timeout"):
        audit_model_version(model="locked", version="v1", model_spec="cifar:resnet20", weights_uri=weights,
                            dataset_uri=str(synth_data), settings={**SETTINGS, "classes": ["circle"]})
    run = _only_run(locked_pg)
    assert run.status == "failed" and "OperationalError" in run.error and "lock timeout" in run.error

    with get_client(sync_client=True) as client:
        stores = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["store-circle"])))
        computes = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["compute-circle"])))
    store = max(stores, key=lambda t: t.created)
    assert store.run_count == 4 and store.state.is_failed()  # the first try and three retries
    assert max(computes, key=lambda t: t.created).run_count == 1  # computation is never retried


def test_audit_new_versions_starts_exactly_the_unaudited(prefect_server, synth_data, weights, tmp_path, monkeypatch,
                                                         one_torch_thread):
    url = f"sqlite:///{tmp_path / 'nightly.db'}"
    monkeypatch.setenv("XICH_DATABASE_URL", url)
    settings = {**SETTINGS, "classes": ["circle", "square"], "per_image": 0, "train_split": ""}
    requests = {v: register(records=context_for(url), model="nightly", version=v, model_spec="cifar:resnet20",
                            weights_uri=weights, dataset_uri=str(synth_data), settings=settings)
                for v in ("v1", "v2", "v3")}
    register(records=context_for(url), model="other", version="v1", model_spec="cifar:resnet20", weights_uri=weights,
             dataset_uri=str(synth_data), settings=settings)
    done = audit_model_version(**requests["v2"])
    assert [r["version"] for r in unaudited(engine=context_for(url).engine, model="nightly")] == ["v1", "v3"]

    assert audit_new_versions(model="nightly") == ["nightly/v1", "nightly/v3"]
    assert unaudited(engine=context_for(url).engine, model="nightly") == []
    assert [r["model"] for r in unaudited(engine=context_for(url).engine)] == ["other"]  # another model's version waits
    engine = make_engine(url)
    with Session(engine) as session:
        runs = {mv.version: (req.run_id, session.get(AuditRun, req.run_id).status)
                for req, mv in session.execute(select(AuditRequest, ModelVersion)
                                               .join(ModelVersion, ModelVersion.id == AuditRequest.model_version_id))
                if req.run_id}
    engine.dispose()
    assert sorted(runs) == ["v1", "v2", "v3"] and {s for _, s in runs.values()} == {"complete"}
    assert runs["v2"][0] == done["run_id"]
    with get_client(sync_client=True) as client:
        nightly = client.read_flow_runs(limit=200)
    versions = [r.parameters.get("version") for r in nightly
                if r.parameters.get("model") == "nightly" and "model_spec" in r.parameters]
    assert sorted(versions) == ["v1", "v2", "v3"]  # v2 was audited once, before the nightly flow


def test_shards_without_a_deployment_are_audited_by_the_parent(prefect_server, synth_data, weights, tmp_path,
                                                                 monkeypatch, one_torch_thread, caplog):
    url = f"sqlite:///{tmp_path / 'shards.db'}"
    monkeypatch.setenv("XICH_DATABASE_URL", url)
    done = audit_model_version(model="sharded", version="v1", model_spec="cifar:resnet20", weights_uri=weights,
                               dataset_uri=str(synth_data), shards=2,
                               settings={**SETTINGS, "per_image": 0, "classes": ["circle", "square"]})
    assert done["computed"] == ["circle", "square"] and _only_run(url).status == "complete"
    assert "cannot start shards through deployment 'audit-model-version/audit'" in caplog.text


def test_a_registry_that_is_down_leaves_the_audit_complete(prefect_server, synth_data, weights, tmp_path, monkeypatch,
                                                          one_torch_thread, caplog):
    """A version registered from MLflow gets tags after its audit; MLflow not answering logs a warning and the
    audit stays complete (the write-back task's own retries are turned off here: 2 + 4 + 8 s of backoff)."""
    import flows.audit
    from stack import free_port

    url = f"sqlite:///{tmp_path / 'tags.db'}"
    monkeypatch.setenv("XICH_DATABASE_URL", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("XICH_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(flows.audit, "tag_registry_version", flows.audit.tag_registry_version.with_options(retries=0))
    parameters = register(records=context_for(url), model="tagged", version="1", model_spec="cifar:resnet20",
                          weights_uri=weights, dataset_uri=str(synth_data),
                          settings={**SETTINGS, "per_image": 0, "classes": ["circle"]},
                          registry_metadata={"registry": "mlflow", "name": "tagged", "version": "1",
                                             "tracking_uri": f"http://127.0.0.1:{free_port()}"})
    done = audit_model_version(**parameters)
    assert _only_run(url).status == "complete" and done["run_id"] == _only_run(url).id
    assert "audit of tagged 1 complete, but its tags were not written to the registry: model 'tagged' version 1: " \
           "MLflow at http://127.0.0.1:" in caplog.text
    assert "did not answer" in caplog.text


def test_the_tasks_take_ids_and_plain_data_and_cache_where_that_is_correct():
    """No task gets a live RecordedRun (a Session and an Engine); NO_CACHE is left only where a task must always run."""
    import inspect

    import flows.audit as module
    from prefect.cache_policies import NO_CACHE
    from prefect.tasks import Task

    tasks = {t.name: t for t in vars(module).values() if isinstance(t, Task)}
    assert {"open-run", "load-class", "compute-class", "store-class", "finish-run", "publish-report"} <= set(tasks)
    for name, t in tasks.items():
        annotations = [str(p.annotation) for p in inspect.signature(t.fn).parameters.values()]
        assert not any("RecordedRun" in a or "Session" in a for a in annotations), (name, annotations)
    assert {name for name, t in tasks.items() if t.cache_policy is NO_CACHE} == {"open-run", "compute-class",
                                                                                 "artifacts"}
    assert inspect.signature(tasks["load-class"].fn).parameters["run_id"].annotation == "str"


def test_a_run_not_held_here_is_one_clear_error(tmp_path):
    from xich.errors import XichError
    from xich.run.pipeline import held

    with pytest.raises(XichError, match="run abc is not open in this process"):
        held(context_for(f"sqlite:///{tmp_path / 'x.db'}"), "abc")
