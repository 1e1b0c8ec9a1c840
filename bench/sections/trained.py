"""Cheap real trained models where Grad-CAM is not the class activation map, for the study (section 5,
and 6-7 on them); ``bench/study_models.py`` trains them on their own.

* ``cifar:resnet20-flat``: the public ResNet-20 trunk (frozen) under a Flatten → Linear head (64·8·8 → 10)
  fitted on its layer3 maps of CIFAR-10 training images;
* ``cifar:resnet20-mlp``: the same trunk under Flatten → Linear (→ 128) → ReLU → Linear, fitted the same way;
* ``cifar:vit``: the patch-4 ViT of ``xich.models.CIFAR_VIT`` trained from scratch on CIFAR-10 JPEGs
  (random crop with 4-px padding, horizontal flip) for a bounded wall time.

Both see the same training images: ``train_per_class`` per class, drawn as bench/study.py draws them, so
the study's training shares count images these models learnt from. Checkpoints and a JSON of what was
trained (accuracy on the whole test split, time, images) go to ``$XICH_STUDY_CACHE`` (default
``~/.cache/xich-study``): they derive from ../shared/data and are never committed. A cached model is reused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.shared import CLASSES, SHARED, WEIGHTS
from xich.engine.audit import AuditConfig, open_audit
from xich.engine.models import build_model, load_weights

CACHE = Path(os.environ.get("XICH_STUDY_CACHE") or Path.home() / ".cache" / "xich-study")



def cifar_arrays(data: Path, train_per_class: int, seed: int = 0):
    """uint8 (N, 3, 32, 32) training images (``train_per_class`` per class, drawn as bench/study.py draws them)
    and labels, and the whole test split with labels; plus the prepared model's normalisation."""
    opened = open_audit(AuditConfig(model="cifar:resnet20", weights=str(data / "cifar-resnet" / WEIGHTS["resnet20"]),
                                    data=str(data / "cifar10-jpeg"), classes=CLASSES, control=False, device="cpu"))
    xs, ys, txs, tys = [], [], [], []
    for k, name in enumerate(CLASSES):
        tr_ids = opened.train_split.images[name]
        rng = np.random.default_rng([seed, CLASSES.index(name), 3])
        take = np.sort(rng.choice(len(tr_ids), size=min(train_per_class, len(tr_ids)), replace=False))
        xs.append(opened.train_split.load([tr_ids[i] for i in take], 32))
        ys += [k] * len(take)
        ids = opened.eval_split.images[name]
        txs.append(opened.eval_split.load(ids, 32))
        tys += [k] * len(ids)
    return (torch.cat(xs), torch.tensor(ys), torch.cat(txs), torch.tensor(tys), opened.prepared.normalize)


def _accuracy(model, x, y, normalize, batch: int = 500) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(normalize(x[i:i + batch])).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def train_flat(data: Path, arrays, epochs: int = 30, seed: int = 0, spec: str = "cifar:resnet20-flat") -> dict:
    """ResNet-20 trunk frozen, the Flatten head of ``spec`` (Linear, or Linear → ReLU → Linear) fitted (Adam,
    full-batch features, weight decay)."""
    x, y, tx, ty, normalize = arrays
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(spec, 10)
    public = build_model("cifar:resnet20", 10)
    load_weights(public, data / "cifar-resnet" / WEIGHTS["resnet20"])
    trunk = {k: v for k, v in public.state_dict().items() if not k.startswith("linear.")}
    model.load_state_dict({**model.state_dict(), **trunk})
    maps, labels = [], []
    with torch.inference_mode():
        for i in range(0, len(x), 500):
            b = normalize(x[i:i + 500])
            for flip in (False, True):  # the trunk's own training flipped images horizontally
                out = F.relu(model.bn1(model.conv1(torch.flip(b, dims=[3]) if flip else b)))
                maps.append(model.layer3(model.layer2(model.layer1(out))).flatten(1))
                labels.append(y[i:i + 500])
    feats, labels = torch.cat(maps), torch.cat(labels)
    head = model.linear if spec == "cifar:resnet20-flat" else torch.nn.Sequential(model.hidden, torch.nn.ReLU(),
                                                                                   model.linear)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(feats), generator=gen).split(256):
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"model": model, "seconds": time.perf_counter() - t0, "epochs": epochs}


def train_vit(arrays, seconds: float, seed: int = 0) -> dict:
    """The patch-4 ViT from scratch: AdamW, batch 128, random crop (4-px padding) and horizontal flip, stopped at
    the first epoch end past ``seconds`` of wall time."""
    x, y, _, _, normalize = arrays
    torch.manual_seed(seed)
    model = build_model("cifar:vit", 10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    t0, epochs = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for idx in torch.randperm(len(x), generator=gen).split(128):
            b = F.pad(normalize(x[idx]), (4, 4, 4, 4))
            i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
            b = b[:, :, i:i + 32, j:j + 32]
            if torch.rand(1, generator=gen).item() < 0.5:
                b = torch.flip(b, dims=[3])
            loss = F.cross_entropy(model(b), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if time.perf_counter() - t0 > seconds:
                break
        epochs += 1
    return {"model": model.eval(), "seconds": time.perf_counter() - t0, "epochs": epochs}


def trained_models(data: Path = SHARED, vit_seconds: float = 600, train_per_class: int = 2000,
                   threads: int = 2, cache: Path = CACHE, specs: tuple[str, ...] | None = None) -> dict[str, Path]:
    """spec → cached checkpoint path, training what is not cached yet (see the module docstring); only
    ``specs`` when given."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = {"cifar:resnet20-flat": cache / "resnet20-flat.th", "cifar:resnet20-mlp": cache / "resnet20-mlp.th",
             "cifar:vit": cache / "vit-p4.th"}
    paths = {k: v for k, v in paths.items() if specs is None or k in specs}
    meta_path = cache / "trained.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if all(p.is_file() for p in paths.values()):
        return paths
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        arrays = cifar_arrays(data, train_per_class)
        for spec, path in paths.items():
            if path.is_file():
                continue
            out = train_vit(arrays, vit_seconds) if spec == "cifar:vit" else train_flat(data, arrays, spec=spec)
            torch.save(out["model"].state_dict(), path)
            meta[spec] = {"file": path.name, "train_images": len(arrays[1]), "seconds": round(out["seconds"], 1),
                          "epochs": out["epochs"], "threads": threads,
                          "test_accuracy": _accuracy(out["model"], arrays[2], arrays[3], arrays[4])}
            meta_path.write_text(json.dumps(meta, indent=1))
            print(f"{spec}: {meta[spec]}", flush=True)
    finally:
        torch.set_num_threads(before)
    return paths
