"""A model's dominance history as one HTML page, read from the SQL views and never recomputed.

One section per settings key (a run's ``config_hash``) and clustering, so numbers from different
settings or clusters never share a figure or a table; a section whose versions all have a longer series
on another clustering with the same settings (audited on their own clusters, then on the reference) is
superseded and folded away. Per class: each cluster's rank and score across the versions (ordered by
registry time, else first record; view ``dominance_history``), the drift between consecutive versions
on one clustering (view ``hierarchy_drift``), the pairs without evidence (view ``pairwise_dominance``)
and the training share of the least dominant cluster (Fig. 4/5 of the XICH paper, version by version).
:func:`since_previous_html` is an audit report's section on the version before it (what changed, and a link).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sqlalchemy import Engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from ..errors import XichError  # noqa: E402
from ..records.history import ClassDrift, dominance_history, drift_tables, read_view  # noqa: E402
from .report import file_slug, save_figure, write_page  # noqa: E402

HISTORY_COLUMNS = ("model_version", "version_created_at", "run_id", "run_finished_at", "settings_key", "clustering_key",
                   "dataset_uri", "class_name", "cluster_key", "score", "rank", "train_share", "eval_size")
DRIFT_SQL = """
SELECT class_name, from_version, to_version, from_run_id, to_run_id, settings_key, clustering_key,
       clusters_compared, spearman_rank_correlation, clusters_lost_rank
FROM hierarchy_drift WHERE model_name = :model
"""
# each unordered pair once; a pair without evidence has no dominance
EVIDENCE_SQL = """
SELECT run_id, class_name, COUNT(*) AS pairs, SUM(CASE WHEN dominance IS NULL THEN 1 ELSE 0 END) AS without_evidence
FROM pairwise_dominance WHERE model_name = :model AND cluster_i < cluster_j
GROUP BY run_id, class_name
"""
KEY_CHARS = 12  # the short form of a settings key (a SHA-256) on the page


@dataclass(frozen=True)
class _Section:
    """The rows of one settings key, with its versions in history order."""

    settings_key: str
    clustering_key: str
    versions: list[str]
    history: list
    drift: list
    evidence: dict[tuple[str, str], tuple[int, int]]  # (run id, class) -> (pairs, pairs without evidence)


def write_history_report(*, session_or_engine: Session | Engine, model_name: str, out_dir: str | Path,
                         class_name: str | None = None, report_uri: Callable[[str], str | None] | None = None
                         ) -> Path:
    """Write ``out_dir/index.html`` and its figures for ``model_name``'s recorded audits; returns the page's path.

    ``class_name`` limits the page to one class. ``report_uri``: run id → the link to its audit report, relative
    to ``out_dir`` where it can be (None: no report stored), linked from each section. Raises :class:`XichError` when the model has no complete audit (of that class).
    """
    params = {"model": model_name}
    history = dominance_history(session_or_engine, model_name=model_name, columns=HISTORY_COLUMNS)
    drift = read_view(session_or_engine, DRIFT_SQL, params)
    evidence = {(r.run_id, r.class_name): (int(r.pairs), int(r.without_evidence or 0))
                for r in read_view(session_or_engine, EVIDENCE_SQL, params)}
    if class_name is not None:
        history = [r for r in history if r.class_name == class_name]
        drift = [r for r in drift if r.class_name == class_name]
    if not history:
        raise XichError(f"model {model_name!r}: no complete audit recorded under that name"
                        + (f" for class {class_name}" if class_name else ""))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = _sections(history, drift, evidence)
    current = [sec for sec in sections if not _superseded(sec, sections)]
    versions = {r.model_version for r in history}
    parts = [f"<h1>XICH history of {html.escape(model_name)}</h1>",
             f"<p>{len(versions)} version(s), {len({r.run_id for r in history})} complete run(s), "
             f"{len({sec.settings_key for sec in sections})} settings key(s)"
             + f", {len(current)} series (settings and clustering)"
             + (f"; class {html.escape(class_name)} only" if class_name else "")
             + ". Read from the views <code>dominance_history</code>, <code>hierarchy_drift</code> and "
               "<code>pairwise_dominance</code>; versions are ordered by their registry time, else their first "
               "record. A gap in a line: the cluster has no rank or score in that version (no evidence).</p>"]
    for number, section in enumerate(sections):
        if section in current:
            parts += _section_html(section, number, out, report_uri)
    superseded = [(n, sec) for n, sec in enumerate(sections) if sec not in current]
    if superseded:
        parts.append(f"<details class='superseded'><summary>{len(superseded)} superseded series: versions audited "
                     f"on their own clusters before the reference clustering existed (their runs are kept)</summary>")
        for number, section in superseded:
            parts += _section_html(section, number, out, report_uri)
        parts.append("</details>")
    return write_page(out_dir=out, title=f"XICH history of {model_name}", body="\n".join(parts))


def _sections(history: list, drift: list, evidence: dict) -> list[_Section]:
    """Group by settings key and clustering, first recorded first; versions by creation time (then name)."""
    keys = sorted({(r.settings_key, r.clustering_key) for r in history},
                  key=lambda k: min(str(r.run_finished_at) for r in history if (r.settings_key, r.clustering_key) == k))
    sections = []
    for key, clustering in keys:
        rows = [r for r in history if (r.settings_key, r.clustering_key) == (key, clustering)]
        created = {r.model_version: r.version_created_at for r in rows}
        versions = sorted(created, key=lambda v: (str(created[v]), v))
        sections.append(_Section(key, clustering, versions, rows,
                                 [r for r in drift if (r.settings_key, r.clustering_key) == (key, clustering)], evidence))
    return sections


def _superseded(section: _Section, sections: list[_Section]) -> bool:
    """Every version of ``section`` is in a longer series with the same settings on another clustering."""
    return any(other.settings_key == section.settings_key and other is not section
               and len(other.versions) > len(section.versions) and set(section.versions) <= set(other.versions)
               for other in sections)


def _clustering_name(key: str, history: list) -> str:
    """``run:<id>`` (a run's own clustering) by the version that made it; other keys as they are."""
    kind, _, run_id = key.partition(":")
    made_by = next((r.model_version for r in history if r.run_id == run_id), None) if kind == "run" else None
    return f"clustering of {made_by} (run {run_id[:8]})" if made_by else key


def _section_html(section: _Section, number: int, out: Path, report_uri: Callable[[str], str | None] | None
                  ) -> list[str]:
    datasets = sorted({r.dataset_uri for r in section.history})
    runs = {r.model_version: r.run_id for r in section.history}
    hrefs = {v: report_uri(runs[v]) if report_uri else None for v in section.versions}
    links = ", ".join(
        f"<a class='report' href='{html.escape(hrefs[v])}'>{html.escape(v)}</a> (run <code>{html.escape(runs[v][:8])}"
        f"</code>)" if hrefs[v] else f"{html.escape(v)} (run <code>{html.escape(runs[v][:8])}</code>, no report stored)"
        for v in section.versions)
    parts = [f"<h2 data-settings-key='{html.escape(section.settings_key)}'>Settings "
             f"<code>{html.escape(section.settings_key[:KEY_CHARS])}</code> on "
             f"{html.escape(_clustering_name(section.clustering_key, section.history))}</h2>",
             f"<p>versions {html.escape(' → '.join(section.versions))}; data "
             + ", ".join(f"<code>{html.escape(d)}</code>" for d in datasets) + "; clustering "
             + f"<code>{html.escape(section.clustering_key)}</code></p>",
             f"<p class='reports'>audit report of each version: {links}</p>",
             "<h3>Drift between consecutive versions</h3>", _drift_table(section),
             "<h3>Least dominant cluster's training share</h3>"]
    if any(r.train_share is not None and r.rank is not None for r in section.history):
        name = f"least_dominant_{number}.png"
        plot_least_dominant_share(section, out / name)
        parts.append(f'<img class="figure" data-kind="least-dominant-share" src="{name}">')
    parts.append(_least_dominant_table(section))
    for cls in sorted({r.class_name for r in section.history}):
        name = f"ranks_{number}_{file_slug(cls)}.png"
        plot_class_history(section, cls, out / name)
        parts += [f"<h3>{html.escape(cls)}</h3>",
                  f'<img class="figure" data-kind="rank-history" src="{name}">', _evidence_line(section, cls)]
    return parts


def _cluster_label(key: str, keys: set[str], history: list) -> str:
    """``cluster 2`` when the class has one clustering here, else with the clustering's name."""
    clustering, _, index = key.rpartition("/")
    clustering = clustering.rpartition("/")[0]  # drop the class name
    if len({k.rsplit("/", 2)[0] for k in keys}) == 1:
        return f"cluster {index}"
    return f"cluster {index} ({_clustering_name(clustering, history)})"


def plot_class_history(section: _Section, class_name: str, path: Path) -> None:
    """Rank (left; 0 = most dominant, ``x`` on the last row: no evidence) and score (right) of each
    cluster of one class across the section's versions, one line per cluster key."""
    rows = [r for r in section.history if r.class_name == class_name]
    x_of = {v: k for k, v in enumerate(section.versions)}
    keys = {r.cluster_key for r in rows}
    max_rank = max((r.rank for r in rows if r.rank is not None), default=0)
    fig, (ax_rank, ax_score) = plt.subplots(1, 2, figsize=(10, 3.8))
    for n, key in enumerate(sorted(keys)):
        mine = {r.model_version: r for r in rows if r.cluster_key == key}
        xs = range(len(section.versions))
        ranks = [_nan(mine[v].rank) if v in mine else math.nan for v in section.versions]
        scores = [_nan(mine[v].score) if v in mine else math.nan for v in section.versions]
        line, = ax_rank.plot(xs, ranks, marker="o", label=_cluster_label(key, keys, section.history))
        ax_score.plot(xs, scores, marker="o", color=line.get_color())
        unranked = [x_of[v] + 0.06 * (n - (len(keys) - 1) / 2) for v, r in mine.items() if r.rank is None]
        ax_rank.scatter(unranked, [max_rank + 1] * len(unranked), marker="x", color=line.get_color())  # side by side
    ax_rank.set_ylim(max_rank + 1.5, -0.5)
    ax_rank.set_yticks(range(max_rank + 2), [str(k) for k in range(max_rank + 1)] + ["no evidence"])
    ax_rank.set_ylabel("dominance rank (0 = most dominant)")
    ax_rank.set_title(f"{class_name}: rank by version", fontsize=10)
    ax_score.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax_score.set_ylim(0, 1)
    ax_score.set_ylabel("score (mean D against the others)")
    ax_score.set_title(f"{class_name}: score by version", fontsize=10)
    for ax in (ax_rank, ax_score):
        ax.set_xticks(range(len(section.versions)), section.versions, rotation=30 if len(section.versions) > 6 else 0)
        ax.set_xlim(-0.5, len(section.versions) - 0.5)
        ax.set_xlabel("model version")
    # one legend for both charts, below them: beside the rank chart it covered the score chart's axis label
    handles, labels = ax_rank.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 3 if any(len(x) > 20 for x in labels) else 6), frameon=False)
    fig.tight_layout()
    save_figure(fig, path, tight=True)


def _least_dominant(section: _Section) -> dict[tuple[str, str, str], object]:
    """(class, clustering key, version) -> the view row of the ranked cluster with the largest rank."""
    found: dict[tuple[str, str, str], object] = {}
    for r in section.history:
        if r.rank is None:
            continue
        at = (r.class_name, r.clustering_key, r.model_version)
        if at not in found or r.rank > found[at].rank:
            found[at] = r
    return found


def plot_least_dominant_share(section: _Section, path: Path) -> None:
    """Training share of each class's least dominant cluster by version (one line per class and clustering)."""
    least = _least_dominant(section)
    series = sorted({(cls, clustering) for cls, clustering, _ in least})
    several = len({clustering for _, clustering in series}) > 1
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for cls, clustering in series:
        ys = [_nan(least[cls, clustering, v].train_share) if (cls, clustering, v) in least else math.nan
              for v in section.versions]
        ax.plot(range(len(section.versions)), ys, marker="o",
                label=f"{cls} ({_clustering_name(clustering, section.history)})" if several else cls)
    ax.set_xticks(range(len(section.versions)), section.versions, rotation=30 if len(section.versions) > 6 else 0)
    ax.set_xlim(-0.5, len(section.versions) - 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("model version")
    ax.set_ylabel("share of the class's training images")
    ax.set_title("Least dominant cluster's training share", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, off the data
    fig.tight_layout()
    save_figure(fig, path, tight=True)


def _least_dominant_table(section: _Section) -> str:
    least = _least_dominant(section)
    audited = {(r.class_name, r.model_version) for r in section.history}
    head = "".join(f"<th>{html.escape(v)}</th>" for v in section.versions)
    rows = []
    for cls in sorted({r.class_name for r in section.history}):
        cells = []
        for v in section.versions:
            found = [r for (c, _, version), r in sorted(least.items()) if c == cls and version == v]
            if not found:
                cells.append("<td class='flag'>no evidence</td>" if (cls, v) in audited else "<td></td>")
                continue
            cells.append("<td>" + "; ".join(
                f"{'-' if r.train_share is None else f'{r.train_share:.3f}'} "
                f"(cluster {html.escape(r.cluster_key.rsplit('/', 1)[-1])}, rank {r.rank})" for r in found) + "</td>")
        rows.append(f"<tr><th>{html.escape(cls)}</th>{''.join(cells)}</tr>")
    return f"<table class='least-dominant'><tr><th>class</th>{head}</tr>{''.join(rows)}</table>"


def _drift_table(section: _Section) -> str:
    if not section.drift:
        return ("<p class='note'>No drift to show: it needs two versions audited on one clustering with these "
                "settings. Later versions are audited on the model's reference clustering by default "
                "(<code>xich clustering show --model NAME</code>).</p>")
    order = {v: k for k, v in enumerate(section.versions)}
    rows = "".join(
        f"<tr><td>{html.escape(r.class_name)}</td><td>{html.escape(r.from_version)}</td>"
        f"<td>{html.escape(r.to_version)}</td>"
        f"<td>{'n/a' if r.spearman_rank_correlation is None else f'{r.spearman_rank_correlation:+.2f}'}</td>"
        f"<td>{r.clusters_lost_rank}</td><td>{r.clusters_compared}</td>"
        f"<td><code>{html.escape(r.settings_key[:KEY_CHARS])}</code></td>"
        f"<td><code>{html.escape(r.clustering_key)}</code></td></tr>"
        for r in sorted(section.drift, key=lambda r: (r.class_name, order.get(r.to_version, -1), r.clustering_key)))
    return ("<table class='drift'><tr><th>class</th><th>from</th><th>to</th><th>Spearman of ranks</th>"
            "<th>clusters that lost rank</th><th>clusters compared</th><th>settings</th><th>clustering</th></tr>"
            f"{rows}</table><p>Spearman over the clusters ranked in both versions (n/a with fewer than two).</p>")


def _evidence_line(section: _Section, cls: str) -> str:
    runs = defaultdict(list)
    for r in section.history:
        if r.class_name == cls:
            runs[r.model_version].append(r.run_id)
    counts = []
    for v in section.versions:
        for run in sorted(set(runs.get(v, []))):
            if (run, cls) in section.evidence:
                pairs, without = section.evidence[run, cls]
                counts.append(f"{html.escape(v)}: {without} of {pairs}")
    return ("<p class='evidence'>cluster pairs without evidence (no mosaic of the pair gave a dominance: D is "
            "undefined), per version: " + (", ".join(counts) or "not recorded")
            + "</p>")


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def since_previous_html(drift: list[ClassDrift], report_href: Callable[[str], str]) -> str:
    """An audit report's section on the version before it: a link to its report (``report_href``: run id → href)
    and what changed, class by class (``records.history.drift_tables``: the lines and cells `xich history` prints).
    Empty for a first version."""
    parts = []
    for table in drift_tables(drift):
        runs = {d.from_run: d.from_version for d in table.classes}
        links = ", ".join(f"<a class='previous' href='{html.escape(report_href(run))}'>{html.escape(version)}</a> "
                          f"(run <code>{html.escape(run[:8])}</code>)" for run, version in runs.items())
        head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in table.headings)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.cells)
        parts.append(f"<h2>Since the version before</h2><p>The version before: {links}; {html.escape(table.title)}. "
                     "Each cluster is matched by its key on the same clustering; rank 0 is the most dominant, and "
                     "each signal reads before→after.</p><ul class='since-previous'>"
                     + "".join(f"<li>{html.escape(' '.join(line.split()))}</li>" for line in table.lines)
                     + f"</ul><table class='since-previous'><tr>{head}</tr>{rows}</table>")
    return "\n".join(parts)
