"""Runs that die are noticed in minutes: each class a process computes has a heartbeat (class_heartbeat), a process
waiting for a class takes it over once its holder's beat is XICH_RUN_STALE_S old, and the nightly flow's plan
starts a ``running`` run again once its newest beat is that old (not 12 h after it started)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from xich.records.db import AuditRun, ClassHeartbeat, RunClass, make_engine, utcnow
from xich.records.locks import heartbeat
from xich.records.persist import beat_class, class_is_stale, request_plan
from xich.run.pipeline import open_recorded_run

from builders import context_for, resnet20_config


def test_a_heartbeat_beats_until_its_block_ends():
    beats, third = [], threading.Event()

    def beat():
        beats.append(time.monotonic())
        if len(beats) >= 3:
            third.set()

    with heartbeat(beat, 0.01):
        assert len(beats) == 1  # the first beat is at once
        assert third.wait(30)
    n = len(beats)
    time.sleep(0.05)
    assert len(beats) == n  # stopped with the block


def test_the_plan_starts_a_running_run_again_once_its_newest_beat_is_stale(database_url, synth_data):
    config = resnet20_config(synth_data, clusters=3, mosaics_per_pair=2, control=False, null=False)
    request = {"dataset_uri": str(synth_data), "settings": {"clusters": 3, "null": False}}
    rec = open_recorded_run(context_for(database_url), config, model_name="shapes", model_version="v1",
                            request=request)
    try:
        rec.run.status, rec.run.started_at = "running", utcnow() - timedelta(hours=1)
        rec.session.commit()
        t0, stale = utcnow(), timedelta(minutes=10)
        with Session(rec.engine) as s:
            def action(now):
                return [p["action"] for p in request_plan(session=s, stale_after=stale, now=now)]

            assert action(t0) == ["start"]  # started an hour ago, never beat: dead
            beat_class(session=s, run_id=rec.run_id, class_name="circle", worker="w1", now=t0 - timedelta(minutes=2))
            beat_class(session=s, run_id=rec.run_id, class_name="square", worker="w2", now=t0 - timedelta(minutes=30))
            assert action(t0) == ["running"]  # the newest beat counts
            assert action(t0 + timedelta(minutes=9)) == ["start"]  # 11 min after the newest beat
            assert not class_is_stale(session=s, run_id=rec.run_id, class_name="circle", stale_after=stale, now=t0)
            assert class_is_stale(session=s, run_id=rec.run_id, class_name="square", stale_after=stale, now=t0)
            assert not class_is_stale(session=s, run_id=rec.run_id, class_name="triangle", stale_after=stale, now=t0)
    finally:
        rec.close()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_frozen_workers_class_is_taken_over_after_the_stale_time(results_db, synth_data, tmp_path):
    """Worker A is frozen (SIGSTOP: its database connection, and so its class lock, stays open, as for a host that
    vanished) while it computes a class. Worker B audits the same run: it computes the other classes, waits for
    A's, and once A's heartbeat is XICH_RUN_STALE_S (10 s) old terminates A's session and computes the class."""
    argv = [sys.executable, "-m", "xich.cli", "audit", "--model", "cifar:resnet20", "--data", str(synth_data),
            "--clusters", "3", "--mosaics-per-pair", "40", "--device", "cpu", "--model-name", "shapes",
            "--model-version", "v1", "--no-control", "--no-null"]
    env = {**os.environ, "XICH_DATABASE_URL": results_db, "XICH_STORE_URL": str(tmp_path / "store"),
           "XICH_RUN_STALE_S": "10", "OMP_NUM_THREADS": "1"}
    engine = make_engine(results_db)

    def claimed_unstored():
        with Session(engine) as s:
            try:
                beats = set(s.scalars(select(ClassHeartbeat.class_name)))
                stored = set(s.scalars(select(RunClass.class_name)))
            except Exception:  # the schema is not there yet
                return None
        return sorted(beats - stored) or None

    a = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        held = _wait_for(lambda: a.poll() is None and claimed_unstored(), 180, "worker A to claim a class")
        a.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        held = [c for c in held if c in (claimed_unstored() or [])]
        assert held, "worker A stored its class before it was frozen"
        b = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        took = time.monotonic() - frozen_at
        assert b.returncode == 0, b.stderr[-2000:]
        with Session(engine) as s:
            run = s.scalars(select(AuditRun)).one()
            workers = {rc.class_name: rc.worker for rc in s.scalars(select(RunClass))}
        assert run.status == "complete" and len(workers) == 3
        assert all(not workers[c].endswith(f":{a.pid}") for c in held)  # computed by B, not by the frozen A
        assert took >= 10  # not before A's heartbeat was stale
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        engine.dispose()
