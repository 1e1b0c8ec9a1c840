"""Cheap real trained models where Grad-CAM is not the class activation map, for the study (bench/study.py):
trains what ``$XICH_STUDY_CACHE`` (default ``~/.cache/xich-study``) lacks and prints what was trained.

    .venv/bin/python bench/study_models.py [--vit-seconds 600] [--models cifar:resnet20-flat,cifar:resnet20-mlp]

Which models and how they are trained: ``bench/sections/trained.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.sections.trained import CACHE, trained_models  # noqa: E402
from bench.shared import SHARED  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--vit-seconds", type=float, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", help="these specs only (comma-separated; default all three)")
    args = ap.parse_args()
    trained_models(Path(args.data), args.vit_seconds, threads=args.threads,
                   specs=tuple(args.models.split(",")) if args.models else None)
    print((CACHE / "trained.json").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
