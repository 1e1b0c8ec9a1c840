"""The intra-class hierarchy: clusters sorted by their mean dominance (end of section 3.4)."""

from __future__ import annotations

import numpy as np


def hierarchy_scores(D: np.ndarray) -> np.ndarray:
    """score_i = mean of D[i, j] over the j ≠ i with evidence; shape (P,).

    NaN entries of D (pairs without evidence) are left out; a cluster with no evidence against
    any other (or alone in its class) scores NaN: it has no place in the hierarchy.
    """
    D = np.asarray(D, dtype=np.float64)
    P = D.shape[0]
    if D.shape != (P, P):
        raise ValueError(f"D must be square, got {D.shape}")
    off = ~np.eye(P, dtype=bool) & ~np.isnan(D)
    counts = off.sum(axis=1)
    sums = np.where(off, D, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def hierarchy(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order the clusters that have a score from most to least dominant.

    Returns
    -------
    order : int array (R,)
        Ids of the R clusters with a score, most dominant first (ties: lower id first).
    rank : float array (P,)
        ``rank[c]`` is cluster c's position in ``order`` (0 = most dominant); NaN for a cluster
        without a score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scored = np.flatnonzero(~np.isnan(scores))
    order = scored[np.lexsort((scored, -scores[scored]))]
    rank = np.full(scores.size, np.nan)
    rank[order] = np.arange(order.size)
    return order, rank
