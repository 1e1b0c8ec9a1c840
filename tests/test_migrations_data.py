"""Migrations over data: a database at every older revision (0001 … head − 1) holding a real audit's rows, upgraded
to head on SQLite and PostgreSQL, must answer the history views exactly as a database audited at head does, and keep
every value of every column of every table it had; downgraded back, it must hold the same values again, and upgraded
once more, the same as after the first upgrade.

The rows are those of a real audit (two versions of one model on a frozen clustering, recorded at head), with edge
values added at head (NULLs, long texts with quotes and non-ASCII, nested JSON, an audit request and a webhook
delivery), written into the older schema through SQL: every column the older table has, from the same column at
head. A column an older revision requires that head lacks would fail here, naming it. Revisions are read from the migrations
folder, so revisions added later are covered without editing this test.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import torch
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, select, text
from sqlalchemy.orm import Session

from xich.engine.audit import AuditConfig
from xich.records.db import make_engine
from xich.records.migrate import alembic_config, downgrade, head_revision, upgrade
from xich.records.persist import freeze_clustering
from builders import recorded

from toy_nets import brightness

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _revisions() -> list[str]:
    """Every revision from the first to head, in order (walk_revisions goes from head down)."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [s.revision for s in reversed(list(script.walk_revisions()))]


OLDER = _revisions()[:-1]


@pytest.fixture(scope="module")
def audited(synth_data, tmp_path_factory, one_torch_thread) -> str:
    """A SQLite database at head with two versions audited on v1's frozen clustering (the views have rows)."""
    root = tmp_path_factory.mktemp("head")
    url = f"sqlite:///{root / 'xich.db'}"

    def audit(version: str, seed: int):
        # the brightness net (tests/toy_nets.py) with channel weights of its own per version: every Grad-CAM map
        # is non-zero, so every pair has evidence (revisions before 0003 cannot store "no evidence")
        model = brightness(3)
        with torch.no_grad():
            model.features.weight.copy_(torch.rand(1, 3, 1, 1, generator=torch.Generator().manual_seed(seed)) + 0.1)
        torch.save(model.state_dict(), root / f"{version}.pt")
        config = AuditConfig(model="python:toy_nets:brightness", data=str(synth_data), weights=str(root / f"{version}.pt"),
                             clusters=3, mosaics_per_pair=3, per_image=3, normalize="none", device="cpu")
        return recorded(config, url, model_name="shapes", model_version=version)

    v1 = audit("v1", 1)
    engine = make_engine(url)
    with Session(engine) as session:
        freeze_clustering(session=session, run_id=v1.run_id)
    engine.dispose()
    v2 = audit("v2", 2)
    _add_edge_values(url, v1.run_id, v2.run_id)
    return url


LONG = ("«un texte» — 'quoted', \"double\", back\\slash, ✓ ünïcödé\n" * 400)[:20_000]
NESTED = {"tags": {"stage": "Production", "ünï": ["a", 1, 2.5, None, True]}, "empty": {}, "list": [[1, [2, [3]]]],
          "text": LONG[:3000]}


def _add_edge_values(url: str, run_with: str, run_without: str) -> None:
    """NULLs, long texts and JSON where the schema takes them; an audit request and a hook delivery (0004, 0005)."""
    from xich.records.db import AuditRequest, AuditRun, HookDelivery, ModelVersion, RunClass

    engine = make_engine(url)
    now = datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)
    try:
        with Session(engine) as session, session.begin():
            versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
            versions[0].registry_metadata, versions[0].weights_uri = NESTED, "s3://bucket/" + "w" * 5000 + ".pt"
            versions[1].registry_metadata, versions[1].weights_uri, versions[1].labels = {}, None, None
            session.get(AuditRun, run_without).error = LONG
            session.get(AuditRun, run_without).timings = {"nested": NESTED, "cam_s": 1.25}
            for cls in session.scalars(select(RunClass).where(RunClass.run_id == run_with)):
                cls.notes, cls.worker = ["ünï note", LONG[:2000], "", "{not json}"], None
            session.add_all([
                AuditRequest(model_version_id=versions[0].id, dataset_uri="s3://" + "d" * 4000, settings=NESTED,
                             request_key="a" * 64, created_at=now, run_id=run_with, failures=2, last_error=LONG,
                             next_try_at=now),
                AuditRequest(model_version_id=versions[1].id, dataset_uri="/data", settings={}, request_key="b" * 64,
                             created_at=now, run_id=None, last_error=None, next_try_at=None),
                HookDelivery(source="mlflow", delivery_id="d-1", event="model_version.created", model=None,
                             version=None, outcome="refused", reason=LONG, flow_run_id=None, received_at=now),
                HookDelivery(source="generic", delivery_id="ü" * 255, event="e" * 255, model="m" * 255,
                             version="v", outcome="audited", reason=None, flow_run_id="f" * 64, received_at=now),
            ])
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    name = f"xich_migr_{uuid.uuid4().hex[:10]}"  # a database of its own: nothing shared with other tests
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _copy_rows(source_url: str, target_url: str) -> dict[str, int]:
    """Insert the source's rows into the target's (older) tables, column by column; row counts per table."""
    source, target = make_engine(source_url), make_engine(target_url)
    counts = {}
    try:
        src_meta, dst_meta = MetaData(), MetaData()
        src_meta.reflect(source)
        dst_meta.reflect(target, views=False)
        with source.connect() as src, target.begin() as dst:
            for table in dst_meta.sorted_tables:
                if table.name == "alembic_version":
                    continue
                columns = [c.name for c in table.columns if c.name in src_meta.tables[table.name].columns]
                required = [c.name for c in table.columns if c.name not in columns and not c.nullable
                            and c.server_default is None and c.autoincrement is not True]
                assert not required, f"{table.name}: columns {required} of the older schema have no value at head"
                rows = [dict(r._mapping) for r in src.execute(select(*(src_meta.tables[table.name].c[n]
                                                                      for n in columns)))]
                if rows:
                    dst.execute(table.insert(), rows)
                counts[table.name] = len(rows)
            if target.dialect.name == "postgresql":  # the ids were given: move the sequences past them
                for table in dst_meta.sorted_tables:
                    if "id" in table.columns and table.c.id.autoincrement is not False and counts.get(table.name):
                        dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                         f"(SELECT MAX(id) FROM {table.name}))"))
    finally:
        source.dispose()
        target.dispose()
    return counts


def _views(url: str, leave_out: set[str] = frozenset()) -> dict[str, list[tuple]]:
    """Every view's rows, sorted, without the columns named in ``leave_out`` (or their ``_from``/``_to``; timestamps as UTC text: SQLite's
    views give text, PostgreSQL's datetimes)."""
    engine = make_engine(url)
    try:
        out = {}
        with engine.connect() as conn:
            for name in sorted(inspect(engine).get_view_names()):
                result = conn.execute(text(f"SELECT * FROM {name}"))
                # a view may show a column twice, as <column>_from and <column>_to (look_drift)
                keep = [k for k, column in enumerate(result.keys()) if column not in leave_out
                        and column.removesuffix("_from").removesuffix("_to") not in leave_out]
                out[name] = sorted((tuple(_plain(r[k]) for k in keep) for r in result), key=repr)
        return out
    finally:
        engine.dispose()


def _columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        found = inspect(engine)
        return {c["name"] for t in found.get_table_names() for c in found.get_columns(t)}
    finally:
        engine.dispose()


def _plain(value):
    if isinstance(value, datetime):  # PostgreSQL's timestamps; SQLite's views give the same as text
        return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ") if value.tzinfo else \
            value.isoformat(sep=" ")
    if isinstance(value, float):
        return round(value, 9)
    return value


# Not history: the schema's revision, and the heartbeats of classes being computed (0008), which an audit run at the
# head leaves behind and a database audited before 0008 never had.
LIVENESS = {"alembic_version", "class_heartbeat"}


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                    for t in inspect(engine).get_table_names() if t not in LIVENESS}
    finally:
        engine.dispose()


def _tables(url: str) -> dict[str, list[dict]]:
    """Every table's rows with every column, in primary-key order (the schema's revision left out)."""
    engine = make_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine, views=False)
        with engine.connect() as conn:
            return {t.name: [dict(r._mapping) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
                    for t in meta.sorted_tables if t.name != "alembic_version"}
    finally:
        engine.dispose()


def _within(tables: dict[str, list[dict]], shape: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``tables`` cut to the tables and columns of ``shape`` (what an older schema has)."""
    columns = {t: set(rows[0]) if rows else set() for t, rows in shape.items()}
    return {t: [{c: v for c, v in row.items() if c in columns[t]} for row in tables[t]] for t in shape}


def _differences(got: dict[str, list[dict]], expected: dict[str, list[dict]]) -> list[str]:
    """Each table whose row count differs, and each column with a differing value: how many rows, and the first
    (empty when equal)."""
    out = [f"{t}: {len(got.get(t, []))} rows, expected {len(rows)}" for t, rows in expected.items()
           if len(got.get(t, [])) != len(rows)]
    for t, rows in expected.items():
        for c in (rows[0] if rows else {}):
            wrong = [(k, a.get(c), b[c]) for k, (a, b) in enumerate(zip(got.get(t, []), rows)) if a.get(c) != b[c]]
            if wrong:
                k, a, b = wrong[0]
                out.append(f"{t}.{c}: {len(wrong)} of {len(rows)} rows differ, first [{k}]: "
                           f"{str(a)[:40]!r} != {str(b)[:40]!r}")
    return out


def test_revisions_are_found():
    assert OLDER and OLDER[0] == "0001" and _revisions()[-1] == head_revision()


@pytest.mark.parametrize("revision", OLDER)
def test_a_database_with_audits_at_an_older_revision_upgrades_to_the_same_history(revision, audited, empty_url):
    upgrade(empty_url, revision)
    written = _copy_rows(audited, empty_url)
    assert written["run_cluster"] > 0 and written["pair_dominance"] > 0 and written["audit_run"] == 2
    at_revision = _counts(empty_url)
    before = _tables(empty_url)
    errors = [r["error"] for r in before["audit_run"]]
    assert errors.count(LONG) == 1 and errors.count(None) == 1  # the edge values made it into the older schema
    if "hook_delivery" in before:
        assert len(before["hook_delivery"]) == 2 and before["hook_delivery"][0]["reason"] == LONG
    added_later = _columns(audited) - _columns(empty_url)  # e.g. 0003's intervals: an older run never had them
    upgrade(empty_url)
    after = _tables(empty_url)
    assert _differences(_within(after, before), before) == []  # every value of every column it had, unchanged
    if empty_url.startswith("sqlite"):
        with make_engine(empty_url).connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    expected = _views(audited, added_later)
    assert expected["hierarchy_drift"] and expected["dominance_history"] and expected["pairwise_dominance"]
    assert _views(empty_url, added_later) == expected
    assert _counts(empty_url) == {t: (n if t in at_revision else 0) for t, n in _counts(audited).items()}
    downgrade(empty_url, revision)  # and back: the same rows and values as before the upgrade
    assert _counts(empty_url) == at_revision
    assert _differences(_tables(empty_url), before) == []
    upgrade(empty_url)  # and up again: the same as after the first upgrade
    assert _differences(_tables(empty_url), after) == []
    downgrade(empty_url)
    assert set(_counts(empty_url)) == set()
