from __future__ import annotations

import numpy as np
import torch

from xich.method.mosaic import assemble_mosaics, image_sets, plan_mosaics


def _plan(seed=0):
    labels = np.array([0] * 5 + [1] * 3 + [2] * 1)
    return labels, plan_mosaics(labels, 3, 7, np.random.default_rng(seed))


def test_plan_has_two_images_per_cluster_in_each_mosaic():
    labels, plan = _plan()
    assert len(plan) == 3 * 7
    assert sorted(map(tuple, plan.pairs.tolist())) == sorted([(0, 1)] * 7 + [(0, 2)] * 7 + [(1, 2)] * 7)
    for (i, j), imgs, cl in zip(plan.pairs, plan.images, plan.clusters):
        assert sorted(cl.tolist()) == [i, i, j, j]
        np.testing.assert_array_equal(labels[imgs], cl)
        for c in (i, j):
            if (labels == c).sum() >= 2:  # distinct images when the cluster has two
                assert len(set(imgs[cl == c].tolist())) == 2


def test_plan_is_reproducible_and_shuffles_positions():
    _, a = _plan(3)
    _, b = _plan(3)
    _, c = _plan(4)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    patterns = {tuple((cl == p[0]).tolist()) for cl, p in zip(a.clusters, a.pairs)}
    assert len(patterns) > 1


def test_assemble_places_tiles_in_quadrants():
    tiles = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    before = tiles.clone()
    m = assemble_mosaics(tiles, np.array([[3, 2, 1, 0]]))
    assert m.shape == (1, 3, 4, 4)
    assert m[0, 0, :2, :2].unique().tolist() == [3.0]
    assert m[0, 0, :2, 2:].unique().tolist() == [2.0]
    assert m[0, 0, 2:, :2].unique().tolist() == [1.0]
    assert m[0, 0, 2:, 2:].unique().tolist() == [0.0]
    assert torch.equal(tiles, before)
    assert assemble_mosaics(tiles, np.array([[0, 1, 2, 3]]), mosaic_size=8).shape == (1, 3, 8, 8)


def test_single_image_clusters_put_each_image_twice():
    # per-image mode: every image its own cluster; J mosaics differ only in placement
    plan = plan_mosaics(np.arange(4), 4, 5, np.random.default_rng(0))
    assert len(plan) == 6 * 5
    for (i, j), imgs in zip(plan.pairs, plan.images):
        assert sorted(imgs.tolist()) == [i, i, j, j]


def test_image_sets_are_distinct_when_clusters_allow():
    labels = np.array([0] * 6 + [1] * 5)  # C(6,2) * C(5,2) = 150 possible sets
    plan = plan_mosaics(labels, 2, 25, np.random.default_rng(0))
    assert len(set(image_sets(plan.images).tolist())) == 25


def test_few_possible_sets_are_each_used_and_then_rearranged():
    labels = np.array([0, 1, 1])  # one image against two: C(1)=1 x C(2,2)=1 -> a single possible set
    plan = plan_mosaics(labels, 2, 5, np.random.default_rng(0))
    assert len(plan) == 5 and len(set(image_sets(plan.images).tolist())) == 1
    labels = np.array([0, 0, 0, 1, 1])  # C(3,2)=3 x 1 = 3 sets for 7 mosaics: every set, 2-3 times each
    plan = plan_mosaics(labels, 2, 7, np.random.default_rng(1))
    counts = np.bincount(image_sets(plan.images))
    assert counts.size == 3 and counts.min() >= 2 and counts.max() <= 3


def test_image_sets_ignore_quadrant_order():
    assert image_sets(np.array([[1, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 5]])).tolist() == [0, 0, 1]
