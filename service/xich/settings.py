"""Every setting of the service, from the environment (``XICH_*``), built by :func:`get_settings`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Embedded default: a SQLite file and a local folder under ``./.xich/``; no server needed.

    ``XICH_DATABASE_URL=postgresql+psycopg://user@host/db`` and ``XICH_STORE_URL=s3://bucket/prefix``
    (with ``XICH_S3_ENDPOINT``, ``XICH_S3_ACCESS_KEY``, ``XICH_S3_SECRET_KEY``, ``XICH_S3_SECURE``)
    switch to PostgreSQL and an S3 server.

    The registry hooks (``xich serve-hooks``): ``XICH_HOOKS_SECRET`` verifies MLflow's webhooks,
    ``XICH_HOOKS_GENERIC_SECRET`` the generic hook (a hook whose secret is unset answers 503);
    ``XICH_HOOKS_CONFIG`` is the mapping file (registered model → what to audit); ``XICH_HOOKS_ALIASES``
    the MLflow aliases whose creation starts an audit (comma-separated). ``XICH_MLFLOW_TRACKING_URI``
    reads ``runs:/`` and ``models:/`` sources and receives the write-back tags.
    """

    model_config = SettingsConfigDict(env_prefix="XICH_", extra="ignore")

    database_url: str = "sqlite:///.xich/xich.db"
    store_url: str = ".xich/store"
    cache_dir: str = ".xich/cache"
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = False

    hooks_secret: SecretStr | None = None
    hooks_generic_secret: SecretStr | None = None
    hooks_config: str | None = None
    hooks_max_body_bytes: int = Field(default=1 << 20, gt=0)
    hooks_window_s: int = Field(default=300, gt=0)  # a delivery's timestamp may be this far from now
    hooks_aliases: Annotated[list[str], NoDecode] = ["challenger"]
    mlflow_tracking_uri: str | None = None

    @field_validator("hooks_aliases", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [alias.strip() for alias in value.split(",") if alias.strip()]
        return value

    @field_validator("hooks_secret", "hooks_generic_secret", mode="after")
    @classmethod
    def _empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    def s3_options(self) -> dict:
        """Keyword arguments of ``store.open_store`` and ``store.fetch_uri``."""
        return {"endpoint": self.s3_endpoint, "access_key": self.s3_access_key, "secret_key": self.s3_secret_key,
                "secure": self.s3_secure, "cache_dir": self.cache_dir}


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (tests, CLI flags) on top."""
    return Settings(**overrides)
