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
