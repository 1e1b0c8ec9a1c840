"""Every setting of the service, from the environment (``XICH_*``), built by :func:`get_settings` (every command) and
:func:`get_hook_settings` (``xich serve-hooks`` only: a bad hooks setting never breaks another command).

Every value is checked with its type and bounds; :func:`describe_error` turns pydantic's error into one line that
names the variable and the form it expects. Secrets are ``SecretStr`` (at least 16 characters); URLs that may carry
a password (``XICH_DATABASE_URL``, ``XICH_MLFLOW_TRACKING_URI``) stay ``str`` for the code that reads them, as
:class:`MaskedURL`, whose ``repr`` hides the password.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .boundary import check_spec_kinds

# XICH_IMAGE_MAX_SIDE_FACTOR's default: images wider or taller than this many tile sides are not decoded
IMAGE_MAX_SIDE_FACTOR = 16
# XICH_ARCHIVE_MEMBER_MAX_BYTES / XICH_ARCHIVE_MAX_BYTES' defaults: a tarball dataset's members, each and in all
# (declared sizes, from the headers, before anything is read: engine/datasets.ArchiveCaps)
ARCHIVE_MEMBER_MAX_BYTES = 64 << 20
ARCHIVE_MAX_BYTES = 4 << 30

MIN_SECRET_CHARS = 16
DATABASE_SCHEMES = ("sqlite", "postgresql")


class MaskedURL(str):
    """A URL that is its own text for the code that uses it, and ``scheme://***@host…`` in ``repr``."""

    def __repr__(self) -> str:
        return repr(masked(self))


def masked(url: str) -> str:
    """``url`` with a ``user:password@`` part shown as ``***@``."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", url)


def _database_url(value: str) -> MaskedURL:
    from sqlalchemy.engine import make_url  # sqlalchemy is in every image; imported here to keep this module cheap

    try:
        url = make_url(value)
        url.port  # noqa: B018  (parsed lazily: a port that is not a number raises here)
    except Exception:
        raise ValueError("expected sqlite:///PATH or postgresql+psycopg://USER@HOST[:PORT]/DB") from None
    if url.drivername.split("+")[0] not in DATABASE_SCHEMES:
        raise ValueError(f"scheme {url.drivername!r} is not supported; expected sqlite:///PATH or "
                         f"postgresql+psycopg://USER@HOST[:PORT]/DB")
    return MaskedURL(value)


def _tracking_url(value: str | None) -> MaskedURL | None:
    if value is None or value == "":
        return None
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S*$", value):
        raise ValueError("expected the MLflow server's URL, e.g. http://HOST:PORT")
    return MaskedURL(value)


def _endpoint(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    match = re.match(r"^(https?://)?([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(:(\d{1,5}))?/?$", value)
    if not match or (match[4] and not 0 < int(match[4]) < 65536):
        raise ValueError("expected HOST:PORT (a port from 1 to 65535), optionally after http:// or https://")
    return value


def _secret(value: SecretStr | None) -> SecretStr | None:
    """Unset when empty; otherwise at least MIN_SECRET_CHARS characters, none of them whitespace at either end."""
    if value is None or value.get_secret_value() == "":
        return None
    text = value.get_secret_value()
    if len(text.strip()) < MIN_SECRET_CHARS or text != text.strip():
        raise ValueError(f"a secret of at least {MIN_SECRET_CHARS} characters without surrounding whitespace is "
                         f"required (e.g. `openssl rand -hex 24`)")
    return value


def _allowed_sources(roots: list[str]) -> list[str]:
    for root in roots:
        if not (re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?", root)
                or (root.startswith("/") and ".." not in root.split("/"))):
            raise ValueError(f"{root!r}: expected absolute local folders and s3://BUCKET/PREFIX/, comma-separated")
    return roots


def _comma_separated(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


Secret = Annotated[SecretStr | None, AfterValidator(_secret)]
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Embedded default: a SQLite file and a local folder under ``./.xich/``; no server needed.

    ``XICH_DATABASE_URL=postgresql+psycopg://user@host/db`` and ``XICH_STORE_URL=s3://bucket/prefix``
    (with ``XICH_S3_ENDPOINT``, ``XICH_S3_ACCESS_KEY``, ``XICH_S3_SECRET_KEY``, ``XICH_S3_SECURE``)
    switch to PostgreSQL and an S3 server. ``XICH_MLFLOW_TRACKING_URI`` reads ``runs:/`` and ``models:/``
    sources and receives the write-back tags.

    ``XICH_HOOKS_ALLOWED_SPECS``: the model spec kinds an audit request may name (comma-separated prefixes; the
    nightly flow and ``xich register`` check them too, see docs/security.md). ``XICH_IMAGE_MAX_SIDE_FACTOR``: an
    image wider or taller than this many tile sides is skipped, from its header, before it is decoded.
    ``XICH_ARCHIVE_MEMBER_MAX_BYTES`` / ``XICH_ARCHIVE_MAX_BYTES``: a tarball dataset whose member, or whose members
    in all, declare more bytes than this is refused from the headers, before they are read.
    ``XICH_RUN_STALE_S``: a class whose heartbeat is older than this is taken over by a waiting shard, and a
    ``running`` run whose newest heartbeat is that old is started again by the nightly flow (processes beat every fifth of it).

    ``XICH_AUDIT_DEPLOYMENT``: the Prefect deployment (``flow name/deployment name`` of prefect.yaml) that audits a
    registered version; ``PREFECT_API_URL`` (Prefect's own variable): the server it is started on (unset: none).
    """

    model_config = SettingsConfigDict(env_prefix="XICH_", extra="ignore", populate_by_name=True)

    database_url: Annotated[str, AfterValidator(_database_url)] = MaskedURL("sqlite:///.xich/xich.db")
    store_url: str = ".xich/store"
    cache_dir: str = ".xich/cache"
    s3_endpoint: Annotated[str | None, AfterValidator(_endpoint)] = None
    s3_access_key: str | None = None
    s3_secret_key: Secret = None
    s3_secure: bool = False
    mlflow_tracking_uri: Annotated[str | None, AfterValidator(_tracking_url)] = None
    hooks_allowed_specs: CommaList = ["cifar:", "torchvision:"]
    image_max_side_factor: int = Field(default=IMAGE_MAX_SIDE_FACTOR, ge=1, le=64)
    archive_member_max_bytes: int = Field(default=ARCHIVE_MEMBER_MAX_BYTES, ge=1 << 20, le=4 << 30)
    archive_max_bytes: int = Field(default=ARCHIVE_MAX_BYTES, ge=1 << 20, le=1 << 40)
    run_stale_s: int = Field(default=600, ge=10, le=86_400)  # a class (or run) without a heartbeat this long is dead
    audit_deployment: str = Field(default="audit-model-version/audit", min_length=3, max_length=300,
                                  pattern=r"^[^/\s]+/[^/\s]+$")
    prefect_api_url: str | None = Field(default=None, validation_alias="PREFECT_API_URL")

    _split_specs = field_validator("hooks_allowed_specs", mode="before")(_comma_separated)
    _check_specs = field_validator("hooks_allowed_specs", mode="after")(check_spec_kinds)

    def data_limits(self) -> dict:
        """Keyword arguments of ``engine.audit.open_audit`` (and ``datasets.open_dataset``): what reading a dataset
        may cost."""
        return {"max_side_factor": self.image_max_side_factor,
                "archive_member_max_bytes": self.archive_member_max_bytes,
                "archive_max_bytes": self.archive_max_bytes}

    def s3_options(self) -> dict:
        """Keyword arguments of ``store.open_store`` and ``store.fetch_uri``."""
        secret = self.s3_secret_key.get_secret_value() if self.s3_secret_key is not None else None
        return {"endpoint": self.s3_endpoint, "access_key": self.s3_access_key, "secret_key": secret,
                "secure": self.s3_secure, "cache_dir": self.cache_dir}


class HookSettings(Settings):
    """``xich serve-hooks``: ``XICH_HOOKS_SECRET`` verifies MLflow's webhooks, ``XICH_HOOKS_GENERIC_SECRET`` the
    generic hook (a hook whose secret is unset answers 503); ``XICH_HOOKS_CONFIG`` is the mapping file (registered
    model → what to audit); ``XICH_HOOKS_ALIASES`` the MLflow aliases whose creation starts an audit;
    ``XICH_HOOKS_ALLOWED_SOURCES`` the local roots and ``s3://bucket/prefix/`` a delivery's dataset, weights and
    labels must lie under. The limits: body size, body-read time, open connections, a delivery's timestamp window,
    and how long a claim may stay ``processing`` before a retry of the same delivery takes it over.
    """

    hooks_secret: Secret = None
    hooks_generic_secret: Secret = None
    hooks_config: str | None = None
    hooks_allowed_sources: CommaList = []
    hooks_max_body_bytes: int = Field(default=1 << 20, gt=0, le=64 << 20)
    hooks_body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    hooks_limit_concurrency: int = Field(default=64, ge=1, le=10_000)
    hooks_window_s: int = Field(default=300, gt=0, le=86_400)  # a delivery's timestamp may be this far from now
    hooks_claim_stale_s: int = Field(default=600, ge=30, le=86_400)
    hooks_aliases: CommaList = ["challenger"]

    _split_lists = field_validator("hooks_aliases", "hooks_allowed_sources", mode="before")(_comma_separated)
    _check_sources = field_validator("hooks_allowed_sources", mode="after")(_allowed_sources)


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (tests, CLI flags) on top."""
    return Settings(**overrides)


def get_hook_settings(**overrides) -> HookSettings:
    """The receiver's settings: every setting and the hooks' own."""
    return HookSettings(**overrides)


def describe_error(exc: ValidationError) -> str:
    """Pydantic's error as one line per bad setting: the variable, what is wrong, never a secret's value."""
    lines = []
    for error in exc.errors():
        name = f"XICH_{str(error['loc'][0]).upper()}" if error.get("loc") else "a setting"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "int_parsing":
            message = "expected a whole number"
        elif error["type"] == "float_parsing":
            message = "expected a number"
        elif error["type"] == "bool_parsing":
            message = "expected true or false (also 1/0, yes/no, on/off)"
        elif error["type"].startswith(("greater_than", "less_than")):
            message = f"expected a number {error['msg'].removeprefix('Input should be ')}"
        lines.append(f"{name}: {message}")
    return "; ".join(lines)
