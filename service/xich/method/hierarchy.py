"""The intra-class hierarchy: clusters sorted by their mean dominance (end of section 3.4)."""

from __future__ import annotations

import numpy as np


def hierarchy_scores(D: np.ndarray) -> np.ndarray:
    """score_i = mean over j ≠ i of D[i, j]; shape (P,). A single cluster scores 0.5."""
    D = np.asarray(D, dtype=np.float64)
    P = D.shape[0]
    if D.shape != (P, P):
        raise ValueError(f"D must be square, got {D.shape}")
    if P == 1:
        return np.array([0.5])
    off = ~np.eye(P, dtype=bool)
    return (D * off).sum(axis=1) / (P - 1)


def hierarchy(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order clusters from most to least dominant.

    Returns
    -------
    order : int array (P,)
        Cluster ids, most dominant first (ties: lower id first).
    rank : int array (P,)
        ``rank[c]`` is cluster c's position in ``order`` (0 = most dominant).
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(scores.size), -scores))
    rank = np.empty(scores.size, dtype=int)
    rank[order] = np.arange(scores.size)
    return order, rank
