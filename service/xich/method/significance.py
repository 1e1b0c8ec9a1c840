"""Significance of dominance: t-test against 0.5 per pair, Holm correction per class (section 3.4).

The unit of evidence is a distinct *image set* (the four images of a mosaic, whatever their
quadrants): rearranging the same four images is no new sample, so each set's mosaics are first
averaged (:func:`set_means`) and the tests and intervals count each set once.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def set_means(d: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """Mean d of each distinct image set of one pair → array (S,), sets ordered by id.

    Parameters
    ----------
    d : array (J,) — per-mosaic dominance; NaN for excluded mosaics (all-zero map).
    sets : int array (J,) — the image-set id of each mosaic (:func:`xich.method.mosaic.image_sets`).

    Sets whose mosaics are all excluded are dropped.
    """
    d, sets = np.asarray(d, dtype=np.float64), np.asarray(sets)
    if d.shape != sets.shape:
        raise ValueError(f"d {d.shape} and sets {sets.shape} must have the same shape")
    keep = ~np.isnan(d)
    ids = np.unique(sets[keep])
    return np.array([d[keep & (sets == k)].mean() for k in ids])


SPREAD_EPS = 1e-12  # spread of per-set d values below this is rounding, not evidence


def pair_p_value(values: np.ndarray) -> float:
    """Two-sided p-value of a one-sample t-test of a pair's per-set d against 0.5.

    ``values`` holds one value per distinct image set (:func:`set_means`); NaN entries are dropped.
    Fewer than two sets, or values with no spread, give no evidence for a difference: 1.0 (never 0). "No spread"
    allows for rounding: d lies in [0, 1], so values within ``SPREAD_EPS`` of each other count as equal (the same
    image set computed as d one way and 1 − d the other differs by ~1e-17, which would otherwise give p ≈ 1e-38).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size < 2 or np.ptp(v) <= SPREAD_EPS:
        return 1.0
    p = float(stats.ttest_1samp(v, 0.5).pvalue)
    return 1.0 if np.isnan(p) else p


def pair_confidence_interval(values: np.ndarray, center: float, level: float = 0.95) -> tuple[float, float]:
    """t-based confidence interval for D around ``center`` (the pair's D, eq. 8), clipped to [0, 1].

    Half-width ``t_{(1+level)/2, S-1} · s / √S`` with s the standard deviation of the S per-set
    values. (NaN, NaN) where it is undefined: fewer than two sets, or no spread.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size < 2 or np.ptp(v) <= SPREAD_EPS or np.isnan(center):
        return float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return max(0.0, center - half), min(1.0, center + half)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (same order as the input).

    ``adj_(k) = max_{m<=k} min(1, (n - m + 1) * p_(m))`` over the ascending order.
    """
    p = np.asarray(p_values, dtype=np.float64)
    n = p.size
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (n - np.arange(n)) * p[order])
    adjusted = np.empty(n)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def p_value_matrices(pair_sets: dict[tuple[int, int], np.ndarray], n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric P×P matrices of raw and Holm-corrected p-values (diagonal 1.0).

    ``pair_sets`` maps each unordered pair i < j to its per-set values (:func:`set_means`).
    The test of d_ji = 1 - d_ij against 0.5 has the same p-value, so the matrix is symmetric;
    Holm's family is the class's P(P-1)/2 unordered pairs.
    """
    raw = np.ones((n_clusters, n_clusters))
    adj = np.ones((n_clusters, n_clusters))
    pairs = sorted(pair_sets)
    ps = np.array([pair_p_value(pair_sets[pair]) for pair in pairs])
    for (i, j), p, q in zip(pairs, ps, holm(ps)):
        raw[i, j] = raw[j, i] = p
        adj[i, j] = adj[j, i] = q
    return raw, adj


def confidence_intervals(pair_sets: dict[tuple[int, int], np.ndarray], D: np.ndarray,
                         level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """P×P lower and upper bounds of D's confidence intervals; [j, i] is the complement of [i, j].

    NaN where undefined (see :func:`pair_confidence_interval`) and on the diagonal.
    """
    P = D.shape[0]
    lo, hi = np.full((P, P), np.nan), np.full((P, P), np.nan)
    for (i, j), values in pair_sets.items():
        lo[i, j], hi[i, j] = pair_confidence_interval(values, D[i, j], level)
        lo[j, i], hi[j, i] = 1.0 - hi[i, j], 1.0 - lo[i, j]
    return lo, hi


def significant_pairs(D: np.ndarray, p_holm: np.ndarray, alpha: float = 0.05) -> list[tuple[int, int]]:
    """(i, j) where cluster i dominates j (D > 0.5, eq. 8) with a Holm-adjusted p below ``alpha``, row by row.

    ``D``, ``p_holm``: P×P matrices (NaN in D: no evidence, never significant).
    """
    D, p_holm = np.asarray(D, dtype=np.float64), np.asarray(p_holm, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hits = (D > 0.5) & (p_holm < alpha)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(hits))]
