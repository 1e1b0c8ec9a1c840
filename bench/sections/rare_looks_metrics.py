"""Metrics of the rare-look benchmark (bench/rare_looks.py): how well a flagged set of images finds a planted look.

Plain numpy, no model: tested by hand on a 10-image toy in tests/test_rare_looks_bench.py.
"""

from __future__ import annotations

import math

import numpy as np


def precision_recall_f1(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of the boolean mask ``flagged`` against ``truth`` (the rare look's images).

    Nothing flagged: precision 0 (a rule that flags nothing has found nothing), recall 0, F1 0. A truth without
    positives is refused: every case of the benchmark has the look in its evaluation set.
    """
    flagged, truth = np.asarray(flagged, dtype=bool), np.asarray(truth, dtype=bool)
    if flagged.shape != truth.shape or not truth.any():
        raise ValueError(f"flagged {flagged.shape} and truth {truth.shape} must match, with at least one positive")
    hit = int((flagged & truth).sum())
    if not flagged.any() or hit == 0:
        return 0.0, 0.0, 0.0
    p, r = hit / int(flagged.sum()), hit / int(truth.sum())
    return p, r, 2 * p * r / (p + r)


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (larger = more likely the look) against ``truth``: the probability
    that a random positive scores above a random negative, ties counted one half (the Mann-Whitney U / n+ n-).
    NaN scores are refused; NaN without both positives and negatives."""
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth, dtype=bool)
    if scores.shape != truth.shape or np.isnan(scores).any():
        raise ValueError("scores must be finite and match truth")
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def best_cluster_f1(labels: np.ndarray, truth: np.ndarray) -> float:
    """The best F1 any single cluster of ``labels`` reaches against ``truth``: what the clustering allows a
    one-cluster flag to find."""
    labels = np.asarray(labels)
    return max(precision_recall_f1(labels == c, truth)[2] for c in np.unique(labels))


def attributable(f1_rare: float, f1_null: float) -> float:
    """Rarity-attributable F1: the F1 for a look when it was rare in training minus the F1 for the same look (same
    superclass, seed and evaluation set) when training was balanced. What rarity, not the look's difficulty,
    earned."""
    return float(f1_rare) - float(f1_null)


# two-sided 97.5 % quantiles of Student's t for small n - 1 (beyond 30: the normal 1.96)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}


def mean_ci(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the mean with its 95 % t-interval over ``values`` (NaN values dropped). The cases of
    one condition share models (5 superclasses per model), so the interval is a guide, not an exact coverage."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(v.mean())
    if n == 1:
        return m, float("nan"), float("nan"), 1
    half = _T975.get(n - 1, 1.96) * float(v.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half, n
