"""The ``xich`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .boundary import parse_json_object, parse_port, parse_time
from .errors import XichError
from .method.cam_methods import CAM_METHODS
from .settings import describe_error

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
# the width outside a terminal: wide enough that no table is cut (a cut cell ends in "…", a number in a log too)
LOG_WIDTH = 1000


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from .engine.config import DEFAULT_LOOKS, LOOK_SIGNALS, AuditConfig

    p = sub.add_parser("audit", help="cluster each class, measure Grad-CAM dominance on mosaics, rank clusters")
    p.add_argument("--model", required=True, help="cifar:resnet20|32|44|56, torchvision:<arch>, python:<module>:<callable>")
    p.add_argument("--weights", help="checkpoint: a state_dict, or a dict holding one under 'state_dict' or 'model'")
    p.add_argument("--data", required=True, help="DIR with <split>/<class>/<image> (or <split>.tar[.gz]), a .tar[.gz], "
                                                 "or cifar10:DIR / cifar100:DIR")
    p.add_argument("--eval-split")
    p.add_argument("--train-split", help="'' to skip the training-distribution table")
    p.add_argument("--classes", help="comma-separated class names (default: all)")
    p.add_argument("--clusters", type=int, help="P, clusters per class")
    p.add_argument("--mosaics-per-pair", type=int, help="J, mosaics per cluster pair")
    p.add_argument("--seed", type=int)
    p.add_argument("--layer", help="target layer name (default: last conv block before pooling)")
    p.add_argument("--cam", choices=["auto", "fast", "reference"])
    p.add_argument("--method", help="attribution map, from pytorch-grad-cam: "
                   + ", ".join(CAM_METHODS) + f" (default {AuditConfig.method})")
    p.add_argument("--control", dest="control", action="store_true",
                   help="also score the same mosaics under the architecture re-initialised (the paper-era randomized "
                        "control; off by default: on the rare-look benchmark it carried no information, "
                        "docs/science.md section 9; the null model is the yardstick)")
    p.add_argument("--no-control", dest="control", action="store_false", help="the default (kept for old scripts)")
    p.add_argument("--looks", choices=LOOK_SIGNALS,
                   help=f"the signal that flags the looks the model under-learned (default {DEFAULT_LOOKS}: a "
                        f"training share under half the evaluation share; docs/science.md, section 9)")
    p.add_argument("--no-null", dest="null", action="store_false",
                   help="skip the null model (the architecture with random weights audited end to end, stored once "
                        "and reused by every version)")
    p.add_argument("--oversample-out", metavar="FILE",
                   help="write the flagged looks' training images with their sampling weights here, for "
                        "`xich train --oversample FILE`")
    p.add_argument("--tile-size", type=int, help="image side in a mosaic (default 32 for cifar:, 224 for torchvision:)")
    p.add_argument("--mosaic-size", type=int, help="mosaic side (default 2 × tile size)")
    p.add_argument("--normalize", help="imagenet, cifar, none or m1,m2,m3/s1,s2,s3")
    p.add_argument("--labels", help="the model's class names in output order: cifar10, cifar100, imagenet, or a file "
                                    "with one name a line (default: the checkpoint's 'classes', CIFAR-10 for cifar: "
                                    "models with 10 outputs, else the dataset's sorted class folders)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--per-image", type=int, metavar="N",
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
    p.set_defaults(**{f.name: f.default for f in fields(AuditConfig) if f.name not in ("model", "data", "weights")})


def build_parser() -> argparse.ArgumentParser:
    """The ``xich`` parser: one subcommand each (the hints' options are checked against these in the tests)."""
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
    p.add_argument("--rows", action="store_true", help="after the drift, each version's per-cluster rows (a table "
                                                       "that fits 100 columns)")
    p.add_argument("--csv", action="store_true", help="the per-cluster rows as CSV on standard output, no drift")
    p.add_argument("--wide", action="store_true", help="the per-cluster rows with every column (run id, cluster key, "
                                                       "times)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for console in (out, err):  # outside a terminal (a log, a pipe): tables at full width, never cut to 80 columns
        if not console.is_terminal:
            console.width = LOG_WIDTH
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings would precede our one error line
    commands = {"audit": cmd_audit, "register": cmd_register, "serve-hooks": cmd_serve_hooks, "db": cmd_db,
                "clustering": cmd_clustering, "history": cmd_history, "synth": cmd_synth, "train": cmd_train,
                "demo": cmd_demo}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:
        if (message := error_line(exc, args.command)) is None:
            raise
        err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        return 2


def error_line(exc: Exception, command: str = "audit") -> str | None:
    """The one line shown for an error of ``command`` the user can fix; None for a bug (its traceback is shown).
    A hint names only options that ``command`` has."""
    if isinstance(exc, XichError):
        return str(exc)
    if isinstance(exc, ValidationError):  # a setting from the environment (XICH_*): never its value (a secret?)
        return describe_error(exc)
    if isinstance(exc, OSError):  # an output path that cannot be written, a disk that is full…
        return f"{exc.filename or ''}: {exc.strerror or exc}; check the path and its permissions"
    if isinstance(exc, SQLAlchemyError):
        return (f"results database (XICH_DATABASE_URL): {str(exc).splitlines()[0]}; check that the server runs and "
                f"the URL is right" + (", or use --no-db" if command == "audit" else ""))
    torch = sys.modules.get("torch")  # not imported for this: if torch never ran, nothing ran out of device memory
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        first = ". ".join(" ".join(str(exc).split()).split(". ")[:2]).rstrip(".")  # "CUDA out of memory. Tried…"
        fix = {"audit": "lower --batch-size or use --device cpu", "train": "lower --batch-size or use --device cpu",
               "register": "lower \"batch_size\" in --settings"}.get(command, "free the device's memory")
        return f"out of memory on the device ({first}); {fix}"
    return None


def cmd_audit(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .engine.config import AuditConfig
    from .reports.summary import print_summary
    from .run.commands import audit_here, prepare_audit, write_outputs
    from .run.context import context

    record = None if args.no_db else {
        "model_name": args.model_name, "model_version": args.model_version, "clustering": args.clustering,
        "registry_metadata": parse_json_object(args.registry_metadata, "--registry-metadata"),
        "registered_at": parse_time(args.version_created_at, "--version-created-at")}
    config = AuditConfig(**{f.name: getattr(args, f.name) for f in fields(AuditConfig) if f.name in vars(args)})
    with context() as ctx:  # the database: migrated when first used, after the destinations' checks
        config = prepare_audit(ctx, config, recorded=record is not None, json_path=args.json, report_dir=args.report,
                               create_bucket=args.create_bucket, oversample_path=args.oversample_out)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("loading model and data", total=None)

            def progress(description: str, total: int | None = None, advance: int = 0) -> None:
                bar.update(task, description=description, advance=advance,
                           **({} if total is None else {"total": total, "completed": 0}))

            done = audit_here(ctx, config, record=record, report_dir=args.report, progress=progress)
        print_summary(done.result, out)
        if done.result.timings:  # the document's, per stage (the CAM's: cam, the control's: control)
            out.print("seconds: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in done.result.timings.items()
                                              if isinstance(v, (int, float))), highlight=False)
        if done.recorded:
            out.print(f"run id: {done.result.run_id}", highlight=False)
        for line in write_outputs(ctx, done, json_path=args.json, report_dir=args.report,
                                  model=args.model_name or args.model, version=args.model_version,
                                  oversample_path=args.oversample_out):
            out.print(line, highlight=False)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from .records.preflight import ClassesNotInSplit
    from .records.registration import register
    from .run.commands import start_registered
    from .run.context import context

    audit_settings = parse_json_object(args.settings, "--settings")
    if args.shards < 1:
        raise XichError(f"--shards must be at least 1, got {args.shards}")
    with context() as ctx:
        try:
            parameters = register(records=ctx, model=args.model, version=args.version,
                                  model_spec=args.spec, weights_uri=args.weights, dataset_uri=args.dataset,
                                  settings=audit_settings, local_weights=ctx.local_path(args.weights),
                                  registry_metadata=parse_json_object(args.registry_metadata, "--registry-metadata"),
                                  registered_at=parse_time(args.version_created_at, "--version-created-at"),
                                  allowed_specs=ctx.settings.hooks_allowed_specs)
        except ClassesNotInSplit as exc:  # the operator's own data: listed here, as `xich audit` lists them
            raise XichError(f"{exc} (available: {', '.join(exc.available)})") from None
        out.print(f"registered {args.model} {args.version}", highlight=False)
        if args.audit:
            out.print(start_registered(ctx, parameters, shards=args.shards), highlight=False)
    return 0


def cmd_serve_hooks(args: argparse.Namespace) -> int:
    from .hooks.receiver import serve
    from .settings import get_hook_settings

    port = parse_port(args.port, "--port")
    # the receiver's own settings: a bad one never breaks another command
    serve(get_hook_settings(), host=args.host, port=port, say=lambda line: out.print(line, highlight=False))
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from .run.commands import migrate
    from .run.context import context

    with context(migrate=False) as ctx:  # migrating is the command
        out.print(migrate(ctx, args.action, args.revision), highlight=False)
    return 0


def cmd_clustering(args: argparse.Namespace) -> int:
    from .run.commands import show_references, use_reference
    from .run.context import context

    if args.action == "show" and not args.model:
        raise XichError("xich clustering show: give --model NAME")
    if args.action != "show" and not args.run:
        raise XichError(f"xich clustering {args.action}: give --run RUN (a complete audit's run id)")
    with context() as ctx:
        lines = show_references(ctx, model=args.model) if args.action == "show" else [use_reference(ctx, run_id=args.run)]
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """The drift between consecutive versions first (what moved, by how much), then the rows on request."""
    import csv

    from .records.history import HISTORY_COLUMNS, csv_row, drift_tables, history_table
    from .run.commands import history
    from .run.context import context

    with context() as ctx:
        rows, drift, page = history(ctx, model=args.model, class_name=args.class_name, report_dir=args.report)
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(HISTORY_COLUMNS)
        writer.writerows(csv_row(r) for r in rows)
        if page is not None:
            err.print(f"wrote {page}", highlight=False)  # standard output stays CSV
        return 0
    out.print(f"[bold]drift of {args.model} between consecutive versions[/]\n(clusters matched by key on one "
              f"clustering; rank 0 = most dominant; each signal before→after)", highlight=False)
    for drifted in drift_tables(drift):
        out.print(f"\n{drifted.title}", highlight=False)
        for line in drifted.lines:
            out.print(line, highlight=False)
        out.print(_table(drifted.headings, drifted.cells))
    if not drift:
        versions = sorted({r.model_version for r in rows})
        out.print(f"no drift yet: it needs two versions audited on one clustering with the same settings (audited: "
                  f"{', '.join(versions)}); later versions use the model's reference clustering by default "
                  f"(`xich clustering show --model {args.model}`)", highlight=False)
    if args.rows or args.wide or not drift:
        headings, cells = history_table(rows, wide=args.wide)
        table = _table(headings, cells, title=f"dominance history of {args.model}")
        (Console(width=max(out.width, 220)) if args.wide else out).print(table)  # --wide: never cut, however narrow
        if not args.wide:
            out.print("run: its first 8 digits; cluster: <run whose clustering it is>/<index>; train: the cluster's\n"
                      "share of the class's training images; eval: its evaluation images; --wide: every column,\n"
                      "--csv: as CSV", highlight=False)
    else:
        out.print("--rows: each version's per-cluster rows; --report DIR: the history page", highlight=False)
    if page is not None:
        out.print(f"wrote {page}", highlight=False)
    return 0


def _table(headings: list[tuple[str, bool]], cells: list[list[str]], title: str | None = None) -> Table:
    """A rich table of text cells; (heading, right-aligned) per column."""
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for heading, numeric in headings:
        table.add_column(heading, justify="right" if numeric else "left")
    for row in cells:
        table.add_row(*row)
    return table


def cmd_synth(args: argparse.Namespace) -> int:
    from .engine.synth import SynthSpec, write_synth

    truth = write_synth(args.out, SynthSpec(classes=args.classes, subgroups=args.subgroups,
                                            rare_fraction=args.rare_fraction, seed=args.seed))
    out.print(f"wrote {len(truth['subgroup'])} images and ground_truth.json under {args.out}; "
              f"rare subgroup per class: {truth['rare']}", highlight=False)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.train import read_oversample
    from .run.commands import train_to
    from .run.context import context

    oversample = read_oversample(args.oversample) if args.oversample else None
    with context(migrate=False) as ctx:  # no database: its settings, the store and local copies
        train_to(ctx, args.out, create_bucket=args.create_bucket, data=args.data, model=args.model,
                 epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, tile_size=args.tile_size,
                 normalize=args.normalize, seed=args.seed, device=args.device, augment=args.augment,
                 oversample=oversample,
                 on_epoch=lambda e, loss, acc: out.print(f"epoch {e}: loss {loss:.4f}  eval accuracy {acc:.4f}"))
    out.print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, epochs=args.epochs, say=lambda line: out.print(line, highlight=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
