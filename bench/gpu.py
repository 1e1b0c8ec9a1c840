"""The GPU path, measured: embed images/s, mosaics scored per second, a 100-class 224-px ResNet-50 audit, peak memory.

    PYTHONPATH=service:. .venv/bin/python bench/gpu.py [--device cuda] [--classes 100] [--eval 20] [--train 30]
        [--model torchvision:resnet50] [--work DIR] [--json out.json]

(``bench/gpu.sh`` runs it on the device machine and keeps the JSON.) It makes its own data
(``bench/imagenet_like.py``: synthetic 224-px JPEGs, written by every core), then in one process:

1. **embed img/s**: ``PreparedModel.embed`` on a uint8 batch already in memory (the model alone), and from the
   JPEGs (decode → embed, the audit's training placement);
2. **mosaics/s**: the CAM stage of one class (448-px mosaics, audited model and randomized control);
3. **audit**: ``audit_classes`` over every class (P = 3, J = 10, control on, random weights), wall time and
   images/s;
4. **peak GPU memory** (``torch.cuda.max_memory_allocated``) and the process's peak RSS;
5. on CUDA, **TF32** (``--precision tf32``): mosaics/s and the largest |Δd| against fp32 on the same mosaics;
   and the seconds per stage of everything above (the audit document's ``timings``).

Random weights: the numbers are times and memory, not findings. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.imagenet_like import make_dataset  # noqa: E402
from bench.shared import peak_rss_mb  # noqa: E402

from xich.engine.audit import (AuditConfig, audit_classes, open_audit, score_mosaics_with, stage_timings,  # noqa: E402
                               _scoring_models)
from xich.engine.runtime import set_precision  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="torchvision:resnet50")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--eval", type=int, default=20)
    ap.add_argument("--train", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/xich-gpu"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out: dict = {"device": args.device, "model": args.model, "classes": args.classes, "eval": args.eval,
                 "train": args.train, "batch_size": args.batch_size}
    t0 = time.perf_counter()
    data = make_dataset(args.work / "data", classes=args.classes, eval_per_class=args.eval,
                        train_per_class=args.train, processes=os.cpu_count() or 1)
    out["make_data_s"] = time.perf_counter() - t0
    print(f"data: {out['make_data_s']:.0f} s", flush=True)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    config = AuditConfig(model=args.model, data=str(data), clusters=3, mosaics_per_pair=10, seed=0,
                         device=args.device, batch_size=args.batch_size, control=True)  # as measured: model + control
    opened = open_audit(config)
    device, prepared, tile = opened.prepared.device, opened.prepared, opened.tile_size
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)

    x = torch.randint(0, 256, (args.batch_size, 3, tile, tile), dtype=torch.uint8)
    prepared.embed(x, args.batch_size)  # trace and warm up
    _sync(device)
    t0, reps = time.perf_counter(), 4
    for _ in range(reps):
        prepared.embed(x, args.batch_size)
    _sync(device)
    out["embed_model_only_img_s"] = reps * args.batch_size / (time.perf_counter() - t0)

    ids = [i for c in opened.classes for i in opened.train_split.images[c]][:2048]
    t0 = time.perf_counter()
    for _ids, chunk in opened.train_split.stream(ids, tile, args.batch_size):
        prepared.embed(chunk, args.batch_size)
    _sync(device)
    out["embed_from_jpeg_img_s"] = len(ids) / (time.perf_counter() - t0)
    print(f"embed: {out['embed_model_only_img_s']:.0f} img/s model only, {out['embed_from_jpeg_img_s']:.0f} img/s "
          f"from JPEG", flush=True)

    from xich.engine.audit import cluster_class, embed_class, plan_class_mosaics

    images = opened.load(opened.classes[0])
    clustering, _ = cluster_class(opened, images, embed_class(opened, images.eval_images)[0])
    plan = plan_class_mosaics(opened, clustering, images.index)
    score_mosaics_with(opened, _scoring_models(opened), images.eval_images, plan, images.index)  # warm up
    _sync(device)
    t0 = time.perf_counter()
    d_fp32 = score_mosaics_with(opened, _scoring_models(opened), images.eval_images, plan, images.index)[0]
    _sync(device)
    out["mosaics_per_s"] = 2 * len(plan) / (time.perf_counter() - t0)  # audited model + control
    print(f"mosaics: {out['mosaics_per_s']:.0f}/s ({len(plan)} mosaics x 2 models)", flush=True)
    if device.type == "cuda":  # --precision tf32: its speed and how far it moves d, on the same mosaics
        set_precision(device, "tf32")
        score_mosaics_with(opened, _scoring_models(opened), images.eval_images, plan, images.index)  # warm up
        _sync(device)
        t0 = time.perf_counter()
        d_tf32 = score_mosaics_with(opened, _scoring_models(opened), images.eval_images, plan, images.index)[0]
        _sync(device)
        out["mosaics_per_s_tf32"] = 2 * len(plan) / (time.perf_counter() - t0)
        out["tf32_max_abs_delta_d"] = float(np.nanmax(np.abs(d_tf32 - d_fp32)))
        set_precision(device, "fp32")
        print(f"tf32: {out['mosaics_per_s_tf32']:.0f} mosaics/s, max |d_tf32 - d_fp32| "
              f"{out['tf32_max_abs_delta_d']:.1e}", flush=True)

    t0, n = time.perf_counter(), 0
    for images, _cls in audit_classes(opened):
        n += len(images.eval_ids) + len(images.train_images)
    _sync(device)
    out["audit_s"] = time.perf_counter() - t0
    out["audit_img_s"] = n / out["audit_s"]
    out["stage_s"] = stage_timings(opened.timings)  # every pass above included (the warm-ups too)
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["peak_rss_mb"] = peak_rss_mb()
    print(f"audit: {args.classes} classes, {n} images in {out['audit_s']:.0f} s ({out['audit_img_s']:.0f} img/s); "
          f"peak GPU {out.get('peak_gpu_mb', float('nan')):.0f} MB, peak RSS {out['peak_rss_mb']:.0f} MB", flush=True)
    print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in out["stage_s"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
