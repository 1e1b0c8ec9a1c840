from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.image import scale_cam_image

from xich.method.cam_methods import CAM_METHODS, FAST_METHODS
from xich.method.dominance import mosaic_dominance, quadrant_relevance
from xich.method.embedding import features_and_logits, gap
from xich.method.gradcam import gap_linear_cam, reference_cams, scale_cams
from xich.method.mosaic import assemble_mosaics, plan_mosaics
from xich.engine.models import build_model


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


def _real_or_random_resnet20() -> tuple[torch.nn.Module, torch.Tensor]:
    """The public ResNet-20 and 12 CIFAR-10 cat JPEGs (normalised) when ../shared/data is here, else random ones."""
    from test_baselines import TEST_TAR, WEIGHTS, cifar_test_images

    from xich.engine.models import load_weights

    torch.manual_seed(0)
    model = build_model("cifar:resnet20", 10)
    if WEIGHTS.is_file() and TEST_TAR.is_file():
        load_weights(model, WEIGHTS)
        images = cifar_test_images(12, ("cat",))["cat"].float() / 255
        mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return model, (images - mean) / std
    return model, torch.randn(12, 3, 32, 32)


@pytest.fixture(scope="module")
def real_mosaics():
    model, tiles = _real_or_random_resnet20()
    plan = plan_mosaics(np.arange(12) % 3, 3, 3, np.random.default_rng(0))
    return model, assemble_mosaics(tiles, plan.images), plan


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_each_method_equals_pytorch_grad_cam(real_mosaics, method):
    """What the audit computes under --method (PreparedModel.mosaic_cams: the fast path for FAST_METHODS, else the
    library through our wrapper) against the library's own class called directly, on the same mosaics."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from xich.engine.runtime import PreparedModel

    model, mosaics, plan = real_mosaics
    prepared = PreparedModel(model, model_spec="cifar:resnet20", num_classes=10, mosaic_size=64, method=method)
    assert prepared.cam == ("fast" if method in FAST_METHODS else "reference")
    ours = prepared.mosaic_cams(mosaics, 3)
    with torch.enable_grad(), getattr(pytorch_grad_cam, CAM_METHODS[method])(model=model,
                                                                             target_layers=[model.layer3]) as cam:
        theirs = cam(input_tensor=mosaics, targets=[ClassifierOutputTarget(3) for _ in range(len(mosaics))])
    mask = plan.clusters == plan.pairs[:, :1]
    d_ours, d_theirs = (mosaic_dominance(quadrant_relevance(c), mask) for c in (ours, theirs))
    np.testing.assert_array_equal(np.isnan(d_ours), np.isnan(d_theirs))
    assert (~np.isnan(d_theirs)).sum() >= len(plan) // 2
    ok = ~np.isnan(d_theirs)
    assert np.abs(d_ours[ok] - d_theirs[ok]).max() < 1e-4


def test_an_unknown_method_is_refused():
    model = build_model("cifar:resnet20", 10)
    mosaics, _ = _mosaics(32)
    with pytest.raises(ValueError, match="unknown CAM method 'gradcam3'"):
        reference_cams(model, model.layer3, mosaics, [0] * len(mosaics), "gradcam3")
