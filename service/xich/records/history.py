"""A model's dominance history, read from the SQL views the migrations define (``dominance_history``,
``hierarchy_drift``, ``pairwise_dominance``); never recomputed. Used by ``xich history`` and the history page."""

from __future__ import annotations

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
