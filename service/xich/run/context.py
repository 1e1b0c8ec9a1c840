"""The application context: one per process, holding what every entry point (CLI, flows, hooks, demo, tests) needs.

Settings are read once, at the edge; one engine (and its sessions) is made once; the results database is migrated
when a context opens, so once per process (a receiver migrates when it starts, never per delivery). Entry points
differ in how they build the context (:func:`open_context` with their own settings, or :func:`current_context`
for the process's) and in what they do with the result; the audit sequence between is ``run.recorded``.

Light on purpose (no torch, numpy or Prefect): ``xich register`` and the hooks receiver use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..errors import XichError
from ..records.db import make_engine
from ..records.migrate import upgrade
from ..settings import Settings, get_settings
from .deploy import start_deployment

_contexts: dict[str, Context] = {}  # current_context's, by settings
_lock = threading.Lock()


@dataclass
class Context:
    """Settings, one engine on the results database and the results store, and the deployer
    (``start_audit(parameters) -> flow run id``).

    The engine and the store are made on first use, so a command checks its input before it touches either
    (``--no-db`` touches neither); with ``migrate``, the database is migrated just before the engine is first used.
    """

    settings: Settings
    start_audit: Callable[[dict], str]
    migrate_first: bool = True
    runs: dict = field(default_factory=dict, repr=False)  # recorded runs open in this process, by run id (flow tasks)
    _engine: Engine | None = field(default=None, repr=False)
    _store: object = field(default=None, repr=False)
    _sources: dict = field(default_factory=dict, repr=False)  # data_source's stores, by dataset URI

    @property
    def engine(self) -> Engine:
        """The engine on the results database (``XICH_DATABASE_URL``), made once (migrated first, once)."""
        if self._engine is None:
            if self.migrate_first:
                self.migrate()
            self._engine = make_engine(self.settings.database_url)
        return self._engine

    def session(self, **options) -> Session:
        """A new session on the context's engine (close it, or use it in ``with``)."""
        return Session(self.engine, **options)

    @property
    def store(self):
        """The results store (``XICH_STORE_URL``), opened once."""
        if self._store is None:
            from ..records.store import open_store

            self._store = open_store(self.settings.store_url, **self.settings.s3_options())
        return self._store

    def local_path(self, uri: str | None, *, model: str | None = None, version: str | None = None) -> str | None:
        """A local path for a dataset or checkpoint URI: an ``s3://`` object or folder (downloaded once, cached by
        ETag), an MLflow ``runs:/`` / ``models:/`` source of version ``model``/``version`` (its server:
        XICH_MLFLOW_TRACKING_URI, else the one recorded with the version); a local path is returned unchanged."""
        from ..records.mlflow_registry import download_artifact, is_mlflow_uri, tracking_uri_for

        if is_mlflow_uri(uri):
            tracking = tracking_uri_for(model=model, version=version, settings=self.settings, engine=self.engine)
            return str(download_artifact(uri, tracking_uri=tracking, cache_dir=self.settings.cache_dir))
        if uri is None or not uri.startswith("s3://"):
            return uri
        from ..records.store import fetch_uri

        return str(fetch_uri(uri, **self.settings.s3_options()))

    def data_path(self, uri: str | None) -> str | None:
        """What to give the audit as its dataset: a folder tree in S3 (``s3://bucket/prefix/``, or a prefix that is
        no object) stays a URI, read class by class through :meth:`data_source` by the shard that audits the
        class; anything else is :meth:`local_path` (an archive object is downloaded whole)."""
        if uri is None or not uri.startswith("s3://"):
            return self.local_path(uri)
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if key and not key.endswith("/") and self._s3_root(f"s3://{bucket}").exists(key):
            return self.local_path(uri)
        self.data_source(uri)  # a missing bucket or refused credentials fail here, before anything else
        return uri

    def data_source(self, uri: str | None):
        """The store holding the ``s3://`` folder dataset ``uri`` (``records.store.S3Store``), None for others."""
        if uri is None or not uri.startswith("s3://"):
            return None
        if uri not in self._sources:  # one per dataset: its download counts (``downloaded``) cover the process
            self._sources[uri] = self._s3_root(uri)
        return self._sources[uri]

    def _s3_root(self, uri: str):
        from ..records.store import open_store

        return open_store(uri, **self.settings.s3_options())

    def migrate(self) -> None:
        """Upgrade the results database to head now (Alembic; processes starting at once take turns)."""
        upgrade(self.settings.database_url)
        self.migrate_first = False

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def open_context(settings: Settings | None = None, *, migrate: bool = True,
                 start_audit: Callable[[dict], str] | None = None) -> Context:
    """A context for ``settings`` (default: the environment's); the caller closes it.

    ``migrate``: upgrade the results database to head before the engine is first used. ``start_audit``: how an audit of a
    registered version starts (default: the Prefect deployment ``XICH_AUDIT_DEPLOYMENT``, see ``run.deploy``).
    """
    settings = settings or get_settings()
    return Context(settings, start_audit or (lambda parameters: start_deployment(settings, parameters)),
                   migrate_first=migrate)


@contextmanager
def context(settings: Settings | None = None, **options) -> Iterator[Context]:
    """:func:`open_context`, closed afterwards."""
    ctx = open_context(settings, **options)
    try:
        yield ctx
    finally:
        ctx.close()


def current_context() -> Context:
    """This process's context for the environment's settings, made (and the database migrated) on first use.

    For code that runs inside a process it does not own (Prefect tasks): the settings are read again on each
    call, so a changed environment gets a context of its own, and the engine of unchanged settings is shared.
    """
    settings = get_settings()
    key = settings.model_dump_json()
    with _lock:
        if key not in _contexts:
            _contexts[key] = open_context(settings)
        return _contexts[key]


def existing_database(settings: Settings) -> None:
    """XichError when the embedded SQLite file of ``settings`` does not exist (a read-only command creates none)."""
    url = settings.database_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        if not Path(url.removeprefix("sqlite:///")).is_file():
            raise XichError(f"no complete audit recorded: XICH_DATABASE_URL {url} names no database file (nothing "
                            f"was created); record an audit with `xich audit --model-name NAME`, or point "
                            f"XICH_DATABASE_URL at the results database")
