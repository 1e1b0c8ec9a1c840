"""Full CIFAR-10 audit (10 classes, 10k test + 50k train JPEGs, ResNet-20, P=5, J=25): wall time and peak memory.

    .venv/bin/python bench/bench_full_audit.py [--json out.json]

Needs ../shared/data; target on the 2-core CI machine: <= 60 s.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import uuid
from pathlib import Path

import torch

from xich.engine.audit import AuditConfig, assemble_result, audit_classes, open_audit

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    weights = SHARED / "cifar-resnet" / "resnet20-12fca82f.th"
    if not weights.is_file():
        print(f"skipped: {weights} absent (../shared/data is needed)")
        return 0
    config = AuditConfig(model="cifar:resnet20", weights=str(weights), data=str(SHARED / "cifar10-jpeg"))
    stages: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    opened, classes = open_audit(config), []
    for _images, cls in audit_classes(opened):
        classes.append(cls)
        stages.append((cls.name, time.perf_counter() - t0))
    result = assemble_result(opened, classes, uuid.uuid4().hex)
    wall = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        result.write_json(args.json)
    print(f"classes: {len(result.classes)}, mosaics: {sum(len(c.mosaics) for c in result.classes)}, "
          f"cam path: {result.config['cam']}, torch threads: {torch.get_num_threads()}")
    print("class end times (s): " + ", ".join(f"{label} {t:.1f}" for label, t in stages))
    print(f"wall time: {wall:.1f} s   (target <= 60 s)")
    print(f"peak RSS: {peak_mib:.0f} MiB")
    print(f"mean train share by rank: {[round(v, 4) for v in result.summary['train_share_by_rank']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
