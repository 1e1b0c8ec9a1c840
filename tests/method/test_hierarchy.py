from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from xich.method.hierarchy import hierarchy, hierarchy_scores


def test_scores_and_ranks_hand_computed():
    D = np.array([[0.5, 0.7, 0.5], [0.3, 0.5, 0.3], [0.5, 0.7, 0.5]])
    scores = hierarchy_scores(D)
    np.testing.assert_allclose(scores, [0.6, 0.3, 0.6])
    order, rank = hierarchy(scores)
    assert order.tolist() == [0, 2, 1]  # tie between 0 and 2 broken by id
    assert rank.tolist() == [0, 2, 1]


def test_single_cluster():
    assert hierarchy_scores(np.array([[0.5]])).tolist() == [0.5]


@given(st.lists(st.floats(0, 1), min_size=1, max_size=10))
def test_rank_is_inverse_of_order(scores):
    order, rank = hierarchy(np.array(scores))
    assert sorted(order.tolist()) == list(range(len(scores)))
    assert all(rank[c] == k for k, c in enumerate(order))
    assert all(scores[order[k]] >= scores[order[k + 1]] for k in range(len(scores) - 1))
