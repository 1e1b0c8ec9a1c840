from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from xich.method.per_image import class_softmax, dominance_correlations


def test_class_softmax_hand_computed():
    logits = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]])
    np.testing.assert_allclose(class_softmax(logits, 1), [0.75, 0.5])


def test_correlations_match_scipy_and_handle_constants():
    s, lg, p = np.array([0.2, 0.5, 0.4, 0.9]), np.array([1.0, 3.0, 2.5, 2.0]), np.array([0.1, 0.8, 0.7, 0.6])
    c = dominance_correlations(s, lg, p)
    assert c["pearson_logit"] == pytest.approx(stats.pearsonr(s, lg).statistic)
    assert c["spearman_softmax"] == pytest.approx(stats.spearmanr(s, p).statistic)
    assert dominance_correlations(np.full(4, 0.5), lg, p)["pearson_logit"] is None


@given(arrays(np.float64, 6, elements=st.floats(0, 1)), arrays(np.float64, 6, elements=st.floats(-20, 20)))
def test_correlations_bounded(scores, logits):
    c = dominance_correlations(scores, logits, 1 / (1 + np.exp(-logits)))
    assert all(v is None or -1 <= v <= 1 for v in c.values())
