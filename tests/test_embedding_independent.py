"""The embedding (eq. 1) of every model family against an independent computation: a forward hook on the target
layer of the eager model, and the mean over the map's H × W (a ViT's tokens: the mean over its patch tokens, the class
token left out). The audit's pass traces, freezes and chunks the model; these must still agree to float tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xich.engine.models import build_model
from xich.engine.runtime import PreparedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # --normalize imagenet

# spec, image side, mosaic side, the target layer the audit picks, and whether that layer outputs tokens
FAMILIES = [
    ("cifar:resnet20", 32, 64, "layer3", False),       # GAP → Linear
    ("cifar:resnet20-flat", 32, 32, "layer3", False),  # Flatten → Linear
    ("cifar:resnet20-mlp", 32, 32, "layer3", False),   # Flatten → Linear → ReLU → Linear
    ("cifar:vit", 32, 32, "encoder.layers.encoder_layer_3.ln_1", True),  # tokens (B, 1 + 8 × 8, 96)
    ("torchvision:resnet18", 64, 64, "layer4", False),
]


def _images(side: int, n: int = 10) -> torch.Tensor:
    """uint8 (n, 3, side, side): smooth random fields, so that no map is constant."""
    gen = torch.Generator().manual_seed(side + n)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    fine = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return (fine * 255).round().to(torch.uint8)


@pytest.mark.parametrize("spec,side,mosaic,layer,tokens", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_embedding_is_the_mean_of_the_target_layer(spec, side, mosaic, layer, tokens):
    torch.manual_seed(3)
    model = build_model(spec, 10)
    prepared = PreparedModel(model, model_spec=spec, num_classes=10, mosaic_size=mosaic, device="cpu")
    assert prepared.layer_name == layer
    images = _images(side)
    embeddings, logits = prepared.embed(images, batch_size=4)  # three batches, the last a short one

    seen = []
    target = dict(model.named_modules())[prepared.layer_name]
    handle = target.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().double()))
    x = (images.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    try:
        with torch.no_grad():
            direct = model.double()(x)
    finally:
        handle.remove()
    (out,) = seen
    if tokens:
        assert out.ndim == 3 and out.shape[1] == 1 + (side // 4) ** 2
        expected = out[:, 1:, :].mean(dim=1)  # the patch tokens; the class token first
    else:
        assert out.ndim == 4 and out.shape[2] * out.shape[3] > 1
        expected = out.mean(dim=(2, 3))
    assert embeddings.shape == tuple(expected.shape) and logits.shape == (len(images), 10)
    scale = float(expected.abs().max())
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=0, atol=1e-4 * max(scale, 1.0))
    np.testing.assert_allclose(logits, direct.numpy(), rtol=0, atol=1e-4 * max(float(direct.abs().max()), 1.0))
    # the embedding is not the map's maximum: the maps vary over H × W, so the two differ by far more than the tolerance
    peak = out[:, 1:, :].amax(dim=1) if tokens else out.amax(dim=(2, 3))
    assert float((peak - expected).abs().max()) > 100 * 1e-4 * max(scale, 1.0)
