"""What the CLI's commands do in this process, one function each; ``cli.py`` only parses, opens the context,
calls one of these and maps errors.

- :func:`prepare_audit`, :func:`audit_here` and :func:`write_outputs` (``xich audit``): destinations checked and
  sources fetched before the first forward pass, the run recorded (``open_recorded_run``) or not (``--no-db``), then
  the document, the report and the published copy.
- :func:`start_registered` (``xich register --audit``): through the Prefect deployment, else here.
- :func:`train_to` (``xich train``): a local or ``s3://`` destination checked before the epochs.
- :func:`history`, :func:`show_references`, :func:`use_reference`, :func:`migrate`: ``xich history``,
  ``xich clustering show|use`` and ``xich db``.
"""

from __future__ import annotations

import json

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import check_output_dir, check_output_file, write_atomically
from ..engine.config import AuditConfig
from ..errors import XichError
from ..result import AuditResult
from .context import Context

Progress = Callable[..., None]  # progress(description, total=None, advance=0)


@dataclass
class LocalAudit:
    """An audit computed (or read back) in this process: its result, the opened audit, and the report's examples
    collected while each class's images were loaded."""

    result: AuditResult
    opened: object  # engine.audit.OpenedAudit (torch: imported when an audit runs)
    recorded: bool
    examples: dict = field(default_factory=dict)


def prepare_audit(ctx: Context, config: AuditConfig, *, recorded: bool, json_path: str | None = None,
                  report_dir: str | None = None, create_bucket: bool = False,
                  oversample_path: str | None = None) -> AuditConfig:
    """Check every destination (``json_path``, ``oversample_path``, ``report_dir``, with ``recorded`` the results
    store) and fetch the
    sources (``config``'s ``data``/``weights`` may be URIs: ``ctx.data_path``/``ctx.local_path``; an S3 folder
    dataset stays a URI, read class by class), before the first forward pass; returns the config on the copies."""
    check_output_file(json_path, "--json")
    check_output_file(oversample_path, "--oversample-out")
    check_output_dir(report_dir, "--report")
    if recorded:
        from ..records.store import open_store

        settings = ctx.settings
        open_store(settings.store_url, create_bucket=create_bucket, **settings.s3_options()).check_writable()
    return dataclasses.replace(config, data=ctx.data_path(config.data), weights=ctx.local_path(config.weights),
                               data_uri=config.data_uri or config.data, weights_uri=config.weights_uri or config.weights)


def audit_here(ctx: Context, config: AuditConfig, *, record: dict | None, report_dir: str | None = None,
               progress: Progress = lambda *a, **k: None) -> LocalAudit:
    """Audit ``config`` (on local copies: :func:`prepare_audit`) here: recorded in the context's database with
    ``record`` (the options of :func:`~xich.run.pipeline.open_recorded_run`), or not at all (``record=None``,
    ``--no-db``). With ``report_dir``, the report's mosaics are collected while each class's images are loaded."""
    from ..engine.audit import assemble_result, audit_classes, explainer, open_audit

    examples: dict = {}

    def computed(opened, pairs, total: int) -> Iterator:
        """(images, class result) pairs consumed: progress, and the report's mosaics while the images are loaded."""
        progress("auditing classes", total=total)
        for images, cls in pairs:
            progress(f"class {cls.name}", advance=1)
            if report_dir:
                from ..reports.report import collect_examples

                examples[cls.name] = collect_examples(cls, explainer(opened, images))
            yield cls

    if record is None:
        opened = open_audit(config, ctx.data_source(config.data), **ctx.settings.data_limits())
        result = assemble_result(opened, list(computed(opened, audit_classes(opened), len(opened.classes))),
                                 uuid.uuid4().hex)
        return LocalAudit(result, opened, False, examples)
    from .pipeline import open_recorded_run

    with open_recorded_run(ctx, config, **record) as rec:
        if not rec.complete:
            for _ in computed(rec.opened, rec.audit_pending(), len(rec.pending())):
                pass
        return LocalAudit(rec.finish(), rec.opened, True, examples)


def write_outputs(ctx: Context, done: LocalAudit, *, json_path: str | None = None, report_dir: str | None = None,
                  model: str | None = None, version: str | None = None,
                  oversample_path: str | None = None) -> Iterator[str]:
    """Write the audit document, the oversample file of the flagged looks and the report (mosaics of classes read
    back rendered from their manifests), and publish them to the store when the run was recorded; yields a line
    for each thing written."""
    result = done.result
    if json_path:
        result.write_json(json_path)
        yield f"wrote {json_path}"
    if oversample_path:
        weights = result.oversample()
        write_atomically(oversample_path, json.dumps(weights, indent=1, sort_keys=True), what=oversample_path)
        yield (f"wrote {oversample_path}: {len(weights)} training image(s) of the flagged looks, for "
               f"`xich train --oversample {oversample_path}`")
    from .publish import publish_run, publishing, since_previous_html

    with publishing(ctx, result.run_id) if done.recorded else nullcontext():  # failed: the run is not left complete
        if report_dir:
            from ..engine.audit import explain_stored
            from ..reports.report import collect_examples, write_report

            stored = [cls for cls in result.classes if cls.name not in done.examples]  # read back, not recomputed
            for cls, explain in explain_stored(done.opened, stored) if stored else ():
                done.examples[cls.name] = collect_examples(cls, explain)
            # a recorded run's report links the version before it: written with the link the store's copy needs
            # (runs/<id>/report/), published, then given the link that resolves from DIR
            in_store, in_dir = since_previous_html(ctx, result, page_dir=report_dir) if done.recorded else ("", "")
            page = write_report(result, report_dir, done.examples, model=model, version=version, extra_html=in_store)
            yield f"wrote {page}"
        if done.recorded:
            keys = publish_run(ctx, result, report_dir=report_dir)
            if report_dir and in_dir != in_store:
                write_atomically(page, page.read_text(encoding="utf-8").replace(in_store, in_dir), what=page)
            yield f"stored {len(keys)} file(s) under {ctx.settings.store_url.rstrip('/')}/runs/{result.run_id}/"


def start_registered(ctx: Context, parameters: dict, *, shards: int = 1) -> str:
    """Start the audit of a registered version: through the Prefect deployment when ``PREFECT_API_URL`` is set,
    else here, as the flow would (every shard here). Returns what happened, in a line."""
    settings = ctx.settings
    if not settings.prefect_api_url:
        from .pipeline import audit_registered

        done = audit_registered(ctx, parameters)
        return f"audited: run {done['run_id']}, report {done['report']}"
    from .deploy import start_run, why_not_started

    try:
        run = start_run(settings, {**parameters, "shards": shards})
    except Exception as exc:  # ObjectNotFound, a server that does not answer…
        raise XichError(f"the version is registered, but its audit did not start: {why_not_started(settings, exc)}; "
                        f"the nightly audit-new-versions flow will also pick it up") from None
    return f"audit started: flow run {run.name} ({run.id}) of deployment {settings.audit_deployment}"


def train_to(ctx: Context, out: str, *, create_bucket: bool = False, on_epoch=None, **options) -> None:
    """Train (``engine.train.TrainConfig``'s ``options``; ``data`` may be a URI) and save to ``out``: a path, or an
    ``s3://bucket/key`` checked writable before the first epoch and uploaded after the last."""
    from ..engine.train import TrainConfig, train

    settings, local_out, store, key = ctx.settings, out, None, None
    if out.startswith("s3://"):
        from ..records.store import open_store

        # before training, not after: a missing bucket or refused credentials must not cost the epochs
        bucket, _, key = out.removeprefix("s3://").partition("/")
        if not key or key.endswith("/"):
            raise XichError(f"--out {out}: name the object to write, e.g. s3://{bucket or 'bucket'}/models/model.pt")
        store = open_store(f"s3://{bucket}", create_bucket=create_bucket, **settings.s3_options())
        store.check_writable()
        local_out = str(Path(settings.cache_dir) / "trained" / Path(out).name)
    train(TrainConfig(**{**options, "data": ctx.local_path(options["data"]), "out": local_out,
                         "max_side_factor": settings.image_max_side_factor}), on_epoch=on_epoch)
    if store is not None:
        store.put_file(key, local_out)


def history(ctx: Context, *, model: str, class_name: str | None = None, report_dir: str | None = None
            ) -> tuple[list, list, object]:
    """``xich history``: the model's dominance history (``records.history.model_history``), its drift between
    consecutive versions (``records.history.version_drift``) and, with ``report_dir``, the path of its history page;
    XichError when nothing is recorded (no database file is created for asking)."""
    from ..records.history import model_history, version_drift
    from .context import existing_database

    existing_database(ctx.settings)  # before the engine (and the migration) would create the file
    page = None
    with ctx.session() as session:
        rows = model_history(session, model_name=model, class_name=class_name)
        drift = version_drift(session, model_name=model, class_name=class_name) if rows else []
        if rows and report_dir:
            from ..reports.history_report import write_history_report
            from .publish import report_link

            check_output_dir(report_dir, "--report")
            page = write_history_report(session_or_engine=session, model_name=model, out_dir=report_dir,
                                        class_name=class_name,
                                        report_uri=lambda run_id: report_link(ctx, run_id, page_dir=report_dir))
    if not rows:
        raise XichError(f"--model {model}: no complete audit recorded under that name"
                        + (f" for class {class_name}" if class_name else "")
                        + "; record one with `xich audit --model-name NAME`")
    return rows, drift, page


def show_references(ctx: Context, *, model: str) -> list[str]:
    """``xich clustering show``: the model's reference clusterings, a line each (and a title)."""
    from ..records.persist import references

    with ctx.session() as session:
        rows = references(session=session, model_name=model)
    if not rows:
        raise XichError(f"--model {model}: no reference clustering recorded under that name; the first "
                        f"complete audit of a model on a dataset makes one")
    return [f"reference clusterings of {model} (current: the one later audits use; earlier: moved away)",
            *(f"{'current' if r['current'] else 'earlier'}: version {r['version']}, run {r['run_id'] or '-'}, since "
              + (f"{r['since']:%Y-%m-%d %H:%M} UTC" if r["since"] else "-")
              + f"\n    dataset {r['dataset']}, split {r['eval_split']}, P={r['clusters'] or '-'}, "
              f"classes {', '.join(r['classes'])}" for r in rows)]


def use_reference(ctx: Context, *, run_id: str) -> str:
    """``xich clustering use --run``: that run's clustering becomes the model's reference on its dataset."""
    from ..records.persist import set_reference

    with ctx.session() as session:
        clustering = set_reference(session=session, run_id=run_id)
        return (f"clustering {clustering.key} is now the reference: later audits of this model on this dataset "
                f"(P={clustering.clusters or 'as frozen'}) reuse its clusters")


def migrate(ctx: Context, action: str, revision: str | None = None) -> str:
    """``xich db upgrade|downgrade [REVISION]`` on the context's results database (default: head, or base)."""
    from ..records.migrate import downgrade, upgrade

    url = ctx.settings.database_url
    if action == "upgrade":
        upgrade(url, revision or "head")
    else:
        downgrade(url, revision or "base")
    return f"database {action}d: {url.split('@')[-1]}"
