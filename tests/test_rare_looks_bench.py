"""The rare-look benchmark's metrics (bench/rare_looks_metrics.py) on a hand-built 10-image case, values worked by
hand; and its Domino-like peer on two blobs whose weak one it must flag."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from rare_looks_metrics import attributable, auroc, best_cluster_f1, mean_ci, precision_recall_f1  # noqa: E402

# images 0-2 are the rare look
TRUTH = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)


def test_precision_recall_f1_by_hand():
    flagged = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)  # 2 of the 3 flagged are the look, 2 of 3 found
    assert precision_recall_f1(flagged, TRUTH) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    only_one = np.zeros(10, dtype=bool)
    only_one[0] = True  # precision 1, recall 1/3: F1 = 2·1·(1/3) / (4/3) = 0.5
    assert precision_recall_f1(only_one, TRUTH) == pytest.approx((1.0, 1 / 3, 0.5))
    assert precision_recall_f1(np.zeros(10, dtype=bool), TRUTH) == (0.0, 0.0, 0.0)  # nothing flagged: F1 0
    assert precision_recall_f1(~TRUTH, TRUTH) == (0.0, 0.0, 0.0)  # only wrong images
    with pytest.raises(ValueError):
        precision_recall_f1(flagged, np.zeros(10, dtype=bool))  # no look to find


def test_auroc_by_hand_with_a_tie():
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.2, 0.3, 0.0, 0.05, 0.6])
    # 0.9 and 0.8 beat all 7 negatives; 0.3 beats 0.1, 0.2, 0.0, 0.05 and ties 0.3: (7 + 7 + 4.5) / 21
    assert auroc(scores, TRUTH) == pytest.approx(18.5 / 21)
    assert auroc(-scores, TRUTH) == pytest.approx(1 - 18.5 / 21)
    assert auroc(np.ones(10), TRUTH) == pytest.approx(0.5)
    assert math.isnan(auroc(scores, np.ones(10, dtype=bool)))


def test_attributable_f1_and_best_cluster_by_hand():
    f1_rare = precision_recall_f1(np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool), TRUTH)[2]
    f1_null = precision_recall_f1(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool), TRUTH)[2]
    assert attributable(f1_rare, f1_null) == pytest.approx(2 / 3 - 0.5)
    assert attributable(f1_rare, 0.0) == pytest.approx(2 / 3)
    # cluster 0 = {0, 1, 3}: F1 2/3; cluster 1 = {2, 4, 5}: 1/3; cluster 2: 0
    assert best_cluster_f1(np.array([0, 0, 1, 0, 1, 1, 2, 2, 2, 2]), TRUTH) == pytest.approx(2 / 3)


def test_mean_ci_by_hand():
    mean, lo, hi, n = mean_ci([0.2, 0.4, 0.6, float("nan")])  # sd 0.2, t(2) = 4.303
    assert (mean, n) == (pytest.approx(0.4), 3)
    assert (lo, hi) == (pytest.approx(0.4 - 4.303 * 0.2 / math.sqrt(3)), pytest.approx(0.4 + 4.303 * 0.2 / math.sqrt(3)))
    assert mean_ci([])[3] == 0


def test_domino_like_flags_the_weak_blob():
    from rare_looks import domino_like

    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (200, 8)), rng.normal(4, 1, (50, 8))])
    p_true = np.concatenate([rng.uniform(0.8, 1.0, 200), rng.uniform(0.0, 0.3, 50)])  # the second blob is weak
    flagged, member = domino_like(emb, p_true, seed=0)
    truth = np.arange(250) >= 200
    assert precision_recall_f1(flagged, truth)[2] > 0.9
    assert auroc(member, truth) > 0.95
