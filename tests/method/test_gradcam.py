from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.image import scale_cam_image

from xich.method.dominance import mosaic_dominance, quadrant_relevance
from xich.method.embedding import features_and_logits, gap
from xich.method.gradcam import gap_linear_cam, reference_cams, scale_cams
from xich.method.mosaic import assemble_mosaics, plan_mosaics
from xich.models import build_model


def test_scale_cams_matches_the_library_scaling():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(5, 8, 8)).astype(np.float32)
    raw[0] = 0.0  # an all-zero map stays zero
    # the library: scale_cam_image with resize, then aggregate_multi_layers (ReLU, mean, scale again)
    lib = scale_cam_image(np.maximum(scale_cam_image(raw, (32, 32)), 0))
    ours = scale_cams(torch.from_numpy(raw), (32, 32)).numpy()
    np.testing.assert_allclose(ours, lib, atol=2e-6)
    assert not ours[0].any()


def test_gap_is_eq1():
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    np.testing.assert_allclose(gap(fmap)[0].numpy(), [1.5, 5.5, 9.5])


def _mosaics(tile: int, n_images: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    tiles = torch.randn(n_images, 3, tile, tile)
    labels = np.arange(n_images) % 3
    plan = plan_mosaics(labels, 3, 4, np.random.default_rng(seed))
    return assemble_mosaics(tiles, plan.images), plan


@pytest.mark.parametrize("spec,layer,tile", [("cifar:resnet20", "layer3", 32), ("torchvision:resnet18", "layer4", 32)])
def test_fast_path_matches_pytorch_grad_cam(spec, layer, tile):
    torch.manual_seed(1)
    model = build_model(spec, 10)
    target = dict(model.named_modules())[layer]
    head = model.linear if hasattr(model, "linear") else model.fc
    mosaics, plan = _mosaics(tile)
    before = mosaics.clone()
    classes = [3] * len(plan)
    ref = reference_cams(model, target, mosaics, classes)
    fmap, _ = features_and_logits(model, target, mosaics)
    fast = scale_cams(gap_linear_cam(fmap, head.weight.detach(), torch.tensor(classes)), mosaics.shape[-2:]).numpy()
    assert torch.equal(mosaics, before)
    np.testing.assert_allclose(fast, ref, atol=1e-4)
    mask = plan.clusters == plan.pairs[:, :1]
    d_ref = mosaic_dominance(quadrant_relevance(ref), mask)
    d_fast = mosaic_dominance(quadrant_relevance(fast), mask)
    assert not np.isnan(d_ref).all()
    np.testing.assert_array_equal(np.isnan(d_ref), np.isnan(d_fast))
    ok = ~np.isnan(d_ref)
    assert np.abs(d_ref[ok] - d_fast[ok]).max() < 1e-3


def test_reference_needs_one_class_per_mosaic():
    model = build_model("cifar:resnet20", 10)
    mosaics, _ = _mosaics(32)
    with pytest.raises(ValueError, match="one class per mosaic"):
        reference_cams(model, model.layer3, mosaics, [0])
