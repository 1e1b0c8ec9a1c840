"""The look signals and their flag rule (method/looks.py), on hand-worked clusters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import stats

from xich.method.looks import (OVERSAMPLE_CAP, RATIO_FLAG, SIGNALS, accuracy_deficit_p, flag_looks, need,
                               oversample_weights, representation_ratio)


def test_representation_ratio_by_hand():
    # training 10/20/70 of 100, evaluation 25/25/50 of 100: shares 0.1/0.2/0.7 against 0.25/0.25/0.5
    r = representation_ratio(np.array([10, 20, 70]), np.array([25, 25, 50]))
    np.testing.assert_allclose(r, [0.4, 0.8, 1.4])


def test_representation_ratio_without_training_images_is_nan():
    assert np.isnan(representation_ratio(None, np.array([3, 4]))).all()
    assert np.isnan(representation_ratio(np.array([0, 0]), np.array([3, 4]))).all()
    assert np.isnan(representation_ratio(np.array([1, 1]), np.array([0, 4])))[0]


@given(st.lists(st.integers(1, 50), min_size=2, max_size=6).flatmap(
    lambda e: st.tuples(st.just(e), st.lists(st.integers(0, 50), min_size=len(e), max_size=len(e)))))
def test_ratio_weighted_by_eval_share_sums_to_one(pair):
    eval_sizes, counts = map(np.array, pair)
    if counts.sum() == 0:
        return
    r = representation_ratio(counts, eval_sizes)
    # sum_c ratio_c * eval share_c = sum of training shares = 1
    assert float((r * eval_sizes / eval_sizes.sum()).sum()) == pytest.approx(1.0)


BASE = {"mean_logit": np.array([3.0, 1.0, 2.0]), "accuracy": np.array([0.9, 0.5, 0.8]),
        "mean_margin": np.array([2.0, -0.5, 1.5])}
SIZES = np.array([40, 40, 20])


def test_need_by_signal():
    scores, ratio = np.array([0.6, 0.45, 0.45]), np.array([1.2, 1.0, 0.25])
    np.testing.assert_allclose(need("least_dominant", scores=scores, baselines=BASE, ratio=ratio), -scores)
    np.testing.assert_allclose(need("lowest_margin", scores=scores, baselines=BASE, ratio=ratio), [-2.0, 0.5, -1.5])
    np.testing.assert_allclose(need("under_represented", scores=scores, baselines=BASE, ratio=ratio), -ratio)
    # (1 - accuracy) * max(0, 1 - ratio): 0.1*0, 0.5*0, 0.2*0.75
    np.testing.assert_allclose(need("weak_under_represented", scores=scores, baselines=BASE, ratio=ratio),
                               [0.0, 0.0, 0.15])
    with pytest.raises(ValueError, match="signal 'rarest'"):
        need("rarest", scores=scores, baselines=BASE, ratio=ratio)


def test_top1_names_the_largest_need_and_ties_go_to_the_lower_id():
    scores, ratio = np.array([0.5, 0.4, 0.4]), np.array([1.0, 1.0, 1.0])
    assert flag_looks("least_dominant", scores=scores, baselines=BASE, ratio=ratio, eval_sizes=SIZES, top1=True) == [1]
    assert flag_looks("lowest_accuracy", scores=scores, baselines=BASE, ratio=ratio, eval_sizes=SIZES, top1=True) == [1]


def test_under_represented_rule_flags_below_the_threshold_most_in_need_first():
    ratio = np.array([0.3, RATIO_FLAG, 0.1])
    got = flag_looks("under_represented", scores=np.zeros(3), baselines=BASE, ratio=ratio, eval_sizes=SIZES)
    assert got == [2, 0]  # 0.5 itself is not below the threshold


def test_weak_under_represented_needs_both():
    # class accuracy over its images: (0.9*40 + 0.5*40 + 0.8*20) / 100 = 0.72
    ratio = np.array([0.2, 1.0, 0.3])  # cluster 0 rare but strong (0.9), cluster 2 rare and above 0.72 too (0.8)
    assert flag_looks("weak_under_represented", scores=np.zeros(3), baselines=BASE, ratio=ratio, eval_sizes=SIZES) == []
    ratio = np.array([1.0, 0.2, 0.3])  # cluster 1: rare and weak (0.5 < 0.72)
    assert flag_looks("weak_under_represented", scores=np.zeros(3), baselines=BASE, ratio=ratio,
                      eval_sizes=SIZES) == [1]


def test_accuracy_deficit_is_fishers_exact_test():
    # cluster 1: 20 of 40 right; the rest: 36 + 16 = 52 of 60
    p = accuracy_deficit_p(BASE["accuracy"], SIZES, 1)
    assert p == pytest.approx(stats.fisher_exact([[20, 20], [52, 8]], alternative="less").pvalue)
    assert p < 0.05
    assert flag_looks("lowest_accuracy", scores=np.zeros(3), baselines=BASE, ratio=np.ones(3), eval_sizes=SIZES) == [1]
    even = {**BASE, "accuracy": np.array([0.8, 0.75, 0.8])}
    assert flag_looks("lowest_mean_logit", scores=np.zeros(3), baselines=even, ratio=np.ones(3), eval_sizes=SIZES) == []


def test_least_dominant_rule_needs_a_significant_loss():
    scores = np.array([0.6, 0.5, 0.4])
    D = np.array([[np.nan, 0.55, 0.65], [0.45, np.nan, 0.55], [0.35, 0.45, np.nan]])
    p = np.array([[1, 0.2, 0.01], [0.2, 1, 0.3], [0.01, 0.3, 1]])
    kw = dict(scores=scores, baselines=BASE, ratio=np.ones(3), eval_sizes=SIZES, dominance=D)
    assert flag_looks("least_dominant", p_values_holm=p, **kw) == [2]
    p[0, 2] = p[2, 0] = 0.2
    assert flag_looks("least_dominant", p_values_holm=p, **kw) == []


def test_oversample_weights_restore_the_evaluation_share_up_to_a_cap():
    assert oversample_weights(np.array([0.25, 1.0, 0.0]), [0, 2]) == {0: 4.0, 2: OVERSAMPLE_CAP}


def test_every_signal_has_a_rule():
    for s in SIGNALS:
        flag_looks(s, scores=np.array([0.6, 0.4]), baselines={k: v[:2] for k, v in BASE.items()},
                   ratio=np.array([1.0, 0.2]), eval_sizes=np.array([10, 10]), p_values_holm=np.ones((2, 2)),
                   dominance=np.full((2, 2), 0.5))


def _evidence(pairs, deficit, se):
    return {"significant_pairs": pairs, "score_spread": 0.2, "spearman_score_train_share": None, "look": 0,
            "accuracy_deficit": deficit, "deficit_se": se}


def test_above_the_null_needs_a_deficit_beyond_twice_the_combined_error():
    from xich.method.looks import null_comparison

    # 0.30 - 0.05 = 0.25 > 2 * hypot(0.04, 0.03) = 0.10
    verdict = null_comparison(_evidence(9, 0.30, 0.04), _evidence(3, 0.05, 0.03))
    assert verdict["above_null"] and verdict["pairs_above_null"]
    assert verdict["model"]["significant_pairs"] == 9 and verdict["significant_pairs"] == 3
    # 0.12 - 0.05 = 0.07 < 0.10: not above, whatever the pairs
    verdict = null_comparison(_evidence(9, 0.12, 0.04), _evidence(3, 0.05, 0.03))
    assert not verdict["above_null"] and not verdict["pairs_above_null"]
    # a random network: as weak nowhere as the null, more significant pairs than one null draw — no evidence
    verdict = null_comparison(_evidence(9, 0.0, 0.005), _evidence(0, 0.0, 0.003))
    assert not verdict["above_null"] and not verdict["pairs_above_null"]
    # above by the deficit, but the null reaches the pairs
    verdict = null_comparison(_evidence(4, 0.30, 0.04), _evidence(4, 0.05, 0.03))
    assert verdict["above_null"] and not verdict["pairs_above_null"]


def test_class_evidence_by_hand():
    from xich.method.looks import class_evidence

    # accuracy over the class: (0.9*40 + 0.5*40 + 0.8*20) / 100 = 0.72; the weakest look 1 (0.5): deficit 0.22,
    # whatever is flagged; its error with one success and one failure added: p = 21/42 = 0.5, sqrt(0.25/40)
    ev = class_evidence(significant_pairs=2, scores=np.array([0.6, np.nan, 0.4]), accuracy=BASE["accuracy"],
                        eval_sizes=SIZES, flagged=[2, 0], spearman=0.5)
    assert ev["look"] == 1 and ev["accuracy_deficit"] == pytest.approx(0.22) and ev["looks_flagged"] == 2
    assert ev["deficit_se"] == pytest.approx(np.sqrt(0.25 / 40))
    assert ev["score_spread"] == pytest.approx(0.2) and ev["significant_pairs"] == 2


def test_the_config_names_the_same_signals():
    """engine/config.py keeps its own copy of the signal names (it loads no numpy): the two must agree."""
    from xich.engine.config import DEFAULT_LOOKS, LOOK_SIGNALS

    assert LOOK_SIGNALS == SIGNALS and DEFAULT_LOOKS in SIGNALS
