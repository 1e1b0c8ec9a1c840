"""Two versions of one model on a frozen clustering: the views, `xich history` and the queries of docs/history.md."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sqlalchemy import text
from sqlalchemy.orm import Session

from xich.records.db import AuditRun, make_engine
from xich.errors import XichError
from xich.engine.models import build_model
from xich.records.persist import freeze_clustering
from builders import numbers, recorded, resnet20_config

HISTORY_DOC = Path(__file__).resolve().parents[1] / "docs" / "history.md"


def _weights(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    torch.save(build_model("cifar:resnet20", 3).state_dict(), path)
    return str(path)


@pytest.fixture
def two_versions(database_url, synth_data, tmp_path, one_torch_thread):
    def audit(version: str, seed: int):
        config = resnet20_config(synth_data, weights=_weights(tmp_path / f"{version}.pt", seed), clusters=3,
                                 mosaics_per_pair=4)
        return recorded(config, database_url, model_name="shapes", model_version=version)

    v1 = audit("v1", 1)
    engine = make_engine(database_url)
    with Session(engine) as session:
        freeze_clustering(session=session, run_id=v1.run_id)
    v2 = audit("v2", 2)
    yield engine, v1, v2
    engine.dispose()


def _rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def test_rerunning_the_frozen_version_adds_no_row(two_versions, database_url, synth_data, tmp_path):
    engine, v1, _ = two_versions
    before = _rows(engine, "SELECT COUNT(*) FROM run_cluster")
    config = resnet20_config(synth_data, weights=str(tmp_path / "v1.pt"), clusters=3, mosaics_per_pair=4)
    again = recorded(config, database_url, model_name="shapes", model_version="v1")
    assert again.run_id == v1.run_id and numbers(again) == numbers(v1)
    assert _rows(engine, "SELECT COUNT(*) FROM run_cluster") == before
    assert len(_rows(engine, "SELECT * FROM hierarchy_drift")) == 3


def test_same_version_with_other_weights_is_refused(two_versions, database_url, synth_data, tmp_path):
    config = resnet20_config(synth_data, weights=str(tmp_path / "v2.pt"), clusters=3, mosaics_per_pair=4)
    with pytest.raises(XichError, match="give this model a new --model-version"):
        recorded(config, database_url, model_name="shapes", model_version="v1")


def test_classes_the_reference_lacks_get_their_own_clustering(database_url, synth_data, tmp_path, one_torch_thread):
    """The first complete audit becomes the reference by itself; a later one asking for classes it lacks is
    complete, those classes clustered in the run (recorded in run_class and the timings), the others on it."""
    def config(**kw):
        return resnet20_config(synth_data, weights=_weights(tmp_path / f"{kw.pop('v')}.pt", 1), clusters=2,
                               mosaics_per_pair=2, train_split=None, **kw)

    first = recorded(config(v="a", classes=("circle",)), database_url, model_name="m",
                           model_version="a")
    assert any("became the model's reference" in n for n in first.notes)
    second = recorded(config(v="b"), database_url, model_name="m", model_version="b")
    assert [c.name for c in second.classes] == ["circle", "square", "triangle"]
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            r1, r2 = session.get(AuditRun, first.run_id), session.get(AuditRun, second.run_id)
            assert r2.status == "complete" and r2.clustering_id == r1.clustering_id
            assert r2.timings["own_clustering_classes"] == ["square", "triangle"]
        by_class = dict(_rows(engine, "SELECT rc.class_name, c.key FROM run_class rc JOIN clustering c "
                                      "ON c.id = rc.clustering_id WHERE rc.run_id = :r", r=second.run_id))
        assert by_class == {"circle": f"run:{first.run_id}", "square": f"run:{second.run_id}",
                            "triangle": f"run:{second.run_id}"}
    finally:
        engine.dispose()
    with pytest.raises(XichError, match="no reference clustering from version 'zzz'"):
        recorded(config(v="a"), database_url, model_name="m", model_version="a",
                       clustering="reference:zzz")


def test_new_version_reuses_the_frozen_clustering(two_versions):
    engine, v1, v2 = two_versions
    for c1, c2 in zip(v1.classes, v2.classes, strict=True):
        assert [c.members for c in c1.clusters] == [c.members for c in c2.clusters]
        assert "cluster membership from a frozen clustering" in c2.notes
    with Session(engine) as session:
        r1, r2 = session.get(AuditRun, v1.run_id), session.get(AuditRun, v2.run_id)
        assert r1.clustering_id == r2.clustering_id and r1.clustering_key == "own:P=3" and r2.clustering_key != r1.clustering_key


def test_views_return_the_expected_rows(two_versions):
    engine, v1, v2 = two_versions
    rows = _rows(engine, "SELECT model_version, class_name, cluster_key, score, rank, train_share, eval_size "
                         "FROM dominance_history WHERE model_name = 'shapes'")
    assert len(rows) == 2 * 3 * 3
    by_version = {v: {(r.class_name, r.cluster_key) for r in rows if r.model_version == v} for v in ("v1", "v2")}
    assert by_version["v1"] == by_version["v2"]  # stable keys across versions
    keys = {(r.class_name, r.cluster_key) for r in rows}
    prefix = {key.removesuffix(f"/{name}/{key.rpartition('/')[2]}") for name, key in keys}
    assert len(prefix) == 1  # one frozen clustering: every key is <its key>/<class>/<cluster index>
    (prefix,) = prefix
    for version, result in (("v1", v1), ("v2", v2)):
        got = {r.cluster_key: r for r in rows if r.model_version == version}
        for cls in result.classes:
            for c in cls.clusters:  # row by row, keyed: a view that swapped clusters within a class fails here
                row = got.pop(f"{prefix}/{cls.name}/{c.id}")
                assert row.class_name == cls.name and (row.rank, row.eval_size) == (c.rank, c.eval_size), (version, c.id)
                assert row.score == pytest.approx(c.score) and row.train_share == pytest.approx(c.train_share)
        assert got == {}
    assert len({c.score for r in (v1, v2) for cls in r.classes for c in cls.clusters}) > 9  # distinct: a swap shows
    for a, b in zip(v1.classes, v2.classes, strict=True):  # the frozen clustering: each key, the same images
        assert [c.members for c in a.clusters] == [c.members for c in b.clusters]

    pairs = _rows(engine, "SELECT model_version, class_name, cluster_i, cluster_j, dominance, p_value_holm "
                          "FROM pairwise_dominance WHERE model_name = 'shapes'")
    assert len(pairs) == 2 * 3 * 6
    for r in pairs:
        cls = next(c for c in (v1 if r.model_version == "v1" else v2).classes if c.name == r.class_name)
        assert r.dominance == pytest.approx(cls.dominance[r.cluster_i][r.cluster_j])
        assert r.p_value_holm == pytest.approx(cls.p_values_holm[r.cluster_i][r.cluster_j])

    drift = _rows(engine, "SELECT class_name, from_version, to_version, spearman_rank_correlation, clusters_lost_rank "
                          "FROM hierarchy_drift WHERE model_name = 'shapes' ORDER BY class_name")
    assert [(r.class_name, r.from_version, r.to_version) for r in drift] == [
        (c.name, "v1", "v2") for c in sorted(v1.classes, key=lambda c: c.name)]
    for r in drift:
        a = next(c for c in v1.classes if c.name == r.class_name).clusters
        b = next(c for c in v2.classes if c.name == r.class_name).clusters
        both = [(ca.rank, cb.rank) for ca, cb in zip(a, b, strict=True) if ca.rank is not None and cb.rank is not None]
        ranks_a, ranks_b = stats.rankdata([x for x, _ in both]) - 1, stats.rankdata([y for _, y in both]) - 1
        if len(both) < 2:
            assert r.spearman_rank_correlation is None
        else:
            assert r.spearman_rank_correlation == pytest.approx(stats.spearmanr(ranks_a, ranks_b).statistic)
        assert r.clusters_lost_rank == sum(rb > ra for ra, rb in zip(ranks_a, ranks_b, strict=True))


def test_readme_queries_run(two_versions):
    engine, _, _ = two_versions
    section = HISTORY_DOC.read_text().split("## Querying history in SQL", 1)[1]
    queries = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    assert len(queries) == 5
    results = [_rows(engine, q.strip().rstrip(";")) for q in queries]
    assert all(results[k] for k in (0, 1, 3, 4))  # query 3 may rightly find nothing significant
    assert len(results[0]) == 18 and len(results[3]) == 3
    assert {r.model_version for r in results[4]} == {"v1", "v2"}
    assert np.isclose(sum(r.mean_train_share for r in results[4]), 2.0)  # shares by rank sum to 1 per version


def test_history_command(two_versions, capsys, monkeypatch, database_url):
    from xich.cli import main

    monkeypatch.setenv("XICH_DATABASE_URL", database_url)
    assert main(["history", "--model", "shapes", "--class", "circle", "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("model_version,version_created_at,run_id,class_name,cluster_key")
    assert len(lines) == 1 + 2 * 3
    assert main(["history", "--model", "nobody"]) == 2
    assert "no complete audit recorded" in capsys.readouterr().err


def test_history_leads_with_the_drift(two_versions, capsys, monkeypatch, database_url):
    """`xich history --model M` after two versions: the drift first (every cluster of every class, each signal
    before→after, as the stored results give it), in 100 columns; the per-cluster rows only with --rows."""
    from xich.cli import main

    engine, v1, v2 = two_versions
    monkeypatch.setenv("XICH_DATABASE_URL", database_url)
    assert main(["history", "--model", "shapes"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("drift of shapes between consecutive versions")
    assert max(len(line) for line in lines) <= 100
    assert "dominance history of shapes" not in printed and "--rows:" in lines[-1]
    assert "…" not in printed
    [title] = [line for line in lines if line.startswith("v1 → v2")]
    assert f"runs {v1.run_id[:8]} → {v2.run_id[:8]}" in title and f"clustering {v1.run_id[:8]}" in title

    def change(a, b, fmt):
        a, b = ("-" if x is None else format(x, fmt) for x in (a, b))
        return a if a == b else f"{a}→{b}"

    for c1, c2 in zip(v1.classes, v2.classes, strict=True):
        flagged = [", ".join(map(str, c.looks["flagged"])) or "none" for c in (c1, c2)]
        hierarchy = (f"{c1.name}: looks flagged {flagged[0]} → {flagged[1]}; hierarchy "
                     f"{' > '.join(map(str, c1.hierarchy)) or 'no evidence'} → "
                     f"{' > '.join(map(str, c2.hierarchy)) or 'no evidence'}; ")
        assert any(line.strip().startswith(hierarchy) for line in lines), (hierarchy, printed)
        for a, b in zip(c1.clusters, c2.clusters, strict=True):
            move = "" if a.rank is None or b.rank is None or a.rank == b.rank else \
                f"{'up' if b.rank < a.rank else 'down'} {abs(a.rank - b.rank)}"
            rank_of = lambda c, k: c.looks["flagged"].index(k) if k in c.looks["flagged"] else None  # noqa: E731
            flag = change(rank_of(c1, a.id), rank_of(c2, b.id), "d")
            want = [c1.name, str(a.id), *move.split(), flag,
                    change(a.baselines["accuracy"], b.baselines["accuracy"], ".3f"),
                    change(a.representation_ratio, b.representation_ratio, ".2f"),
                    change(a.baselines["mean_logit"], b.baselines["mean_logit"], ".2f"),
                    change(a.rank, b.rank, "d"), change(a.score, b.score, ".3f")]
            assert [line.split() for line in lines].count(want) == 1, (want, printed)

    assert main(["history", "--model", "shapes", "--rows"]) == 0
    with_rows = capsys.readouterr().out
    assert with_rows.index("v1 → v2") < with_rows.index("dominance history of shapes")
    assert max(len(line) for line in with_rows.splitlines()) <= 100


def _arch_audit(database_url, synth_data, arch: str, version: str, **kw):
    """An audit of a seeded, untrained CIFAR ResNet of depth ``arch`` recorded as ``version`` of model 'arch'."""
    config = resnet20_config(synth_data, model=f"cifar:{arch}", clusters=3, **{"mosaics_per_pair": 4, **kw})
    return recorded(config, database_url, model_name="arch", model_version=version)


def _run_count(engine) -> int:
    return _rows(engine, "SELECT COUNT(*) FROM audit_run")[0][0]


def test_history_across_architectures_settings_and_reruns(database_url, synth_data, one_torch_thread):
    """v1 = ResNet-20, v2 = ResNet-32 on one frozen clustering: one drift row per class; reruns with
    --per-image or another class order add no run; a second setting is a second series, never double counted."""
    engine = make_engine(database_url)
    try:
        v1 = _arch_audit(database_url, synth_data, "resnet20", "v1")
        with Session(engine) as session:
            freeze_clustering(session=session, run_id=v1.run_id)
        v2 = _arch_audit(database_url, synth_data, "resnet32", "v2")
        drift = _rows(engine, "SELECT class_name, from_version, to_version, settings_key, clusters_compared "
                              "FROM hierarchy_drift WHERE model_name = 'arch' ORDER BY class_name")
        assert [(r.class_name, r.from_version, r.to_version) for r in drift] == [
            (c, "v1", "v2") for c in ("circle", "square", "triangle")]
        ranked = {c.name: sum(a.rank is not None and b.rank is not None for a, b in zip(
            c.clusters, next(d for d in v2.classes if d.name == c.name).clusters)) for c in v1.classes}
        assert {r.class_name: r.clusters_compared for r in drift} == ranked

        runs = _run_count(engine)
        again = _arch_audit(database_url, synth_data, "resnet32", "v2", per_image=2,
                            classes=("triangle", "circle", "square"))
        assert again.run_id == v2.run_id and _run_count(engine) == runs
        assert all(c.per_image is not None and len(c.per_image.images) == 2 for c in again.classes)
        assert [c.dominance for c in again.classes] == [c.dominance for c in v2.classes]
        assert _rows(engine, "SELECT COUNT(*) FROM per_image_score WHERE run_id = :r", r=v2.run_id)[0][0] == 3 * 2
        assert _arch_audit(database_url, synth_data, "resnet32", "v2", cam="reference").run_id == v2.run_id

        # a second setting (J = 6) on both versions: its own series, keyed apart
        _arch_audit(database_url, synth_data, "resnet20", "v1", mosaics_per_pair=6)
        _arch_audit(database_url, synth_data, "resnet32", "v2", mosaics_per_pair=6)
        drift = _rows(engine, "SELECT class_name, settings_key, clusters_compared FROM hierarchy_drift "
                              "WHERE model_name = 'arch'")
        assert len(drift) == 2 * 3 and len({r.settings_key for r in drift}) == 2
        assert all(r.clusters_compared <= 3 for r in drift)  # never more clusters than a class has
        history = _rows(engine, "SELECT settings_key, cluster_key, model_version FROM dominance_history "
                                "WHERE model_name = 'arch'")
        assert len(history) == len(set(history)) == 2 * 2 * 3 * 3  # settings x versions x classes x clusters
    finally:
        engine.dispose()


def test_registry_time_orders_versions(database_url, synth_data, one_torch_thread):
    """A version registered earlier comes first in the drift, whatever the order of the audits."""
    from datetime import datetime, timezone

    def audit(version: str, when: datetime, arch: str):
        config = resnet20_config(synth_data, model=f"cifar:{arch}", clusters=2, mosaics_per_pair=3,
                                 classes=("circle",))
        return recorded(config, database_url, model_name="ordered", model_version=version,
                              registered_at=when)

    late = audit("late", datetime(2026, 6, 1, tzinfo=timezone.utc), "resnet20")
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            freeze_clustering(session=session, run_id=late.run_id)
        audit("early", datetime(2026, 1, 1, tzinfo=timezone.utc), "resnet32")
        drift = _rows(engine, "SELECT from_version, to_version FROM hierarchy_drift WHERE model_name = 'ordered'")
        assert [(r.from_version, r.to_version) for r in drift] == [("early", "late")]
    finally:
        engine.dispose()


def test_same_images_elsewhere_are_the_same_dataset_and_keep_the_frozen_clustering(database_url, synth_data,
                                                                                    tmp_path, one_torch_thread):
    import shutil

    moved = tmp_path / "moved-copy"
    shutil.copytree(synth_data, moved)

    def audit(data: Path, version: str):
        config = resnet20_config(data, clusters=2, mosaics_per_pair=2,
                                 weights=_weights(tmp_path / f"{version}.pt", 1))
        return recorded(config, database_url, model_name="moved", model_version=version)

    first = audit(synth_data, "a")
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            freeze_clustering(session=session, run_id=first.run_id)
        second = audit(moved, "b")
        assert any("reference clustering" in n for n in second.notes)
        assert _rows(engine, "SELECT COUNT(*) FROM dataset")[0][0] == 1
        assert [[c.members for c in cls.clusters] for cls in second.classes] == \
               [[c.members for c in cls.clusters] for cls in first.classes]
    finally:
        engine.dispose()


def test_a_run_stored_before_the_looks_shows_a_dash_not_none():
    """A version audited before the audit flagged looks (no looks signal: migration 0009) has no flagged looks to
    show ("-"); a version audited since, that flags nothing, says "none" — even where both have accuracies."""
    from xich.records.history import ClassDrift, ClusterDrift

    def side(flagged_rank):
        return {"flagged_rank": flagged_rank, "accuracy": 0.9, "representation_ratio": None, "mean_logit": 1.0,
                "rank": 0, "score": 0.5}

    clusters = [ClusterDrift("c/0", side(None), side(None)), ClusterDrift("c/1", side(None), side(0))]
    old_new = ClassDrift("cat", "v1", "v2", "r1", "r2", "k", "c", clusters, (None, "under_represented"))
    assert (old_new.flagged("before"), old_new.flagged("after")) == ("-", "1")
    none = ClassDrift("cat", "v1", "v2", "r1", "r2", "k", "c", [ClusterDrift("c/0", side(None), side(None))],
                      ("under_represented", "under_represented"))
    assert (none.flagged("before"), none.flagged("after")) == ("none", "none")
