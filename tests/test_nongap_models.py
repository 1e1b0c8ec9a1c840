"""Models where Grad-CAM is not the class activation map: a ResNet-20 trunk under a Flatten → Linear head, a
patch-4 vision transformer (tokens reshaped to a grid), ConvNeXt; and Swin, where it is, through the fast path.

Audited end to end on real CIFAR-10 JPEGs (../shared/data); the maps compared with pytorch-grad-cam's own."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reference import baselines_by_hand, kendall_tau_of_scored, logits_of
from shared_data import RESNET20, extract_test_images, require
from xich.method.baselines import BASELINES
from xich.engine.audit import AuditConfig, open_audit, run_audit
from xich.method.cam_methods import FAST_METHODS
from xich.method.dominance import mosaic_dominance, quadrant_relevance
from xich.method.gradcam import reference_cams
from xich.method.mosaic import assemble_mosaics, plan_mosaics
from xich.engine.models import (build_model, find_target_layer, fixed_input_size, map_transform, read_checkpoint,
                         tokens_to_map)
from xich.engine.runtime import PreparedModel

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.shared_data]
N_PER_CLASS = 12


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory) -> Path:
    """The first 12 test JPEGs of cat and truck as an image folder in a temporary directory (never the repo)."""
    require()
    root = tmp_path_factory.mktemp("cifar_nongap")
    return extract_test_images(root, ["cat", "truck"], N_PER_CLASS)


@pytest.fixture(scope="module")
def flat_weights(tmp_path_factory) -> Path:
    """The public ResNet-20 trunk under a drawn (seeded) Flatten → Linear head, as a checkpoint file."""
    require()
    sd, _ = read_checkpoint(RESNET20)
    gen = torch.Generator().manual_seed(5)
    sd["linear.weight"] = torch.randn(10, 64 * 8 * 8, generator=gen) * 0.02
    sd["linear.bias"] = torch.zeros(10)
    path = tmp_path_factory.mktemp("flat") / "resnet20-flat.th"
    torch.save(sd, path)
    return path


def _config(data: Path, model: str, weights: Path | None = None, **kw) -> AuditConfig:
    kw = {"control": True, **kw}  # these tests read the randomized control too (on request: --control)
    return AuditConfig(model=model, weights=str(weights) if weights else None, data=str(data), train_split=None,
                       clusters=3, mosaics_per_pair=4, batch_size=32, **kw)


def test_tokens_to_map_by_hand():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # a class token and a 2 × 2 grid
    grid = tokens_to_map(tokens, skip=1)
    assert grid.shape == (2, 3, 2, 2)
    assert grid[0, :, 0, 1].tolist() == tokens[0, 2].tolist()  # token 1 + (row 0, column 1)
    assert grid[1, 2, 1, 0].item() == tokens[1, 3, 2].item()


@pytest.mark.parametrize("spec,side,layer,tokens", [
    ("cifar:vit", 32, "encoder.layers.encoder_layer_3.ln_1", True),
    ("torchvision:vit_b_16", 224, "encoder.layers.encoder_layer_11.ln_1", True),
    ("cifar:resnet20-flat", 32, "layer3", False),
    ("cifar:resnet20-mlp", 32, "layer3", False),
    ("torchvision:convnext_tiny", 64, "features", False),
    ("torchvision:swin_t", 64, "permute", False),
])
def test_target_layer_and_grid_found(spec, side, layer, tokens):
    """A ViT's last modules act on every token but only the class token reaches the head: the layer found is
    the last whose grid the logits depend on, the first LayerNorm of the last encoder block."""
    torch.manual_seed(0)
    model = build_model(spec, 10)
    probe = torch.randn(2, 3, side, side)
    assert find_target_layer(model, probe) == layer
    transform = map_transform(dict(model.named_modules())[layer], model, probe)
    assert (transform is not None) == tokens
    assert fixed_input_size(spec) == (spec != "torchvision:convnext_tiny" and spec != "torchvision:swin_t")


def test_named_token_layer_is_accepted():
    model = build_model("cifar:vit", 10)
    probe = torch.randn(2, 3, 32, 32)
    assert find_target_layer(model, probe, "encoder.layers.encoder_layer_2.ln_1") == "encoder.layers.encoder_layer_2.ln_1"


@pytest.fixture(scope="module")
def vit_audits(cifar_subset):
    return run_audit(_config(cifar_subset, "cifar:vit"), run_id="a"), run_audit(_config(cifar_subset, "cifar:vit"),
                                                                                   run_id="b")


@pytest.fixture(scope="module")
def flat_audit(cifar_subset, flat_weights):
    return run_audit(_config(cifar_subset, "cifar:resnet20-flat", flat_weights))


def _check_agreement(cls) -> None:
    """Each baseline's agreement is scipy's Kendall τ of the clusters' scores against it."""
    assert set(cls.agreement) == set(BASELINES)
    for name in BASELINES:
        tau = kendall_tau_of_scored([c.score for c in cls.clusters], [c.baselines[name] for c in cls.clusters])
        assert cls.agreement[name] == (pytest.approx(tau, abs=1e-12) if tau is not None else None), (cls.name, name)


def _check_audit(result, model: torch.nn.Module, data: Path, indices: tuple[int, int]):
    """Scores, hierarchy, agreement; every cluster's baselines against an eager float64 pass of ``model`` over its
    members, in the audited class's output (``indices`` of cat and truck)."""
    assert [(c.name, c.index) for c in result.classes] == list(zip(("cat", "truck"), indices))
    for cls in result.classes:
        scores = np.array([c.score for c in cls.clusters], dtype=float)
        assert not np.isnan(scores).all()
        assert sorted(cls.hierarchy) == [0, 1, 2]
        for c in cls.clusters:
            logits = logits_of(model, [data / "test" / cls.name / Path(m).name for m in c.members])
            assert c.baselines == pytest.approx(baselines_by_hand(logits, cls.index), abs=1e-5), (cls.name, c.id)
        _check_agreement(cls)
        control = np.array(cls.control["scores"], dtype=float)
        assert np.nanmax(np.abs(scores - control)) > 1e-3  # the control is not the model


def test_vit_audited_end_to_end(vit_audits, cifar_subset):
    first, second = vit_audits
    opened = open_audit(_config(cifar_subset, "cifar:vit", classes=("cat",)))  # the same seed: the same weights
    _check_audit(first, opened.prepared.model, cifar_subset, (0, 1))  # outputs: the dataset's classes
    assert first.config["mosaic_size"] == first.config["tile_size"] == 32  # a fixed input size: mosaics shrunk
    assert [c.control for c in first.classes] == [c.control for c in second.classes]  # reproducible for a seed
    assert opened.prepared.cam == opened.control.cam == "reference"
    assert opened.prepared.layer_name == opened.control.layer_name == "encoder.layers.encoder_layer_3.ln_1"
    other = open_audit(_config(cifar_subset, "cifar:vit", classes=("cat",), seed=1))
    assert not torch.equal(other.control.model.heads.head.weight, opened.control.model.heads.head.weight)


def test_non_gap_head_audited_end_to_end(flat_audit, cifar_subset, flat_weights):
    model = build_model("cifar:resnet20-flat", 10)
    model.load_state_dict(torch.load(flat_weights, weights_only=True))
    _check_audit(flat_audit, model, cifar_subset, (3, 9))  # CIFAR-10's ten outputs
    opened = open_audit(_config(cifar_subset, "cifar:resnet20-flat", flat_weights, classes=("cat",)))
    assert opened.prepared.head is None and opened.prepared.cam == "reference"  # not GAP → linear: the library
    trained, control = opened.prepared.model.state_dict(), opened.control.model.state_dict()
    assert not torch.equal(trained["layer3.2.conv2.weight"], control["layer3.2.conv2.weight"])


def _real_mosaics(cifar_subset: Path, side: int, prepared: PreparedModel):
    from PIL import Image

    files = sorted((cifar_subset / "test" / "cat").glob("*"))[:8]
    tiles = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    labels = np.arange(len(files)) % 2
    plan = plan_mosaics(labels, 2, 3, np.random.default_rng(0))
    return prepared.normalize(assemble_mosaics(tiles, plan.images, side)), plan


@pytest.mark.parametrize("spec,side,method", [
    ("torchvision:swin_t", 64, "gradcam"), ("torchvision:swin_t", 64, "hirescam"),
    ("cifar:vit", 32, "gradcam"), ("cifar:vit", 32, "layercam"), ("cifar:resnet20-flat", 32, "gradcam++"),
])
def test_maps_are_the_librarys_own(cifar_subset, spec, side, method):
    """Swin's head is norm → GAP → linear after the ``permute`` the layer search finds, so the fast path serves it
    and must equal pytorch-grad-cam; the other models run through the library itself (with the reshape)."""
    torch.manual_seed(0)
    prepared = PreparedModel(build_model(spec, 10), model_spec=spec, num_classes=10,
                             mosaic_size=side, device="cpu", method=method)
    assert prepared.cam == ("fast" if spec == "torchvision:swin_t" and method in FAST_METHODS else "reference")
    mosaics, plan = _real_mosaics(cifar_subset, side, prepared)
    ours = prepared.mosaic_cams(mosaics, 3)
    lib = reference_cams(prepared.model, prepared.layer, mosaics, [3] * len(mosaics), method, prepared.to_map)
    mask = plan.clusters == plan.pairs[:, :1]
    d_ours, d_lib = mosaic_dominance(quadrant_relevance(ours), mask), mosaic_dominance(quadrant_relevance(lib), mask)
    assert not np.isnan(d_lib).all()
    np.testing.assert_array_equal(np.isnan(d_ours), np.isnan(d_lib))
    ok = ~np.isnan(d_lib)
    assert np.abs(d_ours[ok] - d_lib[ok]).max() < 1e-4


def test_fullgrad_on_a_token_layer_is_one_clear_error():
    from xich.errors import XichError

    with pytest.raises(XichError, match="--method fullgrad does not run on the token layer"):
        PreparedModel(build_model("cifar:vit", 10), model_spec="cifar:vit", num_classes=10,
                      mosaic_size=32, device="cpu", method="fullgrad")


@pytest.mark.parametrize("spec", ["cifar:resnet20-flat", "cifar:vit"])
def test_a_method_the_library_cannot_run_is_one_clear_error_before_the_embedding(cifar_subset, spec, capfd):
    """ShapleyCAM fails inside pytorch-grad-cam where the target layer's gradient is a view (a Flatten head, a
    ViT's tokens): the audit stops at open_audit, naming --method and --model, and nothing is printed."""
    from xich.errors import XichError

    config = AuditConfig(model=spec, data=str(cifar_subset), method="shapleycam", clusters=2, mosaics_per_pair=2,
                         mosaic_size=32, device="cpu", control=False)
    with pytest.raises(XichError, match=rf"--method shapleycam does not run on --model '{spec}'") as info:
        open_audit(config)
    assert "use another --method" in str(info.value)
    assert capfd.readouterr().err == ""
    torch.manual_seed(0)  # where the library can run it, the probe passes
    PreparedModel(build_model("cifar:resnet20", 10), model_spec="cifar:resnet20", num_classes=10,
                  mosaic_size=64, device="cpu", method="shapleycam")



def test_vit_b_16_with_random_weights_audited_end_to_end(cifar_subset, tmp_path):
    """An ImageNet-size vision transformer (random weights: none can be downloaded here) audited on 4 real CIFAR-10
    cat JPEGs upsampled to its 224-px tile: the token layer found, its 14 × 14 grid reshaped, the library's
    Grad-CAM on one 224-px mosaic per pair, the hierarchy and the control out."""
    for name in ("cat", "truck"):  # two classes (a model of one output has no margin); only cat is audited
        (tmp_path / "test" / name).mkdir(parents=True)
        for f in sorted((cifar_subset / "test" / name).glob("*"))[:4]:
            shutil.copy(f, tmp_path / "test" / name / f.name)
    result = run_audit(AuditConfig(model="torchvision:vit_b_16", data=str(tmp_path), train_split=None, classes=("cat",),
                                   clusters=2, mosaics_per_pair=1, batch_size=4, device="cpu", control=True))
    cls = result.classes[0]
    assert (result.config["tile_size"], result.config["mosaic_size"], result.config["cam"]) == (224, 224, "reference")
    assert result.config["layer"] == "encoder.layers.encoder_layer_11.ln_1"
    assert sorted(cls.hierarchy) == [0, 1] and sum(c.eval_size for c in cls.clusters) == 4
    assert cls.control is not None and len(cls.control["scores"]) == 2
    _check_agreement(cls)
