"""Training distribution of the evaluation clusters (Fig. 4/5 of the XICH paper)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def training_distribution(train_labels: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Train count and train share of each evaluation cluster.

    Parameters
    ----------
    train_labels : int array (N_train,)
        The evaluation-fitted clustering's prediction for each training image of the class.

    Returns
    -------
    counts : int array (P,)
    shares : array (P,) summing to 1, or None when the class has no training image.
    """
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=n_clusters)
    total = counts.sum()
    return counts, (counts / total if total else None)


def training_share_se(counts: np.ndarray, population: int) -> np.ndarray:
    """Standard error of each train share when the shares come from a simple random sample (without replacement)
    of the class's ``population`` training images: sqrt((1 − n/N) · p(1 − p) / (n − 1)) with n = counts.sum()
    (Cochran, *Sampling Techniques*, eq. 3.5); 0 where every image was placed (n = N: the shares are exact).

    Parameters
    ----------
    counts : int array (P,) — the sample's training images per cluster.
    population : N, the class's training images before sampling (N ≥ n).

    Returns
    -------
    array (P,); NaN where n < 2 (no spread can be estimated).
    """
    counts = np.asarray(counts, dtype=float)
    n = counts.sum()
    if n >= population:
        return np.zeros_like(counts)
    if n < 2:
        return np.full_like(counts, np.nan)
    p = counts / n
    return np.sqrt((1 - n / population) * p * (1 - p) / (n - 1))


def score_share_spearman(scores: np.ndarray, shares: np.ndarray | None) -> float | None:
    """Spearman correlation of dominance score with train share; None where undefined."""
    if shares is None or len(scores) < 2 or np.ptp(scores) == 0 or np.ptp(shares) == 0:
        return None  # a constant input has no rank correlation
    rho = stats.spearmanr(scores, shares).statistic
    return None if np.isnan(rho) else float(rho)


def train_share_by_rank(ranked_shares: list[np.ndarray]) -> list[float]:
    """Mean train share at each dominance rank across classes (Fig. 5).

    ``ranked_shares[c][r]`` is the train share of class c's cluster of rank r; classes may
    have fewer clusters than others, and the mean at rank r is over the classes that have one.
    """
    depth = max((len(s) for s in ranked_shares), default=0)
    out = []
    for r in range(depth):
        at_r = [s[r] for s in ranked_shares if len(s) > r]
        out.append(float(np.mean(at_r)))
    return out
