"""The model runtime: a model prepared for an audit — weights on its device, target layer and CAM path
chosen, inference traced and chunked. The method (``xich.method``) never sees any of this."""

from __future__ import annotations

import gc
import logging
import sys
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .device import resolve_device
from ..errors import XichError
from ..method.embedding import gap, layer_output
from ..method.cam_methods import FAST_METHODS, UNPROBED_METHODS
from ..method.gradcam import gap_linear_cam, reference_cams, scale_cams, silenced
from .config import parse_normalize
from .models import find_target_layer, gap_linear_head, map_transform, probe_logits

log = logging.getLogger(__name__)

PIXELS_PER_CHUNK = 64 * 32 * 32  # CPU inference chunk: 64 CIFAR tiles, or 16 mosaics of 64×64

class _Tap(nn.Module):
    """Model wrapper returning (target layer's feature map, logits) from one forward; a token layer's output
    reshaped to a map by ``to_map``."""

    def __init__(self, model: nn.Module, layer: nn.Module, to_map: Callable | None = None):
        super().__init__()
        self.model, self.layer, self.to_map = model, layer, to_map

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with layer_output(self.layer) as box:
            logits = self.model(x)
        return (box["out"] if self.to_map is None else self.to_map(box["out"])), logits


def set_precision(device: torch.device, precision: str) -> None:
    """On CUDA: cuDNN picks its fastest kernels for the audit's fixed shapes (``cudnn.benchmark``), and TF32 — which
    PyTorch allows by default for convolutions, moving d — is on only with ``--precision tf32``. Elsewhere TF32 does
    not exist: asking for it is an error rather than a silent fp32 run."""
    if device.type != "cuda":
        if precision != "fp32":
            raise XichError(f"--precision {precision}: TF32 exists only on NVIDIA GPUs (--device cuda); this audit runs "
                            f"on {device.type}; use --precision fp32")
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"


class PreparedModel:
    """A model ready to audit: weights loaded, target layer, CAM method and CAM path chosen, on its device.

    ``method`` (``--method``) is a key of ``method.cam_methods.CAM_METHODS``; the fast path serves the
    methods of ``FAST_METHODS`` on a GAP → Linear head, the library itself every other case.

    Inference runs through a traced, frozen copy (conv–BN folding roughly doubles CPU speed);
    the copy is checked against the eager model on a probe and dropped if it disagrees.
    """

    def __init__(self, model: nn.Module, *, model_spec: str, num_classes: int, mosaic_size: int,
                 device: str | None = None, normalize: str = "imagenet",
                 layer: str = "auto", cam: str = "auto", method: str = "gradcam", precision: str = "fp32"):
        self.device = resolve_device(device)
        set_precision(self.device, precision)
        self.model = model.to(self.device).eval()
        mean, std = parse_normalize(normalize)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        # the probe has the mosaics' size: the Grad-CAM layer must keep a spatial map there
        side = mosaic_size  # resolved once, by engine.audit.open_audit
        probe = self.normalize(torch.zeros(2, 3, side, side, dtype=torch.uint8, device=self.device)
                               + torch.arange(2, device=self.device, dtype=torch.uint8).view(2, 1, 1, 1) * 120)
        probe_logits(self.model, probe, model_spec, num_classes)
        self.layer_name = find_target_layer(self.model, probe, layer)
        self.layer = dict(self.model.named_modules())[self.layer_name]
        self.to_map = map_transform(self.layer, self.model, probe)  # None, or a ViT's tokens → grid
        self.head = gap_linear_head(self.model, self.layer, probe)
        if cam == "fast" and self.head is None:
            raise XichError(f"--cam fast: layer {self.layer_name!r} does not feed a global-average-pool → linear head; "
                            f"use --cam reference or --cam auto")
        if cam == "fast" and method not in FAST_METHODS:
            raise XichError(f"--cam fast: --method {method} has no fast path (only {', '.join(FAST_METHODS)}); "
                            f"use --cam auto or --cam reference")
        if self.to_map is not None and method == "fullgrad":  # it reads every layer's bias as a map, not tokens
            raise XichError(f"--method fullgrad does not run on the token layer {self.layer_name!r} of --model "
                            f"{model_spec!r}; use another --method (gradcam, gradcam++, layercam, scorecam, ...)")
        self.method = method
        self.cam = "reference" if cam == "reference" or self.head is None or method not in FAST_METHODS else "fast"
        if self.cam == "reference" and method not in UNPROBED_METHODS:
            self._check_method_runs(probe[:1], model_spec)
        self._tap = _Tap(self.model, self.layer, self.to_map).eval()
        self._traced: dict[tuple[int, ...], Callable] = {}

    def _check_method_runs(self, probe: torch.Tensor, model_spec: str) -> None:
        """Run the method once on one probe mosaic, so that a method the library cannot run on this model (e.g.
        ShapleyCAM where the target layer's gradient is a view: a Flatten head, a ViT's tokens) is one clear error
        here, before any image is embedded, instead of a traceback from the first mosaic batch."""
        failure, hook = None, sys.unraisablehook
        sys.unraisablehook = lambda _unraisable: None  # the library's BaseCAM.__del__ repeats the same failure
        try:
            with silenced():
                try:
                    reference_cams(self.model, self.layer, probe, [0], self.method, self.to_map)
                except Exception as exc:  # any failure of the library here means the method cannot run here
                    failure = f"{type(exc).__name__}: {str(exc).split('. ')[0][:160]}"  # its first sentence
                gc.collect()
        finally:
            sys.unraisablehook = hook
        if failure is not None:
            raise XichError(f"--method {self.method} does not run on --model {model_spec!r} (target layer "
                            f"{self.layer_name!r}; pytorch-grad-cam fails with {failure}); use another --method "
                            f"(gradcam, gradcam++, layercam, eigencam, scorecam, ...)")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) → normalised float on the model's device."""
        return (images.to(self.device).float() / 255.0 - self.mean) / self.std

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature map, logits) of a normalised batch, under inference mode.

        On the CPU the batch runs in chunks of about PIXELS_PER_CHUNK input pixels, which keep the
        activations in cache: measured here, 16 mosaics of 64×64 run ~1.3× faster per mosaic than 64.
        """
        step = batch.shape[0] if self.device.type != "cpu" else max(1, PIXELS_PER_CHUNK // (batch.shape[2] * batch.shape[3]))
        with torch.inference_mode():
            run = self._runner(batch)
            if step >= batch.shape[0]:
                return run(batch)
            parts = [run(batch[k:k + step]) for k in range(0, batch.shape[0], step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _runner(self, batch: torch.Tensor) -> Callable:
        key = tuple(batch.shape[1:])
        if key not in self._traced:
            self._traced[key] = self._trace(batch[:2])
        return self._traced[key]

    def _trace(self, probe: torch.Tensor) -> Callable:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(self._tap, probe)))
                a, b = traced(probe), self._tap(probe)
            if all(torch.allclose(x, y, rtol=1e-3, atol=1e-4) for x, y in zip(a, b)):
                return traced
            log.info("traced model disagrees with eager model; using eager")
        except Exception as exc:  # tracing is an optimisation: any failure means the eager path
            log.info("tracing failed (%s); using eager model", exc)
        return self._tap

    def embed(self, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """GAP embeddings (eq. 1) and logits of uint8 images (N, 3, T, T) → (N, C), (N, K)."""
        embs, logits = [], []
        for start in range(0, images.shape[0], batch_size):
            fmap, out = self.forward(self.normalize(images[start:start + batch_size]))
            embs.append(gap(fmap).float().cpu())
            logits.append(out.float().cpu())
        return torch.cat(embs).numpy(), torch.cat(logits).numpy()

    def mosaic_cams(self, mosaics: torch.Tensor, class_index: int) -> np.ndarray:
        """Scaled maps of the CAM method (eq. 3–4) of normalised mosaics (B, 3, S, S) → (B, S, S)."""
        size = (mosaics.shape[2], mosaics.shape[3])
        classes = [class_index] * mosaics.shape[0]
        if self.cam == "reference":
            return reference_cams(self.model, self.layer, mosaics, classes, self.method, self.to_map)
        fmap, _ = self.forward(mosaics)
        raw = gap_linear_cam(fmap, self.head.weight.detach(), torch.tensor(classes, device=self.device))
        return scale_cams(raw, size).cpu().numpy()
