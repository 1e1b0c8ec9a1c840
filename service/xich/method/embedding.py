"""GAP embeddings of a layer's feature map (eq. 1 of the XICH paper)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def layer_output(layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of ``layer`` on each forward into ``box["out"]``; the hook is always removed."""
    box: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        box["out"] = output

    handle = layer.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def gap(feature_map: torch.Tensor) -> torch.Tensor:
    """v_c = mean over H×W of X_feat(i, j, c) (eq. 1): (B, C, H, W) → (B, C)."""
    if feature_map.ndim != 4:
        raise ValueError(f"feature map must be (B, C, H, W), got shape {tuple(feature_map.shape)}")
    return feature_map.mean(dim=(2, 3))


def features_and_logits(model: nn.Module, layer: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: the target layer's feature map (B, C, H, W) and the logits (B, K).

    Runs under ``torch.inference_mode``; ``model`` must be in eval mode.
    """
    with torch.inference_mode(), layer_output(layer) as box:
        logits = model(batch)
    return box["out"], logits
