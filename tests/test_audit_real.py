"""`xich audit` on the real ResNet-20 checkpoint and CIFAR-10 JPEGs from ../shared/data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from xich.engine.audit import null_seed
from xich.cli import main
from xich.method.significance import holm

from shared_data import SHARED
WEIGHTS = SHARED / "cifar-resnet" / "resnet20-12fca82f.th"
DATA = SHARED / "cifar10-jpeg"

pytestmark = [pytest.mark.shared_data,
              pytest.mark.skipif(not (WEIGHTS.is_file() and (DATA / "test.tar.gz").is_file()),
                                 reason="../shared/data (ResNet-20 checkpoint, CIFAR-10 JPEGs) absent")]


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("real") / "audit.json"
    rc = main(["audit", "--model", "cifar:resnet20", "--weights", str(WEIGHTS), "--data", str(DATA),
               "--classes", "airplane,cat,truck", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_document_shape(audit):
    assert audit["config"] == {"clusters": 5, "mosaics_per_pair": 25, "seed": 0, "layer": "layer3", "cam": "fast",
                               "method": "gradcam", "control_seed": None, "tile_size": 32, "mosaic_size": 64, "normalize": "imagenet", "per_image": 0,
                               "train_per_class": None, "precision": "fp32", "looks": "under_represented",
                               "null_seed": null_seed(0)}
    assert [c["name"] for c in audit["classes"]] == ["airplane", "cat", "truck"]
    assert [c["index"] for c in audit["classes"]] == [0, 3, 9]
    assert audit["dataset"]["train_split"] == "train"


@pytest.mark.parametrize("k", range(3))
def test_class_is_internally_consistent(audit, k):
    cls = audit["classes"][k]
    D = np.array(cls["dominance"])
    P = len(cls["clusters"])
    assert D.shape == (P, P) == (5, 5)
    np.testing.assert_allclose(D + D.T, 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(D), 0.5)
    # every evaluation image of the class is in exactly one cluster
    members = [m for c in cls["clusters"] for m in c["members"]]
    assert len(members) == len(set(members)) == 1000
    assert all(m.startswith(cls["name"] + "/") for m in members)
    assert [len(c["members"]) for c in cls["clusters"]] == [c["eval_size"] for c in cls["clusters"]]
    # train shares sum to 1 and match counts; 5000 training images per class
    counts = np.array([c["train_count"] for c in cls["clusters"]])
    assert counts.sum() == 5000
    np.testing.assert_allclose([c["train_share"] for c in cls["clusters"]], counts / 5000)
    # hierarchy matches scores; scores are row means of D off the diagonal
    scores = np.array([c["score"] for c in cls["clusters"]])
    np.testing.assert_allclose(scores, (D.sum(axis=1) - 0.5) / (P - 1))
    assert [scores[c] for c in cls["hierarchy"]] == sorted(scores, reverse=True)
    assert [cls["clusters"][c]["rank"] for c in cls["hierarchy"]] == list(range(P))
    # D and p-values from the manifest's per-mosaic d values
    assert len(cls["mosaics"]) == 10 * 25
    p_pairs = []
    for i in range(P):
        for j in range(i + 1, P):
            d = [m["d"] for m in cls["mosaics"] if m["pair"] == [i, j] and m["d"] is not None]
            assert len(d) + sum(1 for m in cls["mosaics"] if m["pair"] == [i, j] and m["d"] is None) == 25
            assert D[i, j] == pytest.approx(np.mean(d))
            p = stats.ttest_1samp(d, 0.5).pvalue
            assert cls["p_values"][i][j] == pytest.approx(p) and cls["p_values"][j][i] == pytest.approx(p)
            p_pairs.append(p)
    np.testing.assert_allclose(sorted(cls["p_values_holm"][i][j] for i in range(P) for j in range(i + 1, P)),
                               sorted(holm(np.array(p_pairs))))
    for m in cls["mosaics"]:
        assert sorted(m["clusters"]) == sorted(m["pair"] * 2)
        assert all(img in cls["clusters"][c]["members"] for img, c in zip(m["images"], m["clusters"]))
    rho = stats.spearmanr(scores, counts).statistic
    assert cls["spearman_score_train_share"] == pytest.approx(rho)


def test_summary(audit):
    by_rank = audit["summary"]["train_share_by_rank"]
    expected = [np.mean([next(c["train_share"] for c in cls["clusters"] if c["rank"] == r) for cls in audit["classes"]])
                for r in range(5)]
    np.testing.assert_allclose(by_rank, expected)
    assert audit["summary"]["mean_spearman"] == pytest.approx(
        np.mean([c["spearman_score_train_share"] for c in audit["classes"]]))
