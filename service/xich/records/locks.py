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
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError


log = logging.getLogger(__name__)


def _key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock`` from a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def named_lock(engine: Engine, name: str, *, wait: bool = True, stale: Callable[[], bool] | None = None,
               poll_s: float = 1.0) -> Iterator[bool]:
    """Hold the lock ``name`` for the ``with`` block; yields whether it was acquired.

    ``wait=False`` tries once and yields False when another process holds it. ``stale`` (PostgreSQL): while
    waiting, asked every ``poll_s`` seconds whether the holder stopped beating (a host that vanished, a frozen
    process: its connection, and so its lock, may outlive it for hours); when it says so, the holder's database
    session is terminated, which releases the lock, and this process takes it.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = _key(name)
            if wait and stale is not None:
                got = _take_when_stale(conn, key, name, stale, poll_s)
            elif wait:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                got = True
            else:
                got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    _unlock(conn, key, name)
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


def _unlock(conn, key: int, name: str) -> None:
    """Release an advisory lock. A session that the server ended (a restart, an administrator) holds no lock any
    more: its error is logged, not raised, so that it never hides the error that is unwinding the ``with`` block."""
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except DBAPIError as exc:
        if not exc.connection_invalidated and not isinstance(exc, OperationalError):
            raise
        log.warning("lock %s: its database session ended (%s); the server released the lock with it", name,
                    str(exc.orig or exc).splitlines()[0] if str(exc.orig or exc) else type(exc).__name__)


def _take_when_stale(conn, key: int, name: str, stale: Callable[[], bool], poll_s: float) -> bool:
    """Try the advisory lock every ``poll_s`` seconds; once ``stale()``, terminate its holder's session first."""
    hi, lo = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF  # how pg_locks shows a bigint advisory key
    while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
        conn.commit()
        if stale():
            pids = conn.execute(text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid::bigint = :hi "
                "AND objid::bigint = :lo AND objsubid = 1 AND pid <> pg_backend_pid()"), {"hi": hi, "lo": lo}).scalars().all()
            for pid in pids:
                log.warning("lock %s: its holder (database session %s) stopped beating; terminating it", name, pid)
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            conn.commit()
        time.sleep(poll_s)
    return True


@contextmanager
def heartbeat(beat: Callable[[], None], every_s: float) -> Iterator[None]:
    """Call ``beat`` now and every ``every_s`` seconds from a thread while the ``with`` block runs. A beat that
    fails is logged and tried again at the next one: a missed beat only brings a takeover nearer."""
    done = threading.Event()

    def beat_once() -> None:
        try:
            beat()
        except Exception as exc:  # noqa: BLE001 — the work goes on; the beat is retried
            log.warning("heartbeat failed (%s); retrying in %.0f s", exc, every_s)

    def loop() -> None:
        while not done.wait(every_s):
            beat_once()

    beat_once()
    thread = threading.Thread(target=loop, name="xich-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
