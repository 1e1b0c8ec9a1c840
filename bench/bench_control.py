"""What the randomized control costs: the same audit (ResNet-20, real CIFAR-10 JPEGs, P=5, J=25) with and
without it, on a subset of classes; wall time and the CAM seconds of the model and of the control.

    .venv/bin/python bench/bench_control.py [--classes cat,truck] [--train-split train] [--repeats 1]

Needs ../shared/data. Runs alternate (off, on, off, on, ...) so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.shared import CIFAR_JPEG, RESNET20, absent  # noqa: E402
from xich.engine.audit import AuditConfig, assemble_result, audit_classes, open_audit  # noqa: E402


def timed_audit(config: AuditConfig) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    opened = open_audit(config)
    assemble_result(opened, [cls for _images, cls in audit_classes(opened)], "bench")
    return time.perf_counter() - t0, dict(opened.timings)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", default="cat,truck")
    ap.add_argument("--train-split", default="")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if absent(RESNET20):
        return 0
    base = dict(model="cifar:resnet20", weights=str(RESNET20), data=str(CIFAR_JPEG),
                classes=tuple(args.classes.split(",")), train_split=args.train_split or None)
    walls: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for control in (False, True):
            wall, cams = timed_audit(AuditConfig(**base, control=control))
            walls[control].append(wall)
            print(f"control={'on ' if control else 'off'} wall {wall:6.1f} s   "
                  + "   ".join(f"{k} {v:5.1f}" for k, v in cams.items()), flush=True)
    off, on = min(walls[False]), min(walls[True])
    print(f"classes {args.classes}, train split {args.train_split or 'none'}, torch threads {torch.get_num_threads()}: "
          f"best wall off {off:.1f} s, on {on:.1f} s, ratio {on / off:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
