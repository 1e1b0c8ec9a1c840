from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from xich.method.significance import holm, p_value_matrices, pair_p_value


def test_holm_hand_computed():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .02 .03 .06 .06
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, 0.005])), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])  # .5*2 = 1, then max(1, .9)
    assert holm(np.array([])).size == 0


@given(arrays(np.float64, st.integers(1, 30), elements=st.floats(0, 1)))
def test_holm_bounds_and_monotone(p):
    adj = holm(p)
    assert np.all(adj >= p - 1e-15) and np.all(adj <= 1)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)


def test_pair_p_value_matches_scipy_and_ignores_excluded():
    d = np.array([0.6, 0.7, np.nan, 0.55, 0.8])
    assert pair_p_value(d) == pytest.approx(stats.ttest_1samp([0.6, 0.7, 0.55, 0.8], 0.5).pvalue)


def test_pair_p_value_degenerate_cases_are_not_nan():
    assert pair_p_value(np.array([0.9])) == 1.0
    assert pair_p_value(np.array([0.5, 0.5, 0.5])) == 1.0
    assert pair_p_value(np.array([0.7, 0.7])) == 0.0  # no spread, away from 0.5: t is infinite


def test_p_value_matrices_symmetric_and_holm_per_class():
    rng = np.random.default_rng(1)
    pair_d = {(0, 1): 0.5 + 0.1 * rng.standard_normal(10) + 0.2, (0, 2): 0.5 + 0.1 * rng.standard_normal(10),
              (1, 2): 0.5 + 0.1 * rng.standard_normal(10) - 0.1}
    raw, adj = p_value_matrices(pair_d, 3)
    np.testing.assert_array_equal(raw, raw.T)
    np.testing.assert_array_equal(np.diag(raw), 1.0)
    ps = [stats.ttest_1samp(pair_d[k], 0.5).pvalue for k in sorted(pair_d)]
    np.testing.assert_allclose([raw[0, 1], raw[0, 2], raw[1, 2]], ps)
    np.testing.assert_allclose([adj[0, 1], adj[0, 2], adj[1, 2]], holm(np.array(ps)))
