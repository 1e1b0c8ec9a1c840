from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
import torch

from xich.migrate import downgrade
from xich.synth import SynthSpec, write_synth


@pytest.fixture(scope="session", autouse=True)
def _embedded_default_in_tmp(tmp_path_factory):
    """The CLI records audits in XICH_DATABASE_URL: keep the tests' records out of the working tree."""
    root = tmp_path_factory.mktemp("xich-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XICH_DATABASE_URL", f"sqlite:///{root / 'xich.db'}")
        mp.setenv("XICH_STORE_URL", str(root / "store"))
        mp.setenv("XICH_CACHE_DIR", str(root / "cache"))
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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'xich.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    downgrade(url)  # each test starts from an empty schema
