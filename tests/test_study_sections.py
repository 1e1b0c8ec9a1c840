"""The held-out section's statistics (bench/sections/heldout.py) on a record small enough to compute by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.sections.heldout import heldout_stats  # noqa: E402


def _cluster(cid, score_a, score_a2, score_b, share, size_a, size_b, logit_a, logit_b, logit_train):
    return {"id": cid, "score_a": score_a, "score_a2": score_a2, "score_b": score_b, "train_share": share,
            "size_a": size_a, "size_b": size_b, "train_count": 0,
            "baselines": {"a": {"mean_logit": logit_a}, "b": {"mean_logit": logit_b}, "train": {"mean_logit": logit_train}}}


def test_heldout_stats_by_hand():
    rec = {"hierarchy_a": [0, 1, 2], "hierarchy_b": [1, 0, 2],
           "significant_a": [[0, 2], [1, 2]], "significant_a2": [], "significant_b": [[1, 2]],
           "clusters": [_cluster(0, 3, 3, 2, 0.5, 10, 12, 5, 5, 6), _cluster(1, 2, 1, 3, 0.3, 10, 8, 4, 3, 5),
                        _cluster(2, 1, 2, 1, 0.2, 10, 10, 3, 4, 6.5)]}
    s = heldout_stats(rec)
    # Kendall: (0,1) (0,2) (1,2) concordant / discordant, (C - D) / 3
    assert s["tau_a_a2"] == pytest.approx(1 / 3)  # C C D
    assert s["tau_a_b"] == pytest.approx(1 / 3)  # D C C
    assert s["tau_logit_a_b"] == pytest.approx(1 / 3)  # [5,4,3] vs [5,3,4]: C C D
    assert s["tau_b_logit"] == pytest.approx(-1 / 3)  # [2,3,1] vs [5,3,4]: D C D
    assert s["least_same"] is True
    assert (s["sig_a"], s["sig_b"], s["sig_kept"]) == (2, 1, 1)
    assert s["size_shift"] == pytest.approx((0.2 + 0.2 + 0) / 3)
    # Spearman 1 - 6 Σd² / (n (n² - 1)) with n = 3: score B ranks [2, 3, 1]
    assert s["rho_b_share"] == pytest.approx(0.5)  # share ranks [3, 2, 1]: Σd² = 2
    assert s["gap_mean"] == pytest.approx((1 + 2 + 2.5) / 3)  # gap = train - B = [1, 2, 2.5]
    assert s["rho_b_gap"] == pytest.approx(-0.5)  # gap ranks [1, 2, 3]: Σd² = 6
    assert s["rho_b_train_logit"] == pytest.approx(-1.0)  # train ranks [2, 1, 3]: Σd² = 8
    assert s["least_gap_largest"] is True  # the largest gap is cluster 2, last on B


def test_heldout_stats_without_a_heldout_hierarchy():
    """A cluster with no held-out image: no B hierarchy, and the B statistics are absent, not made up."""
    rec = {"hierarchy_a": [0, 1, 2], "hierarchy_b": None, "significant_a": [[0, 2]], "significant_a2": [],
           "significant_b": None,
           "clusters": [_cluster(0, 3, 3, None, 0.5, 10, 0, 5, 5, 6), _cluster(1, 2, 1, None, 0.3, 10, 8, 4, 3, 5),
                        _cluster(2, 1, 2, None, 0.2, 10, 10, 3, 4, 6.5)]}
    s = heldout_stats(rec)
    assert s["tau_a_b"] is None and s["rho_b_share"] is None and s["least_same"] is None
    assert s["sig_kept"] == 0 and s["least_gap_largest"] is False
