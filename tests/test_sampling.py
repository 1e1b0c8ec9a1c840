"""--train-per-class N: a seeded sample of each class's training split is placed (Fig. 4/5), each training share
has its standard error, the sample is part of the run's settings key, and the error survives the database."""

from __future__ import annotations

import numpy as np
import pytest

from xich.engine.audit import open_audit, run_audit, sample_training
from xich.engine.config import AuditConfig, check_config
from xich.errors import XichError
from xich.method.distribution import training_share_se
from xich.records.persist import load_audit

from toy_nets import brightness_config, write_grey_tiles

EVAL_LEVELS = [20, 30, 110, 120, 220, 230]  # dark, middle, bright pairs
TRAIN_LEVELS = [10 + 12 * k for k in range(20)]  # 10 … 238: spread over the three clusters


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    return write_grey_tiles(tmp_path_factory.mktemp("grey"), {"test": EVAL_LEVELS, "train": TRAIN_LEVELS})


def test_the_standard_error_by_hand():
    # n = 4 of N = 8: sqrt((1 - 4/8) * p(1 - p) / 3) with p = 3/4 and 1/4 → sqrt(0.5 * 0.1875 / 3) = sqrt(1/32)
    np.testing.assert_allclose(training_share_se(np.array([3, 1]), 8), [np.sqrt(1 / 32)] * 2, rtol=1e-12)
    np.testing.assert_array_equal(training_share_se(np.array([3, 1]), 4), [0.0, 0.0])  # every image: exact
    assert np.isnan(training_share_se(np.array([1, 0]), 8)).all()  # one image: no spread to estimate


def test_the_standard_error_matches_the_spread_of_repeated_samples():
    """2,000 samples of 100 from 1,000 images of which 300 are in cluster 0: the mean estimated SE is the
    observed standard deviation of the sampled share (within 5 %)."""
    rng = np.random.default_rng(0)
    population = np.repeat([0, 1, 2], [300, 500, 200])
    shares, ses = [], []
    for _ in range(2000):
        counts = np.bincount(rng.choice(population, size=100, replace=False), minlength=3)
        shares.append(counts / 100)
        ses.append(training_share_se(counts, len(population)))
    np.testing.assert_allclose(np.mean(ses, axis=0), np.std(shares, axis=0), rtol=0.05)


def test_the_sample_is_seeded_per_class_and_keeps_the_split_order():
    ids = [f"c/{k:03d}.png" for k in range(50)]
    a, b = sample_training(ids, 10, 0, 3), sample_training(ids, 10, 0, 3)
    assert a == b and len(set(a)) == 10 and set(a) <= set(ids) and a == sorted(a)
    assert sample_training(ids, 10, 1, 3) != a and sample_training(ids, 10, 0, 4) != a
    assert sample_training(ids, None, 0, 3) == ids and sample_training(ids, 50, 0, 3) == ids


@pytest.mark.parametrize("bad", [0, -3, 10_000_001, 2.5, True])
def test_a_bad_train_per_class_is_refused_naming_the_flag(bad):
    with pytest.raises(XichError, match="--train-per-class"):
        check_config(AuditConfig(model="cifar:resnet20", data="x", train_per_class=bad))


def test_a_sampled_audit_places_n_images_with_standard_errors_and_a_settings_key_of_its_own(grey, one_torch_thread):
    whole = run_audit(brightness_config(grey)).classes[0]
    sampled = run_audit(brightness_config(grey, train_per_class=8)).classes[0]
    assert sum(c.train_count for c in whole.clusters) == 20 and all(c.train_share_se == 0 for c in whole.clusters)
    assert sum(c.train_count for c in sampled.clusters) == 8
    for c in sampled.clusters:
        p = c.train_count / 8
        assert c.train_share_se == pytest.approx(np.sqrt((1 - 8 / 20) * p * (1 - p) / 7))
    assert any("a sample of 8 of 20 training images" in n for n in sampled.notes)
    assert "train_per_class" not in open_audit(brightness_config(grey)).settings()  # the keys of earlier runs are unchanged
    assert open_audit(brightness_config(grey, train_per_class=8)).settings()["train_per_class"] == 8


def test_the_standard_errors_are_stored_and_read_back(grey, database_url, one_torch_thread):
    from builders import context_for
    from xich.run.pipeline import recorded_audit

    ctx = context_for(database_url)
    result = recorded_audit(ctx, brightness_config(grey, train_per_class=8), model_name="grey", model_version="v1")
    with ctx.session() as session:
        back = load_audit(session=session, run_id=result.run_id)
    assert [c.train_share_se for c in back.classes[0].clusters] == [c.train_share_se for c in result.classes[0].clusters]
    assert any(c.train_share_se for c in back.classes[0].clusters)


def test_tf32_is_refused_off_cuda_and_an_unknown_precision_names_the_choices(grey):
    from xich.errors import XichError

    with pytest.raises(XichError, match=r"--precision tf32: TF32 exists only on NVIDIA GPUs .* runs on cpu"):
        open_audit(brightness_config(grey, precision="tf32"))
    with pytest.raises(XichError, match=r"--precision 'fp16': use fp32 or tf32"):
        open_audit(brightness_config(grey, precision="fp16"))
    opened = open_audit(brightness_config(grey))
    assert "precision" not in opened.settings() and opened.resolved_config()["precision"] == "fp32"
