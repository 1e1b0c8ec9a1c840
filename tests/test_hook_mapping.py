"""xich.hook_mapping: the mapping file, tags over it, and what maps to nothing."""

from __future__ import annotations

import pytest

from xich.errors import XichError
from xich.hooks.mapping import AuditTarget, NotMapped, read_mapping, resolve, tag_overrides

MAPPING = '''
[models."cifar-resnet20"]
spec = "cifar:resnet20"
dataset = "s3://datasets/cifar10-jpeg/"
labels = "cifar10"
settings = {classes = ["cat", "dog"], clusters = 5}

[models."no-dataset"]
spec = "cifar:resnet56"
'''


@pytest.fixture
def mapping(tmp_path) -> dict:
    path = tmp_path / "hooks.toml"
    path.write_text(MAPPING)
    return read_mapping(path)


def test_an_entry_is_the_audit_and_tags_override_it(mapping):
    assert resolve(mapping, "cifar-resnet20") == AuditTarget(
        spec="cifar:resnet20", dataset="s3://datasets/cifar10-jpeg/",
        settings={"classes": ["cat", "dog"], "clusters": 5, "labels": "cifar10"})
    tags = {"xich.settings": '{"clusters": 3, "mosaics_per_pair": 50}', "xich.labels": "labels.txt",
            "xich.weights_file": "state_dict/state_dict.pth", "team": "vision", "xich.run_id": "abc"}
    assert resolve(mapping, "cifar-resnet20", tag_overrides(tags)) == AuditTarget(
        spec="cifar:resnet20", dataset="s3://datasets/cifar10-jpeg/",
        settings={"classes": ["cat", "dog"], "clusters": 3, "mosaics_per_pair": 50, "labels": "labels.txt"},
        weights_file="state_dict/state_dict.pth")
    # a model missing from the file is audited when its tags say all
    assert resolve(mapping, "new-model", tag_overrides({"xich.spec": "torchvision:resnet18",
                                                        "xich.dataset": "s3://d/"})).spec == "torchvision:resnet18"


def test_what_maps_to_nothing_says_why(mapping):
    with pytest.raises(NotMapped, match=r"^model 'fraud' is not in the mapping file, and the version gives no "
                                        r"xich.spec and no xich.dataset: nothing to audit$"):
        resolve(mapping, "fraud")
    with pytest.raises(NotMapped, match=r"^the mapping file gives model 'no-dataset' no dataset, and the version "
                                        r"gives no xich.dataset: nothing to audit$"):
        resolve(mapping, "no-dataset")


def test_bad_tags_are_refused(mapping):
    with pytest.raises(XichError, match=r"^tag\(s\) xich.clusters: not XICH tags; use xich.spec, xich.dataset, "):
        tag_overrides({"xich.clusters": "3"})
    with pytest.raises(XichError, match=r"^tag xich.settings is not JSON \(Expecting value at character 0\)"):
        tag_overrides({"xich.settings": "clusters=3"})
    with pytest.raises(XichError, match=r"^version of 'cifar-resnet20': settings: unknown key\(s\) clustres; use "):
        resolve(mapping, "cifar-resnet20", tag_overrides({"xich.settings": '{"clustres": 3}'}))
    with pytest.raises(XichError, match=r"^version of 'cifar-resnet20': --clusters must be at least 1, got 0$"):
        resolve(mapping, "cifar-resnet20", tag_overrides({"xich.settings": '{"clusters": 0}'}))
    with pytest.raises(XichError, match=r"^version of 'cifar-resnet20': settings must be a table/object"):
        resolve(mapping, "cifar-resnet20", {"settings": [1, 2]})


@pytest.mark.parametrize("text, message", [
    ("[models.x\nspec = 1", r"not valid TOML \("),
    ('[model."x"]\nspec = "cifar:resnet20"', r"holds model; write one \[models.\"NAME\"\] table per model"),
    ('[models."x"]\nspec = "cifar:resnet20"\nweights = "w.pt"', r"models.'x': unknown key\(s\) weights; use spec, "),
    ('[models."x"]\nspec = 20', r"models.'x': spec must be a string, got int"),
    ('[models."x"]\nsettings = {clustres = 3}', r"models.'x': settings: unknown key\(s\) clustres"),
])
def test_a_bad_mapping_file_is_refused_at_start(tmp_path, text, message):
    path = tmp_path / "hooks.toml"
    path.write_text(text)
    with pytest.raises(XichError, match=f"^XICH_HOOKS_CONFIG {path}: {message}"):
        read_mapping(path)


def test_a_missing_mapping_file(tmp_path):
    with pytest.raises(XichError, match=r": cannot read it \(No such file or directory\); give the mapping file's path"):
        read_mapping(tmp_path / "nope.toml")


def test_serve_hooks_refuses_a_bad_mapping_file(tmp_path, monkeypatch, capsys):
    from xich.cli import main

    path = tmp_path / "hooks.toml"
    path.write_text('[models."x"]\nspec = "cifar:resnet20"\nweights = "w.pt"\n')
    monkeypatch.setenv("XICH_HOOKS_SECRET", "whsec-mapping-test-0123")
    monkeypatch.setenv("XICH_HOOKS_CONFIG", str(path))
    assert main(["serve-hooks", "--port", "1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == (f"error: XICH_HOOKS_CONFIG {path}: models.'x': unknown key(s) weights; use spec, dataset, labels, "
                   f"settings, weights_file")
