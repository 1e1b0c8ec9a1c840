"""The paper's training recipe (section 4): AdamW, label smoothing, linear warm-up then cosine annealing."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import parse_normalize
from .datasets import open_dataset
from .device import resolve_device
from ..errors import XichError
from ..settings import IMAGE_MAX_SIDE_FACTOR
from .models import build_model


# Training-time augmentations, applied to each image of each batch independently: name -> what it does.
AUGMENTATIONS = {
    "none": "no augmentation",
    "hflip": "random horizontal flip (p = 0.5): mirrors left and right, so it swaps the two diagonal line "
             "orientations and keeps horizontal and vertical ones",
    "rot180": "random 180-degree rotation (p = 0.5), i.e. a flip of both axes: maps every line orientation "
              "to itself",
}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``augment`` names one of ``AUGMENTATIONS``.

    ``augment`` defaults to ``hflip`` (also ``xich train``'s default): for natural photographs (CIFAR,
    ImageNet) a mirrored scene is as likely as the original, which makes it the usual choice there, and it
    was the trainer's only behaviour before the setting existed. It is not neutral for every dataset: a
    mirror turns "\\" into "/", so where subgroups differ by oriented texture, as the looks of ``xich
    demo`` do, it shows the model one subgroup dressed as another. The demo therefore trains with
    ``rot180``, which keeps every line orientation (checked on synth images in tests/test_train.py).

    ``oversample`` (``xich train --oversample FILE``) gives training images a sampling weight, by image id as
    the dataset names it (``"circle/0007.png"``); images it does not name weigh 1. With it, each epoch draws
    as many images as the split has, with replacement, each with probability proportional to its weight
    (``epoch_indices``); without it, each epoch is a permutation of the split, as before the setting existed.
    """

    data: str
    model: str
    out: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    tile_size: int = 32
    normalize: str = "imagenet"
    train_split: str = "train"
    eval_split: str = "test"
    seed: int = 0
    device: str | None = None
    augment: str = "hflip"
    oversample: dict[str, float] | None = None
    max_side_factor: int = IMAGE_MAX_SIDE_FACTOR  # XICH_IMAGE_MAX_SIDE_FACTOR: images over it are not decoded


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine annealing to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def read_oversample(path: str | Path) -> dict[str, float]:
    """The ``--oversample`` file: a JSON object from training image id to sampling weight."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise XichError(f"--oversample {path}: cannot read it ({e.__class__.__name__}: {e}); give a JSON file "
                        f"mapping training image ids to weights, e.g. {{\"circle/0007.png\": 8}}") from None
    try:
        weights = json.loads(text)
    except ValueError as e:
        raise XichError(f"--oversample {path}: not JSON ({e}); give an object mapping training image ids to weights, "
                        f"e.g. {{\"circle/0007.png\": 8}}") from None
    if not isinstance(weights, dict):
        raise XichError(f"--oversample {path}: a JSON {type(weights).__name__}, not an object; give an object mapping "
                        f"training image ids to weights, e.g. {{\"circle/0007.png\": 8}}")
    return weights


def sampling_weights(ids: list[str], oversample: Mapping[str, float], where: str = "--oversample") -> torch.Tensor:
    """One sampling weight per image of ``ids`` (float64): ``oversample[id]`` where given, else 1.

    Every key must be one of ``ids`` and every weight a finite number above 0; ``where`` names the input in the
    error otherwise.
    """
    position = {image_id: k for k, image_id in enumerate(ids)}
    unknown = [k for k in oversample if k not in position]
    if unknown:
        example = ids[0] if ids else "class/image.png"
        raise XichError(f"{where}: {len(unknown)} id(s) not among the training images of the trained classes "
                        f"(e.g. {unknown[0]!r}); name training images as the dataset does, class folder and file, "
                        f"e.g. {example!r}")
    weights = torch.ones(len(ids), dtype=torch.float64)
    for image_id, w in oversample.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise XichError(f"{where}: the weight of {image_id!r} is {w!r}; weights must be finite numbers above 0 "
                            f"(1 = as often as an unlisted image; leave an image out to keep it at 1)")
        weights[position[image_id]] = float(w)
    return weights


def epoch_indices(n: int, weights: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """The order of one epoch over ``n`` training images: a permutation without ``weights``; with them, ``n``
    draws with replacement, image k with probability ``weights[k] / weights.sum()``. Draws come from ``gen``."""
    if weights is None:
        return torch.randperm(n, generator=gen)
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def train(config: TrainConfig, on_epoch: Callable[[int, float, float], None] | None = None) -> list[dict]:
    """Train ``config.model`` on the training split; save a plain state_dict to ``config.out``.

    ``on_epoch(epoch, mean_loss, eval_accuracy)`` is called after each epoch; returns the history.
    """
    if config.epochs < 1 or config.batch_size < 1:
        raise XichError(f"--epochs and --batch-size must be at least 1, got {config.epochs} and {config.batch_size}")
    if config.augment not in AUGMENTATIONS:
        raise XichError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {config.augment!r}")
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    ds = open_dataset(config.data, config.eval_split, config.train_split, max_side_factor=config.max_side_factor)
    if config.train_split not in ds.splits:
        raise XichError(f"--data {config.data}: no training split {config.train_split!r}")
    if not set(ds.splits[config.train_split].images) & set(ds.classes):
        raise XichError(f"--data {config.data}: the {config.train_split!r} split has none of the evaluation classes "
                        f"({', '.join(ds.classes)})")
    train_ids = [i for name in ds.classes for i in ds.splits[config.train_split].images.get(name, [])]
    weights = None if config.oversample is None else sampling_weights(train_ids, config.oversample)
    x_train, y_train = _load(ds.splits[config.train_split], ds.classes, config.tile_size)
    x_eval, y_eval = _load(ds.splits[config.eval_split], ds.classes, config.tile_size)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in parse_normalize(config.normalize))
    model = build_model(config.model, len(ds.classes)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total, max(1, int(config.warmup_epochs * steps_per_epoch))))
    gen = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch in range(config.epochs):
        model.train()
        perm = epoch_indices(len(x_train), weights, gen)
        losses = []
        for start in range(0, len(perm), config.batch_size):
            idx = perm[start:start + config.batch_size]
            xb = x_train[idx].to(device).float() / 255
            xb = augment_batch(xb, config.augment, gen)
            logits = model((xb - mean) / std)
            loss = F.cross_entropy(logits, y_train[idx].to(device), label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        acc = evaluate(model, x_eval, y_eval, mean, std, device)
        mean_loss = sum(losses) / len(losses)
        history.append({"epoch": epoch + 1, "loss": mean_loss, "eval_accuracy": acc})
        if on_epoch:
            on_epoch(epoch + 1, mean_loss, acc)
    from ..atomic import write_atomically

    state = model.eval().state_dict()
    write_atomically(config.out, lambda f: torch.save(state, f), what=f"--out {config.out}")
    return history


def augment_batch(x: torch.Tensor, augment: str, gen: torch.Generator) -> torch.Tensor:
    """Apply the augmentation named ``augment`` (see ``AUGMENTATIONS``) to a batch ``x`` of shape (N, C, H, W);
    random draws come from ``gen`` (a CPU generator). Modifies ``x`` in place and returns it."""
    if augment not in AUGMENTATIONS:
        raise XichError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if augment == "hflip":
        flip = torch.rand(len(x), generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
    elif augment == "rot180":
        rot = torch.rand(len(x), generator=gen) < 0.5
        x[rot] = x[rot].flip(-2, -1)
    return x


def evaluate(model, x, y, mean, std, device, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on uint8 images ``x`` (N, 3, T, T) with labels ``y``."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            xb = (x[s:s + batch_size].to(device).float() / 255 - mean) / std
            correct += (model(xb).argmax(1).cpu() == y[s:s + batch_size]).sum().item()
    return correct / max(1, len(x))


def _load(split, classes: list[str], tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for c, name in enumerate(classes):
        ids, images = split.load_kept(split.images.get(name, []), tile)  # images over the size cap left out
        if ids:
            xs.append(images)
            ys.append(torch.full((len(ids),), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


