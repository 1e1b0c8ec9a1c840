"""Per-image dominance against the usual per-sample variables, logit and softmax (Fig. 3 of the XICH paper)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def class_softmax(logits: np.ndarray, class_index: int) -> np.ndarray:
    """Softmax probability of ``class_index`` for each row of ``logits`` (N, K) → (N,)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, class_index] / e.sum(axis=1)


def dominance_correlations(scores: np.ndarray, logits: np.ndarray, softmax: np.ndarray) -> dict[str, float | None]:
    """Pearson and Spearman correlation of per-image dominance score with logit and with softmax.

    Each value is in [-1, 1], or None where undefined (fewer than 3 images, or a constant input).
    """
    out: dict[str, float | None] = {}
    for name, other in (("logit", logits), ("softmax", softmax)):
        x, y = np.asarray(scores, dtype=np.float64), np.asarray(other, dtype=np.float64)
        defined = x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.NearConstantInputWarning)  # near-constant is still defined
            out[f"pearson_{name}"] = float(np.clip(stats.pearsonr(x, y).statistic, -1, 1)) if defined else None
            out[f"spearman_{name}"] = float(stats.spearmanr(x, y).statistic) if defined else None
    return out
