from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from xich.method.distribution import score_share_spearman, train_share_by_rank, training_distribution


def test_training_distribution_hand_computed():
    counts, shares = training_distribution(np.array([0, 2, 2, 1, 2]), 4)
    assert counts.tolist() == [1, 1, 3, 0]
    np.testing.assert_allclose(shares, [0.2, 0.2, 0.6, 0.0])


def test_no_training_images_gives_no_shares():
    counts, shares = training_distribution(np.array([], dtype=int), 3)
    assert counts.tolist() == [0, 0, 0] and shares is None


def test_spearman():
    assert score_share_spearman(np.array([0.7, 0.5, 0.3]), np.array([0.5, 0.3, 0.2])) == pytest.approx(1.0)
    s, t = np.array([0.1, 0.4, 0.3, 0.9]), np.array([0.2, 0.1, 0.3, 0.4])
    assert score_share_spearman(s, t) == pytest.approx(stats.spearmanr(s, t).statistic)
    assert score_share_spearman(np.array([0.5, 0.5]), np.array([0.2, 0.8])) is None  # constant: undefined
    assert score_share_spearman(np.array([0.5, 0.4]), None) is None


def test_train_share_by_rank_hand_computed():
    assert train_share_by_rank([np.array([0.5, 0.3, 0.2]), np.array([0.7, 0.3])]) == pytest.approx([0.6, 0.3, 0.2])
    assert train_share_by_rank([]) == []
