"""JPEG decoding: PIL (what ``datasets._decode`` uses) against ``torchvision.io.decode_jpeg``, on the same bytes.

    PYTHONPATH=service:bench .venv/bin/python bench/bench_decode.py [--n 2000] [--n224 200] [--repeats 3]

Times, in one thread, decoding to an RGB uint8 array: (a) PIL ``Image.open(...).convert("RGB")`` → numpy, as the
audit does; (b) ``decode_jpeg`` one image at a time; (c) ``decode_jpeg`` on a list (its batched call; on the CPU a
loop inside torchvision); (d) ``datasets._decode`` as it is now (a frame-header parser for the size cap, then
``decode_jpeg``). Inputs: ``--n`` CIFAR-10 test JPEGs (32 px) from ../shared/data, and ``--n224`` synthetic
224-px JPEGs (bench/imagenet_like.py, quality 90). Prints images/s (best of ``--repeats``) and whether the two
decoders give the same pixels (if they differ, switching would change every audit's numbers).
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.imagenet_like import image  # noqa: E402
from bench.shared import CIFAR_JPEG  # noqa: E402
from xich.engine.datasets import _decode  # noqa: E402


def cifar_jpegs(n: int) -> list[bytes]:
    out = []
    with tarfile.open(CIFAR_JPEG / "test.tar.gz", "r:gz") as tar:
        for info in tar:
            if info.isfile() and info.name.endswith(".jpg"):
                out.append(tar.extractfile(info).read())
                if len(out) == n:
                    break
    return out


def synthetic_jpegs(n: int, size: int = 224) -> list[bytes]:
    rng, out = np.random.default_rng(0), []
    for k in range(n):
        buf = io.BytesIO()
        image(rng, size, rng.uniform(0.6, 1.2, 3)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def tv(data: bytes) -> np.ndarray:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


def tv_batch(datas: list[bytes]) -> list[np.ndarray]:
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    return [t.permute(1, 2, 0).numpy() for t in decode_jpeg(tensors, mode=ImageReadMode.RGB)]


def best(fn, arg, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n224", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sets = {"224-px synthetic": synthetic_jpegs(args.n224)}
    if (CIFAR_JPEG / "test.tar.gz").is_file():
        sets = {"CIFAR-10 32-px": cifar_jpegs(args.n), **sets}
    for name, datas in sets.items():
        a = [pil(d) for d in datas]
        b = [tv(d) for d in datas]
        diff = max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))
        same = sum(np.array_equal(x, y) for x, y in zip(a, b))
        n = len(datas)
        t_pil = best(lambda ds: [pil(d) for d in ds], datas, args.repeats)
        t_tv = best(lambda ds: [tv(d) for d in ds], datas, args.repeats)
        t_batch = best(tv_batch, datas, args.repeats)
        t_xich = best(lambda ds: [_decode(d, "bench") for d in ds], datas, args.repeats)
        print(f"{name}: {n} JPEGs ({sum(map(len, datas)) / n / 1024:.1f} KB each), one thread: PIL {n / t_pil:,.0f} img/s, "
              f"decode_jpeg {n / t_tv:,.0f} img/s ({t_pil / t_tv:.2f}x), decode_jpeg on a list {n / t_batch:,.0f} img/s "
              f"({t_pil / t_batch:.2f}x), datasets._decode (its header parser, then decode_jpeg) {n / t_xich:,.0f} img/s "
              f"({t_pil / t_xich:.2f}x); identical pixels in {same} of {n} images (max |diff| {diff})")


if __name__ == "__main__":
    main()
