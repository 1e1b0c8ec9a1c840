from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xich.method.dominance import dominance_matrix, mosaic_dominance, pair_dominance, quadrant_relevance


def test_quadrant_relevance_hand_computed():
    cam = np.arange(16, dtype=float).reshape(1, 4, 4)
    # rows 0-1 / cols 0-1: 0+1+4+5; cols 2-3: 2+3+6+7; rows 2-3: 8+9+12+13, 10+11+14+15
    assert quadrant_relevance(cam).tolist() == [[10.0, 18.0, 42.0, 50.0]]


def test_quadrant_relevance_leaves_input_unmodified():
    cam = np.random.default_rng(0).random((3, 6, 6)).astype(np.float32)
    before = cam.copy()
    quadrant_relevance(cam)
    np.testing.assert_array_equal(cam, before)


def test_mosaic_dominance_hand_computed():
    """The third mosaic is not 0.5 (the first two are), so d of cluster j in place of cluster i's fails here."""
    relevance = np.array([[10.0, 18.0, 42.0, 50.0], [1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 0.0, 4.0]])
    in_i = np.array([[True, False, False, True], [True, True, False, False], [True, False, True, False]])
    d = mosaic_dominance(relevance, in_i)
    np.testing.assert_allclose(d, [(10 + 50) / 120, 0.5, (3 + 0) / 8])


def test_all_zero_cam_has_no_dominance():
    d = mosaic_dominance(np.zeros((1, 4)), np.array([[True, True, False, False]]))
    assert np.isnan(d[0])
    assert pair_dominance(np.array([np.nan, 0.8, 0.6])) == pytest.approx(0.7)
    assert np.isnan(pair_dominance(np.array([np.nan])))  # no evidence is not a tie


def test_pair_without_evidence_is_nan_in_both_directions():
    D = dominance_matrix({(0, 1): np.array([np.nan, np.nan]), (0, 2): np.array([0.8, 0.6]),
                          (1, 2): np.array([np.nan])}, 3)
    assert np.isnan(D[0, 1]) and np.isnan(D[1, 0]) and np.isnan(D[1, 2]) and np.isnan(D[2, 1])
    assert D[0, 2] == pytest.approx(0.7) and D[2, 0] == pytest.approx(0.3)
    np.testing.assert_allclose(np.diag(D), 0.5)


def test_dominance_matrix_hand_computed():
    D = dominance_matrix({(0, 1): np.array([0.6, 0.8]), (0, 2): np.array([0.5]), (1, 2): np.array([0.2, 0.4])}, 3)
    np.testing.assert_allclose(D, [[0.5, 0.7, 0.5], [0.3, 0.5, 0.3], [0.5, 0.7, 0.5]])


relevances = arrays(np.float64, st.tuples(st.integers(1, 20), st.just(4)),
                    elements=st.floats(0, 1e6, allow_nan=False, allow_subnormal=False))
masks = st.sampled_from([(1, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 1), (0, 1, 1, 0), (0, 1, 0, 1), (0, 0, 1, 1)])


@given(relevances, masks)
def test_dominance_is_complementary_and_bounded(relevance, mask):
    in_i = np.tile(np.array(mask, dtype=bool), (relevance.shape[0], 1))
    d_ij = mosaic_dominance(relevance, in_i)
    d_ji = mosaic_dominance(relevance, ~in_i)
    defined = relevance.sum(axis=1) > 0
    assert np.all(np.isnan(d_ij[~defined]))
    assert np.all((d_ij[defined] >= 0) & (d_ij[defined] <= 1))
    np.testing.assert_allclose(d_ij[defined] + d_ji[defined], 1.0, atol=1e-12)


@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
@settings(max_examples=50)
def test_dominance_matrix_complement_and_relabelling(P, seed):
    rng = np.random.default_rng(seed)
    pair_d = {(i, j): rng.random(5) for i in range(P) for j in range(i + 1, P)}
    D = dominance_matrix(pair_d, P)
    np.testing.assert_allclose(D + D.T, 1.0)
    np.testing.assert_allclose(np.diag(D), 0.5)
    # relabel clusters by a permutation: the matrix is permuted the same way
    perm = rng.permutation(P)
    relabelled = {}
    for (i, j), d in pair_d.items():
        a, b = perm[i], perm[j]
        relabelled[(a, b) if a < b else (b, a)] = d if a < b else 1 - d
    D2 = dominance_matrix(relabelled, P)
    np.testing.assert_allclose(D2[np.ix_(perm, perm)], D, atol=1e-12)
