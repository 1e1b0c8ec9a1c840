"""Registrations of one model version racing on PostgreSQL: two hook deliveries at once (MLflow and generic, and
many MLflow retries), and ``xich register`` in its own process while deliveries keep arriving. The receiver is
served by uvicorn on a loopback port with the settings ``xich serve-hooks`` uses; every request is real HTTP.
What must hold: one model version, one audit request, no 5xx (docs/reliability.md, docs/security.md "Faults tried").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from xich.hooks.receiver import GENERIC, MLFLOW, create_app, server_config, sign
from xich.records.db import AuditRequest, ModelVersion, make_engine
from xich.settings import get_hook_settings

import pg_private
from test_hooks import GENERIC_SECRET, SECRET, Recorder, version_created, world  # noqa: F401 (world: a fixture)


class Served:
    """The receiver app under uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, settings, recorder: Recorder):
        import uvicorn

        self.port = pg_private.free_port()
        self.server = uvicorn.Server(server_config(create_app(settings, start_audit=recorder), settings,
                                                   host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def deliver(self, doc: dict, *, hook=MLFLOW, secret: str = SECRET) -> int:
        body = json.dumps(doc).encode()
        delivery_id, stamp = str(uuid.uuid4()), str(int(time.time()))
        headers = {hook.delivery_header: delivery_id, hook.timestamp_header: stamp,
                   hook.signature_header: sign(secret, delivery_id, stamp, body), "Content-Type": "application/json"}
        answer = httpx.post(f"http://127.0.0.1:{self.port}/hooks/{hook.source}", content=body, headers=headers,
                            timeout=60)
        return answer.status_code


@pytest.fixture
def served(world, results_db):
    settings = get_hook_settings(database_url=results_db, hooks_secret=SECRET, hooks_generic_secret=GENERIC_SECRET,
                                 hooks_config=world["mapping"], cache_dir=str(world["dir"] / "cache"),
                                 hooks_allowed_sources=[str(world["dir"])])
    recorder = Recorder()
    with Served(settings, recorder) as server:
        yield server, recorder


def recorded(url: str, version: str) -> tuple[int, int]:
    """(model versions, audit requests) recorded for ``shapes`` ``version``."""
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            versions = s.scalars(select(ModelVersion.id).where(ModelVersion.version == version)).all()
            requests = s.scalar(select(func.count()).select_from(AuditRequest)
                                .where(AuditRequest.model_version_id.in_(versions))) if versions else 0
            return len(versions), requests
    finally:
        engine.dispose()


ACCEPTED = {200, 202, 409}  # 409: a conflicting origin of the same version (one origin per version), in one line


def test_two_hooks_racing_record_one_version(served, world, results_db):
    """An MLflow and a generic delivery of the same version sent together, 5 times (a new version each time), then
    24 MLflow deliveries of one version at once (more than the connection pool's 15): each version once, with one
    audit request, and no 5xx."""
    server, _ = served
    with ThreadPoolExecutor(24) as pool:
        for round_ in range(5):
            version = f"pair-{round_}"
            mlflow = pool.submit(server.deliver, version_created(version=version, source=world["weights"]))
            generic = pool.submit(server.deliver, {"model": "shapes", "version": version,
                                                   "weights_uri": world["weights"]},
                                  hook=GENERIC, secret=GENERIC_SECRET)
            answers = {mlflow.result(), generic.result()}
            assert answers <= ACCEPTED and answers & {200, 202}, answers
            assert recorded(results_db, version) == (1, 1)
        doc = version_created(version="many", source=world["weights"])
        answers = list(pool.map(lambda _: server.deliver(doc), range(24)))
    assert set(answers) <= {200, 202}, sorted(answers)
    assert recorded(results_db, "many") == (1, 1)


def test_the_cli_and_the_hook_racing_record_one_version(served, world, results_db, tmp_path):
    """``xich register`` runs in its own process while MLflow deliveries of the same version arrive every 20 ms
    (from before it starts until after it ends): one version, one request, no 5xx, and the CLI ends with 0 or
    one ``error:`` line."""
    server, _ = served
    settings = {"classes": ["cat", "dog"], "clusters": 3, "labels": "cifar10"}  # what the mapping gives the hook
    env = {**os.environ, "XICH_DATABASE_URL": results_db, "XICH_CACHE_DIR": str(world["dir"] / "cache")}
    answers, stop = [], threading.Event()

    def keep_delivering():
        doc = version_created(version="cli", source=world["weights"])
        while not stop.is_set():
            answers.append(server.deliver(doc))
            time.sleep(0.02)

    sender = threading.Thread(target=keep_delivering)
    sender.start()
    try:
        cli = subprocess.run([sys.executable, "-m", "xich.cli", "register", "--model", "shapes", "--version", "cli",
                              "--spec", "cifar:resnet20", "--weights", world["weights"], "--dataset", world["data"],
                              "--settings", json.dumps(settings)], env=env, capture_output=True, text=True,
                             timeout=300)
    finally:
        stop.set()
        sender.join(timeout=60)
    assert "Traceback" not in cli.stderr, cli.stderr[-3000:]
    assert cli.returncode == 0 or (cli.returncode == 2 and len([line for line in cli.stderr.splitlines()
                                                               if line.startswith("error:")]) == 1), cli.stderr
    assert len(answers) >= 2 and set(answers) <= ACCEPTED, sorted(set(answers))
    assert recorded(results_db, "cli") == (1, 1)
