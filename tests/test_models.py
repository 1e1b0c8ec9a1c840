"""xich.models: model specs, checkpoint loading quirks, target-layer and linear-head discovery."""

from __future__ import annotations

import sys
import textwrap
from collections import OrderedDict

import pytest
import torch
from torch import nn

from xich.errors import XichError
from xich.engine.models import build_model, find_target_layer, gap_linear_head, load_weights, probe_logits, read_checkpoint

from shared_data import SHARED as SHARED_DATA
RESNET20_CKPT = SHARED_DATA / "cifar-resnet" / "resnet20-12fca82f.th"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_like_resnet20(seed: int = 0) -> nn.Module:
    """cifar:resnet20 with random weights and non-trivial BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    model = build_model("cifar:resnet20", 10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
    return model


@pytest.fixture(scope="module")
def source():
    model = _trained_like_resnet20(seed=0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        y = model(x)
    return model, x, y


# --- build_model ------------------------------------------------------------------------------------

def test_cifar_resnet20_layout_and_size():
    model = build_model("cifar:resnet20", 10)
    assert not model.training
    assert [n for n, _ in model.named_children()] == ["conv1", "bn1", "layer1", "layer2", "layer3", "linear"]
    for stage in ("layer1", "layer2", "layer3"):
        blocks = getattr(model, stage)
        assert len(blocks) == 3  # n = 3 for depth 6n + 2 = 20
        for block in blocks:
            names = [n for n, _ in block.named_children()]
            assert names[:4] == ["conv1", "bn1", "conv2", "bn2"]
    assert model.layer3[0].conv1.in_channels == 32 and model.layer3[0].conv1.stride == (2, 2)
    assert model.linear.in_features == 64 and model.linear.out_features == 10
    # conv1 432 + bn1 32; layer1 3 × (2·2304 + 64) = 14,016; layer2 (4608 + 9216 + 128) + 2 × (2·9216 + 128)
    # = 51,072; layer3 (18,432 + 36,864 + 256) + 2 × (2·36,864 + 256) = 203,520; linear 64·10 + 10 = 650
    assert sum(p.numel() for p in model.parameters()) == 269_722
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_num_classes_sets_head():
    assert build_model("cifar:resnet32", 7).linear.out_features == 7
    assert build_model("torchvision:resnet18", 3).fc.out_features == 3


@pytest.mark.parametrize("spec, fragment", [
    ("cifar:resnet99", "unknown CIFAR model 'resnet99'"),
    ("torchvision:nope", "unknown torchvision architecture 'nope'"),
    ("foo:bar", "unknown model spec 'foo:bar'"),
    ("python:nomodule:x", "cannot import nomodule:x"),
    ("python:justamodule", "write python:<module>:<callable>"),
    ("python:xich.engine.models:no_such_function", "cannot import xich.engine.models:no_such_function"),
])
def test_unknown_specs(spec, fragment):
    with pytest.raises(XichError) as info:
        build_model(spec, 10)
    assert fragment in str(info.value)
    assert spec in str(info.value)


def test_python_spec(tmp_path, monkeypatch):
    (tmp_path / "xich_test_user_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def make_net(num_classes):
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, num_classes))

        def make_fixed():
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))

        def not_a_model(num_classes):
            return [num_classes]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_model("python:xich_test_user_nets:make_net", 4)
    assert isinstance(net, nn.Sequential) and not net.training
    assert net[-1].out_features == 4  # num_classes passed through
    fixed = build_model("python:xich_test_user_nets:make_fixed", 4)  # no num_classes parameter: called bare
    assert fixed[-1].out_features == 5
    with pytest.raises(XichError, match=r"not_a_model\(\) returned list, not a torch.nn.Module"):
        build_model("python:xich_test_user_nets:not_a_model", 4)


# --- load_weights --------------------------------------------------------------------------------------

def _variants(sd: OrderedDict) -> dict[str, object]:
    return {
        "plain": sd,
        "under_state_dict": {"state_dict": sd, "epoch": 3, "best_prec1": 91.7},
        "under_model": {"model": sd, "optimizer": {"lr": 0.1}},
        "module_prefix": OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        "nested_and_prefixed": {"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())},
        "no_num_batches_tracked": OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")),
    }


@pytest.mark.parametrize("variant", ["plain", "under_state_dict", "under_model", "module_prefix",
                                     "nested_and_prefixed", "no_num_batches_tracked"])
def test_load_weights_variants_reproduce_outputs(tmp_path, source, variant):
    model, x, y = source
    path = tmp_path / f"{variant}.pt"
    torch.save(_variants(model.state_dict())[variant], path)
    fresh = _trained_like_resnet20(seed=99)
    with torch.inference_mode():
        assert not torch.allclose(fresh(x), y)  # a different model before loading
    load_weights(fresh, path)
    with torch.inference_mode():
        assert torch.equal(fresh(x), y)
    assert torch.equal(fresh.layer2[1].bn2.running_var, model.layer2[1].bn2.running_var)


def test_load_weights_accepts_str_path(tmp_path, source):
    model, x, y = source
    torch.save(model.state_dict(), tmp_path / "w.pt")
    fresh = build_model("cifar:resnet20", 10)
    load_weights(fresh, str(tmp_path / "w.pt"))
    with torch.inference_mode():
        assert torch.equal(fresh(x), y)


def test_shape_mismatch_names_first_bad_key(tmp_path, source):
    model = source[0]
    sd = model.state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    sd["linear.weight"] = torch.zeros(100, 64)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(XichError) as info:
        load_weights(build_model("cifar:resnet20", 10), tmp_path / "bad.pt")
    msg = str(info.value)
    assert f"--weights {tmp_path / 'bad.pt'} does not fit the model" in msg
    assert "'layer2.0.conv1.weight' has shape (32, 16, 5, 5), the model expects (32, 16, 3, 3)" in msg
    assert "linear.weight" not in msg


def test_other_depth_checkpoint_does_not_fit(tmp_path):
    torch.save(build_model("cifar:resnet32", 10).state_dict(), tmp_path / "r32.pt")
    with pytest.raises(XichError, match=r"unexpected key 'layer1\.3\.conv1\.weight'"):
        load_weights(build_model("cifar:resnet20", 10), tmp_path / "r32.pt")
    torch.save(build_model("cifar:resnet20", 10).state_dict(), tmp_path / "r20.pt")
    with pytest.raises(XichError, match=r"missing key 'layer1\.3\.conv1\.weight'"):
        load_weights(build_model("cifar:resnet32", 10), tmp_path / "r20.pt")


def test_missing_key(tmp_path, source):
    sd = source[0].state_dict()
    del sd["layer3.2.bn2.running_var"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(XichError) as info:
        load_weights(build_model("cifar:resnet20", 10), tmp_path / "missing.pt")
    assert "missing key 'layer3.2.bn2.running_var'" in str(info.value)
    assert str(tmp_path / "missing.pt") in str(info.value)


def test_unexpected_key(tmp_path, source):
    sd = source[0].state_dict()
    sd["projector.weight"] = torch.zeros(3)
    torch.save({"state_dict": sd}, tmp_path / "extra.pt")
    with pytest.raises(XichError) as info:
        load_weights(build_model("cifar:resnet20", 10), tmp_path / "extra.pt")
    assert "unexpected key 'projector.weight'" in str(info.value)


def test_failed_load_leaves_model_untouched(tmp_path, source):
    sd = source[0].state_dict()
    sd["zz.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pt")
    target = build_model("cifar:resnet20", 10)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(XichError):
        load_weights(target, tmp_path / "extra.pt")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_non_checkpoint_files(tmp_path):
    model = build_model("cifar:resnet20", 10)
    text = tmp_path / "notes.th"
    text.write_text("these are not weights\n")
    with pytest.raises(XichError, match="not a loadable PyTorch checkpoint") as info:
        load_weights(model, text)
    assert str(text) in str(info.value)
    # a whole pickled module is refused by weights_only=True (see test_pickled_whole_model_is_refused_plainly)
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(XichError, match="holds a pickled Python object"):
        load_weights(model, tmp_path / "module.pt")
    # loadable, but no state_dict inside
    torch.save({"epoch": 3, "notes": "hello"}, tmp_path / "meta.pt")
    with pytest.raises(XichError, match=r"not a state_dict \(nor a dict holding one under 'state_dict' or 'model'\)"):
        load_weights(model, tmp_path / "meta.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(XichError, match="not a state_dict"):
        load_weights(model, tmp_path / "list.pt")


def test_missing_weights_file(tmp_path):
    with pytest.raises(XichError) as info:
        load_weights(build_model("cifar:resnet20", 10), tmp_path / "nope.th")
    assert str(info.value) == f"--weights {tmp_path / 'nope.th'}: no such file"
    with pytest.raises(XichError, match="no such file"):  # a folder is not a checkpoint file either
        load_weights(build_model("cifar:resnet20", 10), tmp_path)


# --- target layer and linear head ----------------------------------------------------------------------------

def test_find_target_layer_auto():
    cifar = build_model("cifar:resnet20", 10)
    assert find_target_layer(cifar, torch.randn(2, 3, 32, 32)) == "layer3"
    tv = build_model("torchvision:resnet18", 3)
    assert find_target_layer(tv, torch.randn(2, 3, 64, 64)) == "layer4"
    # hooks are removed afterwards
    assert all(not m._forward_hooks for m in cifar.modules())


def test_find_target_layer_named():
    model = build_model("cifar:resnet20", 10)
    probe = torch.randn(2, 3, 32, 32)
    assert find_target_layer(model, probe, "layer2") == "layer2"
    assert find_target_layer(model, probe, "layer3.1.conv2") == "layer3.1.conv2"
    with pytest.raises(XichError) as info:
        find_target_layer(model, probe, "layer4")
    msg = str(info.value)
    assert msg.startswith("--layer 'layer4' is not a module of the model with a spatial (B, C, H, W) or token (B, N, D) "
                          "output; "
                          "candidates:")
    assert msg.rstrip().endswith("layer3")  # the last candidate is the auto choice
    with pytest.raises(XichError, match="not a module of the model"):
        find_target_layer(model, probe, "")
    with pytest.raises(XichError, match="not a module of the model with a spatial"):
        find_target_layer(model, probe, "linear")  # a module, but its output is not a feature map


def test_find_target_layer_without_spatial_output():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    with pytest.raises(XichError, match="no layer with a spatial"):
        find_target_layer(model, torch.randn(2, 3, 2, 2))


def test_gap_linear_head():
    cifar = build_model("cifar:resnet20", 10)
    probe = torch.randn(2, 3, 32, 32)
    assert gap_linear_head(cifar, cifar.layer3, probe) is cifar.linear
    assert gap_linear_head(cifar, cifar.layer2, probe) is None  # layer2 does not feed the pooling
    tv = build_model("torchvision:resnet18", 3)
    probe64 = torch.randn(2, 3, 64, 64)
    assert gap_linear_head(tv, tv.layer4, probe64) is tv.fc
    assert gap_linear_head(tv, tv.layer3, probe64) is None
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    assert gap_linear_head(no_linear, no_linear[0], torch.randn(2, 3, 8, 8)) is None


# --- the real CIFAR ResNet-20 checkpoint ----------------------------------------------------------------------

@pytest.mark.shared_data
def test_real_resnet20_checkpoint():
    if not RESNET20_CKPT.is_file():
        pytest.skip(f"../shared/data absent: {RESNET20_CKPT} not found")
    model = build_model("cifar:resnet20", 10)
    load_weights(model, RESNET20_CKPT)
    raw = torch.load(RESNET20_CKPT, map_location="cpu", weights_only=True)["state_dict"]
    loaded = model.state_dict()
    assert torch.equal(loaded["conv1.weight"], raw["module.conv1.weight"])
    assert torch.equal(loaded["linear.bias"], raw["module.linear.bias"])
    x = torch.linspace(-2, 2, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    with torch.inference_mode():
        y1, y2 = model(x), model(x)
    assert y1.shape == (2, 10) and bool(torch.isfinite(y1).all())
    assert torch.equal(y1, y2)


@pytest.mark.shared_data
def test_real_resnet20_classifies_cifar10_jpegs():
    """The architecture, not only the key names, must match: most real test images are classified right."""
    archive = SHARED_DATA / "cifar10-jpeg" / "test.tar.gz"
    if not (RESNET20_CKPT.is_file() and archive.is_file()):
        pytest.skip("../shared/data absent: needs cifar-resnet/resnet20-12fca82f.th and cifar10-jpeg/test.tar.gz")
    from xich.engine.datasets import open_dataset

    ds = open_dataset(str(archive), "test", None)
    split = ds.splits["test"]
    ids = [i for c in ds.classes for i in split.images[c][:20]]
    labels = torch.tensor([c for c in range(10) for _ in range(20)])
    x = split.load(ids, 32).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model = build_model("cifar:resnet20", 10)
    load_weights(model, RESNET20_CKPT)
    with torch.inference_mode():
        accuracy = (model((x - mean) / std).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.65  # 81 % on all 10,000 JPEGs (shared/data README); chance is 10 %


def test_torchvision_resnet_at_cifar_tiles_keeps_layer4_and_the_fast_path():
    # at 32 px tiles layer4 is 1x1, but on the 64 px mosaics Grad-CAM runs on it is 2x2
    from xich.engine.runtime import PreparedModel

    pm = PreparedModel(build_model("torchvision:resnet18", 10), model_spec="torchvision:resnet18", num_classes=10,
                       mosaic_size=64, device="cpu")
    assert (pm.layer_name, pm.cam) == ("layer4", "fast")


# --- python: models that fail, and forward passes that do not return logits ---------------------------------

FAULTY_NETS = "xich_test_faulty_nets"


@pytest.fixture
def faulty_nets(tmp_path, monkeypatch) -> str:
    """A user module of models that go wrong in the ways real ones do; yields its name."""
    (tmp_path / f"{FAULTY_NETS}.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn


        class Net(nn.Module):
            def __init__(self, num_classes, returns="logits"):
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
                self.head = nn.Linear(8, num_classes)
                self.returns = returns

            def forward(self, x):
                f = self.features(x)
                logits = self.head(f.mean(dim=(2, 3)))
                if self.returns == "tuple":  # e.g. Inception's auxiliary logits
                    return logits, f
                if self.returns == "dict":  # e.g. a HuggingFace-style output
                    return {"logits": logits}
                return f if self.returns == "map" else logits


        def make_net(num_classes):
            return Net(num_classes)

        def make_tuple(num_classes):
            return Net(num_classes, "tuple")

        def make_dict(num_classes):
            return Net(num_classes, "dict")

        def make_map(num_classes):
            return Net(num_classes, "map")

        def make_32px_only(num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

        def make_broken(num_classes):
            return torch.load("/nonexistent/pretrained.pt", weights_only=True)

        NOT_CALLABLE = 3
    """))
    (tmp_path / "xich_test_unimportable_nets.py").write_text("raise RuntimeError('needs CUDA_HOME to build its ops')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield FAULTY_NETS
    for name in (FAULTY_NETS, "xich_test_unimportable_nets"):
        sys.modules.pop(name, None)


def test_python_factory_that_raises_names_spec_and_exception(faulty_nets):
    spec = f"python:{faulty_nets}:make_broken"
    with pytest.raises(XichError) as info:
        build_model(spec, 3)
    msg = str(info.value)
    assert msg.startswith(f"--model {spec!r}: make_broken() raised FileNotFoundError: ")
    assert "/nonexistent/pretrained.pt" in msg and "\n" not in msg


def test_python_module_that_fails_to_import_or_names_no_callable(faulty_nets):
    with pytest.raises(XichError, match=r"importing xich_test_unimportable_nets failed \(RuntimeError: needs CUDA_HOME"):
        build_model("python:xich_test_unimportable_nets:make", 3)
    with pytest.raises(XichError, match=rf"{faulty_nets}.NOT_CALLABLE is a int, not a callable"):
        build_model(f"python:{faulty_nets}:NOT_CALLABLE", 3)


def test_probe_logits_returns_the_logits(faulty_nets):
    spec = f"python:{faulty_nets}:make_net"
    model = build_model(spec, 3)
    probe = torch.randn(2, 3, 64, 64)
    logits = probe_logits(model, probe, spec, 3)
    with torch.inference_mode():
        assert torch.equal(logits, model(probe)) and logits.shape == (2, 3)
    assert probe_logits(model, probe, spec).shape == (2, 3)  # any number of classes when not given


@pytest.mark.parametrize("factory, fragment", [
    ("make_tuple", "returns a tuple; XICH needs a model whose forward returns the logits tensor (batch, classes): wrap it"),
    ("make_dict", "returns a dict; XICH needs a model whose forward returns the logits tensor"),
    ("make_map", "outputs shape (2, 8, 64, 64) for a batch of 2, expected (2, 3) for the model's 3 labels"),
])
def test_probe_logits_refuses_what_is_not_logits(faulty_nets, factory, fragment):
    spec = f"python:{faulty_nets}:{factory}"
    with pytest.raises(XichError) as info:
        probe_logits(build_model(spec, 3), torch.randn(2, 3, 64, 64), spec, 3)
    assert str(info.value).startswith(f"--model {spec!r}: ") and fragment in str(info.value)


def test_probe_logits_wrong_number_of_classes(faulty_nets):
    spec = f"python:{faulty_nets}:make_net"
    with pytest.raises(XichError, match=r"outputs shape \(2, 5\) for a batch of 2, expected \(2, 3\) for the model's 3"):
        probe_logits(build_model(spec, 5), torch.randn(2, 3, 64, 64), spec, 3)


def test_probe_logits_names_a_forward_that_fails(faulty_nets):
    spec = f"python:{faulty_nets}:make_32px_only"
    model = build_model(spec, 3)
    assert probe_logits(model, torch.randn(2, 3, 32, 32), spec, 3).shape == (2, 3)
    with pytest.raises(XichError) as info:  # the mosaics are 64 px: a 32-px-only model cannot take them
        probe_logits(model, torch.randn(2, 3, 64, 64), spec, 3)
    msg = str(info.value)
    assert msg.startswith(f"--model {spec!r}: the forward pass failed on a (2, 3, 64, 64) input batch (RuntimeError: ")
    assert "--tile-size" in msg and "\n" not in msg


def test_probe_logits_lets_out_of_memory_through():
    class OutOfMemory(nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError):  # the CLI reports it with its own advice (--batch-size)
        probe_logits(OutOfMemory(), torch.randn(2, 3, 8, 8), "python:m:oom", 3)


# --- whole pickled models, and checkpoints that carry their labels ---------------------------------------------

def test_pickled_whole_model_is_refused_plainly(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(build_model("cifar:resnet20", 10), path)  # torch.save(model), not model.state_dict()
    with pytest.raises(XichError) as info:
        load_weights(build_model("cifar:resnet20", 10), path)
    msg = str(info.value)
    assert msg.startswith(f"--weights {path}: holds a pickled Python object (a whole model?), which XICH does not "
                          f"unpickle for safety; save model.state_dict() instead")
    assert "xich.engine.models.CifarResNet" in msg
    assert "\x1b" not in msg and "\n" not in msg  # torch's own text carries terminal colour codes


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_unloadable_file_shows_the_reason_not_torchs_advice(tmp_path):
    import pickle

    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)  # a plain pickle, not torch's zip format
    with pytest.raises(XichError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"--weights {path}: not a loadable PyTorch checkpoint (UnpicklingError: ")
    assert "weights_only" not in msg and "\x1b" not in msg and "\n" not in msg


@pytest.mark.parametrize("key", ["classes", "labels"])
def test_read_checkpoint_with_labels(tmp_path, source, key):
    model = source[0]
    prefixed = OrderedDict((f"module.{k}", v) for k, v in model.state_dict().items())
    names = [f"class{i}" for i in range(10)]
    torch.save({"state_dict": prefixed, key: names, "epoch": 7}, tmp_path / "w.pt")
    sd, labels = read_checkpoint(tmp_path / "w.pt")
    assert labels == names
    assert list(sd) == list(model.state_dict()) and all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    fresh = build_model("cifar:resnet20", 10)
    load_weights(fresh, tmp_path / "w.pt")  # load_weights ignores the labels
    with torch.inference_mode():
        assert torch.equal(fresh(source[1]), source[2])


def test_read_checkpoint_without_labels(tmp_path, source):
    sd = source[0].state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"model": sd, "optimizer": {"lr": 0.1}}, tmp_path / "under_model.pt")
    for name in ("plain.pt", "under_model.pt"):
        read, labels = read_checkpoint(str(tmp_path / name))
        assert labels is None and list(read) == list(sd)


@pytest.mark.parametrize("labels, fragment", [
    (["cat", 3], "'classes' must be a non-empty list of class names (str), got a list holding int 3"),
    ("cat,dog", "'classes' must be a non-empty list of class names (str), got str"),
    ([], "got an empty list"),
    (["cat", "dog", "cat"], "'classes' names class 'cat' twice"),
])
def test_read_checkpoint_refuses_bad_labels(tmp_path, source, labels, fragment):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": source[0].state_dict(), "classes": labels}, path)
    with pytest.raises(XichError) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(f"--weights {path}: ") and fragment in str(info.value)


@pytest.mark.shared_data
def test_real_resnet20_checkpoint_has_no_labels():
    if not RESNET20_CKPT.is_file():
        pytest.skip(f"../shared/data absent: {RESNET20_CKPT} not found")
    sd, labels = read_checkpoint(RESNET20_CKPT)
    assert labels is None and "conv1.weight" in sd and not any(k.startswith("module.") for k in sd)
