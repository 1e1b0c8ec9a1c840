"""The ``xich`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import XichError
from .method.cam_methods import CAM_METHODS
from .settings import describe_error

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from .engine.config import AuditConfig

    default = {f.name: f.default for f in fields(AuditConfig)}  # declared once, in AuditConfig
    p = sub.add_parser("audit", help="cluster each class, measure Grad-CAM dominance on mosaics, rank clusters")
    p.add_argument("--model", required=True, help="cifar:resnet20|32|44|56, torchvision:<arch>, python:<module>:<callable>")
    p.add_argument("--weights", help="checkpoint: a state_dict, or a dict holding one under 'state_dict' or 'model'")
    p.add_argument("--data", required=True, help="DIR with <split>/<class>/<image> (or <split>.tar[.gz]), a .tar[.gz], "
                                                 "or cifar10:DIR / cifar100:DIR")
    p.add_argument("--eval-split", default=default["eval_split"])
    p.add_argument("--train-split", default=default["train_split"], help="'' to skip the training-distribution table")
    p.add_argument("--classes", help="comma-separated class names (default: all)")
    p.add_argument("--clusters", type=int, default=default["clusters"], help="P, clusters per class")
    p.add_argument("--mosaics-per-pair", type=int, default=default["mosaics_per_pair"], help="J, mosaics per cluster pair")
    p.add_argument("--seed", type=int, default=default["seed"])
    p.add_argument("--layer", default=default["layer"], help="target layer name (default: last conv block before pooling)")
    p.add_argument("--cam", default=default["cam"], choices=["auto", "fast", "reference"])
    p.add_argument("--method", default=default["method"], help="attribution map, from pytorch-grad-cam: "
                   + ", ".join(CAM_METHODS) + f" (default {default['method']})")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the randomized control (the same mosaics under the architecture re-initialised)")
    p.add_argument("--tile-size", type=int, help="image side in a mosaic (default 32 for cifar:, 224 for torchvision:)")
    p.add_argument("--mosaic-size", type=int, help="mosaic side (default 2 × tile size)")
    p.add_argument("--normalize", default=default["normalize"], help="imagenet, cifar, none or m1,m2,m3/s1,s2,s3")
    p.add_argument("--labels", help="the model's class names in output order: cifar10, cifar100, imagenet, or a file "
                                    "with one name a line (default: the checkpoint's 'classes', CIFAR-10 for cifar: "
                                    "models with 10 outputs, else the dataset's sorted class folders)")
    p.add_argument("--batch-size", type=int, default=default["batch_size"])
    p.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--per-image", type=int, default=default["per_image"], metavar="N",
                   help="also score N sampled images per class, each its own cluster (Fig. 3)")
    p.add_argument("--train-per-class", type=int, metavar="N",
                   help="place a seeded sample of N training images per class (Fig. 4/5), not all; each training "
                        "share then has its standard error")
    p.add_argument("--precision", choices=("fp32", "tf32"), default="fp32",
                   help="tf32: TF32 matmuls and convolutions on CUDA, faster on tensor cores but d moves (CUDA only; "
                        "fp32, the default, also turns off the TF32 PyTorch allows for convolutions)")
    p.add_argument("--json", help="write the audit document here")
    p.add_argument("--report", metavar="DIR", help="write an HTML report with the paper's figures here")
    p.add_argument("--model-name", help="record under this model name (default: the model spec)")
    p.add_argument("--model-version", help="record under this version (default: first 12 hex digits of the "
                                           "weights' SHA-256)")
    p.add_argument("--registry-metadata", metavar="JSON", help="JSON object stored with the model version "
                                                                "(e.g. your model registry's run id and stage)")
    p.add_argument("--version-created-at", metavar="TIME", help="the registry's creation time of the version "
                                                                 "(ISO 8601); orders versions in the history")
    p.add_argument("--create-bucket", action="store_true", help="create the results store's S3 bucket if missing")
    p.add_argument("--clustering", default="auto", help="auto (reuse the model's frozen clustering if any), own, "
                                                       "or reference:<model-version>")
    p.add_argument("--no-db", action="store_true", help="do not record the audit in the results database")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xich", description="XAI-based intra-class hierarchies of image classifiers")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _audit_parser(sub)
    p = sub.add_parser("register", help="record a model version and the audit it asks for (audited by "
                                         "`--audit`, or by the nightly audit-new-versions flow)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", required=True, help="version name (e.g. the registry's version number)")
    p.add_argument("--spec", required=True, help="cifar:resnet20|32|44|56, torchvision:<arch>, python:<module>:<callable>")
    p.add_argument("--weights", help="checkpoint: a path or s3://bucket/key")
    p.add_argument("--dataset", required=True, help="dataset to audit on: a path or s3://bucket/key (see xich audit --data)")
    p.add_argument("--settings", metavar="JSON", default="{}",
                   help='audit settings, e.g. \'{"clusters": 5, "classes": ["cat", "dog"], "clustering": "auto"}\'')
    p.add_argument("--registry-metadata", metavar="JSON", help="JSON object stored with the version")
    p.add_argument("--version-created-at", metavar="TIME", help="the registry's creation time (ISO 8601)")
    p.add_argument("--audit", action="store_true", help="start the audit now: through the Prefect deployment when "
                                                        "PREFECT_API_URL is set, else in this process")
    p.add_argument("--shards", type=int, default=1, help="with --audit: spread the classes over this many workers")
    p = sub.add_parser("serve-hooks", help="receive model-registry webhooks (MLflow, generic) and start audits "
                                            "(XICH_HOOKS_SECRET, XICH_HOOKS_GENERIC_SECRET, XICH_HOOKS_CONFIG)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", default="8765", help="port to listen on (default 8765)")
    p = sub.add_parser("db", help="migrate the results database (XICH_DATABASE_URL)")
    p.add_argument("action", choices=["upgrade", "downgrade"])
    p.add_argument("revision", nargs="?", help="target revision (default: head for upgrade, base for downgrade)")
    p = sub.add_parser("clustering", help="show a model's reference clusterings, or move one to a run's clustering")
    p.add_argument("action", choices=["show", "use", "freeze"],
                   help="show (--model): the references; use (--run): make that run's clustering the reference "
                        "later versions are audited on (freeze: the same)")
    p.add_argument("--model", help="with show: model name")
    p.add_argument("--run", help="with use: run id of a complete audit")
    p = sub.add_parser("history", help="dominance history of a model across its audited versions")
    p.add_argument("--model", required=True, help="model name (as recorded with --model-name)")
    p.add_argument("--class", dest="class_name", help="only this class")
    p.add_argument("--csv", action="store_true", help="CSV on standard output instead of a table")
    p.add_argument("--wide", action="store_true", help="every column (run id, cluster key, times); default: a table "
                                                       "that fits 100 columns")
    p.add_argument("--report", metavar="DIR", help="write an HTML page of the model's history here")
    p = sub.add_parser("synth", help="write the planted-bias image dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--subgroups", type=int, default=4)
    p.add_argument("--rare-fraction", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("train", help="train a model with the paper's recipe (AdamW, label smoothing, warm-up + cosine)")
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", required=True, help="where to save the state_dict (a path, or s3://bucket/key)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tile-size", type=int, default=32)
    p.add_argument("--normalize", default="imagenet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--create-bucket", action="store_true", help="create the bucket of an s3:// --out if it is missing")
    p.add_argument("--augment", default="hflip",
                   help="none, hflip (the usual choice for natural images) or rot180 (keeps line orientations)")
    p.add_argument("--oversample", metavar="FILE",
                   help="JSON object: training image id (e.g. circle/0007.png) -> sampling weight (others weigh 1); "
                        "each epoch then draws as many images as the split has, with replacement, by weight")
    p = sub.add_parser("demo", help="planted-bias data -> train -> audit -> report, all local")
    p.add_argument("--out", default="xich-demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings would precede our one error line
    try:
        return {"audit": cmd_audit, "register": cmd_register, "serve-hooks": cmd_serve_hooks, "db": cmd_db, "clustering": cmd_clustering, "history": cmd_history, "synth": cmd_synth, "train": cmd_train, "demo": cmd_demo}[args.command](args)
    except XichError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except ValidationError as exc:  # a setting from the environment (XICH_*): never its value, it may be a secret
        err.print(f"[bold red]error:[/] {describe_error(exc)}", highlight=False, soft_wrap=True)
        return 2
    except OSError as exc:  # an output path that cannot be written, a disk that is full…
        err.print(f"[bold red]error:[/] {exc.filename or ''}: {exc.strerror or exc}; check the path and its "
                  f"permissions", highlight=False, soft_wrap=True)
        return 2
    except SQLAlchemyError as exc:
        err.print(f"[bold red]error:[/] results database (XICH_DATABASE_URL): {str(exc).splitlines()[0]}; "
                  f"check that the server runs and the URL is right, or use --no-db", highlight=False, soft_wrap=True)
        return 2
    except RuntimeError as exc:
        if not _out_of_memory(exc):
            raise
        err.print(f"[bold red]error:[/] out of memory on the device ({_first_sentences(exc)}); lower --batch-size "
                  f"or use --device cpu", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


def _port(text: str, flag: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise XichError(f"{flag} {text[:20]!r}: not a port; give a number from 1 to 65535")
    return int(text)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error; torch is not imported for it (``xich --help`` stays fast)."""
    torch = sys.modules.get("torch")  # if torch was never imported, nothing here ran out of device memory
    return torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ()))


def _first_sentences(exc: BaseException, n: int = 2) -> str:
    """The start of a long torch message ("CUDA out of memory. Tried to allocate 2.00 GiB"), on one line."""
    text = " ".join(str(exc).split())
    return ". ".join(text.split(". ")[:n]).rstrip(".")


def cmd_audit(args: argparse.Namespace) -> int:
    from .run.context import context

    with context() as ctx:  # the database: migrated when first used, after the destinations' checks
        return _audit(args, ctx)


def _audit(args: argparse.Namespace, ctx) -> int:
    from .engine.audit import AuditConfig, assemble_result, audit_classes, explain_stored, explainer, open_audit

    settings = ctx.settings
    registered_at = _time(args.version_created_at, "--version-created-at")
    registry_metadata = _json_object(args.registry_metadata, "--registry-metadata")
    # every destination is checked before the first forward pass
    _check_output_file(args.json, "--json")
    _check_output_dir(args.report, "--report")
    if not args.no_db:
        from .records.store import open_store

        open_store(settings.store_url, create_bucket=args.create_bucket, **settings.s3_options()).check_writable()
    data, weights = ctx.data_path(args.data), ctx.local_path(args.weights)  # an S3 folder: read per class
    config = AuditConfig(
        model=args.model, data=data, weights=weights, data_uri=args.data, weights_uri=args.weights,
        eval_split=args.eval_split,
        train_split=args.train_split or None, clusters=args.clusters, mosaics_per_pair=args.mosaics_per_pair,
        seed=args.seed, layer=args.layer, cam=args.cam, method=args.method, control=args.control,
        tile_size=args.tile_size, mosaic_size=args.mosaic_size,
        normalize=args.normalize, classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
        batch_size=args.batch_size, device=args.device, per_image=args.per_image, labels=args.labels,
        train_per_class=args.train_per_class, precision=args.precision,
    )
    examples: dict = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("loading model and data", total=None)

        def computed(pairs, total: int):
            """Consume (images, class result) pairs: progress, and the report's mosaics while images are loaded."""
            bar.update(task, total=total, completed=0, description="auditing classes")
            for images, cls in pairs:
                bar.update(task, description=f"class {cls.name}", advance=1)
                if args.report:
                    from .reports.report import collect_examples

                    examples[cls.name] = collect_examples(cls, explainer(opened, images))
                yield cls

        if args.no_db:
            opened = open_audit(config, ctx.data_source(data))
            classes = list(computed(audit_classes(opened), len(opened.classes)))
            result = assemble_result(opened, classes, uuid.uuid4().hex)
        else:
            from .run.pipeline import open_recorded_run

            with open_recorded_run(ctx, config, model_name=args.model_name, model_version=args.model_version,
                                   registry_metadata=registry_metadata, registered_at=registered_at,
                                   clustering=args.clustering) as rec:
                opened = rec.opened
                if not rec.complete:
                    for _ in computed(rec.audit_pending(), len(rec.pending())):
                        pass
                result = rec.finish()
    print_summary(result)
    if opened.timings:
        out.print("CAM time: " + ", ".join(f"{'control' if k == 'control_s' else 'model'} {v:.1f} s"
                                           for k, v in opened.timings.items()), highlight=False)
    if not args.no_db:
        out.print(f"run id: {result.run_id}", highlight=False)
    if args.json:
        result.write_json(args.json)
        out.print(f"wrote {args.json}")
    if args.report:
        from .reports.report import collect_examples, write_report

        stored = [cls for cls in result.classes if cls.name not in examples]  # read back, not recomputed
        if stored:
            for cls, explain in explain_stored(opened, stored):
                examples[cls.name] = collect_examples(cls, explain)
        out.print(f"wrote {write_report(result, args.report, examples, model=args.model_name or args.model, version=args.model_version)}")
    if not args.no_db:
        from .run.publish import publish_run

        keys = publish_run(ctx, result, report_dir=args.report)
        out.print(f"stored {len(keys)} file(s) under {settings.store_url.rstrip('/')}/runs/{result.run_id}/",
                  highlight=False)
    return 0


def _check_output_file(path: str | None, flag: str) -> None:
    """An output file's folder exists (or is created) and takes a file; the file is written later."""
    if path is None:
        return
    from .atomic import check_target

    target = Path(path)
    if target.is_dir():
        raise XichError(f"{flag} {path}: is a folder; give a file path")
    check_target(target, f"{flag} {path}")  # a device (/dev/full), FIFO or symlink there is refused, untouched
    _check_output_dir(str(target.parent), flag, shown=path)


def _check_output_dir(path: str | None, flag: str, shown: str | None = None) -> None:
    if path is None:
        return
    folder = Path(path)
    try:
        import tempfile

        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".xich-write-check-")  # exclusive: never through a link
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise XichError(f"{flag} {shown or path}: cannot write in {folder} ({exc.strerror or exc}); "
                        f"check the path and its permissions") from None


def _time(text: str | None, flag: str):
    if text is None:
        return None
    from datetime import datetime, timezone

    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise XichError(f"{flag} {text!r}: not an ISO 8601 time; write e.g. 2026-11-29T12:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def cmd_register(args: argparse.Namespace) -> int:
    from .records.registration import register
    from .run.context import context

    audit_settings = _json_object(args.settings, "--settings")
    if args.shards < 1:
        raise XichError(f"--shards must be at least 1, got {args.shards}")
    with context() as ctx:
        settings = ctx.settings
        parameters = register(records=ctx, model=args.model, version=args.version,
                              model_spec=args.spec, weights_uri=args.weights, dataset_uri=args.dataset,
                              settings=audit_settings, local_weights=ctx.local_path(args.weights),
                              registry_metadata=_json_object(args.registry_metadata, "--registry-metadata"),
                              registered_at=_time(args.version_created_at, "--version-created-at"),
                              allowed_specs=settings.hooks_allowed_specs)
    out.print(f"registered {args.model} {args.version}", highlight=False)
    if not args.audit:
        return 0
    if settings.prefect_api_url:
        from .run.deploy import start_run

        try:
            run = start_run(settings, {**parameters, "shards": args.shards})
        except Exception as exc:  # ObjectNotFound, a server that does not answer…
            raise XichError(f"the version is registered, but its audit did not start: Prefect at "
                            f"{settings.prefect_api_url} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            f"deploy the flows (`prefect --no-prompt deploy --all`) or unset PREFECT_API_URL to audit "
                            f"here; the nightly audit-new-versions flow will also pick it up") from None
        out.print(f"audit started: flow run {run.name} ({run.id}) of deployment {settings.audit_deployment}",
                  highlight=False)
        return 0
    from .run.pipeline import audit_registered

    with context() as ctx:  # no Prefect server: audited here, as the flow would (shards: all of them, here)
        done = audit_registered(ctx, parameters)
    out.print(f"audited: run {done['run_id']}, report {done['report']}", highlight=False)
    return 0


def cmd_serve_hooks(args: argparse.Namespace) -> int:
    import uvicorn

    port = _port(args.port, "--port")
    from .hooks.receiver import create_app
    from .settings import get_hook_settings, masked

    # the receiver answers MLflow within its 30 s timeout: its own MLflow calls retry briefly unless told otherwise
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = get_hook_settings()  # the receiver's own settings: a bad one never breaks another command
    app = create_app(settings)
    logging.getLogger("xich.hooks").setLevel(logging.INFO)
    hooks = [f"/hooks/mlflow ({'on' if settings.hooks_secret else 'off: XICH_HOOKS_SECRET unset'})",
             f"/hooks/generic ({'on' if settings.hooks_generic_secret else 'off: XICH_HOOKS_GENERIC_SECRET unset'})"]
    out.print(f"xich hooks on http://{args.host}:{port}: {', '.join(hooks)}; results database "
              f"{masked(settings.database_url)}", highlight=False)
    # uvicorn caps connections (503 beyond) and headers; the body-read timeout is the app's (hooks._read_body)
    uvicorn.run(app, host=args.host, port=port, log_level="info",
                limit_concurrency=settings.hooks_limit_concurrency, timeout_keep_alive=5,
                h11_max_incomplete_event_size=16 * 1024)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from .records.migrate import downgrade, upgrade
    from .run.context import open_context

    url = open_context(migrate=False).settings.database_url  # only its settings: migrating is the command
    if args.action == "upgrade":
        upgrade(url, args.revision or "head")
    else:
        downgrade(url, args.revision or "base")
    out.print(f"database {args.action}d: {url.split('@')[-1]}", highlight=False)
    return 0


@contextmanager
def _session(*, read_only: bool = False):
    """A session on the results database, migrated first; ``read_only``: an embedded SQLite file that does not
    exist is an error, not created (nor its folder). Yields (context, session)."""
    from .run.context import context, existing_database

    with context() as ctx:
        if read_only:
            existing_database(ctx.settings)  # before the engine (and the migration) would create the file
        with ctx.session() as session:
            yield ctx, session


def cmd_clustering(args: argparse.Namespace) -> int:
    from .records.persist import references, set_reference

    if args.action == "show":
        if not args.model:
            raise XichError("xich clustering show: give --model NAME")
        with _session() as (_, session):
            rows = references(session=session, model_name=args.model)
        if not rows:
            raise XichError(f"--model {args.model}: no reference clustering recorded under that name; the first "
                            f"complete audit of a model on a dataset makes one")
        out.print(f"reference clusterings of {args.model} (current: the one later audits use; earlier: moved away)",
                  highlight=False)
        for r in rows:
            since = f"{r['since']:%Y-%m-%d %H:%M} UTC" if r["since"] else "-"
            out.print(f"{'current' if r['current'] else 'earlier'}: version {r['version']}, run {r['run_id'] or '-'}, "
                      f"since {since}\n    dataset {r['dataset']}, split {r['eval_split']}, P={r['clusters'] or '-'}, "
                      f"classes {', '.join(r['classes'])}", highlight=False, soft_wrap=True)
        return 0
    if not args.run:
        raise XichError(f"xich clustering {args.action}: give --run RUN (a complete audit's run id)")
    with _session() as (_, session):
        clustering = set_reference(session=session, run_id=args.run)
        out.print(f"clustering {clustering.key} is now the reference: later audits of this model on this dataset "
                  f"(P={clustering.clusters or 'as frozen'}) reuse its clusters", highlight=False)
    return 0


HISTORY_COLUMNS = ("model_version", "version_created_at", "run_id", "class_name", "cluster_key", "score", "rank",
                   "train_share", "eval_size", "method", "mean_logit", "control_score")
# the default table (fits 100 columns): runs by their first 8 digits, a cluster as <its clustering's run>/<index>
HISTORY_COMPACT = ("model_version", "run_id", "class_name", "cluster", "score", "rank", "train_share", "eval_size")
NUMERIC_COLUMNS = ("score", "rank", "train_share", "eval_size", "mean_logit", "control_score")


def cmd_history(args: argparse.Namespace) -> int:
    import csv

    from .records.history import dominance_history

    page = None
    with _session(read_only=True) as (ctx, session):
        rows = dominance_history(session, model_name=args.model, columns=HISTORY_COLUMNS, class_name=args.class_name,
                                 order_by=("class_name", "cluster_key", "version_created_at", "run_finished_at"))
        if rows and args.report:
            from .reports.history_report import write_history_report
            from .run.publish import report_uri

            _check_output_dir(args.report, "--report")
            page = write_history_report(session_or_engine=session, model_name=args.model, out_dir=args.report,
                                        class_name=args.class_name, report_uri=lambda run_id: report_uri(ctx, run_id))
    if not rows:
        raise XichError(f"--model {args.model}: no complete audit recorded under that name"
                        + (f" for class {args.class_name}" if args.class_name else "")
                        + "; record one with `xich audit --model-name NAME`")
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(HISTORY_COLUMNS)
        writer.writerows(rows)
        if page is not None:
            err.print(f"wrote {page}", highlight=False)  # standard output stays CSV
        return 0
    columns = HISTORY_COLUMNS if args.wide else HISTORY_COMPACT
    table = Table(title=f"dominance history of {args.model}", title_justify="left")
    short = {"model_version": "version", "run_id": "run", "class_name": "class", "train_share": "train",
             "eval_size": "eval"}
    for col in columns:
        table.add_column(col if args.wide else short.get(col, col),
                         justify="right" if col in NUMERIC_COLUMNS else "left")
    for r in rows:
        values = r._asdict()
        clustering, _, index = str(values["cluster_key"]).rpartition("/")
        values["cluster"] = f"{clustering.removeprefix('run:')[:8]}/{index}"
        values["run_id"] = values["run_id"] if args.wide else values["run_id"][:8]
        table.add_row(*("-" if values[c] is None else f"{values[c]:.3f}" if isinstance(values[c], float)
                        else str(values[c]) for c in columns))
    (Console(width=max(out.width, 220)) if args.wide else out).print(table)  # --wide: never cut, however narrow
    if not args.wide:
        out.print("run: its first 8 digits; cluster: <run whose clustering it is>/<index>; train: the cluster's share "
                  "of the class's training images; eval: its evaluation images; --wide: every column, --csv: as CSV",
                  highlight=False)
    if page is not None:
        out.print(f"wrote {page}", highlight=False)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .engine.synth import SynthSpec, write_synth

    truth = write_synth(args.out, SynthSpec(classes=args.classes, subgroups=args.subgroups,
                                            rare_fraction=args.rare_fraction, seed=args.seed))
    out.print(f"wrote {len(truth['subgroup'])} images and ground_truth.json under {args.out}; "
              f"rare subgroup per class: {truth['rare']}", highlight=False)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.train import read_oversample
    from .run.context import context

    oversample = read_oversample(args.oversample) if args.oversample else None
    with context(migrate=False) as ctx:  # no database: its settings, the store and local copies
        return _train(args, ctx, oversample)


def _train(args: argparse.Namespace, ctx, oversample) -> int:
    from .engine.train import TrainConfig, train

    settings = ctx.settings
    local_out, store = args.out, None
    if args.out.startswith("s3://"):
        from .records.store import open_store

        # before training, not after: a missing bucket or refused credentials must not cost the epochs
        bucket, _, key = args.out.removeprefix("s3://").partition("/")
        if not key or key.endswith("/"):
            raise XichError(f"--out {args.out}: name the object to write, "
                            f"e.g. s3://{bucket or 'bucket'}/models/model.pt")
        store = open_store(f"s3://{bucket}", create_bucket=args.create_bucket, **settings.s3_options())
        store.check_writable()
        local_out = str(Path(settings.cache_dir) / "trained" / Path(args.out).name)
    config = TrainConfig(data=ctx.local_path(args.data), model=args.model, out=local_out, epochs=args.epochs,
                         batch_size=args.batch_size,
                         lr=args.lr, tile_size=args.tile_size, normalize=args.normalize, seed=args.seed,
                         device=args.device, augment=args.augment, oversample=oversample)
    train(config, on_epoch=lambda e, loss, acc: out.print(f"epoch {e}: loss {loss:.4f}  eval accuracy {acc:.4f}"))
    if store is not None:
        store.put_file(key, local_out)
    out.print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, epochs=args.epochs, say=lambda line: out.print(line, highlight=False))
    return 0


def _json_object(text: str | None, flag: str) -> dict | None:
    if text is None:
        return None
    def no_constant(name: str) -> object:
        raise XichError(f"{flag}: {name} is not a JSON number; give a finite number")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise XichError(f"{flag}: nested too deep; pass a flat JSON object") from None
    except json.JSONDecodeError as exc:
        raise XichError(f"{flag}: not valid JSON ({exc.msg} at character {exc.pos}); pass an object like "
                        "'{\"stage\": \"staging\"}'") from None
    if not isinstance(value, dict):
        raise XichError(f"{flag}: pass a JSON object, got {type(value).__name__}")
    return value


def _f(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def print_summary(result) -> None:
    from .method.baselines import BASELINES

    c = result.config
    out.print(f"[bold]XICH audit[/] {result.run_id}  model {result.model['spec']}  layer {c['layer']}  "
              f"method {c.get('method', 'gradcam')} ({c['cam']})  P={c['clusters']} J={c['mosaics_per_pair']} "
              f"seed={c['seed']}", highlight=False)
    out.print(f"labels: {result.labels['source']}", highlight=False)
    for cls in result.classes:
        table = Table(title=f"{cls.name} (model output {cls.index})", title_justify="left")
        baselines = any(cl.baselines for cl in cls.clusters)
        for col in ("rank", "cluster", "score", "eval size", "train count", "train share",
                    *(("mean logit", "softmax", "accuracy", "margin") if baselines else ()),
                    *(("control score",) if cls.control else ())):
            table.add_column(col, justify="right")
        for cl in sorted(cls.clusters, key=lambda x: (x.rank is None, x.rank, x.id)):
            table.add_row(_f(cl.rank, "d"), str(cl.id), _f(cl.score), str(cl.eval_size), _f(cl.train_count, "d"),
                          _f(cl.train_share) + (f" ± {cl.train_share_se:.3f}" if cl.train_share_se else ""),
                          *((_f(cl.baselines[b]) for b in BASELINES) if baselines else ()),
                          *((_f(cls.control["scores"][cl.id]),) if cls.control else ()))
        out.print(table)
        sig = cls.significant_pairs()
        out.print("  hierarchy: " + (" > ".join(map(str, cls.hierarchy)) or "none (no evidence)")
                  + ("" if cls.spearman_score_train_share is None
                     else f"   spearman(score, train share) = {cls.spearman_score_train_share:+.2f}"), highlight=False)
        out.print("  significant (Holm p < 0.05): " + (", ".join(
            f"{i}>{j} (D={cls.dominance[i][j]:.2f} [{cls.dominance_ci[i][j][0]:.2f}, {cls.dominance_ci[i][j][1]:.2f}], "
            f"p={cls.p_values_holm[i][j]:.1e}, {cls.distinct_sets[i][j]} image sets)" for i, j in sig) or "none"),
            highlight=False)
        if cls.agreement:
            out.print("  kendall tau(score, baseline): " + "  ".join(
                f"{b} {'n/a' if v is None else f'{v:+.2f}'}" for b, v in cls.agreement.items())
                + ("   (hierarchy = mean-logit order)" if cls.agreement["mean_logit"] == 1.0 else ""), highlight=False)
        if cls.control:
            ctl = cls.control
            out.print(f"  control (re-initialised, seed {ctl['seed']}): " + (" > ".join(map(str, ctl["hierarchy"]))
                      or "none") + f"   {len(ctl['significant_pairs'])} significant   tau {_f(ctl['tau'], '+.2f')}"
                      + ("   [image statistics, not the model]" if ctl["image_statistics"] else ""), highlight=False)
        if cls.per_image:
            pi = cls.per_image
            out.print(f"  per-image ({len(pi['images'])} images): " + "  ".join(
                f"{k} {'n/a' if pi[k] is None else f'{pi[k]:+.2f}'}"
                for k in ("pearson_logit", "spearman_logit", "pearson_softmax", "spearman_softmax")), highlight=False)
        for note in cls.notes:
            out.print(f"  note: {note}", highlight=False)
    s = result.summary
    if s["train_share_by_rank"]:
        out.print(f"mean train share by dominance rank ({s['classes_ranked']} fully ranked class(es)): "
                  + "  ".join(f"{r}: {v:.3f}" for r, v in enumerate(s["train_share_by_rank"])), highlight=False)
    if s["mean_spearman"] is not None:
        out.print(f"mean spearman(score, train share) over classes: {s['mean_spearman']:+.3f}", highlight=False)
    if s.get("mean_tau_mean_logit") is not None:
        out.print(f"mean kendall tau(score, mean logit): {s['mean_tau_mean_logit']:+.2f}; hierarchy differs from the "
                  f"mean-logit order in: {', '.join(s['classes_unlike_mean_logit']) or 'none'}", highlight=False)
    if s.get("classes_image_statistics"):
        out.print(f"control as significant (image statistics, not the model): "
                  f"{', '.join(s['classes_image_statistics'])}", highlight=False)
    if s["classes_without_evidence"]:
        out.print(f"without a hierarchy (no evidence): {', '.join(s['classes_without_evidence'])}", highlight=False)
    for note in result.notes:
        out.print(f"note: {note}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
