"""The trust boundary (docs/security.md), tried as an attacker with a valid signature: each attack of issue 15
against the real receiver (in-process through httpx's ASGI transport, or `xich serve-hooks` under uvicorn where the
attack is about sockets) and a real PostgreSQL database. Each is answered with its 4xx and a reason naming the rule,
leaves no audit request, names nothing that exists where it pointed, and touches no file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from builders import context_for
import stack
from test_hooks import checkpoint
from xich.atomic import write_atomically
from xich.cli import main
from xich.engine.datasets import open_dataset
from xich.records.db import AuditRequest, HookDelivery, ModelVersion, make_engine, utcnow
from xich.errors import XichError
from xich.hooks.receiver import GENERIC, MLFLOW, create_app, sign
from xich.records.mlflow_registry import write_back
from xich.records.registration import unaudited
from xich.settings import get_hook_settings, get_settings

SECRET, GENERIC_SECRET = "whsec-boundary-mlflow-5c1e", "whsec-boundary-generic-77d0"
WHEN = "2026-11-29T10:45:52.841074+00:00"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
OUTSIDE_NAME = "zz-outside-only-name.pt"  # a file that exists outside the allowed root: never named in an answer


@pytest.fixture
def world(tmp_path) -> dict:
    """An allowed root (a dataset, a checkpoint, a labels file) and, beside it, a folder outside it with a file,
    a symlink from inside the root to it, and a mapping file for model ``shapes``."""
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    (root / "data" / "test" / "cat").mkdir(parents=True)
    checkpoint(root / "weights.pt")  # registration reads its keys (xich.preflight)
    outside.mkdir()
    (outside / OUTSIDE_NAME).write_bytes(b"not yours")
    (root / "link").symlink_to(outside)
    mapping = tmp_path / "hooks.toml"
    mapping.write_text(f'[models."shapes"]\nspec = "cifar:resnet20"\ndataset = "{root / "data"}"\n'
                       f'settings = {{classes = ["cat"], clusters = 3}}\n')
    return {"root": root, "outside": outside, "mapping": str(mapping), "dir": tmp_path}


class Receiver:
    """The receiver in this process on the test's PostgreSQL database; deliveries signed with the right secret."""

    def __init__(self, world: dict, url: str, **overrides):
        settings = get_hook_settings(**{"database_url": url, "hooks_secret": SECRET,
                                        "hooks_generic_secret": GENERIC_SECRET, "hooks_config": world["mapping"],
                                        "cache_dir": str(world["dir"] / "cache"),
                                        "hooks_allowed_sources": [str(world["root"])], **overrides})
        self.started: list[dict] = []
        self.app = create_app(settings, start_audit=lambda p: self.started.append(p) or f"run-{len(self.started)}")
        self.url = url

    def post(self, path: str, body: bytes, headers: dict) -> httpx.Response:
        async def send():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://hooks") as c:
                return await c.post(path, content=body, headers=headers)

        return asyncio.run(send())

    def deliver(self, doc: object = None, *, hook=MLFLOW, body: bytes | None = None, stamp: str | None = None,
                delivery_id: str | None = None) -> httpx.Response:
        body = json.dumps(doc).encode() if body is None else body
        delivery_id = delivery_id or str(uuid.uuid4())
        stamp = str(int(time.time())) if stamp is None else stamp
        secret = SECRET if hook is MLFLOW else GENERIC_SECRET
        raw = stamp.encode("latin-1") if stamp.isascii() or max(map(ord, stamp)) < 256 else stamp.encode()
        seen = raw.decode("latin-1")  # what the server reads: HTTP headers are bytes, decoded as latin-1
        return self.post(f"/hooks/{hook.source}", body, {
            hook.delivery_header: delivery_id, hook.timestamp_header: raw, "Content-Type": "application/json",
            hook.signature_header: sign(secret, delivery_id, seen, body)})

    def rows(self, model) -> list:
        engine = make_engine(self.url)
        try:
            with Session(engine) as session:
                return list(session.scalars(select(model)))
        finally:
            engine.dispose()


def version_created(source: str, tags: dict | None = None, name: str = "shapes", version: str = "1") -> dict:
    return {"entity": "model_version", "action": "created", "timestamp": WHEN,
            "data": {"name": name, "version": version, "source": source, "run_id": None, "tags": tags or {}}}


def generic(world: dict, **fields) -> dict:
    return {"model": "shapes", "version": "1", "weights_uri": str(world["root"] / "weights.pt"), **fields}


def assert_refused(receiver: Receiver, answer: httpx.Response, status: int, rule: str, world: dict,
                   given: str = "") -> None:
    """The answer, its rule, and what it leaves: no audit request, no name of what exists there (beyond what the
    sender gave), nothing fetched."""
    assert answer.status_code == status, answer.text
    text = answer.json().get("reason") or answer.json().get("error")
    assert rule in text, text
    rest = text.replace(given, "") if given else text
    assert OUTSIDE_NAME not in rest and "hostname" not in rest and "passwd" not in rest, text
    assert receiver.rows(AuditRequest) == [] and receiver.started == []
    assert not (world["dir"] / "cache").exists() or not any((world["dir"] / "cache").rglob("*"))


def test_spec_kinds_outside_the_operators_allow_list_are_refused(world, results_db):
    receiver = Receiver(world, results_db)
    weights = str(world["root"] / "weights.pt")
    answer = receiver.deliver(version_created(weights, tags={"xich.spec": "python:os:abort"}))
    assert_refused(receiver, answer, 422, "its kind is not allowed for audit requests (XICH_HOOKS_ALLOWED_SPECS)",
                   world)
    answer = receiver.deliver(generic(world, model_spec="python:os:abort"), hook=GENERIC)
    assert_refused(receiver, answer, 422, "XICH_HOOKS_ALLOWED_SPECS", world)
    # python: only for the module the operator names: not a module whose name merely starts like it
    named = Receiver(world, results_db, hooks_allowed_specs="cifar:,python:mypkg.models")
    answer = named.deliver(generic(world, version="2", model_spec="python:mypkg.models_evil:make"), hook=GENERIC)
    assert_refused(named, answer, 422, "XICH_HOOKS_ALLOWED_SPECS", world)
    with pytest.raises(Exception, match="python: is allowed only for a module the operator names"):
        get_settings(hooks_allowed_specs="cifar:,python:")


@pytest.mark.parametrize("field, value", [
    ("weights", "/etc/passwd"), ("weights", "file:///etc/passwd"), ("weights", "/proc/self/environ"),
    ("weights", "../../../../etc/hostname"), ("weights", "LINK"), ("weights", "DOTDOT"), ("weights", "OUTSIDE"),
    ("weights", "s3://another-bucket/"), ("weights", "http://169.254.169.254/latest"),
    ("dataset", "/"), ("dataset", "/usr"), ("dataset", "cifar10:/etc"), ("labels", "/etc/passwd"),
])
def test_sources_outside_the_allowed_roots_are_refused_without_a_listing(world, results_db, field, value):
    value = {"LINK": str(world["root"] / "link" / OUTSIDE_NAME),  # a symlink inside the root pointing out of it
             "DOTDOT": f"{world['root']}/../outside/{OUTSIDE_NAME}", "OUTSIDE": str(world["outside"])}.get(value, value)
    before = os.stat(world["outside"] / OUTSIDE_NAME)
    receiver = Receiver(world, results_db)
    weights = value if field == "weights" else str(world["root"] / "weights.pt")
    tags = {f"xich.{field}": value} if field != "weights" else {}
    began = time.monotonic()
    answer = receiver.deliver(version_created(weights, tags=tags))
    assert time.monotonic() - began < 5  # no walk of / or /usr
    assert_refused(receiver, answer, 422, "not under a source the operator allows (XICH_HOOKS_ALLOWED_SOURCES", world,
                   value)
    after = os.stat(world["outside"] / OUTSIDE_NAME)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    # the same through the generic hook's fields
    key = {"weights": "weights_uri", "dataset": "dataset_uri", "labels": "labels"}[field]
    answer = receiver.deliver(generic(world, **{key: value}), hook=GENERIC)
    assert_refused(receiver, answer, 422, "XICH_HOOKS_ALLOWED_SOURCES", world, value)


def test_a_labels_file_inside_the_sent_settings_is_held_to_the_same_roots(world, results_db):
    """``labels`` is also a request setting: sent inside the ``xich.settings`` tag or the generic hook's settings it
    meets the same allow-list as the top-level field."""
    receiver = Receiver(world, results_db)
    weights = str(world["root"] / "weights.pt")
    answer = receiver.deliver(version_created(weights, tags={"xich.settings": json.dumps({"labels": "/etc/passwd"})}))
    assert_refused(receiver, answer, 422, "XICH_HOOKS_ALLOWED_SOURCES", world, "/etc/passwd")
    answer = receiver.deliver(generic(world, settings={"labels": "/etc/passwd"}), hook=GENERIC)
    assert_refused(receiver, answer, 422, "XICH_HOOKS_ALLOWED_SOURCES", world, "/etc/passwd")


def test_a_source_under_the_allowed_root_is_accepted(world, results_db):
    """The control: the same receiver takes what lies under its root (a file:// URL and a plain path)."""
    receiver = Receiver(world, results_db)
    answer = receiver.deliver(version_created(f"file://{world['root'] / 'weights.pt'}"))
    assert answer.status_code == 202, answer.text
    assert len(receiver.rows(AuditRequest)) == 1


def test_an_s3_weights_prefix_is_bounded_before_any_download(world, results_db, seaweedfs, monkeypatch):
    """Under an allowed bucket, a weights prefix holding more objects than the bound is refused from its listing:
    nothing is downloaded into the receiver's cache (the bound is lowered here from 10,000 to 2)."""
    import io

    import xich.records.mlflow_registry

    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    client = seaweedfs.client()
    client.make_bucket(bucket)
    weights = (world["root"] / "weights.pt").read_bytes()  # a real checkpoint: registration reads its keys
    for n in range(3):
        client.put_object(bucket, f"w/{n}.pt", io.BytesIO(weights), len(weights))
    monkeypatch.setattr(xich.records.mlflow_registry, "WALK_MAX_FILES", 2)
    receiver = Receiver(world, results_db, hooks_allowed_sources=f"{world['root']},s3://{bucket}/",
                        s3_endpoint=seaweedfs.endpoint, s3_access_key=seaweedfs.access_key,
                        s3_secret_key=seaweedfs.secret_key)
    answer = receiver.deliver(generic(world, weights_uri=f"s3://{bucket}/w/"), hook=GENERIC)
    assert_refused(receiver, answer, 422, f"s3://{bucket}/w/: more than 2 objects under this prefix; give the "
                                          f"checkpoint object itself", world)
    assert "0.pt" not in answer.text
    answer = receiver.deliver(generic(world, version="2", weights_uri=f"s3://{bucket}/w/1.pt"), hook=GENERIC)
    assert answer.status_code == 202, answer.text  # the control: one object under the allowed bucket


def test_the_generic_hook_cannot_steer_the_registry_write_back(world, results_db):
    receiver = Receiver(world, results_db)
    steer = {"registry": "mlflow", "tracking_uri": "http://attacker.example:5000", "name": "someone-elses-model",
             "version": "3"}
    answer = receiver.deliver(generic(world, metadata=steer), hook=GENERIC)
    assert answer.status_code == 202, answer.text
    [mv] = receiver.rows(ModelVersion)
    assert mv.registry_metadata == {"hook": "generic", "sender": steer}  # namespaced: nothing the write-back reads
    assert write_back(registry_metadata=mv.registry_metadata, model="shapes", version="1", result=None,
                      report_uri="s3://b/r", settings=get_settings(mlflow_tracking_uri=None)) is None


@pytest.mark.parametrize("settings, rule", [
    ({"classes": [1, 2]}, "--classes must be at most 1000 class names, each text"),
    ({"mosaics_per_pair": 10**12, "mosaic_size": 10**6}, "--mosaics-per-pair must be at most 1000"),
    ({"clusters": 10**9}, "--clusters must be at most 50"),
    ({"per_image": 10**7}, "--per-image must be at most 10000"),
    ({"clusters": 2.5}, "--clusters must be a whole number"),
])
def test_settings_are_bounded_at_registration(world, results_db, settings, rule):
    receiver = Receiver(world, results_db)
    answer = receiver.deliver(generic(world, settings=settings), hook=GENERIC)
    assert_refused(receiver, answer, 422, rule, world)


def test_nan_and_infinity_are_refused_at_registration(world, results_db, tmp_path, monkeypatch, capsys):
    receiver = Receiver(world, results_db)
    for constant in ("NaN", "Infinity", "-Infinity"):
        body = (b'{"model": "shapes", "version": "1", "weights_uri": null, "settings": {"clusters": '
                + constant.encode() + b"}}")
        answer = receiver.deliver(hook=GENERIC, body=body)
        assert_refused(receiver, answer, 400, f"{constant} is not a JSON number", world)
    tag = {"xich.settings": '{"clusters": NaN}'}
    answer = receiver.deliver(version_created(str(world["root"] / "weights.pt"), tags=tag))
    assert answer.status_code == 422 and receiver.rows(AuditRequest) == []
    monkeypatch.setenv("XICH_DATABASE_URL", results_db)
    for flags, rule in ((["--settings", '{"clusters": NaN}'], "--settings: NaN is not a JSON number"),
                        (["--spec", "python:os:abort"], "XICH_HOOKS_ALLOWED_SPECS"),
                        (["--settings", '{"mosaics_per_pair": 1000000000000}'], "at most 1000")):
        args = {"--model": "m", "--version": "1", "--spec": "cifar:resnet20",
                "--dataset": str(world["root"] / "data"), **dict(zip(flags[::2], flags[1::2]))}
        assert main(["register", *[x for kv in args.items() for x in kv]]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and rule in err and "Traceback" not in err
    assert receiver.rows(AuditRequest) == []


def test_malformed_headers_and_json_are_400_not_500(world, results_db):
    receiver = Receiver(world, results_db)
    weights = str(world["root"] / "weights.pt")
    for stamp in ("9" * 5000, "²", "１２３", str(int(time.time())) + "\n"):
        answer = receiver.deliver(version_created(weights), stamp=stamp)
        assert answer.status_code == 400 and "not unix seconds" in answer.json()["error"], answer.text
    deep = b'{"a": ' * 3000 + b"1" + b"}" * 3000
    answer = receiver.deliver(body=deep)
    assert answer.status_code == 400 and "nested deeper than 16 levels" in answer.json()["error"]
    answer = receiver.deliver(hook=GENERIC, body=json.dumps(generic(world, metadata={"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]})).encode())
    assert answer.status_code == 400 and "nested deeper" in answer.json()["error"]
    assert receiver.rows(HookDelivery) == [] and receiver.rows(AuditRequest) == []


@pytest.mark.parametrize("name", ["m" * 10_000, "shapes\x00", "shapes\nINFO xich.hooks: forged line", "\u202eevil"])
def test_bad_model_names_are_400_with_a_reason_and_forge_no_log_line(world, results_db, caplog, name):
    caplog.set_level(logging.INFO, logger="xich")
    receiver = Receiver(world, results_db)
    answer = receiver.deliver(version_created(str(world["root"] / "weights.pt"), name=name))
    assert answer.status_code == 400, answer.text
    assert "printable characters (no NUL, no line breaks)" in answer.json()["error"]
    answer = receiver.deliver(generic(world, model=name), hook=GENERIC)
    assert answer.status_code == 400 and "printable characters" in answer.json()["error"]
    # an event XICH ignores still logs what it was sent: escaped
    odd = {"entity": "x\nINFO forged", "action": "y\r\n", "timestamp": WHEN, "data": {"name": name}}
    assert receiver.deliver(odd).status_code == 200
    assert receiver.rows(AuditRequest) == []
    for record in caplog.records:
        assert "\n" not in record.getMessage() and "\r" not in record.getMessage() and "\x00" not in record.getMessage()


def test_values_the_database_refuses_are_a_remembered_422_without_sql(world, results_db):
    receiver = Receiver(world, results_db)
    answer = receiver.deliver(generic(world, metadata={"note": "a NUL \u0000 in JSONB"}), hook=GENERIC,
                              delivery_id="nul-1")
    assert answer.status_code == 422, answer.text
    reason = answer.json()["reason"]
    assert "the results database refused the request's values" in reason
    assert not any(word in reason for word in ("INSERT", "SELECT", "UPDATE", "%(", "[SQL"))
    [delivery] = receiver.rows(HookDelivery)
    assert (delivery.outcome, delivery.reason) == ("refused", reason)
    assert receiver.deliver(generic(world, metadata={"note": "x"}), hook=GENERIC,
                            delivery_id="nul-1").status_code == 409
    assert receiver.rows(AuditRequest) == []


def test_only_a_database_outage_is_503_and_it_is_not_remembered(world):
    name = f"xich_outage_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    receiver = Receiver(world, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    answer = receiver.deliver(version_created(str(world["root"] / "weights.pt")))
    assert answer.status_code == 503, answer.text
    reason = answer.json()["reason"]
    assert reason.startswith("OperationalError: ") and reason.endswith("send the delivery again")
    assert "INSERT" not in reason and "hook_delivery" not in reason


def test_a_claim_stuck_processing_is_taken_over_by_a_retry(world, results_db):
    receiver = Receiver(world, results_db, hooks_claim_stale_s=60)
    engine = make_engine(results_db)
    with Session(engine) as session:  # a receiver killed mid-delivery left these claims behind
        session.add_all([HookDelivery(source="mlflow", delivery_id=d, event="model_version.created", model="shapes",
                                      version=v, outcome="processing", received_at=utcnow() - age)
                         for d, v, age in (("old", "1", timedelta_s(3600)), ("fresh", "2", timedelta_s(5)))])
        session.commit()
    engine.dispose()
    weights = str(world["root"] / "weights.pt")
    answer = receiver.deliver(version_created(weights, version="1"), delivery_id="old")
    assert (answer.status_code, answer.json()["outcome"]) == (202, "started"), answer.text
    answer = receiver.deliver(version_created(weights, version="2"), delivery_id="fresh")
    assert answer.status_code == 409  # another receiver may still be acting on it
    outcomes = {d.delivery_id: d.outcome for d in receiver.rows(HookDelivery)}
    assert outcomes == {"old": "started", "fresh": "processing"}
    assert [p["version"] for p in receiver.started] == ["1"]


def timedelta_s(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def test_the_nightly_flow_rechecks_recorded_requests_before_importing(world, results_db):
    """A row written past the receiver (or before the allow-list changed) is left out, with its reason."""
    engine = make_engine(results_db)
    Receiver(world, results_db)  # migrates
    with Session(engine) as session:
        from xich.records.persist import register_version

        register_version(session=session, name="evil", version="1", spec="python:os:abort", weights_uri=None,
                         weights_sha256=None, dataset_uri=str(world["root"] / "data"), settings={},
                         registry_metadata=None, registered_at=None)
        register_version(session=session, name="big", version="1", spec="cifar:resnet20", weights_uri=None,
                         weights_sha256=None, dataset_uri=str(world["root"] / "data"),
                         settings={"mosaics_per_pair": 10**12}, registry_metadata=None, registered_at=None)
        register_version(session=session, name="fine", version="1", spec="cifar:resnet20", weights_uri=None,
                         weights_sha256=None, dataset_uri=str(world["root"] / "data"), settings={},
                         registry_metadata=None, registered_at=None)
    engine.dispose()
    assert [r["model"] for r in unaudited(engine=context_for(results_db).engine)] == ["fine"]
    assert [r["model"] for r in unaudited(engine=context_for(results_db).engine, allowed_specs=["cifar:", "python:os"])] == \
        ["evil", "fine"]


# --- the receiver's sockets ------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_stalled_bodies_are_cut_off_and_their_memory_given_back(world, results_db):
    """200 sockets send headers and half a body, then stall: uvicorn takes at most XICH_HOOKS_LIMIT_CONCURRENCY
    (503 to the rest), the app answers 408 after XICH_HOOKS_BODY_TIMEOUT_S and closes; RSS comes back."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "XICH_"))},
           "XICH_DATABASE_URL": results_db, "XICH_HOOKS_SECRET": SECRET, "XICH_HOOKS_CONFIG": world["mapping"],
           "XICH_HOOKS_BODY_TIMEOUT_S": "3", "XICH_HOOKS_LIMIT_CONCURRENCY": "100",
           "XICH_HOOKS_ALLOWED_SOURCES": str(world["root"])}
    with stack.hooks_receiver(env, world["dir"]) as hooks:
        port = int(hooks.url.rsplit(":", 1)[1])
        baseline = rss_mib(hooks.proc.pid)
        half = b"x" * 256 * 1024
        sockets, answers = [], []
        began = time.monotonic()
        for n in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /hooks/mlflow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000\r\nX-MLflow-Delivery-Id: d\r\nX-MLflow-Timestamp: 1\r\n"
                      b"X-MLflow-Signature: v1,x\r\n\r\n")
            try:
                s.sendall(half)
            except OSError:
                pass  # answered 503 and closed already
            s.settimeout(30)
            sockets.append(s)
        peak = rss_mib(hooks.proc.pid)
        for s in sockets:
            chunks = []
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            answers.append(b"".join(chunks).split(b"\r\n", 1)[0])
            s.close()
        took = time.monotonic() - began
        statuses = {a.split(b" ")[1].decode() if a.count(b" ") >= 2 else "closed" for a in answers}
        assert statuses <= {"408", "503", "closed"} and "408" in statuses, answers[:5]
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) <= 100
        assert took < 45
        time.sleep(1)
        after = rss_mib(hooks.proc.pid)
        print(f"stalled bodies: RSS {baseline:.0f} MiB before, {peak:.0f} with 200 stalled sockets, {after:.0f} "
              f"after; all answered in {took:.1f} s")
        assert after - baseline < 50, (baseline, peak, after)
        assert stack._http_json(hooks.url + "/health", timeout=5)["status"] == "ok"


# --- files -----------------------------------------------------------------------------------------

def test_json_to_a_device_is_one_error_line_and_the_device_stays(tmp_path, capsys):
    before = os.stat("/dev/full")
    code = main(["audit", "--model", "cifar:resnet20", "--data", str(tmp_path), "--json", "/dev/full", "--no-db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --json /dev/full: exists and is a device")
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    with pytest.raises(XichError, match="exists and is a device"):
        write_atomically("/dev/full", b"x")


def test_atomic_writes_never_write_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "out.json"
    (tmp_path / "out.json.tmp").symlink_to(victim)  # the old predictable temporary name
    write_atomically(target, "{}")
    assert target.read_text() == "{}" and victim.read_text() == "keep me"
    assert stat.S_ISREG(os.lstat(target).st_mode)
    (tmp_path / "link.json").symlink_to(victim)  # the target itself a link: refused, the link's target untouched
    with pytest.raises(XichError, match="exists and is a symlink"):
        write_atomically(tmp_path / "link.json", "{}")
    assert victim.read_text() == "keep me"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(XichError, match="exists and is a FIFO"):
        write_atomically(fifo, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.json", "out.json", "out.json.tmp",
                                                          "victim.txt"]  # no temporary file left


def test_an_image_over_the_decode_cap_is_skipped_from_its_header(tmp_path, caplog):
    """An all-zero 12000×12000 PNG (small on disk, 144 MB decoded) is refused before decoding; the audit's
    other images load."""
    cat = tmp_path / "data" / "test" / "cat"
    cat.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(cat / "0.png")
    Image.new("1", (12000, 12000)).save(cat / "bomb.png")
    assert (cat / "bomb.png").stat().st_size < 1_000_000
    split = open_dataset(str(tmp_path / "data"), "test", None).splits["test"]
    caplog.set_level(logging.WARNING, logger="xich.engine.datasets")
    began = time.monotonic()
    kept, images = split.load_kept(["cat/0.png", "cat/bomb.png"], 32)
    assert time.monotonic() - began < 1.0  # not decoded
    assert kept == ["cat/0.png"] and tuple(images.shape) == (1, 3, 32, 32) and int(images[0, 0, 0, 0]) == 200
    assert list(split.skipped) == ["cat/bomb.png"]
    assert "12000×12000 pixels, over the cap of 512 a side (XICH_IMAGE_MAX_SIDE_FACTOR × tile size)" in caplog.text


# --- settings --------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, argv, message", [
    ({"XICH_HOOKS_WINDOW_S": "abc"}, ["serve-hooks"], "error: XICH_HOOKS_WINDOW_S: expected a whole number"),
    ({"XICH_HOOKS_SECRET": "short"}, ["serve-hooks"], "error: XICH_HOOKS_SECRET: a secret of at least 16 characters"),
    ({"XICH_S3_SECURE": "maybe"}, ["history", "--model", "m"], "error: XICH_S3_SECURE: expected true or false"),
    ({"XICH_S3_ENDPOINT": "minio:notaport"}, ["history", "--model", "m"], "error: XICH_S3_ENDPOINT: expected HOST:PORT"),
    ({"XICH_DATABASE_URL": "mysql://u@h/db"}, ["history", "--model", "m"],
     "error: XICH_DATABASE_URL: scheme 'mysql' is not supported"),
    ({"XICH_DATABASE_URL": "postgresql://u@h:notaport/db"}, ["history", "--model", "m"],
     "error: XICH_DATABASE_URL: expected sqlite:///PATH or postgresql"),
    ({"XICH_S3_SECRET_KEY": " " * 20}, ["history", "--model", "m"], "error: XICH_S3_SECRET_KEY: a secret of at least"),
    ({}, ["serve-hooks", "--port", "99999"], "error: --port '99999': not a port; give a number from 1 to 65535"),
    ({}, ["serve-hooks", "--port", "notaport"], "error: --port 'notaport': not a port"),
])
def test_a_bad_setting_is_one_error_line_naming_it(monkeypatch, capsys, env, argv, message):
    for key in [k for k in os.environ if k.startswith("XICH_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_hooks_setting_breaks_no_other_command_and_history_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XICH_HOOKS_WINDOW_S", "abc")
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'no' / 'dir' / 'x.db'}")
    assert main(["history", "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no complete audit recorded: XICH_DATABASE_URL sqlite:///") and \
        "names no database file (nothing was created)" in err
    assert not (tmp_path / "no").exists()


def test_secrets_and_url_passwords_stay_out_of_repr():
    password = "hunter2-hunter2-hunter2"
    settings = get_hook_settings(database_url=f"postgresql+psycopg://xich:{password}@db:5432/xich",
                                 mlflow_tracking_uri=f"http://u:{password}@mlflow:5000", s3_secret_key=password,
                                 hooks_secret=password)
    assert password not in repr(settings) and password not in str(settings)
    assert settings.database_url == f"postgresql+psycopg://xich:{password}@db:5432/xich"  # code reads it as it is
    assert settings.s3_options()["secret_key"] == password
