"""Per-class clustering of GAP embeddings with K-Means (section 3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans


@dataclass(frozen=True)
class Clustering:
    """A fitted K-Means clustering of one class.

    labels : int array (N,) — cluster of each evaluation image, in 0..n_clusters-1.
    centers : array (n_clusters, C) — cluster centres in embedding space.
    requested : the P that was asked for; ``n_clusters < requested`` when the class had too few
        distinct images.
    """

    labels: np.ndarray
    centers: np.ndarray
    requested: int

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])


def cluster_embeddings(embeddings: np.ndarray, n_clusters: int, *, random_state: int) -> Clustering:
    """K-Means with ``min(n_clusters, distinct embeddings)`` clusters.

    Parameters
    ----------
    embeddings : array (N, C), N >= 1
    n_clusters : int >= 1, the paper's P
    random_state : seed for K-Means' initialisation
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, C) array, got shape {x.shape}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    k = min(n_clusters, np.unique(x, axis=0).shape[0])
    if k == 1:
        return Clustering(np.zeros(x.shape[0], dtype=int), x.mean(axis=0, keepdims=True), n_clusters)
    km = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit(x)
    return Clustering(km.labels_.astype(int), km.cluster_centers_, n_clusters)


def clustering_from_labels(embeddings: np.ndarray, labels: np.ndarray) -> Clustering:
    """A clustering with given membership (a frozen one); centres are the members' mean embeddings.

    ``labels`` (N,) must use every id in 0..max(labels).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    k = int(labels.max()) + 1
    if x.shape[0] != labels.shape[0] or set(labels.tolist()) != set(range(k)):
        raise ValueError("labels must give every embedding a cluster and use every cluster id 0..k-1")
    centers = np.stack([x[labels == c].mean(axis=0) for c in range(k)])
    return Clustering(labels, centers, k)


def assign_clusters(clustering: Clustering, embeddings: np.ndarray) -> np.ndarray:
    """Nearest centre for each row of ``embeddings`` (N, C) → int array (N,); K-Means' predict."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=int)
    d2 = ((x[:, None, :] - clustering.centers[None, :, :]) ** 2).sum(axis=2)
    return d2.argmin(axis=1)
