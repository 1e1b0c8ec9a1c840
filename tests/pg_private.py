"""A PostgreSQL server of a test's own (``initdb`` and ``pg_ctl`` on a free loopback port, in a folder of its own),
for faults that stop, start or reconfigure the server: never the machine's shared server on 5432.

initdb refuses to run as root: as root, the server's folder belongs to the ``postgres`` user and every binary runs
as that user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def binaries() -> Path | None:
    """The newest PostgreSQL server's bin folder (Debian's /usr/lib/postgresql/<major>/bin), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why a private server cannot run here (None: it can)."""
    if binaries() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _user_exists("postgres")):
        return "running as root without a postgres user and runuser to run initdb as"
    return None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrivateServer:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/xich"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=xich"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(binaries() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: every session is ended and the server stops (the database going away)."""
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "-t", "60", "stop")


@contextmanager
def private_postgres() -> Iterator[PrivateServer]:
    """A fresh server with a database ``xich`` (trust authentication on loopback), stopped and removed after."""
    folder = Path(tempfile.mkdtemp(prefix="xich-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    server = PrivateServer(folder, free_port())
    try:
        server._run("initdb", "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync", timeout=120)
        server.start()
        for _ in range(50):
            try:
                server._run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "xich")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        yield server
    finally:
        try:
            server.stop("immediate")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, TypeError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
