"""Mosaics: 2×2 grids of same-class images from two clusters (eq. 2 of the XICH paper)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MosaicPlan:
    """Manifests of the mosaics of one class.

    pairs : int array (M, 2) — the (i, j) cluster pair each mosaic compares, i < j.
    images : int array (M, 4) — index of the evaluation image in each quadrant (TL, TR, BL, BR).
    clusters : int array (M, 4) — the cluster of each quadrant's image.
    """

    pairs: np.ndarray
    images: np.ndarray
    clusters: np.ndarray

    def __len__(self) -> int:
        return int(self.pairs.shape[0])


def plan_mosaics(labels: np.ndarray, n_clusters: int, per_pair: int, rng: np.random.Generator) -> MosaicPlan:
    """Sample ``per_pair`` mosaics for each unordered cluster pair i < j.

    Each mosaic holds 2 images of cluster i and 2 of cluster j (distinct within the mosaic when
    the cluster has two or more images), in shuffled quadrant positions. The *image sets* (which
    four images, whatever their places) are distinct as long as the clusters hold enough of them:
    when a pair has fewer than ``per_pair`` possible sets, every set is used and the extra mosaics
    are other arrangements of the same sets, taken in turn — they add no new evidence, and the
    t-test counts each set once (see :func:`image_sets`).

    Parameters
    ----------
    labels : int array (N,) — cluster of each evaluation image of the class.
    rng : numpy Generator; the only source of randomness, so a seed reproduces the plan.
    """
    labels = np.asarray(labels)
    members = [np.flatnonzero(labels == c) for c in range(n_clusters)]
    for c, m in enumerate(members):
        if m.size == 0:
            raise ValueError(f"cluster {c} has no images")
    pairs, images, clusters = [], [], []
    which = np.array([0, 0, 1, 1])
    for i in range(n_clusters):
        for j in range(i + 1, n_clusters):
            for picks in _distinct_sets(members[i], members[j], per_pair, rng):
                perm = rng.permutation(4)
                pairs.append((i, j))
                images.append(picks[perm])
                clusters.append(np.array([i, j])[which[perm]])
    return MosaicPlan(
        np.array(pairs, dtype=int).reshape(-1, 2),
        np.array(images, dtype=int).reshape(-1, 4),
        np.array(clusters, dtype=int).reshape(-1, 4),
    )


def _n_twos(n: int) -> int:
    """How many ways to pick a cluster's two images (one way, twice the same image, for a single image)."""
    return max(1, n * (n - 1) // 2)


def _two_by_index(members: np.ndarray, k: int) -> np.ndarray:
    """The k-th 2-subset of ``members`` in lexicographic order (or its only image, twice)."""
    if members.size < 2:
        return np.repeat(members[:1], 2)
    a, n = 0, members.size
    while k >= n - 1 - a:
        k -= n - 1 - a
        a += 1
    return members[[a, a + 1 + k]]


def _distinct_sets(mi: np.ndarray, mj: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` image sets [i, i, j, j], distinct while the clusters allow, else every set in turn."""
    ni, nj = _n_twos(mi.size), _n_twos(mj.size)
    total = ni * nj
    if total <= 4 * count:  # few enough to enumerate: draw without replacement, cycle when exhausted
        order = rng.permutation(total)
        picks = [order[k % total] for k in range(count)]
        return [np.concatenate([_two_by_index(mi, int(k) // nj), _two_by_index(mj, int(k) % nj)]) for k in picks]
    seen: set[tuple[int, ...]] = set()
    out = []
    while len(out) < count:  # rejection sampling: at most a quarter of the sets are taken, so it ends quickly
        s = np.concatenate([_two_from(mi, rng), _two_from(mj, rng)])
        key = tuple(s.tolist())
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _two_from(members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(members, size=2, replace=members.size < 2))


def image_sets(images: np.ndarray) -> np.ndarray:
    """Id of each mosaic's image set (its four images, whatever their quadrants) → int array (M,).

    Mosaics with the same id show the same images rearranged; statistics count such a set once.
    """
    _, ids = np.unique(np.sort(np.asarray(images), axis=1), axis=0, return_inverse=True)
    return ids.ravel()


def assemble_mosaics(tiles: torch.Tensor, images: np.ndarray, mosaic_size: int | None = None) -> torch.Tensor:
    """Build mosaic tensors from quadrant manifests.

    Parameters
    ----------
    tiles : tensor (N, C, T, T) — the class's evaluation images at tile size.
    images : int array (B, 4) — tile index in TL, TR, BL, BR.
    mosaic_size : side of the output; None keeps 2·T. Otherwise the 2T×2T grid is
        bilinearly rescaled (the paper's footnote 1: mosaics are rescaled at inference).

    Returns
    -------
    tensor (B, C, S, S) on the tiles' device and dtype.
    """
    idx = torch.as_tensor(np.asarray(images), dtype=torch.long, device=tiles.device)
    q = tiles[idx]  # (B, 4, C, T, T)
    top = torch.cat([q[:, 0], q[:, 1]], dim=3)
    bottom = torch.cat([q[:, 2], q[:, 3]], dim=3)
    grid = torch.cat([top, bottom], dim=2)
    if mosaic_size is not None and mosaic_size != grid.shape[-1]:
        grid = F.interpolate(grid, size=(mosaic_size, mosaic_size), mode="bilinear", align_corners=False, antialias=True)
    return grid
