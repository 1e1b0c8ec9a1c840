"""Every setting of the service, from the environment (``XICH_*``), built by :func:`get_settings`."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Embedded default: a SQLite file and a local folder under ``./.xich/``; no server needed.

    ``XICH_DATABASE_URL=postgresql+psycopg://user@host/db`` and ``XICH_STORE_URL=s3://bucket/prefix``
    (with ``XICH_S3_ENDPOINT``, ``XICH_S3_ACCESS_KEY``, ``XICH_S3_SECRET_KEY``, ``XICH_S3_SECURE``)
    switch to PostgreSQL and an S3 server.
    """

    model_config = SettingsConfigDict(env_prefix="XICH_", extra="ignore")

    database_url: str = "sqlite:///.xich/xich.db"
    store_url: str = ".xich/store"
    cache_dir: str = ".xich/cache"
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = False

    def s3_options(self) -> dict:
        """Keyword arguments of ``store.open_store`` and ``store.fetch_uri``."""
        return {"endpoint": self.s3_endpoint, "access_key": self.s3_access_key, "secret_key": self.s3_secret_key,
                "secure": self.s3_secure, "cache_dir": self.cache_dir}


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (tests, CLI flags) on top."""
    return Settings(**overrides)
