"""Dominance of one cluster over another on mosaics (eq. 5–8 of the XICH paper)."""

from __future__ import annotations

import numpy as np

QUADRANTS = ("TL", "TR", "BL", "BR")


def quadrant_relevance(cams: np.ndarray) -> np.ndarray:
    """Positive relevance of each quadrant of 2×2 mosaics (eq. 5).

    Parameters
    ----------
    cams : array (B, H, W)
        Non-negative Grad-CAM maps at the mosaic's resolution.

    Returns
    -------
    array (B, 4)
        Sum of the map over the TL, TR, BL, BR quadrants. An odd H or W puts
        the middle row/column in the bottom/right quadrants.
    """
    cams = np.asarray(cams, dtype=np.float64)
    if cams.ndim != 3:
        raise ValueError(f"cams must be (B, H, W), got shape {cams.shape}")
    h2, w2 = cams.shape[1] // 2, cams.shape[2] // 2
    return np.stack(
        [
            cams[:, :h2, :w2].sum(axis=(1, 2)),
            cams[:, :h2, w2:].sum(axis=(1, 2)),
            cams[:, h2:, :w2].sum(axis=(1, 2)),
            cams[:, h2:, w2:].sum(axis=(1, 2)),
        ],
        axis=1,
    )


def mosaic_dominance(relevance: np.ndarray, in_cluster_i: np.ndarray) -> np.ndarray:
    """Dominance d_{γi,γj}(m) of cluster i on each mosaic (eq. 6).

    Parameters
    ----------
    relevance : array (B, 4)
        Quadrant relevance R(img) from :func:`quadrant_relevance`.
    in_cluster_i : bool array (B, 4)
        True where the quadrant's image belongs to cluster i.

    Returns
    -------
    array (B,)
        Share of the mosaic's relevance taken by cluster i's quadrants, in [0, 1];
        NaN where the mosaic has no relevance at all (d is undefined there, and
        callers exclude those mosaics). d for cluster j is ``1 - d`` (eq. 7).
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    mask = np.asarray(in_cluster_i, dtype=bool)
    if relevance.shape != mask.shape or relevance.ndim != 2:
        raise ValueError(f"relevance {relevance.shape} and in_cluster_i {mask.shape} must both be (B, 4)")
    if (relevance < 0).any():
        raise ValueError("relevance must be non-negative (Grad-CAM maps are ReLU'd)")
    total = relevance.sum(axis=1)
    share = (relevance * mask).sum(axis=1)
    out = np.full(total.shape, np.nan)
    defined = total > 0
    out[defined] = share[defined] / total[defined]
    return np.clip(out, 0.0, 1.0)


def pair_dominance(d: np.ndarray) -> float:
    """D_{γi,γj}: mean of the defined per-mosaic dominances of one pair (eq. 8).

    NaN entries (mosaics with an all-zero map) are excluded. With no defined mosaic at all the
    pair has no evidence either way, which is not a tie: NaN is returned.
    """
    d = np.asarray(d, dtype=np.float64)
    d = d[~np.isnan(d)]
    return float(d.mean()) if d.size else float("nan")


def dominance_matrix(pair_d: dict[tuple[int, int], np.ndarray], n_clusters: int) -> np.ndarray:
    """The P×P matrix D of pairwise dominance (eq. 7–8).

    Parameters
    ----------
    pair_d : mapping (i, j) → array (J,)
        Per-mosaic dominance of cluster i over cluster j, for unordered pairs i < j.
    n_clusters : int
        P.

    Returns
    -------
    array (P, P)
        ``D[i, j]`` from eq. 8, ``D[j, i] = 1 - D[i, j]`` (eq. 7), diagonal 0.5; NaN for a pair
        without evidence (no defined mosaic) or not in ``pair_d``.
    """
    D = np.full((n_clusters, n_clusters), np.nan)
    np.fill_diagonal(D, 0.5)
    for (i, j), d in pair_d.items():
        if not 0 <= i < n_clusters or not 0 <= j < n_clusters or i == j:
            raise ValueError(f"pair ({i}, {j}) is not a pair of distinct clusters among {n_clusters}")
        D[i, j] = pair_dominance(d)
        D[j, i] = 1.0 - D[i, j]
    return D
