"""Shared test builders: contexts on a test's database, recorded audits through the one run sequence.

A module of its own (not conftest.py) so tests import what they use by name.
"""

from __future__ import annotations

from xich.result import AuditResult
from xich.run.context import Context, open_context
from xich.run.pipeline import recorded_audit
from xich.settings import Settings

_contexts: dict[str, Context] = {}  # the newest context per database URL


def context_for(database_url: str, **settings) -> Context:
    """A fresh context on ``database_url`` (migrated when its engine is first used: fixtures downgrade a database
    between tests); the previous context on that URL is closed, so engines do not pile up over a session."""
    if (previous := _contexts.pop(database_url, None)) is not None:
        previous.close()
    _contexts[database_url] = open_context(Settings(database_url=database_url, **settings))
    return _contexts[database_url]


def recorded(config, database_url: str, *, cache_dir: str | None = None, **options) -> AuditResult:
    """``recorded_audit`` of ``config`` on a context for ``database_url`` (and ``cache_dir``, the setting
    XICH_CACHE_DIR); ``options``: ``open_recorded_run``'s."""
    ctx = context_for(database_url, **({"cache_dir": cache_dir} if cache_dir is not None else {}))
    return recorded_audit(ctx, config, **options)


def numbers(result, *, without: tuple[str, ...] = ("notes", "timings")) -> dict:
    """The audit document without its notes (which say how the run was found: new, resumed, read back), its
    timings (seconds, different on every run) and any other key of ``without`` (a flow and the CLI give each run
    its own ``run_id``)."""
    return {k: v for k, v in result.to_dict().items() if k not in without}
