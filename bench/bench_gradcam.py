"""Fast Grad-CAM path vs pytorch-grad-cam, on the same mosaics, in one run.

Times (a) the library one mosaic at a time (the paper's loop), (b) the library batched with one
target per mosaic, (c) XICH's forward-only path, batched; prints the ratios and the largest
per-mosaic dominance difference. Uses ResNet-20 + CIFAR-10 JPEGs from ../shared/data when present,
else a random-init ResNet-20 on random tiles (ratios still meaningful, dominance less so).

    .venv/bin/python bench/bench_gradcam.py [--mosaics 256] [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.shared import CIFAR_JPEG, RESNET20  # noqa: E402
from xich.engine.audit import AuditConfig  # noqa: E402
from xich.engine.datasets import open_dataset  # noqa: E402
from xich.engine.models import build_model, load_weights  # noqa: E402
from xich.engine.runtime import PreparedModel  # noqa: E402
from xich.method.dominance import mosaic_dominance, quadrant_relevance  # noqa: E402
from xich.method.gradcam import reference_cams  # noqa: E402
from xich.method.mosaic import assemble_mosaics, plan_mosaics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mosaics", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--class-index", type=int, default=3)
    args = ap.parse_args()
    weights = RESNET20
    real = weights.is_file()
    config = AuditConfig(model="cifar:resnet20", data="", weights=str(weights) if real else None, device="cpu")
    model = build_model(config.model, 10)
    if real:
        load_weights(model, weights)
    pm = PreparedModel(model, model_spec=config.model, num_classes=10, mosaic_size=64, device="cpu")
    if real:
        ds = open_dataset(str(CIFAR_JPEG), "test", None)
        split = ds.splits["test"]
        images = split.load(split.images[ds.classes[args.class_index]][:200], 32)
    else:
        images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    labels = np.arange(len(images)) % 5
    plan = plan_mosaics(labels, 5, -(-args.mosaics // 10), np.random.default_rng(0))
    mosaics = assemble_mosaics(pm.normalize(images), plan.images[: args.mosaics])
    n = mosaics.shape[0]
    mask = plan.clusters[:n] == plan.pairs[:n, :1]
    cls = args.class_index
    print(f"{n} mosaics of {mosaics.shape[-1]}x{mosaics.shape[-1]}, ResNet-20 ({'checkpoint + CIFAR-10 JPEGs' if real else 'random init'}), "
          f"torch threads {torch.get_num_threads()}")

    pm.mosaic_cams(mosaics[:2], cls)  # warm-up (traces the model for this shape)
    reference_cams(pm.model, pm.layer, mosaics[:2], [cls] * 2)

    t = time.perf_counter()
    fast = np.concatenate([pm.mosaic_cams(mosaics[s:s + args.batch], cls) for s in range(0, n, args.batch)])
    t_fast = time.perf_counter() - t

    # the library batched: its best of a few batch sizes, so the comparison is not against a bad choice
    t_batched, ref_batched, best_batch = float("inf"), None, None
    for batch in sorted({16, 32, args.batch}):
        t = time.perf_counter()
        cams = np.concatenate([reference_cams(pm.model, pm.layer, mosaics[s:s + batch], [cls] * len(mosaics[s:s + batch]))
                               for s in range(0, n, batch)])
        if time.perf_counter() - t < t_batched:
            t_batched, ref_batched, best_batch = time.perf_counter() - t, cams, batch

    # the paper's loop: one GradCAM object, one mosaic per call
    t = time.perf_counter()
    with torch.enable_grad(), GradCAM(model=pm.model, target_layers=[pm.layer]) as cam:
        ref_loop = np.concatenate([cam(input_tensor=mosaics[k:k + 1], targets=[ClassifierOutputTarget(cls)])
                                   for k in range(n)])
    t_loop = time.perf_counter() - t

    d = {name: mosaic_dominance(quadrant_relevance(c), mask) for name, c in
         (("fast", fast), ("batched", ref_batched), ("loop", ref_loop))}
    diff = max(np.nanmax(np.abs(d["fast"] - d["batched"])), np.nanmax(np.abs(d["fast"] - d["loop"])))
    print(f"library, one mosaic at a time: {t_loop:8.3f} s  ({n / t_loop:8.1f} mosaics/s)")
    print(f"library, batched (best: {best_batch}):  {t_batched:8.3f} s  ({n / t_batched:8.1f} mosaics/s)")
    print(f"xich fast path, batched ({args.batch}): {t_fast:8.3f} s  ({n / t_fast:8.1f} mosaics/s)")
    print(f"speed-up vs one-at-a-time library: {t_loop / t_fast:6.1f}x   (target >= 25x)")
    print(f"speed-up vs batched library:       {t_batched / t_fast:6.1f}x   (target >= 4x; library at its best batch size)")
    print(f"max |d_fast - d_library| over {n} mosaics: {diff:.2e}   (target < 1e-3)")
    print(f"fast path throughput: {n / t_fast * 4 * 41e6 * 2 / 1e9:.0f} GFLOP/s "
          f"(ResNet-20 is ~41 MMAC per 32x32 tile, x4 per 64x64 mosaic)")
    print(f"excluded (all-zero) mosaics: fast {int(np.isnan(d['fast']).sum())}, library {int(np.isnan(d['loop']).sum())}")


if __name__ == "__main__":
    main()
