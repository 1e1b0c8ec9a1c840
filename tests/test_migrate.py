"""xich.migrate on a database stamped by another XICH, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import pytest
from PIL import Image
from sqlalchemy import text

from xich.cli import main
from xich.records.db import make_engine
from xich.errors import XichError
from xich.records.migrate import head_revision, upgrade


def _stamp(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": revision})
    finally:
        engine.dispose()


def _stored(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def newer_database(database_url):
    """A results database a newer XICH has migrated to its revision 9999."""
    upgrade(database_url)
    _stamp(database_url, "9999")
    yield database_url
    _stamp(database_url, head_revision())  # so that the fixture's downgrade can empty it


@pytest.mark.parametrize("action", ["upgrade", "downgrade"])
def test_database_at_an_unknown_revision(newer_database, monkeypatch, capsys, action):
    monkeypatch.setenv("XICH_DATABASE_URL", newer_database)
    assert main(["db", action]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err.count("error:") == 1
    assert " ".join(captured.err.split()) == (
        "error: results database at revision 9999, which this XICH does not know: upgrade XICH, or point "
        "XICH_DATABASE_URL at another database")
    assert _stored(newer_database) == "9999"  # left as the newer XICH wrote it


def test_audit_into_a_newer_database_fails_before_any_work(newer_database, tmp_path, monkeypatch, capsys):
    for cls in ("cat", "dog"):
        (tmp_path / "data" / "test" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "data" / "test" / cls / "0.png")
    monkeypatch.setenv("XICH_DATABASE_URL", newer_database)
    assert main(["audit", "--model", "cifar:resnet20", "--data", str(tmp_path / "data"), "--train-split", ""]) == 2
    assert "results database at revision 9999" in capsys.readouterr().err
    with pytest.raises(XichError, match="results database at revision 9999, which this XICH does not know"):
        upgrade(newer_database)
    assert _stored(newer_database) == "9999"


def test_unknown_target_revision(database_url, monkeypatch, capsys):
    monkeypatch.setenv("XICH_DATABASE_URL", database_url)
    assert main(["db", "upgrade", "8888"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: results database: cannot migrate to revision '8888' (Can't locate revision")
    assert "known revisions: 0001, 0002, 0003, 0004, 0005, 0006, 0007, 0008, 0009, head and base" in err
