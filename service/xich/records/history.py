"""A model's dominance history, read from the SQL views the migrations define (``dominance_history``,
``hierarchy_drift``, ``pairwise_dominance``); never recomputed. Used by ``xich history`` (its rows, and the drift
between consecutive versions it leads with: :func:`version_drift`, :func:`drift_tables`), the history page and the
audit report's section on the version before."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session


def read_view(session_or_engine: Session | Engine, sql: str, params: dict) -> list:
    """The rows of ``sql`` (a query of the views) with ``params``."""
    if isinstance(session_or_engine, Engine):
        with session_or_engine.connect() as conn:
            return conn.execute(text(sql), params).all()
    return session_or_engine.execute(text(sql), params).all()


def dominance_history(session_or_engine: Session | Engine, *, model_name: str, columns: tuple[str, ...],
                      class_name: str | None = None, order_by: tuple[str, ...] = ()) -> list:
    """Rows of ``dominance_history`` for ``model_name`` (and ``class_name``): ``columns`` (names of the view's
    columns, fixed by the caller, never outside input), in ``order_by`` order."""
    sql = (f"SELECT {', '.join(columns)} FROM dominance_history WHERE model_name = :model"
           + (" AND class_name = :cls" if class_name is not None else "")
           + (f" ORDER BY {', '.join(order_by)}" if order_by else ""))
    return read_view(session_or_engine, sql, {"model": model_name, "cls": class_name})


HISTORY_COLUMNS = ("model_version", "version_created_at", "run_id", "class_name", "cluster_key", "score", "rank",
                   "train_share", "eval_size", "method", "mean_logit", "control_score")
# the default table (fits 100 columns): runs by their first 8 digits, a cluster as <its clustering's run>/<index>
HISTORY_COMPACT = ("model_version", "run_id", "class_name", "cluster", "score", "rank", "train_share", "eval_size")
NUMERIC_COLUMNS = ("score", "rank", "train_share", "eval_size", "mean_logit", "control_score")
SHORT_NAMES = {"model_version": "version", "run_id": "run", "class_name": "class", "train_share": "train",
               "eval_size": "eval"}


def model_history(session_or_engine: Session | Engine, *, model_name: str, class_name: str | None = None) -> list:
    """``xich history``'s rows: HISTORY_COLUMNS of every cluster of ``model_name`` (and ``class_name``), by class,
    cluster and version."""
    return dominance_history(session_or_engine, model_name=model_name, columns=HISTORY_COLUMNS, class_name=class_name,
                             order_by=("class_name", "cluster_key", "version_created_at", "run_finished_at"))


def history_table(rows: list, *, wide: bool) -> tuple[list[tuple[str, bool]], list[list[str]]]:
    """The rows as text: (heading, right-aligned) per column and the cells; ``wide``: every column, else the
    compact table (runs by their first 8 digits, a cluster as ``<its clustering's run>/<index>``)."""
    columns = HISTORY_COLUMNS if wide else HISTORY_COMPACT
    headings = [(col if wide else SHORT_NAMES.get(col, col), col in NUMERIC_COLUMNS) for col in columns]
    cells = []
    for r in rows:
        values = r._asdict()
        clustering, _, index = str(values["cluster_key"]).rpartition("/")
        values["cluster"] = f"{clustering.removeprefix('run:')[:8]}/{index}"
        values["run_id"] = values["run_id"] if wide else values["run_id"][:8]
        cells.append(["-" if values[c] is None else f"{values[c]:.3f}" if isinstance(values[c], float)
                      else str(values[c]) for c in columns])
    return headings, cells


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a text cell starting so as a formula


def csv_row(row) -> list:
    """A history row for ``xich history --csv``: a text cell (a model version, a class name: outside input) that
    starts like a formula gets a leading ``'``, which spreadsheets show as text; numbers stay numbers (-0.5 too)."""
    return [f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v for v in row]


# --- drift between consecutive versions, cluster by cluster ------------------------------------------------------

# The signals whose drift `xich history` leads with, and the report of a version shows: (view column, heading,
# format) — the looks first (flagged_rank: the cluster's place among its class's flagged looks, 0 = most in need; its
# accuracy and representation ratio, which stands for the training share), then the paper's view. One more signal
# (a column of ``dominance_history``) is one more entry here.
DRIFT_SIGNALS = (("flagged_rank", "flagged", "d"), ("accuracy", "accuracy", ".3f"),
                 ("representation_ratio", "ratio", ".2f"), ("mean_logit", "mean logit", ".2f"),
                 ("rank", "rank", "d"), ("score", "score", ".3f"))
TEXT_WIDTH = 100  # a class's line, wrapped and indented: `xich history` reads in 100 columns
DRIFT_COLUMNS = ("model_version", "version_created_at", "run_id", "run_finished_at", "settings_key",
                 "clustering_key", "class_name", "cluster_key", "looks_signal", *(s for s, _, _ in DRIFT_SIGNALS))


@dataclass(frozen=True)
class ClusterDrift:
    """One cluster (matched by its key on one clustering) in two consecutive versions: each signal before and after
    (None: not measured, or no evidence)."""

    cluster_key: str
    before: dict[str, float | int | None]
    after: dict[str, float | int | None]

    @property
    def index(self) -> str:
        """The cluster's index in its clustering (the number the audits print)."""
        return self.cluster_key.rpartition("/")[2]

    @property
    def rank_change(self) -> int | None:
        """Places moved up (positive: more dominant) from one version to the next; None without both ranks."""
        a, b = self.before.get("rank"), self.after.get("rank")
        return None if a is None or b is None else a - b


@dataclass(frozen=True)
class ClassDrift:
    """One class from one version to the next, on one clustering with one settings key."""

    class_name: str
    from_version: str
    to_version: str
    from_run: str
    to_run: str
    settings_key: str
    clustering_key: str
    clusters: list[ClusterDrift]
    looks_signals: tuple[str | None, str | None] = (None, None)  # each version's looks signal (None: run before 0009)

    def hierarchy(self, side: str) -> list[str]:
        """The ranked clusters' indices, most dominant first, in the version ``side`` ("before" or "after")."""
        ranked = [(getattr(c, side)["rank"], c.index) for c in self.clusters if getattr(c, side)["rank"] is not None]
        return [index for _, index in sorted(ranked)]

    def flagged(self, side: str) -> str:
        """The looks flagged in the version ``side``, most in need first (``none``; ``-`` for a run stored before the
        audit flagged looks, migration 0009)."""
        if self.looks_signals[0 if side == "before" else 1] is None:
            return "-"
        ranks = [(getattr(c, side)["flagged_rank"], c.index) for c in self.clusters]
        return ", ".join(index for r, index in sorted(x for x in ranks if x[0] is not None)) or "none"

    def moves(self) -> list[str]:
        """What moved, most first: ``cluster 2 up 2``, ``cluster 0 down 1``, ``cluster 1 lost its rank``…"""
        moved = [(abs(c.rank_change), c.index, f"cluster {c.index} {'up' if c.rank_change > 0 else 'down'} "
                                               f"{abs(c.rank_change)}") for c in self.clusters if c.rank_change]
        lost = [(0, c.index, f"cluster {c.index} {'lost its rank' if b is None else 'gained a rank'}")
                for c in self.clusters for a, b in [(c.before["rank"], c.after["rank"])] if (a is None) != (b is None)]
        return [text for _, _, text in sorted(moved, key=lambda m: (-m[0], m[1]))] + [t for _, _, t in sorted(lost)]


def version_drift(session_or_engine: Session | Engine, *, model_name: str, class_name: str | None = None
                  ) -> list[ClassDrift]:
    """The drift of ``model_name`` (and ``class_name``) between consecutive versions: per settings key, clustering
    and class, the versions in history order (registry time, else first record; a version's latest run), each
    cluster matched by its key, every signal of DRIFT_SIGNALS before and after. Read from ``dominance_history``."""
    rows = dominance_history(session_or_engine, model_name=model_name, columns=DRIFT_COLUMNS, class_name=class_name,
                             order_by=("version_created_at", "model_version", "run_finished_at"))
    series: dict[tuple[str, str, str], dict[str, list]] = {}
    for r in rows:  # later runs of a version replace earlier ones (rows come oldest first)
        versions = series.setdefault((r.settings_key, r.clustering_key, r.class_name), {})
        if versions.get(r.model_version) and versions[r.model_version][0].run_id != r.run_id:
            versions[r.model_version] = []
        versions.setdefault(r.model_version, []).append(r)
    drift = []
    for (settings_key, clustering_key, cls), versions in series.items():
        ordered = list(versions.items())
        for (v1, rows1), (v2, rows2) in zip(ordered, ordered[1:]):
            by_key = {r.cluster_key: r for r in rows1}
            clusters = [ClusterDrift(r.cluster_key, {s: getattr(by_key[r.cluster_key], s) for s, _, _ in DRIFT_SIGNALS},
                                     {s: getattr(r, s) for s, _, _ in DRIFT_SIGNALS})
                        for r in rows2 if r.cluster_key in by_key]
            drift.append(ClassDrift(cls, v1, v2, rows1[0].run_id, rows2[0].run_id, settings_key, clustering_key,
                                    sorted(clusters, key=lambda c: _natural(c.index)),
                                    (rows1[0].looks_signal, rows2[0].looks_signal)))
    return sorted(drift, key=lambda d: (d.settings_key, d.clustering_key, d.class_name))


def drift_into(session_or_engine: Session | Engine, *, run_id: str) -> list[ClassDrift]:
    """The drift from the version before run ``run_id``'s to it, per class (empty for a first version, or a run
    that is not complete)."""
    found = read_view(session_or_engine, "SELECT model_name FROM dominance_history WHERE run_id = :run LIMIT 1",
                      {"run": run_id})
    if not found:
        return []
    return [d for d in version_drift(session_or_engine, model_name=found[0].model_name) if d.to_run == run_id]


def _natural(index: str) -> tuple[int, str]:
    return (int(index), "") if index.isdigit() else (1 << 30, index)


def _change(before, after, fmt: str) -> str:
    """``0.412→0.551``; ``-`` for a side without a value; the one value when it did not change."""
    a, b = ("-" if x is None else format(x, fmt) for x in (before, after))
    return a if a == b else f"{a}→{b}"


@dataclass(frozen=True)
class DriftTable:
    """One transition (from → to, on one settings key and clustering) as text: a title, a line per class (its
    hierarchy before and after, what moved), and per-cluster cells under ``headings`` ((heading, right-aligned))."""

    title: str
    lines: list[str]
    headings: list[tuple[str, bool]]
    cells: list[list[str]]
    classes: list[ClassDrift]


def drift_tables(drift: list[ClassDrift]) -> list[DriftTable]:
    """``xich history``'s lead: one table per transition, the clusters of each class in their new rank order (rank
    0 = most dominant), each signal as ``before→after``."""
    groups: dict[tuple, list[ClassDrift]] = {}
    for d in drift:
        groups.setdefault((d.from_version, d.to_version, d.settings_key, d.clustering_key), []).append(d)
    tables = []
    for (v1, v2, settings_key, clustering_key), classes in groups.items():
        clustering = clustering_key.removeprefix("run:")[:8] if clustering_key.startswith("run:") else clustering_key
        title = (f"{v1} → {v2} (runs {classes[0].from_run[:8]} → {classes[0].to_run[:8]}; clustering {clustering}, "
                 f"settings {settings_key[:8]})")
        lines = [textwrap.fill(f"{d.class_name}: looks flagged {d.flagged('before')} → {d.flagged('after')}; "
                               f"hierarchy {' > '.join(d.hierarchy('before')) or 'no evidence'} → "
                               f"{' > '.join(d.hierarchy('after')) or 'no evidence'}; "
                               + (", ".join(d.moves()) or "no cluster moved"), width=TEXT_WIDTH,
                               initial_indent="  ", subsequent_indent="      ")
                 for d in classes]
        headings = [("class", False), ("cluster", True), ("moved", False),
                    *((heading, True) for _, heading, _ in DRIFT_SIGNALS)]
        cells = []
        for d in classes:
            for c in sorted(d.clusters, key=lambda c: (c.after["rank"] is None, c.after["rank"] or 0, _natural(c.index))):
                move = c.rank_change
                cells.append([d.class_name, c.index, "" if not move else f"{'up' if move > 0 else 'down'} {abs(move)}",
                              *(_change(c.before[s], c.after[s], fmt) for s, _, fmt in DRIFT_SIGNALS)])
        shown = [k for k in range(len(headings)) if any(row[k] for row in cells)]  # no column empty on every row
        tables.append(DriftTable(title, lines, [headings[k] for k in shown], [[row[k] for k in shown] for row in cells],
                                 classes))
    return tables
