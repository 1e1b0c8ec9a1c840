"""A whole audit whose every number is known by hand: uniform grey tiles explained by a model whose Grad-CAM is
the brightness (tests/toy_nets.py). Bright images dominate dark ones; a reversed dominance (D[i, j] read as
j over i), a transposed D or a reversed hierarchy fails here in a second, without ../shared/data.

Per mosaic, with quadrant brightness v_q and m = min_q v_q, eq. 3–6 give
    d = Σ_{q of cluster i} (v_q − m) / Σ_q (v_q − m)
(min-max scaling of the map, then sums over the 32×32 quadrants).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from xich.engine.audit import run_audit
from xich.engine.config import AuditConfig

# grey levels of the class's images: two dark, two middle, two bright groups (k-means with P = 3 separates them)
LEVELS = [20, 30, 110, 120, 220, 230]


@pytest.fixture(scope="module")
def grey_tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey")
    (root / "test" / "tile").mkdir(parents=True)
    for k, level in enumerate(LEVELS):
        Image.fromarray(np.full((32, 32, 3), level, dtype=np.uint8)).save(root / "test" / "tile" / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def audit(grey_tiles, one_torch_thread) -> dict:
    config = AuditConfig(model="python:toy_nets:brightness", data=str(grey_tiles), train_split=None, clusters=3,
                         mosaics_per_pair=4, normalize="none", device="cpu",
                         control=False)  # a fixed-weight toy: no re-initialised control exists
    return run_audit(config).to_dict()["classes"][0]


def _level(image_id: str) -> float:
    return LEVELS[int(image_id.split("/")[1].split(".")[0])] / 255


def test_each_mosaic_d_is_the_hand_computed_share(audit):
    for m in audit["mosaics"]:
        v = np.array([_level(i) for i in m["images"]])
        relevance = v - v.min()
        expected = relevance[np.array(m["clusters"]) == m["pair"][0]].sum() / relevance.sum()
        assert m["d"] == pytest.approx(expected, abs=1e-5), m


def test_dominance_scores_and_hierarchy_are_the_hand_computed_ones(audit):
    """Each cluster holds one image pair, so every mosaic of a pair has the same four tiles and
    D(bright, dark) = (200 + 210) / (200 + 210 + 0 + 10) = 41/42, D(bright, middle) = (110 + 120) / (230 + 10)
    = 23/24, D(middle, dark) = (90 + 100) / (190 + 10) = 19/20 (grey levels above the mosaic's darkest tile)."""
    level = {c["id"]: sorted(LEVELS[int(i.split("/")[1].split(".")[0])] for i in c["members"]) for c in audit["clusters"]}
    by_name = {"dark": [20, 30], "middle": [110, 120], "bright": [220, 230]}
    assert sorted(level.values()) == sorted(by_name.values())  # k-means found the three grey groups
    dark, middle, bright = (next(c for c, v in level.items() if v == by_name[n]) for n in ("dark", "middle", "bright"))
    D = np.array(audit["dominance"])
    expected = {(bright, dark): 41 / 42, (bright, middle): 23 / 24, (middle, dark): 19 / 20}
    for (i, j), value in expected.items():
        assert D[i, j] == pytest.approx(value, abs=1e-6) and D[j, i] == pytest.approx(1 - value, abs=1e-6)
    scores = {c["id"]: c["score"] for c in audit["clusters"]}
    assert scores[bright] == pytest.approx((41 / 42 + 23 / 24) / 2, abs=1e-6)
    assert scores[middle] == pytest.approx((1 / 24 + 19 / 20) / 2, abs=1e-6)
    assert scores[dark] == pytest.approx((1 / 42 + 1 / 20) / 2, abs=1e-6)
    assert audit["hierarchy"] == [bright, middle, dark]
    assert [audit["clusters"][c]["rank"] for c in (bright, middle, dark)] == [0, 1, 2]


@pytest.fixture(scope="module")
def opened_grey(grey_tiles, one_torch_thread):
    from xich.engine.audit import open_audit

    opened = open_audit(AuditConfig(model="python:toy_nets:brightness", data=str(grey_tiles), train_split=None,
                                    clusters=3, mosaics_per_pair=4, normalize="none", device="cpu", control=False))
    return opened, opened.load("tile")


@settings(max_examples=6, deadline=None)  # 3! numberings: hypothesis draws each
@given(st.permutations(range(3)))
def test_the_whole_class_audit_does_not_depend_on_cluster_numbering(opened_grey, pi):
    """The class audited on a frozen clustering (dark, middle, bright) and on the same clustering renumbered by π:
    every cluster keeps its D row, score and rank under its new number (each cluster holds one image pair, so
    every mosaic plan has the same image sets, whatever the numbering)."""
    from xich.engine.audit import audit_class

    opened, images = opened_grey
    group = {image_id: int(image_id.split("/")[1].split(".")[0]) // 2 for image_id in images.eval_ids}  # 0 dark
    base = audit_class(opened, images, frozen=group)
    renumbered = audit_class(opened, images, frozen={i: pi[c] for i, c in group.items()})
    D, D_pi = np.array(base.dominance, dtype=float), np.array(renumbered.dominance, dtype=float)
    inv = np.argsort(pi)
    np.testing.assert_allclose(D_pi, D[np.ix_(inv, inv)], atol=1e-9)
    for c in base.clusters:
        moved = renumbered.clusters[pi[c.id]]
        assert (moved.score, moved.rank, sorted(moved.members)) == (pytest.approx(c.score), c.rank, sorted(c.members))
    assert renumbered.hierarchy == [pi[c] for c in base.hierarchy]
