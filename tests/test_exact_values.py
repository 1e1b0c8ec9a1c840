"""Numbers recomputed from the stored rows by SQL and scipy, not by the project's formulas: the per-image
correlations (Fig. 3) and the least dominant cluster's training share (the MLflow tag ``xich.least_dominant_share``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sqlalchemy import text

from reference import logits_of
from xich.engine.audit import open_audit
from xich.records.db import make_engine
from builders import recorded, resnet20_config
from xich.result import least_dominant_share


def _config(synth_data):
    return resnet20_config(synth_data, clusters=3, mosaics_per_pair=3, per_image=8)


@pytest.fixture(scope="module")
def stored(synth_data, tmp_path_factory, one_torch_thread):
    """A recorded audit (per-image mode on 8 images a class) in a database of this module's own."""
    url = f"sqlite:///{tmp_path_factory.mktemp('exact') / 'xich.db'}"
    config = _config(synth_data)
    result = recorded(config, url, model_name="shapes", model_version="v1")
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = {
            "per_image": conn.execute(text("SELECT class_index, image_id, score, logit, softmax FROM per_image_score "
                                           "WHERE run_id = :r ORDER BY class_index, position"), {"r": result.run_id}).all(),
            "classes": conn.execute(text("SELECT class_index, pearson_logit, spearman_logit, pearson_softmax, "
                                         "spearman_softmax FROM run_class WHERE run_id = :r"), {"r": result.run_id}).all(),
            "clusters": conn.execute(text("SELECT class_index, cluster_index, train_share, score FROM run_cluster "
                                          "WHERE run_id = :r"), {"r": result.run_id}).all(),
        }
    engine.dispose()
    return result, rows


def test_per_image_correlations_recomputed_from_the_rows(stored):
    _, rows = stored
    assert len(rows["classes"]) == 3
    checked = 0
    for cls in rows["classes"]:
        images = [r for r in rows["per_image"] if r.class_index == cls.class_index and r.score is not None]
        score = np.array([r.score for r in images])
        if len(images) < 3 or np.ptp(score) == 0:  # undefined (an untrained model's all-zero maps): stored as NULL
            assert (cls.pearson_logit, cls.spearman_logit, cls.pearson_softmax, cls.spearman_softmax) == (None,) * 4
            continue
        checked += 1
        for name, other in (("logit", [r.logit for r in images]), ("softmax", [r.softmax for r in images])):
            assert getattr(cls, f"pearson_{name}") == pytest.approx(stats.pearsonr(score, other).statistic, abs=1e-9)
            assert getattr(cls, f"spearman_{name}") == pytest.approx(stats.spearmanr(score, other).statistic, abs=1e-9)
    assert checked >= 2


def test_per_image_rows_belong_to_their_images(stored, synth_data):
    """Each stored per-image row's logit and softmax are those of the image its ``image_id`` names: an eager float64
    pass of the audited model (built as the audit builds it) over that file, the class's own output; and the rows
    are the document's, image by image."""
    result, rows = stored
    model = open_audit(_config(synth_data)).prepared.model
    for cls in result.classes:
        stored_rows = [r for r in rows["per_image"] if r.class_index == cls.index]
        assert [r.image_id for r in stored_rows] == [i.image for i in cls.per_image.images]
        assert len({r.image_id for r in stored_rows}) == 8
        logits = logits_of(model, [synth_data / "test" / r.image_id for r in stored_rows])
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        np.testing.assert_allclose([r.logit for r in stored_rows], logits[:, cls.index], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose([r.softmax for r in stored_rows], exp[:, cls.index] / exp.sum(axis=1), atol=1e-6)
        assert np.ptp(logits[:, cls.index]) > 1e-3  # distinct: a logit given to another image shows
        for r, image in zip(stored_rows, cls.per_image.images):
            assert (r.score, r.logit, r.softmax) == (pytest.approx(image.score) if image.score is not None else None,
                                                     pytest.approx(image.logit), pytest.approx(image.softmax))


def least_dominant_share_from_rows(clusters) -> float:
    """Per class the training share of the cluster with the lowest stored score, averaged over classes."""
    by_class: dict[int, list] = {}
    for row in clusters:
        if row.score is not None:
            by_class.setdefault(row.class_index, []).append(row)
    return float(np.mean([min(rs, key=lambda r: r.score).train_share for rs in by_class.values()]))


def test_least_dominant_share_is_the_lowest_scored_clusters_share(stored):
    result, rows = stored
    expected = least_dominant_share_from_rows(rows["clusters"])
    assert least_dominant_share(result.classes) == pytest.approx(expected, abs=1e-12)
    assert f"{least_dominant_share(result.classes):.4f}" == f"{expected:.4f}"  # the tag as written to MLflow
