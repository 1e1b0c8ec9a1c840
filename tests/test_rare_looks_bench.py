"""The rare-look benchmark's metrics (bench/sections/rare_looks_metrics.py) on a hand-built 10-image case, values worked by
hand; and its Domino-like peer on two blobs whose weak one it must flag."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package

from bench.sections.rare_looks_metrics import (attributable, auroc, best_cluster_f1, mean_ci,  # noqa: E402
                                               precision_recall_f1)

# images 0-2 are the rare look
TRUTH = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)


def test_precision_recall_f1_by_hand():
    flagged = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)  # 2 of the 3 flagged are the look, 2 of 3 found
    assert precision_recall_f1(flagged, TRUTH) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    only_one = np.zeros(10, dtype=bool)
    only_one[0] = True  # precision 1, recall 1/3: F1 = 2·1·(1/3) / (4/3) = 0.5
    assert precision_recall_f1(only_one, TRUTH) == pytest.approx((1.0, 1 / 3, 0.5))
    assert precision_recall_f1(np.zeros(10, dtype=bool), TRUTH) == (0.0, 0.0, 0.0)  # nothing flagged: F1 0
    assert precision_recall_f1(~TRUTH, TRUTH) == (0.0, 0.0, 0.0)  # only wrong images
    with pytest.raises(ValueError):
        precision_recall_f1(flagged, np.zeros(10, dtype=bool))  # no look to find


def test_auroc_by_hand_with_a_tie():
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.2, 0.3, 0.0, 0.05, 0.6])
    # 0.9 and 0.8 beat all 7 negatives; 0.3 beats 0.1, 0.2, 0.0, 0.05 and ties 0.3: (7 + 7 + 4.5) / 21
    assert auroc(scores, TRUTH) == pytest.approx(18.5 / 21)
    assert auroc(-scores, TRUTH) == pytest.approx(1 - 18.5 / 21)
    assert auroc(np.ones(10), TRUTH) == pytest.approx(0.5)
    assert math.isnan(auroc(scores, np.ones(10, dtype=bool)))


def test_attributable_f1_and_best_cluster_by_hand():
    f1_rare = precision_recall_f1(np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool), TRUTH)[2]
    f1_null = precision_recall_f1(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool), TRUTH)[2]
    assert attributable(f1_rare, f1_null) == pytest.approx(2 / 3 - 0.5)
    assert attributable(f1_rare, 0.0) == pytest.approx(2 / 3)
    # cluster 0 = {0, 1, 3}: F1 2/3; cluster 1 = {2, 4, 5}: 1/3; cluster 2: 0
    assert best_cluster_f1(np.array([0, 0, 1, 0, 1, 1, 2, 2, 2, 2]), TRUTH) == pytest.approx(2 / 3)


def test_mean_ci_by_hand():
    mean, lo, hi, n = mean_ci([0.2, 0.4, 0.6, float("nan")])  # sd 0.2, t(2) = 4.303
    assert (mean, n) == (pytest.approx(0.4), 3)
    assert (lo, hi) == (pytest.approx(0.4 - 4.303 * 0.2 / math.sqrt(3)), pytest.approx(0.4 + 4.303 * 0.2 / math.sqrt(3)))
    assert mean_ci([])[3] == 0


def test_domino_like_flags_the_weak_blob():
    from bench.sections.rare_looks import domino_like

    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (200, 8)), rng.normal(4, 1, (50, 8))])
    p_true = np.concatenate([rng.uniform(0.8, 1.0, 200), rng.uniform(0.0, 0.3, 50)])  # the second blob is weak
    flagged, member = domino_like(emb, p_true, seed=0)
    truth = np.arange(250) >= 200
    assert precision_recall_f1(flagged, truth)[2] > 0.9
    assert auroc(member, truth) > 0.95


def _record(tier: str, condition: str, rare: str | None, f1: float) -> dict:
    """One hand-built case record of the benchmark (one superclass of one audited model), F1 ``f1`` for the
    representation ratio's top-1 reading."""
    return {"superclass": "cat_dog", "target_look": "cat", "eval_n": 10, "truth_n": 3, "clusters": [],
            "significant_pairs": 2, "control": None, "best_cluster_f1": 0.9, "auroc": {},
            "methods": {"under_represented:top1": {"precision": f1, "recall": f1, "f1": f1, "flagged_images": 3}},
            "tier": tier, "model": "cifar:resnet20", "condition": condition, "rare": rare, "seed": 0,
            "target": "A", "train_per_super": 600,
            "model_info": {"recipe": f"{tier} recipe", "train_images": 3000, "test_accuracy": 0.8,
                           "rare_look_accuracy": 0.7 if rare else None, "common_look_accuracy": 0.9 if rare else None,
                           "seconds": 60.0}}


def test_report_keeps_the_published_tiers_the_cache_lacks(tmp_path):
    """A rerun of one tier rewrites that tier's tables and keeps every other tier's published records, models and
    run; attributable F1 is against the same tier's null."""
    import json

    from bench.sections.rare_looks_report import report

    out, cache = tmp_path / "docs", tmp_path / "records"
    (out / "science").mkdir(parents=True)
    cache.mkdir()
    (out / "science.md").write_text("# Study\n\nintro\n")
    (cache / "a.json").write_text(json.dumps({"seconds": 120.0, "records": [
        _record("cheap", "5", "A", 0.75), _record("cheap", "null", None, 0.25)]}))
    report(cache, out, "--tiers cheap", "a test machine")
    first = json.loads((out / "science" / "rare_looks.json").read_text())
    assert first["summary"]["cheap/5"]["methods"]["under_represented:top1"]["attributable_f1"] == 0.5
    assert [r["tiers"] for r in first["runs"]] == [["cheap"]]  # the first run's cheap tier is replaced
    assert first["runs"][0]["audit_minutes"] == 2.0 and first["runs"][0]["machine"] == "a test machine"

    (cache / "a.json").unlink()  # a later run of another tier only
    (cache / "b.json").write_text(json.dumps({"seconds": 60.0, "records": [
        _record("ft", "5", "A", 0.5), _record("ft", "null", None, 0.5)]}))
    report(cache, out, "--tiers ft", "another machine")
    second = json.loads((out / "science" / "rare_looks.json").read_text())
    assert sorted(second["summary"]) == ["cheap/5", "ft/5"]
    assert second["summary"]["cheap/5"] == first["summary"]["cheap/5"]
    assert second["summary"]["ft/5"]["methods"]["under_represented:top1"]["attributable_f1"] == 0.0
    assert [(r["tiers"], r["machine"]) for r in second["runs"]] == [(["cheap"], "a test machine"),
                                                                    (["ft"], "another machine")]
    assert [m["tier"] for m in second["models"]] == ["cheap", "cheap", "ft", "ft"]
    page = (out / "science.md").read_text()
    assert page.startswith("# Study\n\nintro\n") and page.count("<!-- rare_looks -->") == 1
    assert "### end-to-end fine-tuned (public ResNet-20, GAP → linear, every layer trained), look rare at 5 %" in page
    assert "### cheap (frozen public trunk, new head), look rare at 5 %" in page
