"""Named locks shared by every process that uses one results database.

Two processes auditing the same model version at once must compute each class once and both
succeed. A lock is held by a live process and released by the operating system or the database
server when that process dies, so a killed audit never leaves a class locked:

- PostgreSQL: a session-level advisory lock on a connection of its own;
- SQLite (the embedded default): ``flock`` on a file beside the database file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine


def _key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock`` from a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def named_lock(engine: Engine, name: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock ``name`` for the ``with`` block; yields whether it was acquired.

    ``wait=False`` tries once and yields False when another process holds it.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = _key(name)
            if wait:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                got = True
            else:
                got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield True  # one process owns an in-memory database
        return
    folder = Path(database).with_name(Path(database).name + ".locks")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / hashlib.sha256(name.encode()).hexdigest()[:32], os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            got = True
        except BlockingIOError:
            got = False
        try:
            yield got
        finally:
            if got:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
