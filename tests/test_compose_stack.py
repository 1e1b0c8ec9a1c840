"""The whole compose stack up on the local Docker engine, driven by the documented Docker commands (docs/docker.md).

compose.yaml + compose.cpu.yaml + tests/compose.standins.yaml (the stand-ins of the images no registry here gives:
PostgreSQL from Debian, SeaweedFS behind MinIO's commands, the Prefect server from the service image; Grafana left
out of `up`). The commands are read from docs/docker.md ("Run the service with Docker") and run as typed after
`docker compose` (with this test's project name, .env and files), the CIFAR-10 data folder replaced by a 4-class
subset. Then: the run is complete in PostgreSQL, its report is in the bucket, both workers computed classes, and
the least-privilege roles hold (workers no DDL, hooks its own tables, Prefect's API refuses a client without auth).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from builders import AUDITED_RUNS
import yaml

import containers

REPO = containers.REPO
SHARED_DATA = REPO.parent / "shared" / "data"
FILES = ["compose.yaml", "compose.cpu.yaml", "tests/compose.standins.yaml"]
CLASSES = ["airplane", "automobile", "bird", "cat"]  # the register command of docs/docker.md audits these
IMAGES_PER_CLASS = 60
POOL_SETTINGS = {"classes": CLASSES[:2], "clusters": 3, "mosaics_per_pair": 5}  # the docker pool's audit: small


def readme_commands() -> list[str]:
    """The `docker compose ...` lines of docs/docker.md ("Run the service with Docker"), in order, up to its GPU
    containers; `docker compose version` (the check that Compose v2 is there) is no step of the stack."""
    section = (REPO / "docs" / "docker.md").read_text().split("**GPU containers", 1)[0]
    return [line.strip() for line in section.splitlines()
            if line.startswith("    docker compose ") and line.strip() != "docker compose version"]


def test_readme_docker_commands_are_the_ones_the_stack_test_runs():
    """What test_the_whole_stack runs, step by step: a docs/docker.md edit that drops a step fails here first."""
    steps = [_step(c) for c in readme_commands()]
    assert steps == ["up", "deploy", "data", "data", "scale", "register", "query"], readme_commands()


def _step(command: str) -> str:
    args = shlex.split(command)[2:]
    if args[:2] == ["run", "--rm"] and "deploy" in args:
        return "deploy"
    if "minio-buckets" in args:
        return "data"
    if args[0] == "up":
        return "scale" if any(a.startswith("--scale") for a in args) else "up"
    if "register" in args:
        return "register"
    if args[0] == "exec":
        return "query"
    return args[0]


def small_cifar(root: Path) -> Path:
    """``root/cifar10-jpeg/test.tar.gz`` with the first IMAGES_PER_CLASS images of CLASSES, and the ResNet-20
    checkpoint in ``root/cifar-resnet/``: ../shared/data's layout, small."""
    source = SHARED_DATA / "cifar10-jpeg" / "test.tar.gz"
    weights = SHARED_DATA / "cifar-resnet" / "resnet20-12fca82f.th"
    if not (source.exists() and weights.exists()):
        pytest.skip(f"no CIFAR-10 JPEGs or ResNet-20 checkpoint under {SHARED_DATA}")
    (root / "cifar10-jpeg").mkdir(parents=True)
    (root / "cifar-resnet").mkdir()
    (root / "cifar-resnet" / weights.name).write_bytes(weights.read_bytes())
    kept = {c: 0 for c in CLASSES}
    with tarfile.open(source) as src, tarfile.open(root / "cifar10-jpeg" / "test.tar.gz", "w:gz") as dst:
        for member in src:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and parts[1] in kept and kept[parts[1]] < IMAGES_PER_CLASS:
                kept[parts[1]] += 1
                dst.addfile(member, src.extractfile(member))
    assert set(kept.values()) == {IMAGES_PER_CLASS}, kept
    return root


class Stack:
    """`docker compose` with this test's project, .env and files, against the session's engine."""

    def __init__(self, engine: containers.Engine, env_file: Path, config_dir: Path):
        self.engine, self.env_file = engine, env_file
        self.project = f"xich-stack-{uuid.uuid4().hex[:8]}"
        prefix, env = containers.compose_cli(config_dir)
        self.prefix = [*prefix, f"--project-directory={REPO}", f"--project-name={self.project}",
                       f"--env-file={env_file}"]
        self.env = {**env, "DOCKER_HOST": engine.env["DOCKER_HOST"], "COMPOSE_FILE": ":".join(str(REPO / f) for f in FILES)}
        for name in env_file.read_text().split():  # the caller's environment must not fill what .env leaves empty
            self.env.pop(name.split("=", 1)[0], None)

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.prefix, *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            logs = subprocess.run([*self.prefix, "logs", "--tail=40"], capture_output=True, text=True, env=self.env,
                                  timeout=120).stdout
            pytest.fail(f"docker compose {' '.join(args)[:300]} exited with {done.returncode}:\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n--- logs ---\n{logs[-8000:]}")
        return done

    def sql(self, query: str, user: str = "xich") -> list[list[str]]:
        """Rows of ``query`` run by psql in the postgres container (as ``user``, in the results database)."""
        out = self("exec", "-T", "postgres", "psql", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", "xich", "-At",
                   "-F", "\t", "-c", query).stdout
        return [line.split("\t") for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def stack(docker_engine, tmp_path_factory):
    containers.build_project_images(docker_engine)
    containers.build_standins(docker_engine)
    work = tmp_path_factory.mktemp("compose-stack")
    env_file = work / ".env"
    env_file.write_text((REPO / ".env.example").read_text())
    fill = next(line.strip("# ").strip() for line in env_file.read_text().splitlines()
                if line.lstrip("# ").startswith("for k in"))
    subprocess.run(["bash", "-c", fill.replace(".env", shlex.quote(str(env_file)))], check=True)
    stack = Stack(docker_engine, env_file, work / "docker-config")
    try:
        yield stack
    finally:
        stack("down", "--volumes", "--remove-orphans", "--timeout=10", check=False, timeout=300)


@pytest.mark.shared_data
def test_the_whole_stack(stack, tmp_path):
    data = small_cifar(tmp_path / "data")
    timings: dict[str, float] = {}
    steps = {}
    for command in readme_commands():
        step = _step(command)
        args = shlex.split(command.replace('"$PWD/../shared/data:/data:ro"', f"{data}:/data:ro"))[2:]
        began = time.monotonic()
        done = stack(*args)
        timings[step] = timings.get(step, 0) + time.monotonic() - began
        steps[step] = done
        if step == "register":
            break  # the query step runs once the audit is complete
    assert "audit started: flow run" in steps["register"].stdout, steps["register"].stdout

    began = time.monotonic()
    deadline = time.monotonic() + 600
    while not stack.sql(f"SELECT 1 FROM audit_run WHERE status = 'complete' AND {AUDITED_RUNS}"):
        failed = stack.sql("SELECT error FROM audit_run WHERE status = 'failed'")
        assert not failed, failed
        assert time.monotonic() < deadline, stack("logs", "--tail=60", "worker").stdout[-6000:]
        time.sleep(5)
    timings["audit"] = time.monotonic() - began

    (run_id, status), = stack.sql(f"SELECT id, status FROM audit_run WHERE {AUDITED_RUNS}")  # the null's aside
    classes = dict(stack.sql(f"SELECT class_name, worker FROM run_class WHERE run_id = '{run_id}'"))
    assert sorted(classes) == CLASSES
    hosts = {worker.rsplit(":", 1)[0] for worker in classes.values()}
    assert len(hosts) == 2, classes  # --shards 2 on two workers: each container computed classes
    query = stack(*shlex.split(readme_commands()[-1])[2:]).stdout
    assert all(c in query for c in CLASSES), query

    deadline = time.monotonic() + 180  # the run is complete, then the parent flow run publishes it
    while True:
        keys = stack("run", "--rm", "minio-buckets", "ls", "--recursive",
                     f"local/xich/results/runs/{run_id}/").stdout.split()
        if f"results/runs/{run_id}/audit.json" in keys or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert f"results/runs/{run_id}/audit.json" in keys, keys
    assert any(k.startswith(f"results/runs/{run_id}/report/") for k in keys), keys
    report = json.loads(stack("run", "--rm", "minio-buckets", "cat",
                              f"local/xich/results/runs/{run_id}/audit.json").stdout)
    assert report["run_id"] == run_id, list(report)

    containers.REPORT.append("compose stack: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def test_the_stacks_roles_hold_least_privilege(stack):
    """After the stack test (or on its own: `up` runs first): what each role may do in the running stack."""
    stack("up", "--detach", "--wait")
    owner_tables = {r[0] for r in stack.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"hook_delivery", "run_class", "audit_run"} <= owner_tables
    privileges = stack.sql(
        "SELECT r.rolname, has_database_privilege(r.rolname, 'xich', 'CREATE'), "
        "has_schema_privilege(r.rolname, 'public', 'CREATE'), has_database_privilege(r.rolname, 'prefect', 'CONNECT'), "
        "has_table_privilege(r.rolname, 'run_class', 'INSERT'), has_table_privilege(r.rolname, 'hook_delivery', 'INSERT') "
        "FROM pg_roles r WHERE r.rolname IN ('xich_worker', 'xich_hooks', 'grafana') ORDER BY 1")
    assert privileges == [["grafana", "f", "f", "f", "f", "f"],
                          ["xich_hooks", "f", "f", "f", "f", "t"],
                          ["xich_worker", "f", "f", "f", "t", "t"]], privileges
    # Prefect's API behind basic auth: a client without the auth string is refused, the workers' one is not
    probe = ("import os, urllib.request, urllib.error\n"
             "req = urllib.request.Request('http://prefect-server:4200/api/flows/filter', data=b'{}', method='POST',"
             " headers={'Content-Type': 'application/json'})\n"
             "try:\n    urllib.request.urlopen(req, timeout=10); print(200)\n"
             "except urllib.error.HTTPError as exc:\n    print(exc.code)\n")
    refused = stack("run", "--rm", "--no-deps", "-e", "PREFECT_API_AUTH_STRING=", "hooks",
                    "python", "-c", probe).stdout.split()[-1]
    assert refused == "401", refused
    allowed = stack("run", "--rm", "--no-deps", "worker", "prefect", "work-pool", "inspect", "xich-process").stdout
    assert "name='xich-process'" in allowed, allowed


def _env_value(stack: Stack, name: str) -> str:
    return next(line.split("=", 1)[1] for line in stack.env_file.read_text().splitlines()
                if line.startswith(f"{name}="))


@pytest.mark.shared_data
def test_the_docker_pool_runs_one_worker_container_per_flow_run(stack, docker_engine, tmp_path):
    """prefect.yaml's audit-gpu on the docker pool xich-gpu, for real: a Prefect docker worker on the host (the
    docker-worker extra's prefect-docker) against the test's engine starts one container of the worker image per
    flow run, and `--shards 2` gives two, each computing its classes into PostgreSQL. This engine has no NVIDIA
    runtime, so the deployment's job variables drop the GPU request (container_create_kwargs={}), put the
    containers on the stack's network and give them the workers' environment — docs/docker.md "GPU containers"."""
    import stack as native

    if "complete" not in {r[0] for r in stack.sql("SELECT status FROM audit_run")}:
        pytest.skip("needs the data and deployment of test_the_whole_stack")
    port = stack("port", "prefect-server", "4200").stdout.strip().rsplit(":", 1)[1]
    host_env = {**stack.env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                "PREFECT_API_AUTH_STRING": f"xich:{_env_value(stack, 'PREFECT_API_PASSWORD')}",
                "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    created = subprocess.run([str(native.PREFECT), "work-pool", "create", "--type", "docker", "xich-gpu"],
                             env=host_env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]

    worker_env = json.loads(stack("config", "--format", "json").stdout)["services"]["worker"]["environment"]
    # prefect 3.9.1's `deploy --job-variable` replaces prefect.yaml's job variables (its CLI resets them before
    # adding the overrides): give prefect.yaml's, then what this engine and stack need
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    gpu = deployments["audit-gpu"]["work_pool"]["job_variables"]
    job_variables = {**gpu, "container_create_kwargs": {},  # no NVIDIA runtime on this engine: no GPU request
                     "networks": [f"{stack.project}_default"],
                     "env": {**worker_env, **gpu["env"]}}  # the deployment's own XICH_AUDIT_DEPLOYMENT wins
    stack("run", "--rm", "worker", "prefect", "--no-prompt", "deploy", "--name", "audit-gpu",
          "--job-variable", json.dumps(job_variables))

    engine_pool = ("ps", "--all", "--filter", "label=io.prefect.work-pool-name=xich-gpu", "--format", "{{.ID}}")
    if leftover := docker_engine.run(*engine_pool).stdout.split():  # an earlier session's flow-run containers
        docker_engine.run("rm", "--force", *leftover)
    proc, mark = native.start_in_session([str(native.PREFECT), "worker", "start", "--pool", "xich-gpu", "--type",
                                          "docker", "--name", "docker-pool", "--limit", "2"],
                                         tmp_path / "docker-worker.log", {**docker_engine.env, **host_env},
                                         cwd=tmp_path)
    began = time.monotonic()
    try:
        registered = stack("run", "--rm", "-e", "XICH_AUDIT_DEPLOYMENT=audit-model-version/audit-gpu", "xich",
                           "register", "--model", "cifar-resnet20", "--version", "2", "--spec", "cifar:resnet20",
                           "--weights", "s3://xich/models/resnet20.th", "--dataset", "s3://xich/datasets/cifar10-jpeg/",
                           "--settings", json.dumps(POOL_SETTINGS), "--audit", "--shards", "2").stdout
        assert "audit started: flow run" in registered, registered
        deadline = time.monotonic() + 600
        query = ("SELECT r.id FROM audit_run r JOIN model_version mv ON mv.id = r.model_version_id "
                 "WHERE mv.version = '2' AND r.status = 'complete'")
        while not stack.sql(query):
            log = (tmp_path / "docker-worker.log").read_text(errors="replace")
            assert proc.poll() is None and " as crashed" not in log and time.monotonic() < deadline, \
                native.log_tail(tmp_path / "docker-worker.log", 40)
            time.sleep(5)
        seconds = time.monotonic() - began
        ours = set(docker_engine.run(*engine_pool).stdout.split())  # prefect-docker labels its containers
    finally:
        native.stop_group(proc, mark)
    (run_id,), = stack.sql(query)
    # run_class.worker is <Prefect worker>@<host>:<pid>; a flow-run container's host name is its id
    hosts = {w.rsplit(":", 1)[0].rsplit("@", 1)[-1] for _, w in stack.sql(f"SELECT class_name, worker FROM run_class "
                                                                         f"WHERE run_id = '{run_id}'")}
    images = {docker_engine.run("inspect", "--format", "{{.Config.Image}}", c).stdout.strip() for c in ours}
    if ours:
        docker_engine.run("rm", "--force", *ours)
    assert len(ours) == 2 and images == {"xich-worker:latest"}, (ours, images)  # one per flow run: parent, shard
    assert hosts == ours, (hosts, ours)  # each container computed classes
    containers.REPORT.append(f"docker pool: audit of 2 classes in 2 flow-run containers in {seconds:.0f} s")


@pytest.mark.shared_data
def test_the_hooks_minio_user_only_reads_datasets_and_models(stack):
    """docker/minio/setup.sh's users in the running stack (here SeaweedFS's identities made from MinIO's policies by
    the stand-in's mc): the hooks' user reads models/ and datasets/, and neither reads results/ nor writes anywhere;
    the workers' user writes results/."""
    if not stack.sql("SELECT 1 FROM audit_run WHERE status = 'complete'"):
        pytest.skip("needs the data and the run of test_the_whole_stack")
    (run_id,), = stack.sql("SELECT id FROM audit_run WHERE status = 'complete' LIMIT 1")
    hooks = f"http://{_env_value(stack, 'MINIO_HOOKS_USER')}:{_env_value(stack, 'MINIO_HOOKS_PASSWORD')}@minio:9000"
    worker = f"http://{_env_value(stack, 'MINIO_WORKER_USER')}:{_env_value(stack, 'MINIO_WORKER_PASSWORD')}@minio:9000"

    def mc(url: str, *args: str) -> subprocess.CompletedProcess:
        return stack("run", "--rm", "-e", f"MC_HOST_as={url}", "minio-buckets", *args, check=False)

    assert mc(worker, "cp", "/etc/hostname", "as/xich/models/readable.txt").returncode == 0
    assert mc(hooks, "cat", "as/xich/models/readable.txt").returncode == 0
    assert "datasets/cifar10-jpeg/test.tar.gz" in mc(hooks, "ls", "--recursive", "as/xich/datasets/").stdout
    denied = mc(hooks, "cat", f"as/xich/results/runs/{run_id}/audit.json")
    assert denied.returncode != 0 and "AccessDenied" in denied.stderr, denied.stderr[-2000:]
    for key in ("models/planted.th", "datasets/planted.txt", "results/planted.json"):
        denied = mc(hooks, "cp", "/etc/hostname", f"as/xich/{key}")
        assert denied.returncode != 0 and "AccessDenied" in denied.stderr, (key, denied.stderr[-2000:])
    assert mc(worker, "cp", "/etc/hostname", "as/xich/results/written-by-worker").returncode == 0
