"""xich.hooks: the signature check against MLflow's own deliveries, each rejection (a 4xx with its reason and no
row), and what an accepted delivery records and starts. The receiver runs in-process (httpx's ASGI transport);
the audit deployment is replaced by a recorder, except where Prefect's own client meets a server that is down.
tests/test_hooks_mlflow.py runs it against a real MLflow server and a real Prefect stack."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from builders import context_for
import stack
from xich.cli import main
from xich.records.db import AuditRequest, HookDelivery, Model, ModelVersion, make_engine
from xich.errors import XichError
from xich.hooks.receiver import GENERIC, MLFLOW, create_app, sign
from xich.records.registration import unaudited
from xich.settings import get_hook_settings

SECRET, GENERIC_SECRET = "whsec-mlflow-test-7f3a", "whsec-generic-test-91bc"
WHEN = "2026-11-29T10:45:52.841074+00:00"


class Client:
    """Requests to the ASGI app in this process (httpx's ASGI transport: no server, no port)."""

    def __init__(self, app):
        self.app = app

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        async def send():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://hooks") as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(send())

    def deliver(self, doc: object, *, hook=MLFLOW, secret: str = SECRET, delivery_id: str | None = None,
                timestamp: int | None = None, body: bytes | None = None, drop: tuple[str, ...] = ()) -> httpx.Response:
        """POST ``doc`` (or raw ``body``) signed as the hook's sender signs it; ``drop``: headers left out."""
        body = json.dumps(doc).encode() if body is None else body
        delivery_id = delivery_id or str(uuid.uuid4())
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers = {hook.delivery_header: delivery_id, hook.timestamp_header: stamp,
                   hook.signature_header: sign(secret, delivery_id, stamp, body), "Content-Type": "application/json"}
        headers = {k: v for k, v in headers.items() if k not in drop}
        return self.request("POST", f"/hooks/{hook.source}", content=body, headers=headers)


def version_created(name: str = "shapes", version: str = "1", source: str | None = None, tags: dict | None = None,
                    run_id: str | None = "0a1b2c3d4e5f") -> dict:
    """A ``model_version.created`` body as MLflow 3.17 sends it (../shared/notes/mlflow-webhooks.md)."""
    return {"entity": "model_version", "action": "created", "timestamp": WHEN,
            "data": {"name": name, "version": version, "source": source, "run_id": run_id, "tags": tags or {},
                     "description": None}}


def checkpoint(path: Path, wrapped: bool = False) -> Path:
    """A CIFAR ResNet-20 state_dict as torch.save writes it (``wrapped``: under 'state_dict', other bytes)."""
    import torch

    from xich.engine.models import build_model

    sd = build_model("cifar:resnet20", 10).state_dict()
    torch.save({"state_dict": sd} if wrapped else sd, path)
    return path


@pytest.fixture
def world(tmp_path) -> dict:
    """A checkpoint file, a dataset folder and a mapping file for model ``shapes``."""
    weights = checkpoint(tmp_path / "weights.pt")  # registration reads its keys (xich.preflight), never its numbers
    for cls in ("cat", "dog"):
        (tmp_path / "data" / "test" / cls).mkdir(parents=True)
    mapping = tmp_path / "hooks.toml"
    mapping.write_text(f'[models."shapes"]\nspec = "cifar:resnet20"\ndataset = "{tmp_path / "data"}"\n'
                       f'labels = "cifar10"\nsettings = {{classes = ["cat", "dog"], clusters = 3}}\n')
    return {"weights": str(weights), "data": str(tmp_path / "data"), "mapping": str(mapping), "dir": tmp_path}


class Recorder:
    """Stands for the audit deployment: records the parameters, returns a flow run id."""

    def __init__(self, fail: Exception | None = None, delay: float = 0.0):
        self.calls: list[dict] = []
        self.fail, self.delay = fail, delay

    def __call__(self, parameters: dict) -> str:
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.calls.append(parameters)
        return f"flow-run-{len(self.calls)}"


def receiver(world: dict, database_url: str | None = None, start_audit=None, **overrides) -> tuple[Client, Recorder]:
    settings = get_hook_settings(**{"database_url": database_url or f"sqlite:///{world['dir'] / 'xich.db'}",
                               "hooks_secret": SECRET, "hooks_generic_secret": GENERIC_SECRET,
                               "hooks_config": world["mapping"], "cache_dir": str(world["dir"] / "cache"),
                               "hooks_allowed_sources": [str(world["dir"])], **overrides})
    recorder = start_audit if start_audit is not None else Recorder()
    return Client(create_app(settings, start_audit=recorder)), recorder


def rows(url: str, model=HookDelivery) -> list:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(model)))
    finally:
        engine.dispose()


def url_of(world: dict) -> str:
    return f"sqlite:///{world['dir'] / 'xich.db'}"


# --- the signature -------------------------------------------------------------------------------

def test_signature_is_mlflows_known_answer():
    """Computed apart from XICH: printf '%s' 'ID.TS.BODY' | openssl dgst -sha256 -hmac SECRET -binary | base64."""
    body = ('{"entity": "model_version", "action": "created", "timestamp": "2026-11-29T10:45:52.841074+00:00", '
            '"data": {"name": "m1", "version": "1", "source": "s3://bucket/models/resnet20.th", "run_id": null, '
            '"tags": {}, "description": null}}').encode()
    assert sign("test-secret-key", "e2a7c5d4-0001", "1795949152", body) == \
        "v1,+qfWkJ+GUDgHwss6tJ9whf8ZsMBgqORTkE4ifN4YXOs="


def mlflow_sends(event: str, monkeypatch) -> tuple[bytes, dict]:
    """The body and headers MLflow's own delivery code sends for its example payload of ``event``
    (mlflow.webhooks.delivery._send_webhook_request, with the HTTP session replaced by a recorder)."""
    delivery = pytest.importorskip("mlflow.webhooks.delivery")
    from mlflow.entities.webhook import Webhook, WebhookEvent
    from mlflow.webhooks.types import get_example_payload_for_event

    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")  # no DNS lookup of the example host
    entity, action = event.rsplit(".", 1)
    webhook_event = WebhookEvent(entity, action)
    webhook = Webhook(webhook_id="wh-1", name="xich", url="https://xich.example/hooks/mlflow", events=[webhook_event],
                      creation_timestamp=0, last_updated_timestamp=0, secret=SECRET)
    sent = {}

    class Session:
        def post(self, url, data, headers, timeout):
            sent.update(body=data, headers=headers)
            return httpx.Response(200)

    delivery._send_webhook_request(webhook, get_example_payload_for_event(webhook_event), webhook_event, Session())
    return sent["body"], sent["headers"]


MLFLOW_EVENTS = ["model_version.created", "model_version_alias.created", "registered_model.created",
                 "model_version_tag.set", "model_version_tag.deleted", "model_version_alias.deleted"]


def test_mlflows_own_example_deliveries_are_verified_and_acknowledged(world, monkeypatch):
    client, recorder = receiver(world)
    sent = {event: mlflow_sends(event, monkeypatch) for event in MLFLOW_EVENTS}
    for event, (body, headers) in sent.items():
        answer = client.request("POST", "/hooks/mlflow", content=body, headers=headers)
        assert answer.status_code == 200, (event, answer.text)
        # MLflow's examples name model "example_model" (not mapped) and alias "example_alias" (not acted on)
        assert answer.json()["outcome"] == ("unmapped" if event == "model_version.created" else "ignored"), event
        tampered = body.replace(b"example", b"exampel")
        assert client.request("POST", "/hooks/mlflow", content=tampered, headers=headers).status_code == 401
    assert sorted((d.source, d.delivery_id, d.event) for d in rows(url_of(world))) == \
        sorted(("mlflow", headers["X-MLflow-Delivery-Id"], event) for event, (_, headers) in sent.items())
    assert recorder.calls == []


# --- rejections: a 4xx with its reason, and no row -------------------------------------------------

def test_a_wrong_signature_is_refused(world):
    client, recorder = receiver(world)
    answer = client.deliver(version_created(source=world["weights"]), secret="not-the-secret")
    assert answer.status_code == 401
    assert answer.json() == {"error": "X-MLflow-Signature does not match the body: wrong secret, or the body was "
                                      "changed on the way"}
    unsigned = client.deliver(version_created(source=world["weights"]), drop=("X-MLflow-Signature",))
    assert unsigned.status_code == 401 and unsigned.json()["error"].startswith("no X-MLflow-Signature header")
    no_id = client.deliver(version_created(source=world["weights"]), drop=("X-MLflow-Delivery-Id",))
    assert no_id.status_code == 400 and no_id.json() == {"error": "no X-MLflow-Delivery-Id header"}
    assert rows(url_of(world)) == [] and rows(url_of(world), ModelVersion) == [] and recorder.calls == []


def test_a_stale_or_future_timestamp_is_refused(world):
    client, recorder = receiver(world)
    for offset, word in ((-301, "old"), (+400, "in the future")):
        answer = client.deliver(version_created(source=world["weights"]), timestamp=int(time.time()) + offset)
        assert answer.status_code == 400
        assert word in answer.json()["error"] and "300 s (XICH_HOOKS_WINDOW_S)" in answer.json()["error"]
    assert client.deliver(version_created(source=world["weights"]), timestamp=int(time.time()) - 250).status_code == 202
    assert len(rows(url_of(world))) == 1 and len(recorder.calls) == 1


def test_malformed_json_and_bodies_that_are_not_mlflows_are_refused(world):
    client, recorder = receiver(world)
    cases = {b'{"entity": "model_version", "action": ': "the body is not JSON (Expecting value at character 38)",
             b'["model_version"]': "the body is a JSON list, not MLflow's object {entity, action, timestamp, data}",
             json.dumps({**version_created(), "timestamp": "yesterday"}).encode():
                 "body: timestamp 'yesterday' is not an ISO 8601 time",
             json.dumps({"entity": "model_version", "action": "created", "timestamp": WHEN,
                         "data": {"name": "shapes", "version": 1, "source": "x"}}).encode():
                 "data of model_version.created: 'version' must be a string, got int",
             json.dumps({"entity": "model_version", "action": "created", "timestamp": WHEN,
                         "data": {"name": "shapes", "version": "1"}}).encode():
                 "data of model_version.created: no 'source' field"}
    for body, reason in cases.items():
        answer = client.deliver(None, body=body)
        assert (answer.status_code, answer.json()) == (400, {"error": reason}), body
    assert rows(url_of(world)) == [] and recorder.calls == []


def test_unknown_fields_of_the_generic_hook_are_refused(world):
    client, recorder = receiver(world)
    good = {"model": "shapes", "version": "2", "weights_uri": world["weights"]}
    answer = client.deliver({**good, "weights": "x", "dataset": "y"}, hook=GENERIC, secret=GENERIC_SECRET)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("unknown field(s) dataset, weights; use model, version, weights_uri, ")
    answer = client.deliver({**good, "settings": {"clustres": 3}}, hook=GENERIC, secret=GENERIC_SECRET)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("settings: unknown key(s) clustres; use batch_size, cam, classes, ")
    answer = client.deliver({"model": "shapes", "version": "2"}, hook=GENERIC, secret=GENERIC_SECRET)
    assert answer.json() == {"error": "body: no 'weights_uri' field"}
    # the MLflow secret does not sign the generic hook, nor the other way round
    assert client.deliver(good, hook=GENERIC, secret=SECRET).status_code == 401
    assert rows(url_of(world)) == [] and recorder.calls == []


def test_a_body_over_the_limit_is_refused(world):
    client, recorder = receiver(world, hooks_max_body_bytes=512)
    padded = version_created(source=world["weights"], tags={"note": "x" * 600})
    answer = client.deliver(padded)
    assert (answer.status_code, answer.json()) == (413, {"error": "the body is larger than 512 bytes "
                                                                  "(XICH_HOOKS_MAX_BODY_BYTES)"})

    async def chunks():  # no Content-Length: the limit holds on the stream itself
        yield b'{"entity": "model_version", "padding": "'
        for _ in range(10):
            yield b"x" * 100

    streamed = client.request("POST", "/hooks/mlflow", content=chunks(),
                              headers={"X-MLflow-Delivery-Id": "d", "X-MLflow-Timestamp": str(int(time.time())),
                                       "X-MLflow-Signature": "v1,AAAA"})
    assert streamed.status_code == 413
    assert rows(url_of(world)) == [] and recorder.calls == []


def test_a_replayed_delivery_starts_nothing(world, database_url):
    client, recorder = receiver(world, database_url)
    doc = version_created(source=world["weights"])
    first = client.deliver(doc, delivery_id="3f1e-replay")
    assert first.status_code == 202 and first.json()["outcome"] == "started"
    again = client.deliver(doc, delivery_id="3f1e-replay")  # as MLflow retries, or an attacker replays
    assert again.status_code == 409
    assert again.json()["error"].startswith("delivery 3f1e-replay was received before (")
    assert again.json()["error"].endswith(", started): nothing done again")
    assert len(recorder.calls) == 1
    assert [(d.delivery_id, d.outcome, d.flow_run_id) for d in rows(database_url)] == [("3f1e-replay", "started",
                                                                                        "flow-run-1")]
    assert len(rows(database_url, AuditRequest)) == 1


def test_a_delivery_opens_no_engine_and_runs_no_migration(world, database_url, monkeypatch):
    """The receiver's context made its one engine and migrated when the app was created; deliveries only use it.
    Counted where every engine and every migration begins: SQLAlchemy's create_engine as xich.records.db calls it,
    and Alembic's command.upgrade."""
    import alembic.command

    import xich.records.db

    client, recorder = receiver(world, database_url)
    counts = {"engines": 0, "migrations": 0}

    def counted(name, real):
        def call(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(xich.records.db, "create_engine", counted("engines", xich.records.db.create_engine))
    monkeypatch.setattr(alembic.command, "upgrade", counted("migrations", alembic.command.upgrade))
    for version in ("1", "2"):
        answer = client.deliver(version_created(version=version, source=world["weights"]))
        assert answer.status_code == 202 and answer.json()["outcome"] == "started"
    assert counts == {"engines": 0, "migrations": 0}
    assert len(recorder.calls) == 2


def test_two_copies_at_once_act_once(world, database_url):
    """The claim is a unique row, so copies arriving together (MLflow's retry of a slow answer) act once. Both
    copies are held at the claim's INSERT until the other is there too (a barrier on the real database
    connection's cursor), so they race there; run one after the other, the barrier would time out and fail."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    client, recorder = receiver(world, database_url)
    doc = version_created(source=world["weights"])
    barrier, released = threading.Barrier(2, timeout=20), []

    def hold_the_claim(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("INSERT INTO HOOK_DELIVERY"):
            barrier.wait()
            released.append(time.monotonic())

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(client.deliver(doc, delivery_id="same").status_code))
               for _ in range(2)]
    event.listen(Engine, "before_cursor_execute", hold_the_claim)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        event.remove(Engine, "before_cursor_execute", hold_the_claim)
    assert len(released) == 2 and abs(released[0] - released[1]) < 1  # both reached the claim together
    assert sorted(answers) == [202, 409] and len(recorder.calls) == 1
    assert [(d.delivery_id, d.outcome) for d in rows(database_url)] == [("same", "started")]


def test_a_hook_without_its_secret_answers_503_and_none_refuses_to_start(world, monkeypatch, capsys):
    client, recorder = receiver(world, hooks_generic_secret=None)
    answer = client.deliver({"model": "shapes", "version": "1", "weights_uri": world["weights"]}, hook=GENERIC,
                            secret=GENERIC_SECRET)
    assert (answer.status_code, answer.json()) == (503, {"error": "the generic hook is off: "
                                                                  "XICH_HOOKS_GENERIC_SECRET is not set"})
    assert client.request("GET", "/health").json() == {"status": "ok", "hooks": {"mlflow": True, "generic": False}}
    assert rows(url_of(world)) == [] and recorder.calls == []

    with pytest.raises(XichError, match="XICH_HOOKS_SECRET and XICH_HOOKS_GENERIC_SECRET are both unset"):
        create_app(get_hook_settings(database_url=url_of(world), hooks_secret="", hooks_generic_secret=None))
    monkeypatch.setenv("XICH_HOOKS_SECRET", "")
    monkeypatch.delenv("XICH_HOOKS_GENERIC_SECRET", raising=False)
    assert main(["serve-hooks", "--port", "1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: XICH_HOOKS_SECRET and XICH_HOOKS_GENERIC_SECRET are both unset")


def test_secrets_never_appear_in_logs_or_answers(world, caplog):
    caplog.set_level(logging.DEBUG)
    client, _ = receiver(world)
    answers = [client.deliver(version_created(source=world["weights"]), secret=s) for s in (SECRET, "wrong")]
    answers += [client.deliver(version_created(source=world["weights"]), timestamp=1),
                client.deliver({"model": "m", "version": "1", "weights_uri": None}, hook=GENERIC, secret=SECRET),
                client.request("GET", "/health")]
    assert [a.status_code for a in answers] == [202, 401, 400, 401, 200]
    for secret in (SECRET, GENERIC_SECRET):
        assert secret not in caplog.text
        assert all(secret not in a.text for a in answers)
    assert SECRET not in repr(get_hook_settings(hooks_secret=SECRET))


# --- what an accepted delivery does ---------------------------------------------------------------

def test_a_created_version_is_recorded_and_its_audit_started(world, database_url):
    client, recorder = receiver(world, database_url, mlflow_tracking_uri="http://user:pw@mlflow.example:5000")
    answer = client.deliver(version_created(source=world["weights"], tags={"team": "vision"}), delivery_id="d-1")
    assert answer.status_code == 202
    assert answer.json() == {"outcome": "started", "reason": "audit of shapes 1 started: flow run flow-run-1",
                             "delivery_id": "d-1", "model": "shapes", "version": "1", "flow_run_id": "flow-run-1"}
    # exactly the parameters of flows.audit.audit_model_version
    assert recorder.calls == [{"model": "shapes", "version": "1", "model_spec": "cifar:resnet20",
                               "weights_uri": world["weights"], "dataset_uri": world["data"],
                               "settings": {"classes": ["cat", "dog"], "clusters": 3, "labels": "cifar10"}}]
    [mv] = rows(database_url, ModelVersion)
    assert mv.registry_metadata == {"registry": "mlflow", "tracking_uri": "http://mlflow.example:5000",
                                    "name": "shapes", "version": "1", "source": world["weights"],
                                    "run_id": "0a1b2c3d4e5f", "tags": {"team": "vision"}, "created_at": WHEN}
    assert mv.registered_at.replace(tzinfo=None).isoformat() == WHEN[:-6]  # the registry's time orders versions
    assert mv.weights_sha256 is None  # not hashed before answering: the worker that audits it hashes the weights
    [delivery] = rows(database_url)
    assert (delivery.event, delivery.model, delivery.version, delivery.outcome) == \
        ("model_version.created", "shapes", "1", "started")
    assert [r["version"] for r in unaudited(engine=context_for(database_url).engine)] == ["1"]  # the nightly flow would take it


def test_other_weights_under_a_recorded_version_are_refused_in_http_words(world):
    """The 422 reason tells an HTTP client what to do, not which command-line flag to pass."""
    client, _ = receiver(world)
    assert client.deliver(version_created(source=world["weights"])).status_code == 202
    other = checkpoint(world["dir"] / "other.pt", wrapped=True)
    answer = client.deliver(version_created(source=str(other)))
    assert (answer.status_code, answer.json()["outcome"]) == (422, "refused")
    assert answer.json()["reason"].endswith("; register these weights as a new version of the model")
    assert "--" not in answer.json()["reason"]


def test_tags_override_the_mapping_and_a_misspelt_tag_is_refused(world):
    client, recorder = receiver(world)
    other = world["dir"] / "other"
    for cls in ("cat", "dog"):
        (other / "test" / cls).mkdir(parents=True)
    tags = {"xich.dataset": str(other), "xich.settings": '{"clusters": 4, "mosaics_per_pair": 5}'}
    assert client.deliver(version_created(version="2", source=world["weights"], tags=tags)).status_code == 202
    assert recorder.calls[-1]["dataset_uri"] == str(other)
    assert recorder.calls[-1]["settings"] == {"classes": ["cat", "dog"], "clusters": 4, "mosaics_per_pair": 5,
                                              "labels": "cifar10"}
    answer = client.deliver(version_created(version="3", source=world["weights"], tags={"xich.datset": "x"}))
    assert answer.status_code == 422
    assert answer.json()["reason"] == ("tag(s) xich.datset: not XICH tags; use xich.spec, xich.dataset, xich.labels, "
                                       "xich.settings, xich.weights_file")
    assert [(d.version, d.outcome) for d in rows(url_of(world))] == [("2", "started"), ("3", "refused")]
    assert [mv.version for mv in rows(url_of(world), ModelVersion)] == ["2"]  # refused: no version recorded


def test_an_unmapped_version_is_answered_with_its_reason(world):
    client, recorder = receiver(world)
    answer = client.deliver(version_created(name="fraud-detector", source=world["weights"]))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "unmapped"
    assert answer.json()["reason"] == (f"model 'fraud-detector' is not in the mapping file {world['mapping']}, and "
                                       f"the version gives no xich.spec and no xich.dataset: nothing to audit")
    [delivery] = rows(url_of(world))
    assert (delivery.model, delivery.outcome, delivery.reason) == ("fraud-detector", "unmapped",
                                                                   answer.json()["reason"])
    assert recorder.calls == []


def test_a_missing_checkpoint_is_refused_with_its_reason(world):
    client, recorder = receiver(world)
    answer = client.deliver(version_created(source=str(world["dir"] / "nope.pt")))
    assert (answer.status_code, answer.json()["outcome"]) == (422, "refused")
    assert answer.json()["reason"] == f"{world['dir'] / 'nope.pt'}: no such file or folder"
    assert rows(url_of(world), ModelVersion) == [] and recorder.calls == []


def test_without_prefect_the_version_is_still_recorded_for_the_nightly_flow(world):
    """`xich serve-hooks` (its own process: Prefect's client settings stay out of pytest's) whose PREFECT_API_URL
    points where nothing listens: Prefect's own run_deployment fails, the version stays recorded."""
    if (missing := stack.prefect_missing()) is not None:
        pytest.skip(missing)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "XICH_"))},
           "PREFECT_API_URL": f"http://127.0.0.1:{stack.free_port()}/api", "PREFECT_HOME": str(world["dir"] / "ph"),
           "XICH_DATABASE_URL": url_of(world), "XICH_HOOKS_SECRET": SECRET, "XICH_HOOKS_CONFIG": world["mapping"],
           "XICH_CACHE_DIR": str(world["dir"] / "cache"), "XICH_HOOKS_ALLOWED_SOURCES": str(world["dir"])}
    with stack.hooks_receiver(env, world["dir"]) as hooks:
        body = json.dumps(version_created(source=world["weights"])).encode()
        stamp = str(int(time.time()))
        began = time.monotonic()
        status, answer = hooks.post("/hooks/mlflow", body, {
            "X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": stamp, "Content-Type": "application/json",
            "X-MLflow-Signature": sign(SECRET, "d-1", stamp, body)})
        took = time.monotonic() - began
    assert (status, answer["outcome"]) == (202, "registered"), f"{answer}\n{stack.log_tail(hooks.log)}"
    # the cause in the words `xich register --audit` uses (run/deploy.why_not_started): the server, at that URL
    assert answer["reason"].startswith(f"shapes 1 is recorded, but its audit did not start: Prefect at "
                                       f"{env['PREFECT_API_URL']} is not reachable: "), answer["reason"]
    assert answer["reason"].endswith("the nightly audit-new-versions flow will audit it")
    assert took < 15, f"answered in {took:.1f} s"
    assert [(r["model"], r["version"]) for r in unaudited(engine=context_for(url_of(world)).engine)] == [("shapes", "1")]
    assert [d.outcome for d in rows(url_of(world))] == ["registered"]
    log_text = hooks.log.read_text()
    assert "202" in log_text and SECRET not in log_text


def test_a_failure_a_retry_may_pass_answers_503_and_is_not_remembered(world, monkeypatch):
    client, recorder = receiver(world)

    def store_down(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr("xich.hooks.receiver.resolve_weights", store_down)
    doc = version_created(source="s3://models/shapes/1.pt")
    answer = client.deliver(doc, delivery_id="d-retry")
    assert answer.status_code == 503
    assert answer.json()["reason"] == "[Errno 111] Connection refused; nothing was recorded: send the delivery again"
    assert rows(url_of(world)) == []
    monkeypatch.undo()
    assert client.deliver(version_created(source=world["weights"]), delivery_id="d-retry").status_code == 202


def test_alias_events(world):
    client, recorder = receiver(world, hooks_aliases="challenger,champion")
    alias = {"entity": "model_version_alias", "action": "created", "timestamp": WHEN,
             "data": {"name": "shapes", "alias": "staging", "version": "1"}}
    answer = client.deliver(alias)
    assert (answer.status_code, answer.json()["outcome"]) == (200, "ignored")
    assert answer.json()["reason"] == "alias 'staging' starts no audit (XICH_HOOKS_ALIASES: challenger, champion)"
    alias["data"]["alias"] = "champion"  # acted on, but it names only the version: MLflow must say the rest
    answer = client.deliver(alias)
    assert (answer.status_code, answer.json()["outcome"]) == (422, "refused")
    assert answer.json()["reason"].startswith("model 'shapes' version 1: XICH_MLFLOW_TRACKING_URI is not set")
    assert recorder.calls == []


def test_the_generic_hook_records_a_version_from_a_folder(world):
    client, recorder = receiver(world)
    folder = world["dir"] / "export"
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "card.md").write_text("a model card")
    checkpoint(folder / "state_dict.pth")
    body = {"model": "shapes", "version": 7, "weights_uri": str(folder), "settings": {"clusters": 2},
            "metadata": {"pipeline": "ci-1234"}, "created_at": "2026-11-28T08:00:00Z"}
    answer = client.deliver(body, hook=GENERIC, secret=GENERIC_SECRET, delivery_id="ci-1234")
    assert answer.status_code == 202, answer.text
    assert recorder.calls[0]["weights_uri"] == f"{folder}/state_dict.pth"  # its one checkpoint
    assert recorder.calls[0]["settings"] == {"classes": ["cat", "dog"], "clusters": 2, "labels": "cifar10"}
    [mv] = rows(url_of(world), ModelVersion)
    assert mv.version == "7" and mv.registry_metadata == {"sender": {"pipeline": "ci-1234"}, "hook": "generic"}
    assert mv.registered_at.year == 2026 and mv.registered_at.day == 28
    checkpoint(folder / "best.ckpt", wrapped=True)  # two checkpoints: which one must be said
    answer = client.deliver({**body, "version": "8"}, hook=GENERIC, secret=GENERIC_SECRET)
    assert answer.status_code == 422
    assert answer.json()["reason"] == (f"{folder}: a folder holding 2 checkpoint files; "  # no listing of it
                                       f"name the one to audit with the tag xich.weights_file (its path in the folder)")
    answer = client.deliver({**body, "version": "8", "weights_file": "best.ckpt"}, hook=GENERIC,
                            secret=GENERIC_SECRET)
    assert answer.status_code == 202 and recorder.calls[-1]["weights_uri"] == f"{folder}/best.ckpt"
    assert [m.name for m in rows(url_of(world), Model)] == ["shapes"]
