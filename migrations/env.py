"""Alembic environment: the URL comes from XICH settings (or the caller's config), the metadata from xich.records.db."""

from __future__ import annotations

from alembic import context

from xich.records.db import Base, make_engine
from xich.settings import get_settings

config = context.config
url = config.attributes.get("url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # batch mode rebuilds a SQLite table (copy, drop, rename); with foreign keys enforced, dropping the old
            # table deletes every row that references it (ON DELETE CASCADE): an older database's audits. The
            # pragma only takes effect outside a transaction, hence the commit before the migrations begin.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        # batch mode lets later ALTERs work on SQLite too
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
