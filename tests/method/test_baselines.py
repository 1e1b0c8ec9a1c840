"""Baselines per cluster and their agreement with the hierarchy: hand computations on real CIFAR-10 images
through the public ResNet-20, and Kendall's τ against scipy's."""

from __future__ import annotations

import tarfile
from io import BytesIO

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import stats

from xich.method.baselines import BASELINES, baseline_agreement, cluster_baselines, kendall_tau, order_differences
from xich.engine.models import build_model, load_weights
from xich.engine.runtime import PreparedModel

from shared_data import CIFAR10, RESNET20 as WEIGHTS

TEST_TAR = CIFAR10 / "test.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_test_images(per_class: int, classes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The first ``per_class`` JPEGs of each class of the CIFAR-10 test split, uint8 (N, 3, 32, 32)."""
    out: dict[str, list[np.ndarray]] = {c: [] for c in classes}
    with tarfile.open(TEST_TAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[1] in out and len(out[parts[1]]) < per_class:
                out[parts[1]].append(np.asarray(Image.open(BytesIO(tar.extractfile(member).read())).convert("RGB")))
            if all(len(v) == per_class for v in out.values()):
                break
    return {c: torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous() for c, v in out.items()}


real = pytest.mark.skipif(not (WEIGHTS.is_file() and TEST_TAR.is_file()),
                          reason="../shared/data (ResNet-20 checkpoint, CIFAR-10 JPEGs) absent")


@real
def test_baselines_equal_a_hand_computation_on_real_images():
    torch.manual_seed(0)
    model = build_model("cifar:resnet20", 10)
    load_weights(model, WEIGHTS)
    images = cifar_test_images(12, ("cat",))["cat"]
    prepared = PreparedModel(model, model_spec="cifar:resnet20", num_classes=10, mosaic_size=64)
    _, logits = prepared.embed(images, batch_size=5)  # the audit's embedding pass (traced, chunked)

    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = model((images.float() / 255 - mean) / std).double()
    np.testing.assert_allclose(logits, direct.numpy(), atol=1e-4)

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
    cat = CLASSES.index("cat")
    got = cluster_baselines(direct.numpy(), labels, 3, cat)
    for c in range(3):
        rows = direct[torch.from_numpy(labels == c)]
        others = torch.cat([rows[:, :cat], rows[:, cat + 1:]], dim=1)
        assert got["mean_logit"][c] == pytest.approx(rows[:, cat].mean().item(), abs=1e-9)
        assert got["mean_softmax"][c] == pytest.approx(torch.softmax(rows, dim=1)[:, cat].mean().item(), abs=1e-9)
        assert got["accuracy"][c] == pytest.approx((rows.argmax(dim=1) == cat).double().mean().item(), abs=0)
        assert got["mean_margin"][c] == pytest.approx((rows[:, cat] - others.max(dim=1).values).mean().item(), abs=1e-9)
    assert 0 < np.mean(got["accuracy"]) < 1 or np.ptp(got["mean_logit"]) > 0  # real, not degenerate, images


def test_baselines_of_a_toy_class():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [5.0, 1.0, 4.0]])
    got = cluster_baselines(logits, np.array([0, 0, 1]), 2, 0)
    np.testing.assert_allclose(got["mean_logit"], [1.0, 5.0])
    np.testing.assert_allclose(got["accuracy"], [0.5, 1.0])
    np.testing.assert_allclose(got["mean_margin"], [((2 - 1) + (0 - 3)) / 2, 1.0])
    e = np.exp(logits)
    np.testing.assert_allclose(got["mean_softmax"], [(e[0, 0] / e[0].sum() + e[1, 0] / e[1].sum()) / 2,
                                                     e[2, 0] / e[2].sum()])
    assert list(got) == list(BASELINES)


def test_margin_is_the_class_logit_minus_the_best_other_logit():
    """By hand, output 1 of four rows: the class on top, below another, every other logit negative, and a tie.
    Wrong readings give other numbers: the max over all outputs (class included) gives 0 where the class leads,
    the worst other logit (min) gives a larger margin, the best other logit clipped at 0 a smaller one."""
    logits = np.array([[1.0, 4.0, -2.0, 3.0],     # class leads: 4 − 3 = 1
                       [6.0, 2.0, 0.5, -1.0],     # class second: 2 − 6 = −4
                       [-3.0, -0.5, -1.5, -2.5],  # all others negative: −0.5 − (−1.5) = 1
                       [2.0, 2.0, 1.0, 0.0]])     # tie with another output: 0
    got = cluster_baselines(logits, np.array([0, 0, 1, 1]), 2, 1)
    np.testing.assert_allclose(got["mean_margin"], [(1.0 - 4.0) / 2, (1.0 + 0.0) / 2], atol=1e-12)
    np.testing.assert_allclose(got["mean_logit"], [3.0, 0.75], atol=1e-12)
    np.testing.assert_allclose(got["accuracy"], [0.5, 0.5], atol=0)  # the tie goes to the first output (arg-max)
    per_row = cluster_baselines(logits, np.arange(4), 4, 1)["mean_margin"]
    np.testing.assert_allclose(per_row, [1.0, -4.0, 1.0, 0.0], atol=1e-12)


def test_a_cluster_without_images_has_nan_baselines():
    got = cluster_baselines(np.zeros((2, 3)), np.array([0, 0]), 2, 1)
    assert np.isnan(got["mean_logit"][1]) and got["mean_logit"][0] == 0.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="class_index"):
        cluster_baselines(np.zeros((2, 3)), np.array([0, 0]), 1, 3)


values = st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 2.0]), min_size=2, max_size=9)  # ties are common


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_kendall_tau_equals_scipy(data):
    x = data.draw(values)
    y = data.draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 2.0]), min_size=len(x), max_size=len(x)))
    ours, theirs = kendall_tau(np.array(x), np.array(y)), stats.kendalltau(x, y).statistic
    if np.isnan(theirs):
        assert np.isnan(ours)
    else:
        assert ours == pytest.approx(theirs, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=8, unique=True), st.data())
def test_agreement_equals_scipy_over_the_scored_clusters(scores, data):
    base = np.array(data.draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=len(scores), max_size=len(scores))))
    scores = np.array(scores)
    unscored = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    scores[np.array(unscored)] = np.nan  # a cluster without evidence is left out
    got = baseline_agreement(scores, {"mean_logit": base})
    keep = ~np.isnan(scores)
    expected = stats.kendalltau(scores[keep], base[keep]).statistic if keep.sum() >= 2 else np.nan
    if np.isnan(expected):
        assert got["mean_logit"] is None
    else:
        assert got["mean_logit"] == pytest.approx(expected, abs=1e-12)


def test_agreement_of_the_same_order_is_one_and_of_the_reverse_minus_one():
    scores = np.array([0.6, 0.4, 0.55, np.nan])
    got = baseline_agreement(scores, {"up": np.array([3.0, 1.0, 2.0, 9.0]), "down": np.array([1.0, 3.0, 2.0, 0.0])})
    assert got == {"up": 1.0, "down": -1.0}


def test_order_differences_name_the_clusters_that_move():
    scores = np.array([0.7, 0.5, 0.3, 0.6])  # hierarchy 0 > 3 > 1 > 2
    assert order_differences(scores, np.array([4.0, 3.0, 1.0, 3.5])) == []
    assert order_differences(scores, np.array([4.0, 3.6, 1.0, 3.5])) == [1, 3]  # mean logit: 0 > 1 > 3 > 2
