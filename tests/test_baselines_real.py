"""The baselines of a real audit against an independent forward pass: automobile (output 1) and frog (output 6) of
CIFAR-10, 48 test JPEGs each, audited with the public ResNet-20; every cluster's ``mean_logit``, ``mean_softmax``,
``accuracy`` and ``mean_margin`` recomputed from the checkpoint run by a plain torch model (tests/reference.py: no
tracing, no chunking, images decoded there), the audited class's column, and the cluster's members as the document
names them.

The two classes are not adjacent outputs, so a baseline taken from a neighbouring column (another audited class's,
or ``(index + 1) % K``) differs by far more than the tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference import baselines_by_hand, resnet20_logits
from shared_data import RESNET20, extract_test_images, require
from xich.engine.audit import AuditConfig, run_audit

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.shared_data]

CLASSES = {"automobile": 1, "frog": 6}  # CIFAR-10's output order: airplane, automobile, bird, cat, deer, dog, frog …
N_PER_CLASS = 48


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """The first 48 test JPEGs of automobile and frog as an image folder in a temporary directory."""
    require()
    root = tmp_path_factory.mktemp("cifar_baselines")
    return extract_test_images(root, CLASSES, N_PER_CLASS)


@pytest.fixture(scope="module")
def document(subset) -> dict:
    config = AuditConfig(model="cifar:resnet20", weights=str(RESNET20), data=str(subset), train_split=None,
                         classes=tuple(CLASSES), clusters=3, mosaics_per_pair=2, batch_size=32, control=False)
    return run_audit(config, run_id="baselines").to_dict()


def test_every_cluster_baseline_equals_an_independent_forward_pass(document, subset):
    """Each cluster's four baselines, from the audited class's own column over the document's members, to 1e-5."""
    assert [c["name"] for c in document["classes"]] == list(CLASSES)
    for cls in document["classes"]:
        k = CLASSES[cls["name"]]
        assert cls["index"] == k
        assert sum(len(c["members"]) for c in cls["clusters"]) == N_PER_CLASS and len(cls["clusters"]) == 3
        for cluster in cls["clusters"]:
            files = [subset / "test" / cls["name"] / Path(m).name for m in cluster["members"]]
            assert all(f.is_file() for f in files), cluster["members"][:3]
            expected = baselines_by_hand(resnet20_logits(files), k)
            got = cluster["baselines"]
            for name, value in expected.items():
                assert got[name] == pytest.approx(value, abs=1e-5), (cls["name"], cluster["id"], name)


def test_the_baselines_tell_the_classes_apart(document, subset):
    """What the pretrained model does on these images (so that a wrong column shows): the class's own logit leads
    its neighbours' by a margin, and most images are classified right."""
    for cls in document["classes"]:
        k = CLASSES[cls["name"]]
        logits = resnet20_logits(sorted((subset / "test" / cls["name"]).iterdir()))
        assert (logits[:, k] - logits[:, (k + 1) % 10]).mean() > 3.0
        assert (logits.argmax(axis=1) == k).mean() > 0.7
