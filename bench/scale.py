"""How an audit scales with images per class, at 224 px: peak RSS, images/s per stage, and a projection.

    PYTHONPATH=service:. .venv/bin/python bench/scale.py [--work DIR] [--train 300 1200 5000] [--eval 60]
        [--model torchvision:resnet18] [--gpu-img-s 2000] [--json out.json]

One run prints:

1. **peak RSS against training images per class**: for each ``--train`` M, a fresh process audits one class
   (``--eval`` evaluation images, M training images, P = 3, J = 4, randomized control on, random weights,
   no database) of a synthetic ImageNet-shaped dataset (``bench/imagenet_like.py``) and reports its peak RSS
   (``VmHWM``). The training split is streamed through the model in chunks, so RSS must grow by less than the
   extra images' feature vectors (4·C bytes each) plus 50 MB; the line ``bounded`` says whether it did.
2. **images/s per stage** in this process: JPEG decode + resize (``Split.stream``), the model-only forward
   floor (random tensors, no decode), embedding from JPEGs end to end (decode → embed, as the audit's training
   placement does), mosaics scored per second (the CAM stage of ``audit_class``), and the whole class audit.
3. **a projection of an ImageNet-1k ResNet-50 audit** (1,000 classes, 50 evaluation and 1,281 training images
   per class, P = 5, J = 25, control on) on this machine, from the rates measured in step 2 scaled by
   ResNet-50's FLOPs against the measured model's, and on a GPU of ``--gpu-img-s`` ResNet-50 224-px images/s,
   with its assumptions printed.

Times depend on the machine's load: say under which load they were taken.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.imagenet_like import make_dataset  # noqa: E402
from bench.shared import peak_rss_mb  # noqa: E402

from xich.engine.audit import AuditConfig, audit_class, open_audit  # noqa: E402

RESNET_GFLOPS = {"resnet18": 1.82, "resnet50": 4.11}  # per 224-px image (torchvision's model table)


def sized_dataset(base: Path, out: Path, train: int) -> Path:
    """A dataset of ``base``'s evaluation split and the first ``train`` training images of its class (symlinks)."""
    if not out.exists():
        (out / "train" / "class_000").mkdir(parents=True)
        (out / "test").symlink_to((base / "test").resolve())
        for path in sorted((base / "train" / "class_000").iterdir())[:train]:
            (out / "train" / "class_000" / path.name).symlink_to(path.resolve())
    return out


def config_for(data: Path, model: str, **overrides) -> AuditConfig:
    return AuditConfig(model=model, data=str(data), clusters=3, mosaics_per_pair=4, seed=0,
                       **{"control": True, **overrides})  # as measured: the model's and the control's mosaics


def one_audit(data: Path, model: str) -> dict:
    """Audit the one class of ``data`` in this process; its wall time, feature size and peak RSS."""
    t0 = time.perf_counter()
    opened = open_audit(config_for(data, model))
    images = opened.load(opened.classes[0])
    cls = audit_class(opened, images)
    wall = time.perf_counter() - t0
    dim = opened.prepared.embed(images.eval_images[:1], 1)[0].shape[1]
    return {"train": sum(c.train_count for c in cls.clusters), "wall_s": wall, "feature_dim": int(dim),
            "peak_rss_mb": peak_rss_mb()}


def rss_table(base: Path, work: Path, sizes: list[int], model: str) -> list[dict]:
    rows = []
    for m in sizes:
        data = sized_dataset(base, work / f"train{m}", m)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}
        out = subprocess.run([sys.executable, __file__, "--one", str(data), "--model", model], env=env,
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  train {m:>6}: peak RSS {rows[-1]['peak_rss_mb']:7.0f} MB, wall {rows[-1]['wall_s']:6.1f} s",
              flush=True)
    return rows


def bounded(rows: list[dict]) -> list[dict]:
    """Each size against the smallest: RSS growth against the extra feature vectors + 50 MB."""
    first, out = rows[0], []
    for row in rows[1:]:
        extra = (row["train"] - first["train"]) * row["feature_dim"] * 4 / 2**20
        growth = row["peak_rss_mb"] - first["peak_rss_mb"]
        out.append({"from": first["train"], "to": row["train"], "rss_growth_mb": growth,
                    "allowed_mb": extra + 50, "bounded": growth < extra + 50})
    return out


def stage_rates(base: Path, model: str, n: int = 128) -> dict:
    """Images/s of each stage on ``n`` training JPEGs of ``base`` and its one class's audit."""
    opened = open_audit(config_for(base, model))
    split, tile, batch = opened.train_split, opened.tile_size, opened.config.batch_size
    ids = split.images["class_000"][:n]
    n = len(ids)
    t0 = time.perf_counter()
    for _ids, _chunk in split.stream(ids, tile, batch):
        pass
    decode = len(ids) / (time.perf_counter() - t0)
    x = split.load(ids[:batch], tile)  # decoded once: the floor is the model alone on these images
    for _ in range(3):  # trace, then TorchScript's profiling runs, outside the timing
        opened.prepared.embed(x[:2], batch)
    floors = {}
    threads = torch.get_num_threads()
    # on a loaded machine intra-op threads can cost more than they give (measured here: 2 threads 10x slower
    # than 1 under a load average of 7 on 2 cores), so the floor is the faster of both
    for k in sorted({threads, 1}):
        torch.set_num_threads(k)
        t0 = time.perf_counter()
        for start in range(0, n, len(x)):
            opened.prepared.embed(x[:n - start], batch)
        floors[k] = n / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    floor = max(floors.values())
    t0 = time.perf_counter()
    for _ids, chunk in split.stream(ids, tile, batch):
        opened.prepared.embed(chunk, batch)
    embed = len(ids) / (time.perf_counter() - t0)
    images = opened.load("class_000")
    opened.timings.clear()
    t0 = time.perf_counter()
    cls = audit_class(opened, images)
    audit_s = time.perf_counter() - t0
    mosaics = len(cls.mosaics)
    cam_s = opened.timings["cam_s"] + opened.timings.get("control_s", 0.0)
    return {"decode_img_s": decode, **{f"forward_{k}_threads_img_s": v for k, v in floors.items()},
            "forward_floor_img_s": floor, "embed_from_jpeg_img_s": embed,
            "embed_vs_floor": embed / floor, "mosaics_per_s": 2 * mosaics / cam_s if opened.control else mosaics / cam_s,
            "class_audit_s": audit_s, "class_images": len(images.eval_ids) + len(images.train_images),
            "class_mosaics": mosaics, "batch_size": batch, "threads": torch.get_num_threads()}


def projection(rates: dict, model: str, gpu_img_s: float) -> dict:
    """An ImageNet-1k ResNet-50 audit from the measured rates (assumptions in ``assumptions``)."""
    arch = model.split(":")[-1]
    scale = RESNET_GFLOPS["resnet50"] / RESNET_GFLOPS.get(arch, RESNET_GFLOPS["resnet18"])
    classes, eval_n, train_n, P, J = 1000, 50, 1281, 5, 25
    mosaics = P * (P - 1) // 2 * J * 2  # audited model + control, each mosaic 448 px = 4 tiles' pixels
    cpu_embed = rates["embed_from_jpeg_img_s"] / scale
    cpu_mosaic = rates["mosaics_per_s"] / scale
    cpu_s = classes * ((eval_n + train_n) / cpu_embed + mosaics / cpu_mosaic)
    gpu_forward_img_s = gpu_img_s
    gpu_decode = rates["decode_img_s"] * (os.cpu_count() or 1)  # decode stays on the host's cores
    gpu_embed = min(gpu_forward_img_s, gpu_decode)
    gpu_s = classes * ((eval_n + train_n) / gpu_embed + mosaics * 4 / gpu_forward_img_s)
    return {"cpu_hours": cpu_s / 3600, "gpu_hours": gpu_s / 3600, "assumptions": [
        f"ResNet-50 costs {scale:.2f}x the measured {arch} per image ({RESNET_GFLOPS['resnet50']} vs "
        f"{RESNET_GFLOPS.get(arch, RESNET_GFLOPS['resnet18'])} GFLOPs), and time scales with FLOPs",
        f"{classes} classes x ({eval_n} evaluation + {train_n} training) images, P={P}, J={J}: {mosaics} mosaics "
        f"scored per class (audited model and control)",
        "CPU: this machine's measured embed-from-JPEG and mosaic rates, one process",
        f"GPU: {gpu_img_s:g} ResNet-50 224-px forwards/s; a 448-px mosaic costs 4 forwards; JPEG decode on the "
        f"host at the measured per-core rate x {os.cpu_count()} cores ({gpu_decode:.0f} img/s) caps the embedding",
        "clustering, statistics, database and store writes are not counted (small against the forwards here)"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "xich-scale")
    ap.add_argument("--train", type=int, nargs="+", default=[300, 1200])
    ap.add_argument("--eval", type=int, default=60)
    ap.add_argument("--model", default="torchvision:resnet18")
    ap.add_argument("--gpu-img-s", type=float, default=2000.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--stages-only", action="store_true", help="skip step 1 (peak RSS)")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child process: audit one dataset, print JSON
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_audit(args.one, args.model)))
        return 0
    base = make_dataset(args.work / "base", classes=1, eval_per_class=args.eval, train_per_class=max(args.train))
    rows, checks = [], []
    if not args.stages_only:
        print(f"1. peak RSS, one class of {args.eval} evaluation images, {args.model}, random weights:", flush=True)
        rows = rss_table(base, args.work, sorted(args.train), args.model)
        checks = bounded(rows)
    for c in checks:
        print(f"  {c['from']} -> {c['to']} training images: RSS +{c['rss_growth_mb']:.0f} MB, allowed "
              f"{c['allowed_mb']:.0f} MB (their features + 50 MB): bounded={c['bounded']}")
    print("2. images/s per stage (this process):", flush=True)
    rates = stage_rates(sized_dataset(base, args.work / f"train{min(args.train)}", min(args.train)), args.model)
    for k, v in rates.items():
        print(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}")
    proj = projection(rates, args.model, args.gpu_img_s)
    print(f"3. ImageNet-1k, ResNet-50: {proj['cpu_hours']:.1f} h on this machine's CPU, {proj['gpu_hours']:.2f} h "
          f"on a GPU of {args.gpu_img_s:g} img/s; assumptions:")
    for a in proj["assumptions"]:
        print(f"  - {a}")
    if args.json:
        args.json.write_text(json.dumps({"rss": rows, "bounded": checks, "rates": rates, "projection": proj}, indent=1))
    return 0 if all(c["bounded"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
