"""``xich serve-hooks``: model-registry webhooks that start audits (an ASGI app, served by uvicorn).

    GET  /health         {"status": "ok", "hooks": {"mlflow": bool, "generic": bool}}: which hooks have a secret
    POST /hooks/mlflow   MLflow's webhooks: acts on model_version.created, and on model_version_alias.created for
                         the aliases of XICH_HOOKS_ALIASES; acknowledges every other event
    POST /hooks/generic  {"model", "version", "weights_uri", "dataset_uri", ...}: other registries and CI pipelines

A POST is checked in this order; the first failure answers a 4xx with its reason and leaves no row behind:
body size (413) and read time (408), delivery id and timestamp headers (400), signature (401), the timestamp's
window (400), the JSON and its fields (400: NaN, infinities, integers past Python's digit limit, nesting, names and
versions bounded, split and class names that are not one folder's name), a delivery id received
before (409; unless its claim stayed ``processing`` longer than XICH_HOOKS_CLAIM_STALE_S: a receiver killed
mid-delivery, whose retry then takes the claim over). Both hooks sign as MLflow does (see
:func:`sign`), each with its own secret and headers; a hook whose secret is unset answers 503.

An accepted delivery is remembered (``deliveries``), then resolved through the mapping file (``hook_mapping``),
its weights read from its source (hashed later, by the worker that audits them), the version and its audit request recorded
(``registration.register``), and the audit deployment started without waiting for it:

    202 started      a flow run of the audit deployment was created
    202 registered   recorded, but Prefect did not take the run: the nightly audit-new-versions flow audits it
    200 audited      recorded before, its audit complete or running: nothing started
    200 ignored      an event or alias that starts no audit
    200 unmapped     the version maps to no audit (the reason says why)
    409 conflict     the version was recorded by the other hook (MLflow or generic): one origin per version;
                     nothing is remembered
    422 refused      authentic, but it cannot be audited as it stands (the reason says why): a spec kind or a
                     source outside the trust boundary (``boundary``, docs/security.md), bad settings, values
                     the database refuses; remembered, so a retry is answered 409
    503 unavailable  acting failed on what a later try may pass (database or store unreachable, MLflow down):
                     nothing is remembered, so the sender's retry acts on it

Light on purpose: no torch; Prefect is imported only to start a deployment, mlflow only to read a source.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import anyio
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..boundary import Outside, check_name, check_path_settings, check_sources, check_spec, escape, parse_json
from ..records.deliveries import claim_delivery, forget_delivery, received_delivery, settle_delivery
from ..errors import Unavailable, XichError
from .mapping import NotMapped, read_mapping, resolve, tag_overrides
from ..records.mlflow_registry import resolve_weights, version_facts, without_credentials
from ..records.registration import REQUEST_SETTINGS, OriginConflict, audit_status, register, registry_time
from ..run.context import Context, open_context
from ..run.deploy import why_not_started
from ..settings import HookSettings

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
VERSION_CREATED = "model_version.created"
ALIAS_CREATED = "model_version_alias.created"
GENERIC_EVENT = "generic.version"
# the generic hook's body: field → accepted JSON types (None: null); model, version and weights_uri are required
GENERIC_FIELDS = {"model": (str,), "version": (str, int), "weights_uri": (str, type(None)), "dataset_uri": (str,),
                  "model_spec": (str,), "labels": (str,), "settings": (dict,), "weights_file": (str,),
                  "metadata": (dict,), "created_at": (str, int)}
GENERIC_REQUIRED = ("model", "version", "weights_uri")


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature (mlflow/webhooks/delivery.py): ``v1,`` + base64 of
    HMAC-SHA256(secret, ``{delivery_id}.{timestamp}.{raw body}``), over the body's bytes as sent."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION},{base64.b64encode(mac.digest()).decode()}"


def signature_matches(secret: str, delivery_id: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is :func:`sign`'s, compared in constant time."""
    expected = sign(secret, delivery_id, timestamp, body).encode()
    return hmac.compare_digest(expected, signature.encode("latin-1", errors="replace"))


@dataclass(frozen=True)
class Hook:
    """One endpoint: its name (``hook_delivery.source``), headers and the setting holding its secret."""

    source: str
    delivery_header: str
    timestamp_header: str
    signature_header: str
    secret_setting: str


MLFLOW = Hook("mlflow", "X-MLflow-Delivery-Id", "X-MLflow-Timestamp", "X-MLflow-Signature", "hooks_secret")
GENERIC = Hook("generic", "X-XICH-Delivery-Id", "X-XICH-Timestamp", "X-XICH-Signature", "hooks_generic_secret")


class Refused(Exception):
    """A request refused before anything acts on it: its HTTP status and the reason, for the sender."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Announcement:
    """What a delivery announces: an event on a model version, with what the registry says of it."""

    event: str
    model: str | None = None
    version: str | None = None
    alias: str | None = None
    source: str | None = None  # where the weights are
    run_id: str | None = None  # MLflow's run of the version
    tags: dict[str, str] = field(default_factory=dict)  # MLflow tags (xich.* ones override the mapping)
    overrides: dict = field(default_factory=dict)  # the generic hook's fields over the mapping (hook_mapping.FIELDS)
    metadata: dict = field(default_factory=dict)  # stored as the version's registry metadata
    registered_at: datetime | None = None


@dataclass
class Answer:
    status: int
    outcome: str
    reason: str
    flow_run_id: str | None = None


ACTING_AT_ONCE = 4  # deliveries acting at once: 4 x 3 connections fit the engine's pool of 5 + 10 (HookReceiver._acting)


class HookReceiver:
    """The hooks' state (the context: settings, database engine, deployer; the mapping) and their handlers.

    Every delivery uses the context's one engine; the database was migrated when the context opened, at start.
    """

    def __init__(self, ctx: Context):
        settings = ctx.settings
        if not isinstance(settings, HookSettings):
            raise TypeError("the receiver's context needs HookSettings (settings.get_hook_settings)")
        if settings.hooks_secret is None and settings.hooks_generic_secret is None:
            raise XichError("XICH_HOOKS_SECRET and XICH_HOOKS_GENERIC_SECRET are both unset: the receiver would "
                            "refuse every delivery; set the secret of the MLflow webhook, of the generic hook, or both")
        self.ctx, self.settings = ctx, settings
        self.engine = ctx.engine  # made, and the database migrated, now: never per delivery
        self.mapping = read_mapping(settings.hooks_config) if settings.hooks_config else {}
        self.mapping_source = f"the mapping file {settings.hooks_config}" if settings.hooks_config else \
            "the mapping (XICH_HOOKS_CONFIG is not set)"
        self.start_audit = ctx.start_audit
        self.acting: anyio.CapacityLimiter | None = None

    def close(self) -> None:
        self.ctx.close()

    def _acting(self) -> anyio.CapacityLimiter:
        """At most ACTING_AT_ONCE deliveries act at once; the others wait here, holding no database connection.

        Each acting delivery holds up to three connections of the engine's pool (its claim, the registration's
        session and its lock): unbounded, 24 deliveries at once held all 15 (5 + 10 overflow) while waiting for
        more, and every one failed after the pool's 30 s (tests/test_registration_race.py)."""
        if self.acting is None:  # made in the event loop that serves the deliveries
            self.acting = anyio.CapacityLimiter(ACTING_AT_ONCE)
        return self.acting

    # --- HTTP --------------------------------------------------------------------------------------

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "hooks": {"mlflow": self.settings.hooks_secret is not None,
                                                       "generic": self.settings.hooks_generic_secret is not None}})

    async def mlflow(self, request: Request) -> JSONResponse:
        return await self._deliver(MLFLOW, request, parse_mlflow)

    async def generic(self, request: Request) -> JSONResponse:
        return await self._deliver(GENERIC, request, parse_generic)

    async def _deliver(self, hook: Hook, request: Request, parse: Callable[[object], Announcement]) -> JSONResponse:
        delivery_id = None
        try:
            secret = getattr(self.settings, hook.secret_setting)
            if secret is None:
                return self._refusal(hook, None, Refused(503, f"the {hook.source} hook is off: "
                                                              f"XICH_{hook.secret_setting.upper()} is not set"))
            body = await _read_body(request, self.settings.hooks_max_body_bytes, self.settings.hooks_body_timeout_s)
            delivery_id, timestamp = self._authenticate(hook, request, body, secret.get_secret_value())
            announcement = parse(_json(body))
            answer = await anyio.to_thread.run_sync(self._act, hook, delivery_id, announcement,
                                                    limiter=self._acting())
        except Refused as refused:
            return self._refusal(hook, delivery_id, refused)
        log.info("%s delivery %s: %s %s %s -> %d %s: %s", hook.source, escape(delivery_id), escape(announcement.event),
                 escape(announcement.model), escape(announcement.version), answer.status, answer.outcome,
                 escape(answer.reason, 500))
        return JSONResponse({"outcome": answer.outcome, "reason": answer.reason, "delivery_id": delivery_id,
                             "model": announcement.model, "version": announcement.version,
                             "flow_run_id": answer.flow_run_id}, status_code=answer.status)

    def _refusal(self, hook: Hook, delivery_id: str | None, refused: Refused) -> JSONResponse:
        log.warning("%s delivery %s refused (%d): %s", hook.source, escape(delivery_id or "-"), refused.status,
                    escape(refused.reason, 500))
        # a refused body may be unread: the connection is closed rather than kept for the next request
        headers = {"Connection": "close"} if refused.status in (408, 413) else None
        return JSONResponse({"error": refused.reason}, status_code=refused.status, headers=headers)

    def _authenticate(self, hook: Hook, request: Request, body: bytes, secret: str) -> tuple[str, str]:
        """The delivery id and timestamp of a request signed with ``secret`` within the window; else Refused."""
        delivery_id = request.headers.get(hook.delivery_header, "")
        timestamp = request.headers.get(hook.timestamp_header, "")
        signature = request.headers.get(hook.signature_header)
        for name, value in ((hook.delivery_header, delivery_id), (hook.timestamp_header, timestamp)):
            if not value:
                raise Refused(400, f"no {name} header")
        if len(delivery_id) > 255 or not delivery_id.isprintable():
            raise Refused(400, f"{hook.delivery_header}: at most 255 printable characters")
        if signature is None:
            raise Refused(401, f"no {hook.signature_header} header: the sender signs nothing (an MLflow webhook "
                               f"created without a secret?)")
        if not signature_matches(secret, delivery_id, timestamp, body, signature):
            raise Refused(401, f"{hook.signature_header} does not match the body: wrong secret, or the body was "
                               f"changed on the way")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):  # '²'.isdigit() is True
            raise Refused(400, f"{hook.timestamp_header} {escape(timestamp, 40)}: not unix seconds (at most 12 digits)")
        skew = time.time() - int(timestamp)
        if abs(skew) > self.settings.hooks_window_s:
            raise Refused(400, f"{hook.timestamp_header} {timestamp} is {abs(skew):.0f} s "
                               f"{'old' if skew > 0 else 'in the future'}; deliveries more than "
                               f"{self.settings.hooks_window_s} s (XICH_HOOKS_WINDOW_S) from this server's clock are "
                               f"refused")
        return delivery_id, timestamp

    # --- acting on a delivery (in a worker thread: database, store and MLflow calls block) ---------------

    def _act(self, hook: Hook, delivery_id: str, announcement: Announcement) -> Answer:
        """Claim the delivery, act on it, record the outcome; a delivery claimed before is Refused (409)."""
        try:
            with Session(self.engine) as session:
                delivery = claim_delivery(session=session, source=hook.source, delivery_id=delivery_id,
                                          event=announcement.event, model=announcement.model,
                                          version=announcement.version,
                                          stale_after_s=self.settings.hooks_claim_stale_s)
                if delivery is None:
                    before = received_delivery(session=session, source=hook.source, delivery_id=delivery_id)
                    when = before.received_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if before else "?"
                    raise Refused(409, f"delivery {delivery_id} was received before ({when}, "
                                       f"{before.outcome if before else '?'}): nothing done again")
                try:
                    answer = self._answer(announcement)
                except OriginConflict as exc:  # another hook's version: refused, and nothing of it remembered
                    _forget(session, delivery)
                    raise Refused(409, str(exc)) from None
                except DBAPIError as exc:
                    if _outage(exc):
                        _forget(session, delivery)
                        raise
                    session.rollback()  # the database refused these values: no retry can change that
                    answer = Answer(422, "refused", f"the results database refused the request's values "
                                                    f"({_db_reason(exc)}); change the request")
                except BaseException:
                    _forget(session, delivery)
                    raise
                settle_delivery(session=session, delivery=delivery, outcome=answer.outcome, reason=answer.reason,
                                flow_run_id=answer.flow_run_id)
                return answer
        except (Unavailable, OSError, OperationalError, InterfaceError, PoolTimeout) as exc:
            reason = _db_reason(exc) if isinstance(exc, DBAPIError) else " ".join(without_credentials(str(exc)).split())[:500]
            log.warning("%s delivery %s: %s; not remembered, so a retry acts on it", hook.source, escape(delivery_id),
                        escape(reason, 500))
            return Answer(503, "unavailable", f"{reason}; nothing was recorded: send the delivery again")

    def _answer(self, announcement: Announcement) -> Answer:
        if announcement.event not in (VERSION_CREATED, ALIAS_CREATED, GENERIC_EVENT):
            return Answer(200, "ignored", f"event {announcement.event} starts no audit (acted on: {VERSION_CREATED}, "
                                          f"and {ALIAS_CREATED} for {', '.join(self.settings.hooks_aliases) or 'no alias'})")
        if announcement.event == ALIAS_CREATED and announcement.alias not in self.settings.hooks_aliases:
            return Answer(200, "ignored", f"alias {announcement.alias!r} starts no audit (XICH_HOOKS_ALIASES: "
                                          f"{', '.join(self.settings.hooks_aliases) or 'none'})")
        try:
            return self._register_and_start(announcement)
        except NotMapped as exc:
            return Answer(200, "unmapped", str(exc))
        except (Unavailable, OriginConflict):
            raise
        except XichError as exc:
            return Answer(422, "refused", str(exc))

    def _register_and_start(self, a: Announcement) -> Answer:
        if a.event == ALIAS_CREATED:  # the alias event names the version only: ask MLflow for the rest
            facts = version_facts(a.model, a.version, tracking_uri=self.settings.mlflow_tracking_uri)
            a.source, a.run_id, a.tags = facts["source"], facts["run_id"], facts["tags"]
            a.registered_at = registry_time({"creation_timestamp": facts["creation_timestamp"]})
        if a.event in (VERSION_CREATED, ALIAS_CREATED):  # what the write-back needs to find the version again
            uri = self.settings.mlflow_tracking_uri
            a.metadata = {"registry": "mlflow", "tracking_uri": without_credentials(uri) if uri else None,
                          "name": a.model, "version": a.version, "source": a.source, "run_id": a.run_id,
                          "tags": a.tags, "created_at": a.registered_at.isoformat() if a.registered_at else None}
        outside = {**tag_overrides(a.tags), **a.overrides}  # the mapping file is the operator's; these are not
        target = resolve(self.mapping, a.model, outside, source=self.mapping_source)
        check_spec(target.spec, self.settings.hooks_allowed_specs)
        sent_settings = outside.get("settings") or {}
        check_sources({"dataset": outside.get("dataset"), "labels": outside.get("labels"),
                       "settings.labels": sent_settings.get("labels") if isinstance(sent_settings, dict) else None},
                      self.settings.hooks_allowed_sources)
        weights_uri, local = (resolve_weights(a.source, weights_file=target.weights_file, settings=self.settings,
                                              allowed_sources=self.settings.hooks_allowed_sources)
                              if a.source else (None, None))
        parameters = register(records=self.ctx, model=a.model, version=a.version,
                              model_spec=target.spec, weights_uri=weights_uri, dataset_uri=target.dataset,
                              settings=target.settings, registry_metadata=a.metadata, registered_at=a.registered_at,
                              local_weights=str(local) if local else None,
                              allowed_specs=self.settings.hooks_allowed_specs,
                              hash_weights=False)  # a multi-GB checkpoint would outlast the sender's timeout
        served = audit_status(engine=self.engine, model=a.model, version=a.version,
                              dataset_uri=parameters["dataset_uri"], settings=target.settings)  # as recorded (absolute)
        if served is not None and served[1] in ("complete", "running"):
            return Answer(200, "audited", f"{a.model} {a.version} was recorded before and its audit is {served[1]} "
                                          f"(run {served[0]}): nothing started")
        try:
            flow_run_id = self.start_audit(parameters)
        except Exception as exc:  # no Prefect, a server that does not answer, no deployment: the nightly flow audits it
            cause = (why_not_started(self.settings, exc) if self.settings.prefect_api_url
                     and not isinstance(exc, XichError) else str(exc) or type(exc).__name__)
            return Answer(202, "registered", f"{a.model} {a.version} is recorded, but its audit did not start: "
                                             f"{' '.join(cause.split())[:400]}; the nightly audit-new-versions flow "
                                             f"will audit it")
        return Answer(202, "started", f"audit of {a.model} {a.version} started: flow run {flow_run_id}", flow_run_id)


def _outage(exc: DBAPIError) -> bool:
    """Whether a database error is the database being unreachable (a retry may pass), not a refusal of values."""
    return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated


def _db_reason(exc: DBAPIError) -> str:
    """The driver's first line, without the SQL statement or its parameters, nor credentials."""
    first = (str(exc.orig).splitlines() or [""])[0] if exc.orig is not None else ""
    return f"{type(exc.orig or exc).__name__}: {escape(without_credentials(first), 200)}"


def _forget(session: Session, delivery) -> None:
    try:
        forget_delivery(session=session, delivery=delivery)
    except DBAPIError as exc:  # the database went away: the claim may stay, and a retry is answered 409
        log.error("delivery %s could not be forgotten (%s); a retry will be refused as a repeat",
                  escape(delivery.delivery_id), _db_reason(exc))


# --- reading requests ---------------------------------------------------------------------------

async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The raw body (the signature covers its bytes as sent); Refused (413) past ``limit`` bytes, (408) when it has
    not all arrived within ``timeout_s`` (uvicorn has no body-read timeout: a sender that stalls mid-body would
    hold its connection and buffer until it disconnects)."""
    declared = request.headers.get("content-length", "")
    too_large = Refused(413, f"the body is larger than {limit} bytes (XICH_HOOKS_MAX_BODY_BYTES)")
    if declared.isascii() and declared.isdigit() and (len(declared) > 12 or int(declared) > limit):
        raise too_large
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"the body did not arrive within {timeout_s:g} s (XICH_HOOKS_BODY_TIMEOUT_S)") from None
    return b"".join(chunks)


def _json(body: bytes) -> object:
    try:
        return parse_json(body, "the body")
    except Outside as exc:
        raise Refused(400, str(exc)) from None


def _field(data: dict, key: str, types: tuple, where: str, required: bool = True):
    if key not in data:
        if required:
            raise Refused(400, f"{where}: no {key!r} field")
        return None
    if not isinstance(data[key], types) or isinstance(data[key], bool):
        names = " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer",
                                                            "dict": "an object"}[t.__name__] for t in types)
        raise Refused(400, f"{where}: {key!r} must be {names}, got {type(data[key]).__name__}")
    return data[key]


def parse_mlflow(doc: object) -> Announcement:
    """An MLflow webhook body: ``{"entity", "action", "timestamp", "data": {...}}``.

    Fields MLflow may add (``workspace``, new keys in ``data``) are ignored, not refused: the sender is
    authenticated, and refusing them would lose every delivery after an MLflow upgrade.
    """
    if not isinstance(doc, dict):
        raise Refused(400, f"the body is a JSON {type(doc).__name__}, not MLflow's object "
                           f"{{entity, action, timestamp, data}}")
    entity, action = _field(doc, "entity", (str,), "body"), _field(doc, "action", (str,), "body")
    stamp, data = _field(doc, "timestamp", (str,), "body"), _field(doc, "data", (dict,), "body")
    try:
        sent_at = datetime.fromisoformat(stamp)
    except ValueError:
        raise Refused(400, f"body: timestamp {stamp[:40]!r} is not an ISO 8601 time") from None
    event = f"{entity}.{action}"
    where = f"data of {event}"
    if event == VERSION_CREATED:
        name, version = _name(data, "name", where), _name(data, "version", where)
        source = _field(data, "source", (str,), where)
        run_id = _field(data, "run_id", (str, type(None)), where, required=False)
        tags = _field(data, "tags", (dict,), where, required=False) or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise Refused(400, f"{where}: 'tags' must map strings to strings")
        if "xich.settings" in tags:
            try:
                tag_settings = parse_json(tags["xich.settings"], "tag xich.settings")
            except Outside:
                tag_settings = None  # refused as a whole when the version is resolved (422, with the mapping's words)
            _path_settings(tag_settings, "tag xich.settings")
        # MLflow sends the event as the version is created: its time is the version's registry time
        return Announcement(event, name, version, source=source, run_id=run_id, tags=tags,
                            registered_at=sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=timezone.utc))
    if event == ALIAS_CREATED:
        return Announcement(event, _name(data, "name", where), _name(data, "version", where),
                            alias=_name(data, "alias", where))
    name, version = data.get("name"), data.get("version")
    return Announcement(escape(event, 200), _or_none(name), _or_none(version))


def parse_generic(doc: object) -> Announcement:
    """The generic hook's body (GENERIC_FIELDS): unknown fields and settings are refused."""
    if not isinstance(doc, dict):
        raise Refused(400, f"the body is a JSON {type(doc).__name__}, not an object {{\"model\", \"version\", "
                           f"\"weights_uri\", \"dataset_uri\", ...}}")
    unknown = sorted(set(doc) - set(GENERIC_FIELDS))
    if unknown:
        raise Refused(400, f"unknown field(s) {escape(', '.join(unknown), 200)}; use {', '.join(GENERIC_FIELDS)}")
    values = {key: _field(doc, key, types, "body", required=key in GENERIC_REQUIRED)
              for key, types in GENERIC_FIELDS.items()}
    unknown = sorted(set(values["settings"] or {}) - set(REQUEST_SETTINGS))
    if unknown:
        raise Refused(400, f"settings: unknown key(s) {escape(', '.join(unknown), 200)}; use {', '.join(REQUEST_SETTINGS)}")
    _path_settings(values["settings"], "settings")
    registered_at = None
    if values["created_at"] is not None:
        try:
            registered_at = registry_time({"created_at": values["created_at"]})
        except XichError:
            raise Refused(400, f"body: created_at {values['created_at']!r} is not a time; give ISO 8601 "
                               f"(2026-11-29T12:00:00Z) or milliseconds since the epoch") from None
    version = str(values["version"])
    try:
        check_name(values["model"], "body: model")
        check_name(version, "body: version")
    except Outside as exc:
        raise Refused(400, str(exc)) from None
    overrides = {"spec": values["model_spec"], "dataset": values["dataset_uri"], "labels": values["labels"],
                 "settings": values["settings"], "weights_file": values["weights_file"]}
    return Announcement(GENERIC_EVENT, values["model"], version, source=values["weights_uri"],
                        overrides={k: v for k, v in overrides.items() if v is not None},
                        metadata=_generic_metadata(values["metadata"]), registered_at=registered_at)


def _path_settings(settings: object, where: str) -> None:
    """Refused (400) before anything is claimed or read: a split or class name that would leave the dataset's
    root (``"eval_split": "../../etc"``) — nothing is listed or stored for it (docs/security.md)."""
    try:
        check_path_settings(settings, where)
    except Outside as exc:
        raise Refused(400, str(exc)) from None


def _generic_metadata(sent: dict | None) -> dict:
    """The generic hook's metadata, namespaced under ``sender``: it can never set what the write-back reads
    (``registry``, ``tracking_uri``, ``name``, ``version``), which only the MLflow hook records."""
    return {"hook": "generic", **({"sender": sent} if sent else {})}


def _name(data: dict, key: str, where: str) -> str:
    value = _field(data, key, (str,), where)
    try:
        return check_name(value, f"{where}: {key}")
    except Outside as exc:
        raise Refused(400, str(exc)) from None


def _or_none(value: object) -> str | None:
    """A name or version of an event XICH does not act on: kept when it would fit its column, else dropped."""
    return value if isinstance(value, str) and 0 < len(value) <= 255 and value.isprintable() else None


def create_app(settings: HookSettings, *, start_audit: Callable[[dict], str] | None = None) -> Starlette:
    """The receiver as an ASGI app, on a context of its own. XichError when no hook has a secret or the mapping file
    is bad; the results database is migrated here (once), so a database that cannot be reached stops it before it
    listens.

    ``start_audit(parameters) -> flow run id``: how an audit is started (default: the audit deployment,
    XICH_AUDIT_DEPLOYMENT, through Prefect at PREFECT_API_URL; see ``run.deploy``).
    """
    ctx = open_context(settings, start_audit=start_audit)
    try:
        receiver = HookReceiver(ctx)
    except BaseException:
        ctx.close()
        raise

    @asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            yield
        finally:
            receiver.close()

    return Starlette(routes=[Route("/health", receiver.health, methods=["GET"]),
                             Route("/hooks/mlflow", receiver.mlflow, methods=["POST"]),
                             Route("/hooks/generic", receiver.generic, methods=["POST"])],
                     lifespan=lifespan)


def serve(settings: HookSettings, *, host: str, port: int, say: Callable[[str], None]) -> None:
    """Run the receiver on ``host:port`` with uvicorn until stopped (``xich serve-hooks``); ``say``: the line
    naming the hooks that are on and the results database (its password masked)."""
    import os

    import uvicorn

    from ..settings import masked

    # the receiver answers MLflow within its 30 s timeout: its own MLflow calls retry briefly unless told otherwise
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    app = create_app(settings)
    logging.getLogger("xich.hooks").setLevel(logging.INFO)
    hooks = [f"/hooks/mlflow ({'on' if settings.hooks_secret else 'off: XICH_HOOKS_SECRET unset'})",
             f"/hooks/generic ({'on' if settings.hooks_generic_secret else 'off: XICH_HOOKS_GENERIC_SECRET unset'})"]
    say(f"xich hooks on http://{host}:{port}: {', '.join(hooks)}; results database {masked(settings.database_url)}")
    uvicorn.Server(server_config(app, settings, host=host, port=port)).run()


HEADERS_TIMEOUT_S = 5.0  # a request's headers must all arrive within this long of the connection (or the last answer)
MAX_CONNECTIONS = 1024  # open connections; one beyond is closed at once


def server_config(app: Starlette, settings: HookSettings, *, host: str, port: int, log_level: str = "info"):
    """uvicorn's settings for the receiver (``serve``; the tests serve the app with the same ones).

    A flood of slow or idle connections (tests/test_flood.py) must not starve /health and the deliveries: uvicorn
    has no deadline for a request's headers, and its ``limit_concurrency`` counts idle connections with requests,
    so 200 connections that never finish their headers made it answer 503 to everything, for as long as they
    stayed. Here instead: a connection is closed when its headers take longer than HEADERS_TIMEOUT_S; at most
    MAX_CONNECTIONS are open; at most XICH_HOOKS_LIMIT_CONCURRENCY requests are in flight (503 beyond, /health
    aside: it reads no body), which bounds the bodies held in memory; headers are capped at MAX_HEADER_BYTES; the body-read
    timeout is the app's (``_read_body``).
    """
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Deadlines(H11Protocol):
        """uvicorn's h11 protocol with a deadline for each request's headers and a cap on open connections."""

        headers_due: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > MAX_CONNECTIONS:
                transport.close()
                return
            self._arm()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            self._arm()  # before: a pipelined request that follows (handled inside) disarms it
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self.headers_due = self.loop.call_later(HEADERS_TIMEOUT_S, self._headers_late)

        def _disarm(self) -> None:
            if self.headers_due is not None:
                self.headers_due.cancel()
                self.headers_due = None

        def _headers_late(self) -> None:
            self.headers_due = None
            if not self.transport.is_closing():
                self.transport.close()

    return uvicorn.Config(_in_flight_at_most(app, settings.hooks_limit_concurrency), host=host, port=port,
                          log_level=log_level, http=Deadlines, limit_concurrency=None, timeout_keep_alive=5,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES)


MAX_HEADER_BYTES = 16 * 1024


def _in_flight_at_most(app, limit: int):
    """``app`` answering 503 to a request beyond ``limit`` in flight (GET /health aside), before reading its body,
    and 431 to headers over MAX_HEADER_BYTES (h11's cap holds for headers still arriving; a larger block that
    arrives in one read of the socket passes it)."""
    in_flight = 0

    async def bounded(scope, receive, send) -> None:
        nonlocal in_flight
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            await JSONResponse({"error": f"headers over {MAX_HEADER_BYTES} bytes"}, status_code=431,
                               headers={"Connection": "close"})(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"] == "/health":
            await app(scope, receive, send)
            return
        if in_flight >= limit:
            busy = JSONResponse({"error": f"more than {limit} requests at once (XICH_HOOKS_LIMIT_CONCURRENCY); "
                                          f"send it again later"}, status_code=503, headers={"Connection": "close"})
            await busy(scope, receive, send)
            return
        in_flight += 1
        try:
            await app(scope, receive, send)
        finally:
            in_flight -= 1

    return bounded
