"""`xich db upgrade|downgrade`: Alembic migrations of the results database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from ..errors import XichError

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    """The newest revision this XICH knows."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate to ``revision``; processes that start at once on an empty database migrate it one at a time."""
    from .db import make_engine
    from .locks import named_lock

    cfg = alembic_config(url)
    engine = make_engine(url)
    try:
        with named_lock(engine, "xich:migrate"), _revision_errors(cfg, url, revision):
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> None:
    cfg = alembic_config(url)
    with _revision_errors(cfg, url, revision):
        command.downgrade(cfg, revision)


@contextmanager
def _revision_errors(cfg: Config, url: str, target: str) -> Iterator[None]:
    """Alembic's errors about revisions as one :class:`XichError`: the database's, or the one asked for."""
    try:
        yield
    except CommandError as exc:
        known = [s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()]
        # read only after a failure: a database written by a newer XICH is the common cause, and worth naming
        unknown = [rev for rev in _stored_revisions(url) if rev not in known]
        if unknown:
            raise XichError(f"results database at revision {unknown[0]}, which this XICH does not know: upgrade XICH, "
                            f"or point XICH_DATABASE_URL at another database") from None
        raise XichError(f"results database: cannot migrate to revision {target!r} ({exc}); known revisions: "
                        f"{', '.join(sorted(known))}, head and base") from None


def _stored_revisions(url: str) -> tuple[str, ...]:
    """The revisions the database's alembic_version table records (none for an empty database)."""
    from .db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_heads()
    finally:
        engine.dispose()
