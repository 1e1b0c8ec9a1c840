"""Full CIFAR-10 audit (10 classes, 10k test + 50k train JPEGs, ResNet-20, P=5, J=25, control on): wall time,
peak RSS and seconds per stage, for XICH's fast CAM path against the literal batched pytorch-grad-cam pipeline
(``--cam reference``) in the same run, and what the dataset fingerprint a recorded run computes adds.

    PYTHONPATH=service .venv/bin/python bench/bench_full_audit.py [--variants fast,literal,reference,fingerprint]
        [--classes N] [--json out.json]

Each variant runs in a fresh process (its own peak RSS, read from VmHWM), one after another:

- ``fast``: ``open_audit`` + ``audit_classes`` with ``--cam auto`` (the fast path), as the unrecorded CLI does;
- ``reference``: the same with ``--cam reference`` (pytorch-grad-cam's ``GradCAM``, batched);
- ``literal``: the literal batched pytorch-grad-cam pipeline — ``reference``, with the model run as written
  (eager PyTorch, its feature map taken by a forward hook) instead of XICH's traced and frozen copy
  (``PreparedModel._trace``, which folds batch norm into the convolutions): the paper's steps with the library;
- ``fingerprint``: ``fast`` preceded by ``content_fingerprint`` of both splits, as ``open_recorded_run`` does;
- ``recorded``: two recorded audits (``pipeline.recorded_audit``, one fresh SQLite database), version 1 and version 2
  (the same checkpoint with one weight nudged), with the randomized control and no null model: the default audit
  before the null model existed;
- ``null``: the same two versions with the null model on (and the control): version 1 computes the null and stores
  it, version 2 reads it back — the cost the first time and the cost of every later version, each against the same
  version of ``recorded`` (version 2 finds the dataset's fingerprint and tarballs cached by version 1 in both);
- ``default``: the same two versions as the audit runs by default since the control was retired: the null model on,
  no control.

``fast``, ``reference``, ``literal`` and ``fingerprint`` run with ``--no-null`` (the null model doubles an
unrecorded audit: each computes its own).

Each also times the label matching alone (``resolve_labels`` + ``model_indices``). ``--classes N`` audits the first N
classes only (to shrink the run). Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.shared import CIFAR_JPEG, RESNET20, absent, peak_rss_mb  # noqa: E402  (stdlib only: child() measures its imports)


def child(variant: str, classes: int | None) -> dict:
    """One audit in this process; returns its numbers."""
    import torch

    torch_rss = peak_rss_mb("VmRSS")
    from xich.engine.audit import AuditConfig, assemble_result, audit_classes, open_audit
    from xich.engine.datasets import content_fingerprint
    from xich.engine.labels import model_indices, resolve_labels

    rss_imports = {"torch": torch_rss, "xich": peak_rss_mb("VmRSS")}  # what the libraries cost before any data
    if variant == "literal":
        from xich.engine.runtime import PreparedModel

        PreparedModel._trace = lambda self, probe: self._tap  # the eager model, as written
    if variant in ("recorded", "null", "default"):
        return child_recorded(variant, classes)
    t0 = time.perf_counter()
    config = AuditConfig(model="cifar:resnet20", weights=str(RESNET20), data=str(CIFAR_JPEG), null=False, control=True,
                         cam="reference" if variant in ("reference", "literal") else "auto")
    opened = open_audit(config)
    open_s = time.perf_counter() - t0
    out: dict = {"variant": variant, "open_s": open_s, "torch_threads": torch.get_num_threads(),
                 "rss_after_import_mib": rss_imports, "rss_after_open_mib": peak_rss_mb("VmRSS")}
    t = time.perf_counter()
    labels = resolve_labels(labels_arg=config.labels, checkpoint_labels=None, model_spec=config.model,
                            head_outputs=10, dataset_classes=opened.dataset.classes)
    model_indices(labels, opened.dataset.classes, 10, "linear")
    out["label_matching_s"] = time.perf_counter() - t
    if variant == "fingerprint":
        t = time.perf_counter()
        opened.train_split.images  # the training tarball read into memory: the audit does it anyway, later
        out["train_index_s"] = time.perf_counter() - t
        t = time.perf_counter()
        out["fingerprint"], out["fingerprint_images"] = content_fingerprint([opened.eval_split, opened.train_split])
        out["fingerprint_s"] = out["train_index_s"] + time.perf_counter() - t
        out["hashing_s"] = time.perf_counter() - t
        out["rss_after_fingerprint_mib"] = peak_rss_mb()
    names = opened.classes[:classes] if classes else opened.classes
    results, ends = [], []
    for _images, cls in audit_classes(opened, names):
        results.append(cls)
        ends.append(round(time.perf_counter() - t0, 1))
    result = assemble_result(opened, results, uuid.uuid4().hex)
    out.update(wall_s=time.perf_counter() - t0, peak_rss_mib=peak_rss_mb(), class_end_s=ends,
               cam=result.config["cam"], timings=result.timings, classes=len(result.classes),
               mosaics=sum(len(c.mosaics) for c in result.classes),
               train_share_by_rank=[round(v, 4) for v in result.summary["train_share_by_rank"]],
               dominance=[c.dominance for c in result.classes])
    return out


def child_recorded(variant: str, classes: int | None) -> dict:
    """Two versions' recorded audits in a fresh SQLite database and store: ``recorded`` with the control and no null,
    ``null`` with the null model on (the first version computes and stores it, the second reads it back)."""
    import tempfile

    import torch

    from xich.engine.audit import AuditConfig
    from xich.engine.models import read_checkpoint
    from xich.run.context import context
    from xich.run.pipeline import recorded_audit
    from xich.settings import Settings

    with tempfile.TemporaryDirectory(prefix="xich-bench-") as tmp:
        sd, _ = read_checkpoint(str(RESNET20))
        nudged = {k: v.clone() for k, v in sd.items()}
        nudged["linear.bias"][0] += 1e-6  # another version: other weights, the same architecture
        torch.save(nudged, Path(tmp) / "v2.pt")
        names = None
        runs = []
        with context(Settings(database_url=f"sqlite:///{tmp}/x.db", store_url=f"{tmp}/store")) as ctx:
            for version, weights in (("v1", str(RESNET20)), ("v2", f"{tmp}/v2.pt")):
                if classes and names is None:
                    from xich.engine.datasets import open_dataset

                    names = tuple(open_dataset(str(CIFAR_JPEG), "test", "train").classes[:classes])
                config = AuditConfig(model="cifar:resnet20", weights=weights, data=str(CIFAR_JPEG),
                                     null=variant != "recorded", control=variant != "default", classes=names)
                t0 = time.perf_counter()
                result = recorded_audit(ctx, config, model_name="bench", model_version=version)
                runs.append({"version": version, "wall_s": time.perf_counter() - t0, "timings": result.timings,
                             "notes": [n for n in result.notes if n.startswith("null model")],
                             "above_null": [c.name for c in result.classes if c.null and c.null["above_null"]]})
    last = runs[-1]
    return {"variant": variant, "wall_s": last["wall_s"], "peak_rss_mib": peak_rss_mb(), "runs": runs,
            "timings": last["timings"], "classes": classes or 10, "mosaics": None, "cam": "auto", "open_s": 0.0,
            "label_matching_s": 0.0, "class_end_s": [], "rss_after_import_mib": {"torch": 0.0, "xich": 0.0},
            "rss_after_open_mib": 0.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="fast,literal,reference,fingerprint")
    ap.add_argument("--classes", type=int, help="audit only the first N classes")
    ap.add_argument("--json", help="write every variant's numbers here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.classes)))
        return 0
    if absent(RESNET20):
        return 0
    runs = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant] + (["--classes", str(args.classes)] if args.classes else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        runs[variant] = r = json.loads(done.stdout.splitlines()[-1])
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items())
        print(f"{variant:>11}: wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, cam path {r['cam']}, "
              f"{r['classes']} classes, {r['mosaics']} mosaics, open {r['open_s']:.1f} s, label matching "
              f"{r['label_matching_s'] * 1000:.2f} ms" + (f", fingerprint {r['fingerprint_s']:.1f} s "
                                                          f"(reading the training tarball {r['train_index_s']:.2f} s, "
                                                          f"hashing {r['hashing_s']:.2f} s; "
                                                          f"{r['fingerprint_images']} images, RSS after it "
                                                          f"{r['rss_after_fingerprint_mib']:.0f} MiB)"
                                                          if "fingerprint_s" in r else ""))
        print(f"{'':>11}  stages (s): {stages}; class end times (s): {r['class_end_s']}")
        print(f"{'':>11}  RSS after import torch {r['rss_after_import_mib']['torch']:.0f} MiB, after import of xich's "
              f"engine (torchvision, scipy, scikit-learn) {r['rss_after_import_mib']['xich']:.0f} MiB, after open_audit "
              f"{r['rss_after_open_mib']:.0f} MiB")
    for other in ("reference", "literal"):
        if "fast" not in runs or other not in runs:
            continue
        fast, ref = runs["fast"], runs[other]
        cam = lambda r: r["timings"].get("cam_s", 0) + r["timings"].get("control_s", 0)  # noqa: E731
        diff = max((abs(a - b) for fa, fb in zip(fast["dominance"], ref["dominance"]) for ra, rb in zip(fa, fb)
                    for a, b in zip(ra, rb) if a is not None and b is not None), default=float("nan"))
        print(f"full audit, {other} / fast: wall {ref['wall_s'] / fast['wall_s']:.2f}x, CAM passes (model + "
              f"control) {cam(ref) / cam(fast):.2f}x; max |D_fast - D_{other}| {diff:.1e}")
    for name in ("null", "default"):  # against the audit before the null model (control on, no null)
        if "recorded" not in runs or name not in runs:
            continue
        (r1, r2), (first, cached) = runs["recorded"]["runs"], runs[name]["runs"]
        print(f"{name} ({'null model and control' if name == 'null' else 'null model, no control'}): version 1 "
              f"(computing and storing the null) {first['wall_s']:.1f} s against {r1['wall_s']:.1f} s without it "
              f"({first['wall_s'] / r1['wall_s']:.2f}x); version 2 (reading it back) {cached['wall_s']:.1f} s against "
              f"{r2['wall_s']:.1f} s ({cached['wall_s'] / r2['wall_s']:.2f}x); classes above the null: "
              f"{', '.join(cached['above_null']) or 'none'}")
    if "fast" in runs and "fingerprint" in runs:
        fast, fp = runs["fast"], runs["fingerprint"]
        print(f"the fingerprint adds: {fp['fingerprint_s']:.1f} s, peak RSS {fp['peak_rss_mib'] - fast['peak_rss_mib']:+.0f}"
              f" MiB (wall {fp['wall_s'] - fast['wall_s']:+.1f} s, noise included)")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
