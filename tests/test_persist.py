"""The results database on SQLite and on a real PostgreSQL (a throwaway database per test session)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from alembic import command
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session

from xich.engine.audit import run_audit
from xich.errors import XichError
from xich.records.db import Model, AuditRun, Base, ModelVersion, RunClass, make_engine
from xich.records.migrate import alembic_config, downgrade, upgrade
from builders import context_for, numbers, recorded, resnet20_config
from xich.run.pipeline import open_recorded_run
from xich.result import AuditResult

def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _row_counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    finally:
        engine.dispose()


def _config(data, **kw):
    # one run's rows, resumption and coordination: the null model's own run (a second run in the database) is
    # tested in test_looks_and_null.py; the control (on request since the rare-look benchmark) is on, so its block and
    # timings are stored and read back as old runs and --control runs have them
    return resnet20_config(data, clusters=3, mosaics_per_pair=3, per_image=3, **{"null": False, "control": True, **kw})


def test_migrations_up_down_up(database_url):
    upgrade(database_url)
    assert {t.name for t in Base.metadata.sorted_tables} <= _tables(database_url)
    command.check(alembic_config(database_url))  # the migrations build exactly the models' schema
    downgrade(database_url)
    assert _tables(database_url) <= {"alembic_version"}
    upgrade(database_url)
    assert {t.name for t in Base.metadata.sorted_tables} <= _tables(database_url)


def _stored_content(url: str, run_id: str) -> dict[str, dict]:
    """What the tables hold for a run, read by SQL (not through ``load_classes``): per class its index, clusters
    (index, size, score, rank, training share, members), dominance matrix, mosaics and per-image rows."""
    engine = make_engine(url)
    q = lambda sql: conn.execute(text(sql), {"r": run_id}).all()  # noqa: E731
    try:
        with engine.connect() as conn:
            classes = {r.class_index: r.class_name for r in q("SELECT class_index, class_name FROM run_class "
                                                              "WHERE run_id = :r")}
            members = {}
            for r in q("SELECT rcl.class_index, rcl.cluster_index, m.image_id FROM run_cluster rcl "
                       "JOIN cluster_member m ON m.cluster_id = rcl.cluster_id WHERE rcl.run_id = :r"):
                members.setdefault((r.class_index, r.cluster_index), []).append(r.image_id)
            out = {name: {"index": k, "clusters": [], "dominance": {}, "mosaics": [], "per_image": []}
                   for k, name in classes.items()}
            for r in q("SELECT * FROM run_cluster WHERE run_id = :r ORDER BY class_index, cluster_index"):
                out[classes[r.class_index]]["clusters"].append(
                    (r.cluster_index, r.eval_size, r.score, r.rank, r.train_share,
                     sorted(members.get((r.class_index, r.cluster_index), []))))
            for r in q("SELECT * FROM pair_dominance WHERE run_id = :r"):
                out[classes[r.class_index]]["dominance"][r.cluster_i, r.cluster_j] = r.dominance
            for r in q("SELECT * FROM mosaic WHERE run_id = :r ORDER BY class_index, position"):
                out[classes[r.class_index]]["mosaics"].append(
                    ([r.pair_i, r.pair_j], [r.image_tl, r.image_tr, r.image_bl, r.image_br],
                     [r.cluster_tl, r.cluster_tr, r.cluster_bl, r.cluster_br], r.d))
            for r in q("SELECT * FROM per_image_score WHERE run_id = :r ORDER BY class_index, position"):
                out[classes[r.class_index]]["per_image"].append((r.image_id, r.score, r.logit, r.softmax))
        return out
    finally:
        engine.dispose()


def _content(result: AuditResult) -> dict[str, dict]:
    """The same content from an audit result (an unrecorded run)."""
    return {cls.name: {"index": cls.index,
                       "clusters": [(c.id, c.eval_size, c.score, c.rank, c.train_share, sorted(c.members))
                                    for c in cls.clusters],
                       "dominance": {(i, j): cls.dominance[i][j] for i in range(len(cls.clusters))
                                     for j in range(len(cls.clusters))},
                       "mosaics": [(m.pair, m.images, m.clusters, m.d) for m in cls.mosaics],
                       "per_image": [(r.image, r.score, r.logit, r.softmax) for r in cls.per_image.images]}
            for cls in result.classes}


def _assert_stored_content(content: dict[str, dict], expected: dict[str, dict]) -> None:
    assert sorted(content) == sorted(expected) == ["circle", "square", "triangle"]
    for name, want in expected.items():
        got = content[name]
        assert got["index"] == want["index"], name
        assert len(got["clusters"]) == len(want["clusters"]) == 3, name
        for g, w in zip(got["clusters"], want["clusters"]):
            assert g[:2] == w[:2] and g[3] == w[3] and g[5] == w[5], (name, g[0])  # index, size, rank, members
            assert g[2] == pytest.approx(w[2]) and g[4] == pytest.approx(w[4]), (name, g[0])
        assert sum(len(g[5]) for g in got["clusters"]) == 12
        assert got["dominance"] == pytest.approx(want["dominance"], nan_ok=True), name
        assert [m[:3] for m in got["mosaics"]] == [m[:3] for m in want["mosaics"]], name
        assert [m[3] for m in got["mosaics"]] == pytest.approx([m[3] for m in want["mosaics"]]), name
        assert [r[0] for r in got["per_image"]] == [r[0] for r in want["per_image"]], name
        for g, w in zip(got["per_image"], want["per_image"], strict=True):
            assert g[1:] == pytest.approx(w[1:]), (name, g[0])


def test_stored_audit_reads_back_equal_to_its_json(database_url, synth_data, one_torch_thread):
    config = _config(synth_data)
    with open_recorded_run(context_for(database_url), config, model_name="shapes", model_version="v1") as rec:
        for _ in rec.audit_pending():
            pass
        direct = run_audit(config, run_id=rec.run.id)
        # the rows as stored, before anything reads the run back, by content: every class with its clusters and
        # their members, the matrices, mosaics and per-image scores of an unrecorded run of the same audit (a class
        # stored without clusters, or a cluster with another's members, fails here by name)
        _assert_stored_content(_stored_content(database_url, rec.run.id), _content(direct))
        stored = rec.finish()
    assert numbers(stored) == numbers(direct)
    assert AuditResult.from_dict(json.loads(stored.to_json())) == stored  # the document reads back whole
    assert {"fingerprint_s", "audit_s", "decode_s", "embed_s", "cam_s", "control_s", "train_s"} <= set(stored.timings)
    counts = _row_counts(database_url)
    assert counts["mosaic"] == 3 * 3 * 3  # 3 classes x 3 pairs x J = 3
    assert counts["pair_dominance"] == 3 * 9
    assert counts["cluster_member"] == 3 * 12
    assert counts["per_image_score"] == 3 * 3


@pytest.mark.parametrize("train_split", ["train", "missing"])
def test_rerun_changes_no_row(database_url, synth_data, one_torch_thread, train_split):
    config = _config(synth_data, train_split=train_split)
    first = recorded(config, database_url, model_name="shapes", model_version="v1")
    before = _row_counts(database_url)
    again = recorded(config, database_url, model_name="shapes", model_version="v1")
    assert _row_counts(database_url) == before
    assert numbers(again) == numbers(first)
    assert again.dataset.train_split == (None if train_split == "missing" else "train")


class _Killed(Exception):
    pass


def test_run_stopped_after_two_classes_resumes_and_completes(database_url, synth_data, one_torch_thread):
    config = _config(synth_data)
    seen = []
    with pytest.raises(_Killed):
        with open_recorded_run(context_for(database_url), config, model_name="shapes", model_version="v1") as rec:
            for _images, cls in rec.audit_pending():
                seen.append(cls.name)
                if len(seen) == 2:
                    raise _Killed
    engine = make_engine(database_url)
    with Session(engine) as s:
        run = s.scalars(select(AuditRun)).one()
        assert run.status == "failed" and "_Killed" in run.error
    engine.dispose()
    assert _row_counts(database_url)["run_class"] == 2

    result = recorded(config, database_url, model_name="shapes", model_version="v1")
    engine = make_engine(database_url)
    with Session(engine) as s:
        timings = s.get(AuditRun, run.id).timings
    engine.dispose()
    assert timings["computed_classes"] == [n for n in ["circle", "square", "triangle"] if n not in seen]
    assert timings["resumed_classes"] == sorted(seen)
    assert result.run_id == run.id
    assert [c.name for c in result.classes] == ["circle", "square", "triangle"]
    engine = make_engine(database_url)
    with Session(engine) as s:
        assert s.get(AuditRun, run.id).status == "complete"
    engine.dispose()
    assert numbers(result) == numbers(run_audit(config, run_id=run.id))


def test_killed_process_resumes_and_completes(database_url, synth_data, tmp_path, one_torch_thread):
    """SIGKILL the CLI once two classes are committed; the rerun audits only the third and completes."""
    argv = [sys.executable, "-m", "xich.cli", "audit", "--model", "cifar:resnet20", "--data", str(synth_data),
            "--clusters", "3", "--mosaics-per-pair", "40", "--device", "cpu", "--model-name", "shapes",
            "--model-version", "v1", "--json", str(tmp_path / "audit.json"), "--no-control", "--no-null"]  # coordination, not the control
    env = {**os.environ, "XICH_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            stored = _row_counts(database_url)["run_class"]
        except Exception:  # schema not created yet
            stored = 0
        if stored >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the audit finished before it could be killed"
    assert _row_counts(database_url)["run_class"] == 2
    engine = make_engine(database_url)
    with Session(engine) as s:
        assert s.scalars(select(AuditRun)).one().status == "running"  # killed: never marked complete
    engine.dispose()
    assert not (tmp_path / "audit.json").exists()

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    engine = make_engine(database_url)
    with Session(engine) as s:
        run = s.scalars(select(AuditRun)).one()
        assert run.status == "complete" and len(run.timings["resumed_classes"]) == 2
    engine.dispose()
    config = resnet20_config(synth_data, clusters=3, mosaics_per_pair=40, control=False, null=False)  # as audited above
    assert json.loads((tmp_path / "audit.json").read_text())["classes"] == run_audit(config).to_dict()["classes"]


def test_cli_records_the_run_and_publishes_it_to_the_store(synth_data, tmp_path, monkeypatch, capsys,
                                                            one_torch_thread):
    from xich.cli import main

    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'xich.db'}")
    monkeypatch.setenv("XICH_STORE_URL", str(tmp_path / "store"))
    argv = ["audit", "--model", "cifar:resnet20", "--data", str(synth_data), "--clusters", "2",
            "--mosaics-per-pair", "2", "--json", str(tmp_path / "a.json"), "--report", str(tmp_path / "report"),
            "--model-name", "shapes", "--registry-metadata", '{"stage": "staging", "registry_run": "abc123"}']
    assert main(argv[:-1] + ["[1, 2]"]) == 2
    assert "--registry-metadata: pass a JSON object" in capsys.readouterr().err
    assert main(argv) == 0
    doc = json.loads((tmp_path / "a.json").read_text())
    assert f"run id: {doc['run_id']}" in capsys.readouterr().out
    run_dir = tmp_path / "store" / "runs" / doc["run_id"]
    assert json.loads((run_dir / "audit.json").read_text()) == doc
    assert (run_dir / "report" / "index.html").is_file()
    figures = sorted(p.name for p in (tmp_path / "report").glob("mosaics_*.png"))
    assert figures
    # a rerun reads the run back from the database and still renders the example mosaics from their manifests
    for p in (tmp_path / "report").iterdir():
        p.unlink()
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "report").glob("mosaics_*.png")) == figures
    assert _row_counts(f"sqlite:///{tmp_path / 'xich.db'}")["audit_run"] == 2  # the run and its null model's
    engine = make_engine(f"sqlite:///{tmp_path / 'xich.db'}")
    with Session(engine) as s:
        mv = s.scalars(select(ModelVersion).join(Model).where(Model.name == "shapes")).one()
        assert (mv.version, mv.weights_sha256) == ("none", None)  # no --weights: random init, version "none"
        assert mv.registry_metadata == {"stage": "staging", "registry_run": "abc123"}
    engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql", "sqlite"], indirect=True)
def test_two_processes_auditing_one_version_compute_each_class_once(database_url, synth_data, tmp_path):
    """Two real processes start the same audit at once: each class is computed by one of them, both succeed."""
    argv = [sys.executable, "-m", "xich.cli", "-v", "audit", "--model", "cifar:resnet20", "--data", str(synth_data),
            "--clusters", "3", "--mosaics-per-pair", "150", "--device", "cpu", "--model-name", "shapes",
            "--model-version", "v1", "--no-control", "--no-null"]  # coordination, not the control
    env = {**os.environ, "XICH_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1",
           "XICH_STORE_URL": str(tmp_path / "store")}
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    computed = [re.findall(r"class (\w+) computed and stored by (\S+)", err) for _, err in outputs]
    assert sorted(name for found in computed for name, _ in found) == ["circle", "square", "triangle"]
    engine = make_engine(database_url)
    with Session(engine) as s:
        run = s.scalars(select(AuditRun)).one()
        workers = dict(s.execute(select(RunClass.class_name, RunClass.worker).where(RunClass.run_id == run.id)).all())
        assert run.status == "complete"
    engine.dispose()
    assert workers == {name: worker for found in computed for name, worker in found}
    assert all(found for found in computed), "the two processes did not overlap: one computed nothing"


def test_every_per_run_table_is_reached_by_run_id_through_an_index(database_url):
    """The views and reports read a run's rows by run_id: each table holding them has an index led by run_id."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        inspector = inspect(engine)
        for table in Base.metadata.sorted_tables:
            if "run_id" not in table.c:
                continue
            led = [ix["column_names"] for ix in inspector.get_indexes(table.name)]
            led.append(inspector.get_pk_constraint(table.name)["constrained_columns"])
            led += [u["column_names"] for u in inspector.get_unique_constraints(table.name)]
            assert any(cols and cols[0] == "run_id" for cols in led), (table.name, led)
        for table, column in (("clustering", "model_version_id"), ("clustering", "dataset_id"),
                              ("audit_run", "dataset_id"), ("audit_run", "clustering_id"),
                              ("run_cluster", "cluster_id"), ("run_class", "clustering_id")):
            assert any(ix["column_names"][0] == column for ix in inspector.get_indexes(table)), (table, column)
    finally:
        engine.dispose()


def test_run_status_is_checked_and_json_is_jsonb_on_postgresql(database_url, synth_data, one_torch_thread):
    from sqlalchemy.exc import IntegrityError

    result = recorded(_config(synth_data, classes=("circle",)), database_url, model_name="shapes",
                            model_version="v1")
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            with pytest.raises(IntegrityError):
                conn.execute(text("UPDATE audit_run SET status = 'done-ish' WHERE id = :r"), {"r": result.run_id})
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                types = dict(conn.execute(text(
                    "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                    "WHERE column_name IN ('config', 'registry_metadata', 'labels', 'notes', 'timings')")).all())
            assert set(types.values()) == {"jsonb"}, types
            with engine.connect() as conn:  # JSONB answers containment queries on the settings
                hits = conn.execute(text("SELECT COUNT(*) FROM audit_run WHERE config @> '{\"seed\": 0}'")).scalar()
            assert hits == 1
    finally:
        engine.dispose()


def test_a_run_is_complete_only_when_every_selected_class_is_stored(database_url, synth_data, one_torch_thread):
    from xich.records.persist import finish_run

    recorded(_config(synth_data, classes=("circle",)), database_url, model_name="shapes",
                   model_version="v1")
    engine = make_engine(database_url)
    with Session(engine) as s:
        run = s.scalars(select(AuditRun)).one()
        with pytest.raises(XichError, match="square, triangle are not stored, so the run is not complete"):
            finish_run(session=s, run=run, classes=["circle", "square", "triangle"], resolved_config={},
                       train_split=None, summary={"train_share_by_rank": [], "mean_spearman": None}, timings={})
    engine.dispose()
