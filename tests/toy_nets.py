"""Models whose Grad-CAM is known by hand, for ``--model python:toy_nets:<factory>`` in the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from xich.engine.config import AuditConfig


class Brightness(nn.Module):
    """features = the pixel's mean over RGB (a 1×1 conv, weights 1/3), logits = Linear(GAP(features)), weight 1.

    Its Grad-CAM for any class is the brightness map itself (eq. 3–4: one channel, weight W/(H·W) > 0, ReLU of a
    non-negative map), min-max scaled: on a mosaic of uniform tiles each quadrant's relevance is
    (its brightness − the darkest quadrant's) × tile area.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        self.head = nn.Linear(1, num_classes)
        with torch.no_grad():
            self.features.weight.fill_(1 / 3)
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def brightness(num_classes: int = 1) -> Brightness:
    return Brightness(num_classes)


def write_grey_tiles(root: Path, levels: dict[str, list[int]]) -> Path:
    """A dataset of one class ``tile``: per split, 32×32 images of one grey level each (``levels[split]``), named
    00.png, 01.png, … in that order; returns ``root``."""
    for split, split_levels in levels.items():
        (root / split / "tile").mkdir(parents=True)
        for k, level in enumerate(split_levels):
            Image.fromarray(np.full((32, 32, 3), level, dtype=np.uint8)).save(root / split / "tile" / f"{k:02d}.png")
    return root


def brightness_config(root: Path, **options) -> AuditConfig:
    """An audit of ``root`` by the brightness net: P = 3, J = 4, raw pixels, no control; ``options`` on top."""
    return AuditConfig(model="python:toy_nets:brightness", data=str(root), clusters=3, mosaics_per_pair=4,
                       normalize="none", device="cpu", control=False, **options)
