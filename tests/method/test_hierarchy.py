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


def test_single_cluster_has_no_score():
    assert np.isnan(hierarchy_scores(np.array([[0.5]]))).all()  # nothing to compare it with


def test_pairs_without_evidence_are_left_out_and_clusters_without_any_are_unranked():
    nan = np.nan
    D = np.array([[0.5, 0.8, nan, nan], [0.2, 0.5, 0.4, nan], [nan, 0.6, 0.5, nan], [nan, nan, nan, 0.5]])
    scores = hierarchy_scores(D)
    np.testing.assert_allclose(scores[:3], [0.8, 0.3, 0.6])  # means over the pairs with evidence only
    assert np.isnan(scores[3])
    order, rank = hierarchy(scores)
    assert order.tolist() == [0, 2, 1]
    assert rank[:3].tolist() == [0, 2, 1] and np.isnan(rank[3])


def test_all_zero_class_has_no_hierarchy():
    D = np.full((3, 3), np.nan)
    np.fill_diagonal(D, 0.5)
    order, rank = hierarchy(hierarchy_scores(D))
    assert order.size == 0 and np.isnan(rank).all()


@given(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), min_size=1, max_size=10))
def test_rank_is_inverse_of_order(scores):
    order, rank = hierarchy(np.array(scores))
    scored = [c for c, s in enumerate(scores) if not np.isnan(s)]
    assert sorted(order.tolist()) == scored
    assert all(rank[c] == k for k, c in enumerate(order))
    assert all(np.isnan(rank[c]) for c in range(len(scores)) if c not in scored)
    assert all(scores[order[k]] >= scores[order[k + 1]] for k in range(len(order) - 1))
