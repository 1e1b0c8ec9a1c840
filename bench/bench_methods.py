"""Every --method on the same mosaics: seconds per mosaic, and how far its d (eq. 6) is from Grad-CAM's.

    .venv/bin/python bench/bench_methods.py [--mosaics 32] [--class cat]

ResNet-20 checkpoint, CIFAR-10 test JPEGs of one class (../shared/data), mosaics of 4 images planned as in an
audit (3 clusters of the first 60 images, assigned round-robin), each method through ``PreparedModel`` (the
audit's own path: fast for FAST_METHODS, else pytorch-grad-cam). A method with max |Δd| ≈ 0 coincides with
Grad-CAM for this GAP → linear head.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.shared import CLASSES, ROOT, RESNET20, absent  # noqa: E402
from xich.engine.models import build_model, load_weights  # noqa: E402
from xich.engine.runtime import PreparedModel  # noqa: E402
from xich.method.cam_methods import CAM_METHODS  # noqa: E402
from xich.method.dominance import mosaic_dominance, quadrant_relevance  # noqa: E402
from xich.method.mosaic import assemble_mosaics, plan_mosaics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mosaics", type=int, default=32)
    ap.add_argument("--class", dest="cls", default="cat")
    ap.add_argument("--methods", default=",".join(CAM_METHODS), help="comma-separated (gradcam is always run first)")
    args = ap.parse_args()
    if absent(RESNET20):
        return 0
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "method")]  # the tests' CIFAR reader and its data
    from test_baselines import cifar_test_images

    model = build_model("cifar:resnet20", 10)
    load_weights(model, RESNET20)
    images = cifar_test_images(60, (args.cls,))[args.cls]
    rng = np.random.default_rng(0)
    plan = plan_mosaics(np.arange(60) % 3, 3, max(1, args.mosaics // 3), rng)
    mask = plan.clusters == plan.pairs[:, :1]
    d = {}
    print(f"{len(plan)} mosaics of {args.cls}, ResNet-20, torch threads {torch.get_num_threads()}")
    print(f"{'method':20s} {'path':9s} {'ms/mosaic':>9s} {'max|Δd|':>9s} {'mean|Δd|':>9s} {'excluded':>8s}")
    for method in dict.fromkeys(["gradcam", *args.methods.split(",")]):
        prepared = PreparedModel(model, model_spec="cifar:resnet20", num_classes=10, mosaic_size=64, method=method)
        mosaics = assemble_mosaics(prepared.normalize(images), plan.images)
        prepared.mosaic_cams(mosaics[:2], CLASSES.index(args.cls))  # tracing (fast path) and warm-up, not timed
        t0 = time.perf_counter()
        cams = prepared.mosaic_cams(mosaics, CLASSES.index(args.cls))
        ms = 1000 * (time.perf_counter() - t0) / len(plan)
        d[method] = mosaic_dominance(quadrant_relevance(cams), mask)
        both = ~np.isnan(d[method]) & ~np.isnan(d["gradcam"])
        delta = np.abs(d[method][both] - d["gradcam"][both])
        print(f"{method:20s} {prepared.cam:9s} {ms:9.1f} {delta.max():9.2e} {delta.mean():9.2e} "
              f"{int(np.isnan(d[method]).sum()):8d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
