"""The service as a user meets it (issue 17): drift between versions with nothing but `xich register` and the
nightly flow; registrations that cannot succeed refused at once; failures the worker meets recorded on the
request, backed off and given up; the nightly flow saying what it did with each request."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import select, text

pytest.importorskip("prefect", reason="prefect not installed (pip install -e .)")

from flows.audit import audit_new_versions  # noqa: E402
from test_flows import prefect_server  # noqa: E402,F401  (one temporary Prefect server per module)
from xich.cli import main  # noqa: E402
from xich.records.db import AuditRequest, AuditRun, ModelVersion, RunClass, session_for, utcnow  # noqa: E402
from xich.engine.models import build_model  # noqa: E402
from xich.records.persist import MAX_FAILURES, RETRY_AFTER, load_audit  # noqa: E402

SETTINGS = '{"clusters": 2, "mosaics_per_pair": 4, "train_split": "", "device": "cpu", "null": false, "classes": %s}'
CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data"


def _weights(path: Path, seed: int, arch: str = "resnet20") -> str:
    torch.manual_seed(seed)
    torch.save(build_model(f"cifar:{arch}", 3).state_dict(), path)
    return str(path)


def _register(model: str, version: str, weights: str, data: str, classes: str, *extra: str) -> int:
    return main(["register", "--model", model, "--version", version, "--spec", "cifar:resnet20", "--weights", weights,
                 "--dataset", data, "--settings", SETTINGS % classes, *extra])


@pytest.fixture
def db(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    monkeypatch.setenv("XICH_DATABASE_URL", url)
    return url


def test_register_and_the_nightly_flow_give_drift_for_every_class(prefect_server, db, synth_data, tmp_path,
                                                                   monkeypatch, one_torch_thread, caplog):
    """v1 and v2 registered, the nightly flow run once: one drift row per class, no other command. A third
    version asking for a class the reference lacks (the README's hook example) is complete, that class
    clustered in its run; the computed classes and the Prefect worker that ran them are recorded."""
    caplog.set_level(logging.INFO, logger="prefect")
    monkeypatch.setenv("PREFECT__WORKER_NAME", "worker-a")  # what a Prefect worker sets for the runs it starts
    pair = '["circle", "square"]'
    assert _register("shapes", "v1", _weights(tmp_path / "v1.pt", 1), str(synth_data), pair) == 0
    assert _register("shapes", "v2", _weights(tmp_path / "v2.pt", 2), str(synth_data), pair) == 0
    assert audit_new_versions(model="shapes") == ["shapes/v1", "shapes/v2"]
    assert "shapes/v1: no deployment 'audit-model-version/audit'" in caplog.text
    with session_for(db) as session:
        drift = session.execute(text("SELECT class_name, from_version, to_version, from_run_id, to_run_id, "
                                     "clusters_compared FROM hierarchy_drift WHERE model_name = 'shapes' "
                                     "ORDER BY class_name")).all()
        assert [(r.class_name, r.from_version, r.to_version) for r in drift] == [("circle", "v1", "v2"),
                                                                                  ("square", "v1", "v2")]
        for r in drift:  # on one clustering: the clusters ranked in both runs are compared
            a, b = (next(c for c in load_audit(session=session, run_id=run).classes if c.name == r.class_name)
                    for run in (r.from_run_id, r.to_run_id))
            assert [c.members for c in a.clusters] == [c.members for c in b.clusters]
            assert r.clusters_compared == sum(x.rank is not None and y.rank is not None
                                              for x, y in zip(a.clusters, b.clusters))

    assert _register("shapes", "v3", _weights(tmp_path / "v3.pt", 3), str(synth_data), '["square", "triangle"]') == 0
    caplog.clear()
    assert audit_new_versions(model="shapes") == ["shapes/v3"]
    assert "2 registered audit(s)" not in caplog.text and "1 registered audit(s) without a complete run" in caplog.text
    with session_for(db) as session:
        runs = {mv.version: run for run, mv in session.execute(
            select(AuditRun, ModelVersion).join(ModelVersion, ModelVersion.id == AuditRun.model_version_id))}
        assert {v: r.status for v, r in runs.items()} == {"v1": "complete", "v2": "complete", "v3": "complete"}
        assert runs["v3"].clustering_id == runs["v1"].clustering_id == runs["v2"].clustering_id
        assert runs["v3"].timings["own_clustering_classes"] == ["triangle"]
        assert runs["v3"].timings["computed_classes"] == ["square", "triangle"]
        workers = set(session.scalars(select(RunClass.worker).where(RunClass.run_id == runs["v3"].id)))
        assert workers == {f"worker-a@{socket.gethostname()}:{os.getpid()}"}
    assert main(["clustering", "show", "--model", "shapes"]) == 0


def test_a_checkpoint_of_another_depth_is_refused_at_registration(db, synth_data, tmp_path, capsys):
    resnet32 = _weights(tmp_path / "r32.pt", 1, "resnet32")
    assert _register("m", "1", resnet32, str(synth_data), '["circle"]') == 2
    err = capsys.readouterr().err
    assert "a ResNet-32 checkpoint (5 blocks per stage), not the spec cifar:resnet20 (3 blocks per stage)" in err
    assert err.startswith("error:") and "Traceback" not in err


def test_the_papers_resnet44_is_refused_as_a_resnet20(db, synth_data, capsys):
    resnet44 = CIFAR / "cifar-resnet" / "resnet44-014dd654.th"
    if not resnet44.is_file():
        pytest.skip(f"{resnet44} absent (the shared real data, see /work/shared/data/README.md)")
    assert _register("m", "1", str(resnet44), str(synth_data), '["circle"]') == 2
    assert "a ResNet-44 checkpoint (7 blocks per stage)" in capsys.readouterr().err


def test_a_class_missing_from_the_dataset_is_refused_at_registration(db, synth_data, tmp_path, capsys):
    assert _register("m", "1", _weights(tmp_path / "w.pt", 1), str(synth_data), '["circle", "hexagon"]') == 2
    err = capsys.readouterr().err
    # the command line lists the split's classes to its operator, as `xich audit` does (a hook's sender gets no
    # listing: tests/test_hints.py::test_register_lists_the_split_classes)
    assert "class(es) hexagon are not in split 'test'" in err and "(available: circle, square, triangle)" in err


def test_relative_paths_are_stored_absolute(db, synth_data, tmp_path, monkeypatch):
    _weights(tmp_path / "w.pt", 1)
    monkeypatch.chdir(tmp_path)
    data = os.path.relpath(synth_data, tmp_path)
    assert _register("m", "1", "w.pt", data, '["circle"]') == 0
    with session_for(db) as session:
        mv = session.scalars(select(ModelVersion)).one()
        request = session.scalars(select(AuditRequest)).one()
    assert mv.weights_uri == str(tmp_path / "w.pt") and request.dataset_uri == str(synth_data)


def test_a_failure_on_the_worker_is_recorded_backed_off_then_given_up(prefect_server, db, synth_data, tmp_path,
                                                                        caplog, one_torch_thread):
    """A checkpoint removed after registration fails on the worker: the request records the error and its next
    try; the nightly flow skips it until then, and gives it up after MAX_FAILURES identical failures."""
    caplog.set_level(logging.INFO, logger="prefect")
    weights = Path(_weights(tmp_path / "gone.pt", 1))
    assert _register("gone", "1", str(weights), str(synth_data), '["circle"]') == 0
    weights.unlink()

    before = utcnow()
    with pytest.raises(RuntimeError, match="audit\\(s\\) failed: gone/1"):
        audit_new_versions(model="gone")
    with session_for(db) as session:
        request = session.scalars(select(AuditRequest)).one()
        assert request.failures == 1 and "no such file" in request.last_error
        next_try = request.next_try_at.replace(tzinfo=before.tzinfo)
        assert before + RETRY_AFTER <= next_try <= utcnow() + RETRY_AFTER

    caplog.clear()
    assert audit_new_versions(model="gone") == []  # backed off: not tried again
    assert "gone/1: skipped (backed-off): failed 1 time(s)" in caplog.text

    with session_for(db) as session:  # the back-off has passed, MAX_FAILURES - 1 failures behind it
        request = session.scalars(select(AuditRequest)).one()
        request.failures, request.next_try_at = MAX_FAILURES - 1, utcnow() - timedelta(minutes=1)
        session.commit()
    with pytest.raises(RuntimeError):
        audit_new_versions(model="gone")
    caplog.clear()
    assert audit_new_versions(model="gone") == []
    assert f"gone/1: given up after {MAX_FAILURES} identical failures" in caplog.text
    with session_for(db) as session:
        request = session.scalars(select(AuditRequest)).one()
        assert request.failures == MAX_FAILURES
        assert request.next_try_at.replace(tzinfo=before.tzinfo) - utcnow() > RETRY_AFTER * 2 ** (MAX_FAILURES - 2)

    _weights(weights, 1)  # fixed, and registered again: tried afresh
    assert _register("gone", "1", str(weights), str(synth_data), '["circle"]') == 0
    assert audit_new_versions(model="gone") == ["gone/1"]
