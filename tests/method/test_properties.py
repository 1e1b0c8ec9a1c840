"""Properties of the method that a wrong implementation breaks (hypothesis): d does not depend on where the
quadrants sit; the statistics of a class do not depend on how its clusters are numbered; the scores of a
complete D sum to P/2 and D + Dᵀ = 1, with D built by the project's own builders from per-mosaic d."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xich.engine.audit import rank_clusters
from xich.method.dominance import dominance_matrix, mosaic_dominance, quadrant_relevance
from xich.method.hierarchy import hierarchy_scores
from xich.method.mosaic import MosaicPlan, plan_mosaics

maps = arrays(np.float64, st.tuples(st.integers(1, 6), st.sampled_from([2, 4, 6]), st.sampled_from([2, 4, 8])),
              elements=st.floats(0, 1, allow_nan=False, allow_subnormal=False))
halves = st.permutations([True, True, False, False])


def _quadrants(cams: np.ndarray) -> list[np.ndarray]:
    h, w = cams.shape[1] // 2, cams.shape[2] // 2
    return [cams[:, :h, :w], cams[:, :h, w:], cams[:, h:, :w], cams[:, h:, w:]]


@given(maps, halves, st.permutations(range(4)))
def test_d_does_not_depend_on_where_the_quadrants_sit(cams, in_i, perm):
    """Moving the quadrants' contents (and their cluster labels) to other places leaves each mosaic's d unchanged."""
    q = _quadrants(cams)
    moved = [q[p] for p in perm]  # place k now holds what place perm[k] held
    cams_moved = np.concatenate([np.concatenate(moved[:2], axis=2), np.concatenate(moved[2:], axis=2)], axis=1)
    mask = np.tile(np.array(in_i), (len(cams), 1))
    d = mosaic_dominance(quadrant_relevance(cams), mask)
    d_moved = mosaic_dominance(quadrant_relevance(cams_moved), mask[:, list(perm)])
    np.testing.assert_allclose(d_moved, d, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(d_moved), np.isnan(d))


@st.composite
def class_plans(draw):
    """A mosaic plan of a class (P clusters, J mosaics a pair) and its per-mosaic d (a few undefined)."""
    P, J = draw(st.integers(2, 5)), draw(st.integers(2, 4))
    sizes = draw(st.lists(st.integers(1, 4), min_size=P, max_size=P))
    labels = np.repeat(np.arange(P), sizes)
    plan = plan_mosaics(labels, P, J, np.random.default_rng(draw(st.integers(0, 2**16))))
    # d on a grid of 1/64: 1 - d is then exact, so renumbering (d -> 1 - d) changes no bit of the evidence. (With
    # arbitrary floats a pair whose image sets all give one d has spread 0 one way and ~1e-17 the other;
    # significance.SPREAD_EPS makes both "no spread", but the other p-values would still differ in the last bits.)
    grid = st.integers(0, 64).map(lambda k: k / 64)
    d = np.array(draw(st.lists(st.one_of(grid, st.just(np.nan)), min_size=len(plan), max_size=len(plan))))
    return plan, d, P


@given(class_plans(), st.data())
def test_class_statistics_do_not_depend_on_cluster_numbering(case, data):
    """Renumber the clusters by π: every mosaic's pair becomes (π(i), π(j)) sorted, and its d the share of the
    new first cluster (1 − d where π swaps the order). D, p-values, intervals, scores and ranks follow π."""
    plan, d, P = case
    pi = np.array(data.draw(st.permutations(range(P))))
    pairs = pi[plan.pairs]
    swapped = pairs[:, 0] > pairs[:, 1]
    renumbered = MosaicPlan(np.sort(pairs, axis=1), plan.images, pi[plan.clusters])
    before = rank_clusters(plan, d, P)
    after = rank_clusters(renumbered, np.where(swapped, 1 - d, d), P)
    inv = np.argsort(pi)  # cluster c is now called pi[c]; new name k was inv[k]
    for name in ("D", "p_raw", "p_holm", "ci_low", "ci_high", "n_sets"):
        np.testing.assert_allclose(getattr(after, name), getattr(before, name)[np.ix_(inv, inv)], atol=1e-9,
                                   err_msg=name)
    np.testing.assert_allclose(after.scores, before.scores[inv], atol=1e-12)
    scored = before.scores[~np.isnan(before.scores)]
    assume(len(np.unique(np.round(scored, 9))) == len(scored))  # ties are broken by id, which π changes
    np.testing.assert_array_equal(after.rank, before.rank[inv])
    np.testing.assert_array_equal(after.order, pi[before.order])


@given(class_plans())
def test_complete_D_is_complementary_and_its_scores_sum_to_half_P(case):
    """D from the project's builders (rank_clusters over planned mosaics, and dominance_matrix over pairs):
    D + Dᵀ = 1, and with every pair defined Σ_i score_i = Σ_{i≠j} D_ij / (P − 1) = P/2."""
    plan, d, P = case
    d = np.where(np.isnan(d), 0.25, d)  # every mosaic defined: D is complete
    stats = rank_clusters(plan, d, P)
    pair_d = {(i, j): d[(plan.pairs[:, 0] == i) & (plan.pairs[:, 1] == j)] for i in range(P) for j in range(i + 1, P)}
    for D in (stats.D, dominance_matrix(pair_d, P)):
        assert not np.isnan(D).any()
        np.testing.assert_allclose(D + D.T, 1.0, atol=1e-12)
        np.testing.assert_allclose(hierarchy_scores(D).sum(), P / 2, atol=1e-9)
    np.testing.assert_allclose(stats.scores.sum(), P / 2, atol=1e-9)
    for (i, j), values in pair_d.items():  # and D_ij is the mean of the pair's d (eq. 8), not of its complement
        assert stats.D[i, j] == np.mean(values) or abs(stats.D[i, j] - np.mean(values)) < 1e-12
