from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from xich.method.significance import (SPREAD_EPS, confidence_intervals, holm, p_value_matrices,
                                      pair_confidence_interval, pair_p_value, set_means)


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


def test_pair_p_value_degenerate_cases_are_one_never_zero():
    assert pair_p_value(np.array([0.9])) == 1.0
    assert pair_p_value(np.array([0.5, 0.5, 0.5])) == 1.0
    assert pair_p_value(np.array([0.7, 0.7])) == 1.0  # no spread is no evidence, not an infinite t
    # nor is a spread of rounding: 0.1 + 0.2 is 0.3 + 5.6e-17, and the t-test would answer p ~ 1e-30
    rounded = np.array([0.3, 0.1 + 0.2, 0.3])
    assert 0 < np.ptp(rounded) < 1e-15 and stats.ttest_1samp(rounded, 0.5).pvalue < 1e-20
    assert pair_p_value(rounded) == 1.0
    assert np.isnan(pair_confidence_interval(rounded, 0.3)).all()


def test_pseudo_replicated_mosaics_give_no_significance():
    # three copies of one mosaic (a cluster of one image against one of one): one distinct set
    d = np.array([0.62, 0.62, 0.62])
    assert set_means(d, np.zeros(3, dtype=int)).tolist() == [pytest.approx(0.62)]
    assert pair_p_value(set_means(d, np.zeros(3, dtype=int))) == 1.0
    # the same four images in other arrangements: averaged to one value per set
    d = np.array([0.7, 0.8, 0.65, 0.75, 0.9])
    sets = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(set_means(d, sets), [np.mean([0.7, 0.8, 0.65]), np.mean([0.75, 0.9])])
    assert pair_p_value(set_means(d, np.zeros(5, dtype=int))) == 1.0


def test_set_means_drop_excluded_mosaics_and_empty_sets():
    d = np.array([np.nan, 0.4, np.nan, 0.8])
    np.testing.assert_allclose(set_means(d, np.array([0, 0, 1, 2])), [0.4, 0.8])  # set 1 had no defined mosaic


def test_confidence_interval_hand_computed():
    # values 0.6, 0.7, 0.8: mean .7, sd .1, t_{.975,2} = 4.302653 -> half-width 4.302653 * .1 / sqrt(3)
    half = 4.302652729911275 * 0.1 / np.sqrt(3)
    lo, hi = pair_confidence_interval(np.array([0.6, 0.7, 0.8]), 0.7)
    assert lo == pytest.approx(0.7 - half) and hi == pytest.approx(min(1.0, 0.7 + half))
    assert np.isnan(pair_confidence_interval(np.array([0.6]), 0.6)).all()
    assert np.isnan(pair_confidence_interval(np.array([0.6, 0.6]), 0.6)).all()


@given(arrays(np.float64, st.integers(2, 20), elements=st.floats(0, 1)))
def test_confidence_interval_contains_d_and_mirrors(values):
    D = np.array([[0.5, values.mean()], [1 - values.mean(), 0.5]])
    lo, hi = confidence_intervals({(0, 1): values}, D)
    if np.isnan(lo[0, 1]):
        assert np.ptp(values) <= SPREAD_EPS
        return
    assert 0 <= lo[0, 1] <= D[0, 1] + 1e-12 and D[0, 1] - 1e-12 <= hi[0, 1] <= 1
    assert lo[1, 0] == pytest.approx(1 - hi[0, 1]) and hi[1, 0] == pytest.approx(1 - lo[0, 1])


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
