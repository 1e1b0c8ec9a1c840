"""Publishing an audit: its document, its report's files, under ``runs/<run id>/`` of the context's results store.

One step for every entry point: the CLI publishes the report it wrote (``--report``), a flow renders the report
first (mosaics rendered again from the stored manifests, never recomputed). The Prefect artifacts are the flow's.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..engine.audit import OpenedAudit, explain_stored
from ..errors import Unavailable, XichError
from ..result import AuditResult
from .context import Context


@contextmanager
def publishing(ctx: Context, run_id: str) -> Iterator[None]:
    """Around writing and publishing a complete run's report and document: on a failure the run is marked ``failed``
    (``persist.mark_published``) — never complete with an empty store — and the failure is one XichError that says
    the next audit publishes it (Unavailable, a store that may answer a retry, is raised as it is); on success a run
    failed so before (a retried publish) is complete again."""
    from sqlalchemy.orm import Session

    from ..records.persist import mark_published

    try:
        yield
    except Exception as exc:
        cause = str(exc) if isinstance(exc, XichError) else f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        with Session(ctx.engine) as session:
            mark_published(session=session, run_id=run_id, error=cause)
        if isinstance(exc, Unavailable):
            raise
        raise XichError(f"run {run_id} is computed and stored, but its report or document could not be published "
                        f"({cause}); the run is marked failed: run the same audit again to publish it") from None
    with Session(ctx.engine) as session:
        mark_published(session=session, run_id=run_id, error=None)


def publish_run(ctx: Context, result: AuditResult, *, report_dir: str | Path | None = None) -> list[str]:
    """Put the audit document, its oversample file (``xich train --oversample``: the flagged looks' training images)
    and the files of ``report_dir`` in the results store; returns their keys."""
    prefix = f"runs/{result.run_id}"
    ctx.store.put_bytes(f"{prefix}/audit.json", result.to_json().encode())
    ctx.store.put_bytes(f"{prefix}/oversample.json", json.dumps(result.oversample(), indent=1, sort_keys=True).encode())
    keys = [f"{prefix}/audit.json", f"{prefix}/oversample.json"]
    if report_dir is not None:
        for path in sorted(p for p in Path(report_dir).rglob("*") if p.is_file()):
            keys.append(f"{prefix}/report/{path.relative_to(report_dir).as_posix()}")
            ctx.store.put_file(keys[-1], path)
    return keys


def report_uri(ctx: Context, run_id: str) -> str:
    """The URI of run ``run_id``'s published report page (an S3 store is not contacted for it)."""
    key = report_key(run_id)
    url = ctx.settings.store_url
    return f"{url.rstrip('/')}/{key}" if url.startswith("s3://") else ctx.store.uri(key)


def report_key(run_id: str) -> str:
    """Where run ``run_id``'s report page lies in the results store."""
    return f"runs/{run_id}/report/index.html"


def report_link(ctx: Context, run_id: str, *, page_dir: str | Path) -> str | None:
    """A link from a page in ``page_dir`` to run ``run_id``'s report: relative where the store is a local folder
    (the page and the store moved or served together keep it working; None where no report was stored), the
    store's URI for an S3 store."""
    url = ctx.settings.store_url
    if url.startswith("s3://"):
        return report_uri(ctx, run_id)
    page = Path(url).resolve() / report_key(run_id)
    return Path(os.path.relpath(page, Path(page_dir).resolve())).as_posix() if page.is_file() else None


def since_previous_html(ctx: Context, result: AuditResult, *, page_dir: str | Path | None = None) -> tuple[str, str]:
    """The report's section on the version before this run's (``records.history.version_drift``: what changed, and
    a link to its report), twice: as published in the store (a relative link: both reports lie under ``runs/``), and
    as written in ``page_dir`` outside the store (``xich audit --report DIR``: :func:`report_link`, as the history
    page links reports); both empty for a first version, the same twice without ``page_dir``."""
    from ..records.history import drift_into
    from ..reports.history_report import since_previous_html as render

    with ctx.session() as session:
        drift = drift_into(session, run_id=result.run_id)
    in_store = render(drift, lambda run_id: f"../../{run_id}/report/index.html")
    if page_dir is None:
        return in_store, in_store
    return in_store, render(drift, lambda run_id: report_link(ctx, run_id, page_dir=page_dir) or report_uri(ctx, run_id))


def publish_with_report(ctx: Context, result: AuditResult, opened: OpenedAudit, *, model: str | None = None,
                        version: str | None = None) -> str:
    """Write the report (mosaics rendered again from the stored manifests) and publish it with the audit
    document; returns the report page's URI in the store."""
    from ..reports.report import collect_examples, write_report

    with publishing(ctx, result.run_id), tempfile.TemporaryDirectory(prefix="xich-report-") as tmp:
        examples = {cls.name: collect_examples(cls, explain) for cls, explain in explain_stored(opened, result.classes)}
        write_report(result, tmp, examples, model=model, version=version, extra_html=since_previous_html(ctx, result)[0])
        publish_run(ctx, result, report_dir=tmp)
    return report_uri(ctx, result.run_id)
