"""`xich history --report`: one model's history as an HTML page, read from the views."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from xich.cli import main
from xich.errors import XichError
from xich.reports.history_report import write_history_report
from builders import recorded, resnet20_config

from test_history import two_versions  # noqa: F401  (the shared fixture: v1 and v2 on a frozen clustering)


def _drift_rows(page: Path) -> list[tuple[str, ...]]:
    table = re.search(r"<table class='drift'>(.*?)</table>", page.read_text(), flags=re.S).group(1)
    return [tuple(re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row))
            for row in re.findall(r"<tr>(<td>.*?)</tr>", table)]


def test_history_report_through_the_cli(two_versions, database_url, tmp_path, monkeypatch, capsys, headless_chromium):
    engine, v1, _ = two_versions
    monkeypatch.setenv("XICH_DATABASE_URL", database_url)
    out = tmp_path / "history"
    assert main(["history", "--model", "shapes", "--report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "drift of shapes between consecutive versions" in printed and f"wrote {out / 'index.html'}" in printed
    page = out / "index.html"
    text_ = page.read_text()

    with engine.connect() as conn:
        drift = conn.execute(text("SELECT class_name, spearman_rank_correlation, clusters_lost_rank, "
                                  "clusters_compared, settings_key FROM hierarchy_drift "
                                  "WHERE model_name = 'shapes'")).all()
    rows = _drift_rows(page)
    assert [r[:3] for r in rows] == [(c.name, "v1", "v2") for c in sorted(v1.classes, key=lambda c: c.name)]
    for row, view in zip(rows, sorted(drift), strict=True):
        rho = "n/a" if view.spearman_rank_correlation is None else f"{view.spearman_rank_correlation:+.2f}"
        assert row[3:7] == (rho, str(view.clusters_lost_rank), str(view.clusters_compared), view.settings_key[:12])

    kinds = re.findall(r'data-kind="([a-z-]+)"', text_)
    assert kinds.count("rank-history") == len(v1.classes) and kinds.count("least-dominant-share") <= 1
    assert text_.count("<h2 data-settings-key=") == 1
    assert "versions v1 → v2" in text_

    decoded, total, pixels = headless_chromium(page)
    assert decoded == total == len(kinds) > 0
    assert pixels.shape[:2] == (2000, 1200)


def test_history_report_csv_keeps_standard_output_clean(two_versions, database_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XICH_DATABASE_URL", database_url)
    out = tmp_path / "history"
    assert main(["history", "--model", "shapes", "--class", "circle", "--csv", "--report", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("model_version,") and "wrote" not in captured.out
    assert f"wrote {out / 'index.html'}" in captured.err
    text_ = (out / "index.html").read_text()
    assert "<h3>circle</h3>" in text_ and "<h3>square</h3>" not in text_
    assert [r[0] for r in _drift_rows(out / "index.html")] == ["circle"]


def test_history_report_from_an_engine(two_versions, tmp_path):
    engine, v1, v2 = two_versions
    page = write_history_report(session_or_engine=engine, model_name="shapes", out_dir=tmp_path / "h")
    text_ = page.read_text()
    least = re.search(r"<table class='least-dominant'>(.*?)</table>", text_, flags=re.S).group(1)
    for cls1, cls2 in zip(v1.classes, v2.classes, strict=True):
        row = re.search(rf"<tr><th>{cls1.name}</th>(.*?)</tr>", least).group(1)
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        for cell, cls in zip(cells, (cls1, cls2), strict=True):
            if not cls.hierarchy:
                assert cell == "no evidence"
                continue
            last = next(c for c in cls.clusters if c.id == cls.hierarchy[-1])
            assert cell == f"{last.train_share:.3f} (cluster {last.id}, rank {last.rank})"
    with pytest.raises(XichError, match="no complete audit"):
        write_history_report(session_or_engine=engine, model_name="nobody", out_dir=tmp_path / "none")


def test_each_settings_key_is_its_own_section(two_versions, database_url, synth_data, tmp_path):
    engine, v1, _ = two_versions
    for version in ("v1", "v2"):  # the same versions again with J = 2: a second settings key
        config = resnet20_config(synth_data, weights=str(tmp_path / f"{version}.pt"), clusters=3, mosaics_per_pair=2)
        recorded(config, database_url, model_name="shapes", model_version=version)
    with Session(engine) as session:
        page = write_history_report(session_or_engine=session, model_name="shapes", out_dir=tmp_path / "h")
    sections = re.split(r"<h2 data-settings-key='", page.read_text())[1:]
    keys = [s.split("'", 1)[0] for s in sections]
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT DISTINCT settings_key FROM dominance_history "
                                   "WHERE model_name = 'shapes'")).scalars()
        assert sorted(keys) == sorted(stored)
    for key, section in zip(keys, sections, strict=True):
        drift = re.search(r"<table class='drift'>(.*?)</table>", section, flags=re.S).group(1)
        assert set(re.findall(r"<td><code>([0-9a-f]+)</code></td>", drift)) == {key[:12]}
        assert drift.count("<tr><td>") == len(v1.classes)
        assert section.count('data-kind="rank-history"') == len(v1.classes)


def test_history_report_for_an_unknown_model(database_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XICH_DATABASE_URL", database_url)
    assert main(["history", "--model", "nobody", "--report", str(tmp_path / "page")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no complete audit recorded" in lines[0]
    assert captured.out == "" and not (tmp_path / "page").exists()


def test_report_links_are_relative_to_the_page_where_the_store_is_a_folder(tmp_path):
    """run.publish.report_link: a local store's report by a relative link (the page and the store moved together
    keep it), None where no report was stored, the s3:// URI for an S3 store."""
    from builders import context_for
    from xich.run.publish import report_link

    store = tmp_path / "site" / "store"
    (store / "runs" / "abc" / "report").mkdir(parents=True)
    (store / "runs" / "abc" / "report" / "index.html").write_text("<html></html>")
    ctx = context_for(f"sqlite:///{tmp_path / 'x.db'}", store_url=str(store))
    link = report_link(ctx, "abc", page_dir=tmp_path / "site" / "history")
    assert link == "../store/runs/abc/report/index.html"
    assert (tmp_path / "site" / "history" / link).resolve().is_file()
    assert report_link(ctx, "nothing-stored", page_dir=tmp_path / "site" / "history") is None
    s3 = context_for(f"sqlite:///{tmp_path / 'y.db'}", store_url="s3://bucket/prefix")
    assert report_link(s3, "abc", page_dir=tmp_path) == "s3://bucket/prefix/runs/abc/report/index.html"


def test_a_report_written_outside_the_store_links_the_version_before_where_it_lies(tmp_path, monkeypatch, capsys):
    """`xich audit --report DIR` of a recorded run: the copy in DIR links the version before where its report lies in
    the store (relative to DIR for a local store, as the history page links reports), and the copy published in the
    store keeps its link relative to runs/ (issue 26)."""
    from toy_nets import write_grey_tiles

    data = write_grey_tiles(tmp_path / "data", {"test": [10, 30, 60, 90, 120, 150], "train": [20, 50, 80, 140]})
    store = tmp_path / "store"
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'xich.db'}")
    monkeypatch.setenv("XICH_STORE_URL", str(store))
    base = ["audit", "--data", str(data), "--model", "python:toy_nets:brightness", "--clusters", "2",
            "--mosaics-per-pair", "2", "--normalize", "none", "--device", "cpu", "--model-name", "m"]
    for version in ("v1", "v2"):
        assert main([*base, "--model-version", version, "--report", str(tmp_path / version)]) == 0, \
            capsys.readouterr().err
    [link] = re.findall(r"<a class='previous' href='([^']+)'", (tmp_path / "v2" / "index.html").read_text())
    v1_report = (tmp_path / "v2" / link).resolve()
    assert "://" not in link and v1_report.is_file(), link
    assert v1_report.parent.parent.parent == (store / "runs").resolve() and v1_report.name == "index.html"
    assert not re.findall(r"class='previous'", (tmp_path / "v1" / "index.html").read_text())  # v1: none before it
    [v2_published] = [p for p in (store / "runs").glob("*/report/index.html") if p != v1_report]
    [relative] = re.findall(r"<a class='previous' href='([^']+)'", v2_published.read_text())
    assert "://" not in relative and (v2_published.parent / relative).resolve() == v1_report.resolve()
