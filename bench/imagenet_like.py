"""A synthetic ImageNet-shaped dataset: N classes × M images per split, 224-px JPEGs of a realistic size.

    .venv/bin/python bench/imagenet_like.py OUT --classes 4 --eval 60 --train 300 [--size 224] [--seed 0]

writes ``OUT/test/class_000/000000.jpg …`` and ``OUT/train/…`` (the layout ``xich audit --data OUT`` reads).
Each image is a smooth random field (a few octaves of upsampled noise, so JPEG compresses it like a
photograph, not like white noise) with a class-dependent tint; at 224 px and quality 90 the files average
23 KB (measured on 50 of them). Nothing in it is meant to be learnt: the benchmarks time and measure, they
do not audit a finding. Deterministic in ``--seed``; an image that exists is not rewritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def image(rng: np.random.Generator, size: int, tint: np.ndarray) -> Image.Image:
    """One RGB image: octaves of bilinearly upsampled noise (coarse to fine), tinted."""
    field = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((4, 1.0), (16, 0.5), (56, 0.3), (size, 0.5)):
        coarse = rng.random((cells, cells, 3), dtype=np.float32)
        up = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        field += weight * np.asarray(up, np.float32)
    field = field / 2.3 * tint
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def make_dataset(out: Path, *, classes: int, eval_per_class: int, train_per_class: int, size: int = 224,
                 seed: int = 0, quality: int = 90, processes: int = 1) -> Path:
    """Write the dataset under ``out`` (see the module docstring) and return ``out``; ``processes`` > 1 writes
    classes in parallel (the same files)."""
    jobs = [(out, split, c, count, size, seed, quality)
            for split, count in (("test", eval_per_class), ("train", train_per_class)) for c in range(classes)]
    if processes > 1:
        from multiprocessing import Pool

        with Pool(processes) as pool:
            pool.starmap(_write_class, jobs)
    else:
        for job in jobs:
            _write_class(*job)
    return out


def _write_class(out: Path, split: str, c: int, count: int, size: int, seed: int, quality: int) -> None:
    folder = out / split / f"class_{c:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    tint = 0.6 + 0.4 * np.random.default_rng([seed, c]).random(3, dtype=np.float32)
    for k in range(count):
        path = folder / f"{k:06d}.jpg"
        if not path.exists():
            rng = np.random.default_rng([seed, c, k, split == "train"])
            image(rng, size, tint).save(path, quality=quality)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--eval", type=int, default=60)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    make_dataset(args.out, classes=args.classes, eval_per_class=args.eval, train_per_class=args.train,
                 size=args.size, seed=args.seed)
    files = list(args.out.rglob("*.jpg"))
    print(f"{len(files)} images under {args.out}, mean {np.mean([f.stat().st_size for f in files]) / 1e3:.1f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
