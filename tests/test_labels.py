"""Class indices come from the model's label list, matched to the dataset's classes by name."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from builders import resnet20_config
from xich.engine.audit import open_audit, run_audit
from xich.cli import main
from xich.errors import XichError
from xich.engine.labels import CIFAR10, CIFAR100, model_indices, read_labels, resolve_labels
from xich.engine.models import build_model

from test_cli_errors import make_noise_dataset, run_failing

from shared_data import SHARED
WEIGHTS = SHARED / "cifar-resnet" / "resnet20-12fca82f.th"
DATA = SHARED / "cifar10-jpeg"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_builtin_label_sets():
    assert read_labels("cifar10").names == CIFAR10 == tuple(sorted(CIFAR10))
    assert len(CIFAR100) == len(set(CIFAR100)) == 100 and list(CIFAR100) == sorted(CIFAR100)
    imagenet = read_labels("imagenet")
    assert len(imagenet.names) == 1000 and imagenet.names[0] == "tench" and imagenet.source == "builtin:imagenet"


def test_labels_file_and_its_errors(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("dog\ncat\n\n")
    assert read_labels(str(f)).names == ("dog", "cat")
    f.write_text("dog\ncat\ndog\n")
    with pytest.raises(XichError, match=r"^--labels \S+: 1 class name\(s\) appear twice in the label list$"):
        read_labels(str(f))  # a file's lines are never quoted back: it may be any file a request named
    f.write_text("root:x:0:0\ndaemon:x:1:1\n")
    with pytest.raises(XichError, match=r"\(file:\S+: 2 names\); rename") as refused:
        model_indices(read_labels(str(f)), ["cat"], None, None)
    assert "root:x" not in str(refused.value)
    with pytest.raises(XichError, match="neither a built-in label set"):
        read_labels(str(tmp_path / "missing.txt"))


def test_precedence_flag_then_checkpoint_then_cifar_default_then_dataset():
    kw = dict(model_spec="cifar:resnet20", head_outputs=10, dataset_classes=["cat", "dog"])
    assert resolve_labels(labels_arg="cifar100", checkpoint_labels=["a"], **kw).source == "builtin:cifar100"
    assert resolve_labels(labels_arg=None, checkpoint_labels=["dog", "cat"], **kw).names == ("dog", "cat")
    assert resolve_labels(labels_arg=None, checkpoint_labels=None, **kw).names == CIFAR10
    other = resolve_labels(labels_arg=None, checkpoint_labels=None, model_spec="torchvision:resnet18",
                           head_outputs=None, dataset_classes=["cat", "dog"])
    assert other.names == ("cat", "dog") and other.source.startswith("dataset")


def test_indices_by_name_and_the_two_refusals():
    labels = read_labels("cifar10")
    assert model_indices(labels, ["cat", "ship"], 10, "linear") == {"cat": 3, "ship": 8}
    with pytest.raises(XichError, match="hamster are not among the model's labels"):
        model_indices(labels, ["cat", "hamster"], 10, "linear")
    with pytest.raises(XichError, match="has 10 names but the checkpoint's fc has 1000 outputs"):
        model_indices(labels, ["cat"], 1000, "fc")


def test_checkpoint_label_list_sends_grad_cam_to_the_named_output(tmp_path):
    """A 3-output checkpoint whose labels are in another order than the folders: the model's order wins."""
    data = make_noise_dataset(tmp_path / "data")  # classes cat, dog
    torch.manual_seed(0)
    ckpt = tmp_path / "w.pt"
    torch.save({"state_dict": build_model("cifar:resnet20", 3).state_dict(), "classes": ["dog", "bird", "cat"]}, ckpt)
    config = resnet20_config(data, weights=str(ckpt), clusters=2, mosaics_per_pair=2, train_split=None)
    opened = open_audit(config)
    assert opened.indices == {"dog": 0, "cat": 2} and opened.labels.source == "checkpoint"
    result = run_audit(config)
    assert [(c.name, c.index) for c in result.classes] == [("dog", 0), ("cat", 2)]
    assert result.to_dict()["labels"] == {"source": "checkpoint", "names": ["dog", "bird", "cat"]}


def test_cli_refuses_a_class_that_is_not_a_label_and_a_count_that_does_not_fit(tmp_path, capsys):
    data = make_noise_dataset(tmp_path / "data")
    torch.manual_seed(0)
    ckpt = tmp_path / "w10.pt"
    torch.save(build_model("cifar:resnet20", 10).state_dict(), ckpt)
    labels = tmp_path / "animals.txt"
    labels.write_text("cat\nlion\n")
    base = ["audit", "--model", "cifar:resnet20", "--data", str(data), "--clusters", "2", "--mosaics-per-pair", "2",
            "--train-split", "", "--device", "cpu", "--no-db"]
    run_failing(capsys, base + ["--labels", str(labels)], "dog", "not among the model's labels")
    run_failing(capsys, base + ["--weights", str(ckpt), "--labels", str(labels)],
                "has 2 names but the checkpoint's linear has 10 outputs")


@pytest.mark.shared_data
@pytest.mark.skipif(not (WEIGHTS.is_file() and (DATA / "test.tar.gz").is_file()),
                    reason="../shared/data (ResNet-20 checkpoint, CIFAR-10 JPEGs) absent")
def test_a_class_subset_gives_the_full_datasets_numbers(tmp_path):
    """CIFAR-10 folders for only cat and ship (indices 3 and 8: neither 0 nor consecutive), audited with the public
    ResNet-20 checkpoint (without the randomized control, which plays no part in the label mapping)."""
    wanted = ("cat", "ship")
    subset = tmp_path / "subset"
    for split in ("test", "train"):
        with tarfile.open(DATA / f"{split}.tar.gz") as tar:
            tar.extractall(subset, members=[m for m in tar if m.isfile() and m.name.split("/")[1] in wanted],
                           filter="data")
    common = ["--model", "cifar:resnet20", "--weights", str(WEIGHTS), "--clusters", "3", "--mosaics-per-pair", "5",
              "--no-db", "--no-control"]
    assert main(["audit", "--data", str(subset), "--json", str(tmp_path / "subset.json")] + common) == 0
    assert main(["audit", "--data", str(DATA), "--classes", ",".join(wanted), "--json", str(tmp_path / "full.json")]
                + common) == 0
    sub, full = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("subset", "full"))
    assert sub["labels"]["source"].startswith("builtin:cifar10")
    assert [(c["name"], c["index"]) for c in sub["classes"]] == [("cat", 3), ("ship", 8)]
    assert sub["classes"] == full["classes"] and sub["summary"] == full["summary"]
