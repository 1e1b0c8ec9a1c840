"""Independent computations the tests hold the service to: the public ResNet-20 run plainly on JPEG files, and the
four baselines of a cluster written out by hand. Nothing here calls the service's runtime or method."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared_data import RESNET20
from xich.engine.models import build_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # --normalize imagenet, the audit's default


def plain_resnet20() -> torch.nn.Module:
    """The checkpoint in the architecture's module tree, loaded by hand (``module.`` prefixes stripped), float64."""
    checkpoint = torch.load(RESNET20, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    model = build_model("cifar:resnet20", 10)
    model.load_state_dict(state)
    return model.double().eval()


def resnet20_logits(files: list[Path]) -> np.ndarray:
    """(N, 10) float64 logits of 32 × 32 JPEGs through the public ResNet-20 (:func:`logits_of`)."""
    return logits_of(plain_resnet20(), files)


def logits_of(model: torch.nn.Module, files: list[Path], mean: tuple[float, ...] = MEAN,
              std: tuple[float, ...] = STD) -> np.ndarray:
    """(N, K) float64 logits of image files at their own size, decoded by PIL and normalised here (``mean``, ``std``:
    --normalize imagenet unless given), in one eager pass of a float64 copy of ``model``."""
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(Path(f).read_bytes())).convert("RGB")) for f in files])
    mean = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255.0 - mean) / std
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x).numpy()


def kendall_tau_of_scored(scores: list[float | None], baseline: list[float]) -> float | None:
    """scipy's Kendall τ-b of the clusters' scores and a baseline, over the clusters with a score (None where
    undefined)."""
    from scipy import stats

    keep = [k for k, s in enumerate(scores) if s is not None]
    if len(keep) < 2:
        return None
    tau = stats.kendalltau([scores[k] for k in keep], [baseline[k] for k in keep]).statistic
    return None if np.isnan(tau) else float(tau)


def baselines_by_hand(logits: np.ndarray, k: int) -> dict[str, float]:
    """The four baselines of one cluster's logits (N, K) for output ``k``, written out plainly."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax = exp[:, k] / exp.sum(axis=1)
    best_other = np.array([max(v for j, v in enumerate(row) if j != k) for row in logits])
    return {"mean_logit": float(logits[:, k].mean()), "mean_softmax": float(softmax.mean()),
            "accuracy": float(np.mean([int(np.argmax(row)) == k for row in logits])),
            "mean_margin": float((logits[:, k] - best_other).mean())}
