"""Shared test builders: audit settings, hand-built results, contexts on a test's database, recorded audits through
the one run sequence.

A module of its own (not conftest.py) so tests import what they use by name.
"""

from __future__ import annotations

from xich.engine.config import AuditConfig
from xich.result import AuditedData, AuditedModel, AuditResult, ClassResult, ClusterResult, LabelList
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


def resnet20_config(data, **settings) -> AuditConfig:
    """The settings most tests audit with: the CIFAR ResNet-20 (untrained unless ``weights=``) on ``data``, on the
    CPU; ``settings`` give the rest (P, J, …) and override these."""
    return AuditConfig(**{"model": "cifar:resnet20", "data": str(data), "device": "cpu", **settings})


def cluster(id: int, *, rank: int | None = None, score: float | None = None, train_share: float | None = None,
            members: list[str] | None = None, eval_size: int | None = None, train_count: int | None = None
            ) -> ClusterResult:
    """A hand-built cluster; ``eval_size``: its members' count unless given."""
    members = list(members or [])
    return ClusterResult(id=id, eval_size=len(members) if eval_size is None else eval_size, train_count=train_count,
                         train_share=train_share, score=score, rank=rank, members=members)


def class_result(name: str, clusters: list[ClusterResult], *, index: int = 0, hierarchy: list[int] | None = None,
                 dominance: list | None = None, dominance_ci: list | None = None, p_values: list | None = None,
                 distinct_sets: list | None = None, mosaics: list | None = None, per_image=None) -> ClassResult:
    """A hand-built class; ``hierarchy``: the ranked clusters in rank order unless given; ``p_values``: raw and
    Holm-adjusted alike; the matrices empty unless given."""
    if hierarchy is None:
        hierarchy = [c.id for c in sorted((c for c in clusters if c.rank is not None), key=lambda c: c.rank)]
    return ClassResult(index=index, name=name, clusters=clusters, dominance=dominance or [],
                       dominance_ci=dominance_ci or [], p_values=p_values or [], p_values_holm=p_values or [],
                       distinct_sets=distinct_sets or [], hierarchy=hierarchy, spearman_score_train_share=None,
                       excluded_mosaics=0, mosaics=mosaics or [], per_image=per_image)


def audit_result(classes: list[ClassResult], *, run_id: str = "hand-built", model: dict | None = None,
                 labels: dict | None = None, dataset: dict | None = None, config: dict | None = None,
                 notes: list[str] | None = None) -> AuditResult:
    """A hand-built result, put together as every result is (``AuditResult.assemble``: summary included); the
    header's parts as plain dicts (``model``: spec, weights; ``labels``: source, names; ``dataset``: uri, splits)."""
    return AuditResult.assemble(run_id, model=AuditedModel(**(model or {"spec": "cifar:resnet20"})),
                                labels=LabelList(**(labels or {"source": "test", "names": [c.name for c in classes]})),
                                dataset=AuditedData(**{"uri": "test-data", **(dataset or {})}), config=config or {},
                                classes=classes, notes=notes)


# The runs of the audited models: every audit also stores its null model's run (model ``null:<spec>``), which tests of
# one run's bookkeeping leave out.
AUDITED_RUNS = ("model_version_id IN (SELECT mv.id FROM model_version mv JOIN model m ON m.id = mv.model_id "
                "WHERE m.name NOT LIKE 'null:%')")


def audited_runs():
    """``select(AuditRun)`` of the audited models' runs (AUDITED_RUNS)."""
    from sqlalchemy import select, text

    from xich.records.db import AuditRun

    return select(AuditRun).where(text(f"audit_run.{AUDITED_RUNS}"))
