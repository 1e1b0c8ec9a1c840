"""Faults tried for real on the audit's run sequence: a worker SIGKILLed in the middle of a class, the results
database stopped under a running audit, and the database refusing writes. The worker that meets the fault is a real
``xich audit`` process on the synthetic dataset; the run is then resumed by another worker (this process, through
the same run sequence: no second interpreter to start), and the stored numbers are compared with those of an
uninterrupted run (docs/reliability.md, docs/security.md "Faults tried").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from xich.records.db import AuditRun, ClassHeartbeat, RunClass, make_engine
from xich.records.persist import load_audit

import pg_private
from builders import recorded, resnet20_config

CLASSES = ["circle", "square", "triangle"]


def argv(synth_data: Path) -> list[str]:
    """One worker: ``xich audit`` of model ``shapes`` v1 on the synthetic data (about 1 s a class here)."""
    return [sys.executable, "-m", "xich.cli", "audit", "--model", "cifar:resnet20", "--data", str(synth_data),
            "--clusters", "3", "--mosaics-per-pair", "40", "--device", "cpu", "--model-name", "shapes",
            "--model-version", "v1", "--no-control", "--no-null"]


def env_for(url: str, tmp: Path) -> dict:
    return {**os.environ, "XICH_DATABASE_URL": url, "XICH_STORE_URL": str(tmp / "store"), "OMP_NUM_THREADS": "1",
            "XICH_RUN_STALE_S": "10"}


def stored(url: str) -> dict:
    """The one run's status, error, classes (with how often each is stored) and numbers as stored."""
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            [run] = s.scalars(select(AuditRun)).all()
            names = list(s.scalars(select(RunClass.class_name)))
            doc = load_audit(session=s, run_id=run.id).to_dict() if run.status == "complete" else None
            return {"status": run.status, "error": run.error, "classes": sorted(names), "timings": run.timings,
                    "numbers": {k: v for k, v in doc.items() if k not in ("notes", "run_id", "timings")}
                    if doc else None}
    finally:
        engine.dispose()


def in_flight(url: str) -> tuple[list[str], list[str]]:
    """(classes stored, classes claimed and not stored) of the run now; ([], []) before the schema is there."""
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            done = set(s.scalars(select(RunClass.class_name)))
            beating = set(s.scalars(select(ClassHeartbeat.class_name)))
    except Exception:  # noqa: BLE001 — the first worker has not made the schema yet
        return [], []
    finally:
        engine.dispose()
    return sorted(done), sorted(beating - done)


def wait_mid_class(worker: subprocess.Popen, url: str, k: int = 1, timeout: float = 180) -> tuple[list, list]:
    """Poll the database until ``k`` classes are committed and another is being computed (claimed, unstored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before the fault"
        done, computing = in_flight(url)
        if len(done) >= k and computing:
            return done, computing
        time.sleep(0.02)
    raise AssertionError("the worker never reached the middle of a class")


def resume(synth_data: Path, url: str) -> dict:
    """Another worker (in this process) audits the same version with the settings of :func:`argv`: it finds the
    run by its settings and computes what is not stored; what is then stored."""
    config = resnet20_config(synth_data, clusters=3, mosaics_per_pair=40, control=False, null=False)
    recorded(config, url, model_name="shapes", model_version="v1")
    return stored(url)


@pytest.fixture(scope="module")
def uninterrupted(synth_data, tmp_path_factory, one_torch_thread) -> dict:
    """What one worker that is never interrupted stores."""
    return resume(synth_data, f"sqlite:///{tmp_path_factory.mktemp('uninterrupted') / 'xich.db'}")


def test_a_worker_killed_mid_class_is_resumed_by_another(results_db, synth_data, uninterrupted, tmp_path):
    """SIGKILL after one class is committed and while the next is computed; a second worker finishes the run:
    every class stored once, the killed worker's class computed again, the same numbers as an uninterrupted run."""
    env = env_for(results_db, tmp_path)
    a = subprocess.Popen(argv(synth_data), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done, computing = wait_mid_class(a, results_db)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    killed = stored(results_db)
    assert killed["status"] == "running" and killed["classes"] == done and len(done) < 3
    after = resume(synth_data, results_db)
    assert after["status"] == "complete" and after["classes"] == CLASSES  # each class once
    assert after["timings"]["resumed_classes"] == done  # not recomputed
    assert after["timings"]["computed_here"] == [c for c in CLASSES if c not in done]  # the killed one's included
    assert set(computing) <= set(after["timings"]["computed_here"])
    assert after["numbers"] == uninterrupted["numbers"]


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own, to stop and start (tests/pg_private.py)."""
    if (why := pg_private.missing()) is not None:
        pytest.skip(f"no private PostgreSQL server: {why}")
    with pg_private.private_postgres() as server:
        yield server


def run_until_fault(synth_data: Path, env: dict, url: str, fault, k: int = 1) -> tuple[subprocess.CompletedProcess, list]:
    """A worker auditing until ``k`` classes are committed and another is computed, then ``fault()``; the worker's
    end (exit code, output) and the classes committed before the fault."""
    worker = subprocess.Popen(argv(synth_data), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        done, _ = wait_mid_class(worker, url, k)
        fault()
        out, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return subprocess.CompletedProcess(worker.args, worker.returncode, out, err), done


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_the_database_going_away_mid_class(own_postgres, synth_data, uninterrupted, tmp_path):
    """The server stops (``pg_ctl stop -m fast``: every session ended) while a class is computed after another was
    committed: the worker ends with one ``error:`` line and the run stays unfinished. The server comes back and a
    second worker resumes; the server restarts (stop, start) under it: that worker ends too, and the run is
    ``failed`` with the error. A third worker finishes the run to the numbers of an uninterrupted run."""
    server = own_postgres
    url, env = server.url, env_for(server.url, tmp_path)
    a, done = run_until_fault(synth_data, env, url, server.stop)
    server.start()
    [line] = error_lines(a.stderr)
    assert a.returncode == 2 and line.startswith("error: results database (XICH_DATABASE_URL):")
    left = stored(url)  # it could not be marked failed: the nightly flow restarts it once its beat is stale
    assert left["status"] == "running" and left["classes"] == done  # the class being computed: not half-written

    def restart():
        server.stop()
        server.start()

    b, done_b = run_until_fault(synth_data, env, url, restart, k=2)
    [line] = error_lines(b.stderr)
    assert b.returncode == 2 and "terminating connection due to administrator command" in line
    left = stored(url)
    assert left["status"] == "failed" and left["classes"] == done_b
    assert left["error"] == ("OperationalError: (psycopg.errors.AdminShutdown) terminating connection due to "
                             "administrator command")  # the first error, on one line
    after = resume(synth_data, url)
    assert after["status"] == "complete" and after["classes"] == CLASSES
    assert after["timings"]["resumed_classes"] == done_b
    assert after["numbers"] == uninterrupted["numbers"]


def test_the_database_refusing_writes_mid_class(own_postgres, synth_data, uninterrupted, tmp_path):
    """The server turns read-only (``default_transaction_read_only``, reloaded into every session) while a class is
    computed: the worker ends with one ``error:`` line, the class is not stored, the run is not complete. Writable
    again, another worker resumes the run to the numbers of an uninterrupted run."""
    import psycopg

    server = own_postgres
    url, env = server.url, env_for(server.url, tmp_path)

    def read_only(on: bool) -> None:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
            conn.execute("SELECT pg_reload_conf()")

    a, done = run_until_fault(synth_data, env, url, lambda: read_only(True))
    [line] = error_lines(a.stderr)
    assert a.returncode == 2 and "cannot execute INSERT in a read-only transaction" in line
    left = stored(url)  # the reload reaches the worker's sessions a moment later: it may store one more class
    assert left["status"] == "running" and set(done) <= set(left["classes"]) and len(left["classes"]) < 3
    read_only(False)
    after = resume(synth_data, url)
    assert after["status"] == "complete" and after["classes"] == CLASSES
    assert after["timings"]["resumed_classes"] == left["classes"]
    assert after["numbers"] == uninterrupted["numbers"]


def test_the_store_refusing_writes_mid_audit(synth_data, uninterrupted, tmp_path, monkeypatch, capsys):
    """The results store (a folder) is replaced by a file while a class computes: every class is still stored in
    the database, the publish fails with one ``error:`` line naming the store's path, the run is left ``failed``
    ("not published", never complete with an empty store), and the same audit run again once the store is writable
    computes nothing, publishes the run and marks it complete, with the uninterrupted run's numbers."""
    from xich.cli import main

    url, env = f"sqlite:///{tmp_path / 'xich.db'}", env_for(f"sqlite:///{tmp_path / 'xich.db'}", tmp_path)
    store = tmp_path / "store"

    def refuse():
        store.rmdir()  # made, empty, as the audit began: nothing is published before the run is complete
        store.write_text("a file where the store's folder was")

    a, _ = run_until_fault(synth_data, env, url, refuse)
    [line] = error_lines(a.stderr)
    assert a.returncode == 2 and "could not be published" in line and f"file://{store}/runs/" in line
    left = stored(url)
    assert left["classes"] == CLASSES  # each class once
    assert left["status"] == "failed" and left["error"].startswith("not published")
    store.unlink()
    monkeypatch.setenv("XICH_DATABASE_URL", url)
    monkeypatch.setenv("XICH_STORE_URL", str(store))
    assert main(argv(synth_data)[3:]) == 0, capsys.readouterr().err
    again = stored(url)
    assert again["status"] == "complete" and again["numbers"] == uninterrupted["numbers"]
    assert again["timings"]["computed_here"] == []  # nothing recomputed
    assert sorted(p.name for p in store.rglob("*.json")) == ["audit.json", "oversample.json"]
