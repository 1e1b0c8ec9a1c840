"""Models whose Grad-CAM is known by hand, for ``--model python:toy_nets:<factory>`` in the tests."""

from __future__ import annotations

import torch
from torch import nn


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
