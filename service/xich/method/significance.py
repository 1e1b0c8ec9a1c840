"""Significance of dominance: t-test against 0.5 per pair, Holm correction per class (section 3.4)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def pair_p_value(d: np.ndarray) -> float:
    """Two-sided p-value of a one-sample t-test of the mosaics' d against 0.5.

    NaN entries (excluded mosaics) are dropped. Fewer than two values give no evidence: 1.0.
    Values with no spread give t = ±inf (p = 0) away from 0.5 and 1.0 at 0.5.
    """
    d = np.asarray(d, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size < 2:
        return 1.0
    if np.ptp(d) == 0:
        return 1.0 if d[0] == 0.5 else 0.0
    p = float(stats.ttest_1samp(d, 0.5).pvalue)
    return 1.0 if np.isnan(p) else p


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


def p_value_matrices(pair_d: dict[tuple[int, int], np.ndarray], n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric P×P matrices of raw and Holm-corrected p-values (diagonal 1.0).

    The test of d_ji = 1 - d_ij against 0.5 has the same p-value, so the matrix is symmetric;
    Holm's family is the class's P(P-1)/2 unordered pairs.
    """
    raw = np.ones((n_clusters, n_clusters))
    adj = np.ones((n_clusters, n_clusters))
    pairs = sorted(pair_d)
    ps = np.array([pair_p_value(pair_d[pair]) for pair in pairs])
    for (i, j), p, q in zip(pairs, ps, holm(ps)):
        raw[i, j] = raw[j, i] = p
        adj[i, j] = adj[j, i] = q
    return raw, adj
