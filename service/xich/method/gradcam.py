"""CAM maps of mosaics (eq. 3–4 of the XICH paper), two ways that agree.

*reference*: pytorch-grad-cam's own class for the method (``GradCAM`` is the one the paper used;
:data:`CAM_METHODS` lists every method of the pinned grad-cam 1.5.7 that runs on a classifier).
*fast*: for a head GAP → Linear right after the target layer, ∂y^ℓ/∂A^k_ij = W[ℓ, k] / (H·W),
so α^ℓ_k (eq. 3) is W[ℓ, k] / (H·W) and the map needs one forward pass and no backward.
Both finish with the library's own scaling, so their numbers match. HiResCAM's map, Σ_k (∂y/∂A^k) ⊙ A^k,
is then the same sum term by term, so :data:`FAST_METHODS` serves it too; the other methods weigh or
transform the channels differently and always run through the library.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cam_methods import CAM_METHODS

# Score-CAM and Ablation-CAM draw tqdm bars on standard error; FullGrad prints a warning on standard output
_NOISY = ("scorecam", "ablationcam", "fullgrad")


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Standard output and error kept out of the caller's terminal (progress bars, warnings, __del__ noise)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def gap_linear_cam(feature_map: torch.Tensor, head_weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """ReLU(Σ_k α^ℓ_k A^k) with α^ℓ_k = W[ℓ, k] / (H·W) (eq. 3–4 for a GAP → Linear head).

    Parameters
    ----------
    feature_map : tensor (B, K, H, W) — A, the target layer's output.
    head_weight : tensor (n_classes, K) — the linear layer's weight.
    classes : long tensor (B,) — ℓ for each map.

    Returns
    -------
    tensor (B, H, W), unscaled, at the feature map's resolution.
    """
    h, w = feature_map.shape[-2:]
    alpha = head_weight[classes].to(feature_map.dtype) / (h * w)
    return torch.relu(torch.einsum("bk,bkhw->bhw", alpha, feature_map))


def _minmax(cams: torch.Tensor) -> torch.Tensor:
    # pytorch-grad-cam's scale_cam_image: x - min, then / (1e-7 + max), per map.
    cams = cams - cams.amin(dim=(1, 2), keepdim=True)
    return cams / (1e-7 + cams.amax(dim=(1, 2), keepdim=True))


def scale_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale raw maps exactly as pytorch-grad-cam 1.5.7 does for one target layer.

    min-max per map, bilinear resize to ``size`` (H, W) (cv2's half-pixel bilinear), then its
    layer aggregation: ReLU and min-max again. (B, h, w) → (B, H, W), each map in [0, 1];
    an all-zero map stays zero.
    """
    scaled = _minmax(cams.float())
    resized = F.interpolate(scaled[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _minmax(torch.relu(resized))


def reference_cams(model: nn.Module, layer: nn.Module, mosaics: torch.Tensor, classes: list[int],
                   method: str = "gradcam", reshape_transform: Callable | None = None) -> np.ndarray:
    """Maps of ``method`` (a key of :data:`CAM_METHODS`) from pytorch-grad-cam, one ``ClassifierOutputTarget``
    per mosaic; ``reshape_transform`` turns a token layer's output into a map (the library's own argument,
    e.g. ``xich.models.tokens_to_map`` for a ViT).

    Returns float32 array (B, H, W) at the mosaics' size. The library needs autograd, so
    this enables it even when called under inference mode elsewhere; what Score-CAM, Ablation-CAM
    and FullGrad write to the terminal (progress bars, a warning) is kept out of the caller's output.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; use one of {', '.join(CAM_METHODS)}")
    if len(classes) != mosaics.shape[0]:
        raise ValueError("one class per mosaic is needed (a single target silently zeroes the rest)")
    cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
    cams = None
    quiet = silenced() if method in _NOISY else contextlib.nullcontext()
    kwargs = {} if reshape_transform is None else {"reshape_transform": reshape_transform}
    if method == "ablationcam" and reshape_transform is not None:
        from pytorch_grad_cam.ablation_layer import AblationLayerVit  # the default ablation layer needs a 4-D map

        kwargs["ablation_layer"] = AblationLayerVit()
    with torch.enable_grad(), quiet, cam_class(model=model, target_layers=[layer], **kwargs) as cam:
        cams = cam(input_tensor=mosaics, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    if cams is None:  # the library's __exit__ swallows IndexError; do not let that pass silently
        raise RuntimeError(f"pytorch-grad-cam failed on this batch (IndexError inside {CAM_METHODS[method]})")
    return np.asarray(cams, dtype=np.float32)
