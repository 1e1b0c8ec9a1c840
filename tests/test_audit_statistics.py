"""Statistics that do not claim more than the data shows, end to end through the audit and the database."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import text

from xich.engine.audit import run_audit
from xich.records.db import make_engine
from xich.engine.models import build_model
from builders import recorded, resnet20_config

from test_cli_errors import make_noise_dataset

from shared_data import SHARED
DATA = SHARED / "cifar10-jpeg"
WEIGHTS = SHARED / "cifar-resnet" / "resnet20-12fca82f.th"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _assert_no_pair_claims_significance(cls) -> None:
    P = len(cls.clusters)
    for i in range(P):
        for j in range(P):
            if i != j:
                assert cls.distinct_sets[i][j] <= 1
                assert cls.p_values[i][j] == 1.0 and cls.p_values_holm[i][j] == 1.0
                assert cls.dominance_ci[i][j] is None


def test_clusters_of_one_image_repeat_one_set_and_give_p_one(tmp_path):
    """Single-image clusters: J mosaics of a pair are rearrangements of one image set, not J samples."""
    data = make_noise_dataset(tmp_path / "data", per_class=3)
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(build_model("cifar:resnet20", 2).state_dict(), weights)
    result = run_audit(resnet20_config(data, weights=str(weights), clusters=3, mosaics_per_pair=3, train_split=None))
    for cls in result.classes:
        assert [c.eval_size for c in cls.clusters] == [1, 1, 1]
        assert all(len({tuple(sorted(m.images)) for m in cls.mosaics if m.pair == [i, j]}) == 1
                   for i in range(3) for j in range(i + 1, 3))
        _assert_no_pair_claims_significance(cls)


@pytest.mark.shared_data
@pytest.mark.skipif(not (WEIGHTS.is_file() and (DATA / "test.tar.gz").is_file()),
                    reason="../shared/data (ResNet-20 checkpoint, CIFAR-10 JPEGs) absent")
def test_six_real_cat_images_in_five_clusters_claim_nothing(tmp_path):
    """The issue's case: 6 real cat images, P = 5 — one image against two was 'significant' at p = 0.03."""
    root = tmp_path / "cats"
    with tarfile.open(DATA / "test.tar.gz") as tar:
        cats = sorted((m for m in tar if m.isfile() and m.name.startswith("test/cat/")), key=lambda m: m.name)[:6]
        tar.extractall(root, members=cats, filter="data")
    result = run_audit(resnet20_config(root, weights=str(WEIGHTS), clusters=5, train_split=None))
    [cls] = result.classes
    assert sorted(c.eval_size for c in cls.clusters) == [1, 1, 1, 1, 2]
    _assert_no_pair_claims_significance(cls)


def _blind_checkpoint(path: Path, blind_class: int) -> Path:
    """A ResNet-20 whose head weighs every feature negatively for one class: Grad-CAM's
    ReLU(sum_k w_k A_k) is then zero everywhere (A >= 0 after the last ReLU), on every mosaic."""
    torch.manual_seed(0)
    model = build_model("cifar:resnet20", 2)
    with torch.no_grad():
        model.linear.weight[blind_class] = -model.linear.weight[blind_class].abs() - 0.01
    torch.save(model.state_dict(), path)
    return path


def test_a_class_whose_maps_are_all_zero_has_no_ranks_and_no_place_in_the_summary(synth_data, tmp_path):
    data = make_noise_dataset(tmp_path / "data", per_class=8)  # classes cat (blind), dog
    weights = _blind_checkpoint(tmp_path / "blind.pt", blind_class=0)
    (data / "train").mkdir()
    for cls in ("cat", "dog"):  # the test images double as a training split, so train shares exist
        (data / "train" / cls).symlink_to(data / "test" / cls)
    url = f"sqlite:///{tmp_path / 'xich.db'}"
    config = resnet20_config(data, weights=str(weights), clusters=3, mosaics_per_pair=4)
    result = recorded(config, url, model_name="blind", model_version="v1")
    cat, dog = result.classes
    assert cat.name == "cat" and cat.excluded_mosaics == len(cat.mosaics) > 0
    assert cat.hierarchy == [] and all(c.rank is None and c.score is None for c in cat.clusters)
    assert all(cat.dominance[i][j] is None for i in range(3) for j in range(3) if i != j)
    assert any("no evidence" in n for n in cat.notes)
    assert result.summary["classes_without_evidence"] == ["cat"]
    assert all(c.rank is not None for c in dog.clusters)
    np.testing.assert_allclose(result.summary["train_share_by_rank"],
                               [c.train_share for c in sorted(dog.clusters, key=lambda c: c.rank)])
    assert result.summary["classes_ranked"] == 1
    engine = make_engine(url)
    with engine.connect() as conn:
        ranks = conn.execute(text("SELECT rank, score FROM dominance_history WHERE class_name = 'cat' "
                                  "AND model_name = 'blind'")).all()
        pairs = conn.execute(text("SELECT dominance, ci_low, n_mosaics, n_sets FROM pairwise_dominance "
                                  "WHERE class_name = 'cat' AND model_name = 'blind'")).all()
    engine.dispose()
    assert ranks and all(r.rank is None and r.score is None for r in ranks)
    assert pairs and all(p.dominance is None and p.ci_low is None and p.n_mosaics == 0 for p in pairs)
