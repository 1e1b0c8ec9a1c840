"""What one forward pass per image already says about a cluster, and how far the hierarchy agrees with it.

For a head GAP → Linear right after the target layer, Grad-CAM's map is the class activation map, whose
mean is the class logit minus the bias (see ``gradcam.py``), so the dominance hierarchy can be the clusters'
mean-logit order. These baselines, computed from the logits the embedding pass returns, make that visible
in every audit; Kendall's τ between the dominance scores and each baseline says how far they agree.
"""

from __future__ import annotations

import numpy as np

from .per_image import class_softmax

BASELINES = ("mean_logit", "mean_softmax", "accuracy", "mean_margin")


def cluster_baselines(logits: np.ndarray, labels: np.ndarray, n_clusters: int, class_index: int) -> dict[str, np.ndarray]:
    """Per cluster: mean class logit, mean softmax of the class, accuracy and mean margin.

    Parameters
    ----------
    logits : array (N, K) — the model's outputs for the class's N evaluation images.
    labels : int array (N,) — each image's cluster, in [0, P).
    n_clusters : int — P.
    class_index : int — the model output of the audited class.

    Returns
    -------
    dict of arrays (P,), keys :data:`BASELINES`. ``accuracy`` is the share of the cluster's images whose
    arg-max output is ``class_index``; ``mean_margin`` the mean of (class logit − best other logit).
    NaN for a cluster without images.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or not 0 <= class_index < logits.shape[1]:
        raise ValueError(f"logits must be (N, K) with class_index < K and labels (N,); got {logits.shape}, "
                         f"{labels.shape}, class {class_index}")
    own = logits[:, class_index]
    others = np.delete(logits, class_index, axis=1)
    per_image = {
        "mean_logit": own,
        "mean_softmax": class_softmax(logits, class_index),
        "accuracy": (logits.argmax(axis=1) == class_index).astype(np.float64),
        "mean_margin": own - others.max(axis=1) if others.shape[1] else np.full(own.shape, np.nan),
    }
    out = {}
    for name, values in per_image.items():
        out[name] = np.array([values[labels == c].mean() if (labels == c).any() else np.nan
                              for c in range(n_clusters)])
    return out


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's τ-b of two paired samples (ties counted as in ``scipy.stats.kendalltau``).

    τ_b = (n_c − n_d) / √((n_0 − n_x)(n_0 − n_y)) over the n_0 = n(n−1)/2 pairs, n_x and n_y the pairs
    tied in x and in y. NaN where undefined: fewer than 2 values, or x or y constant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    i, j = np.triu_indices(x.size, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    untied_x, untied_y = np.count_nonzero(sx), np.count_nonzero(sy)
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float(np.clip((sx * sy).sum() / np.sqrt(float(untied_x) * float(untied_y)), -1.0, 1.0))


def baseline_agreement(scores: np.ndarray, baselines: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Kendall's τ between the dominance scores (eq. 7 summed) and each baseline, over the clusters with a score.

    Parameters
    ----------
    scores : array (P,) — hierarchy scores; NaN for a cluster without evidence (left out).
    baselines : dict of arrays (P,) — from :func:`cluster_baselines`.

    Returns
    -------
    dict name → τ in [−1, 1], or None where undefined (fewer than two scored clusters, or constant values).
    τ = 1: the hierarchy is exactly that baseline's order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    out: dict[str, float | None] = {}
    for name, values in baselines.items():
        values = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(scores) & ~np.isnan(values)
        tau = kendall_tau(scores[keep], values[keep])
        out[name] = None if np.isnan(tau) else tau
    return out


def order_differences(scores: np.ndarray, reference: np.ndarray) -> list[int]:
    """Clusters whose place in the dominance hierarchy differs from their place in ``reference``'s order.

    Both orders descending, ties broken by cluster id (as :func:`xich.method.hierarchy.hierarchy`); clusters
    without a score are left out. Returns the ids, ascending; empty when the orders agree.
    """
    scores, reference = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    scored = np.flatnonzero(~np.isnan(scores) & ~np.isnan(reference))
    by_score = scored[np.lexsort((scored, -scores[scored]))]
    by_reference = scored[np.lexsort((scored, -reference[scored]))]
    return sorted(int(a) for a, b in zip(by_score, by_reference) if a != b)
