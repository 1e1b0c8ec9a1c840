"""The randomized control and the baselines through a whole audit of real CIFAR-10 images with the public ResNet-20:
reproducible for a seed, different from the trained model, part of the settings key, stored and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reference import baselines_by_hand, kendall_tau_of_scored, resnet20_logits
from shared_data import RESNET20 as WEIGHTS, extract_test_images, require
from xich.engine.audit import AuditConfig, open_audit, run_audit
from xich.records.persist import load_audit
from builders import recorded
from xich.records.db import make_engine
from sqlalchemy import text
from sqlalchemy.orm import Session

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.shared_data]


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory) -> Path:
    """The first 24 test JPEGs of cat and truck, as an image folder in a temporary directory (never the repo)."""
    require()
    root = tmp_path_factory.mktemp("cifar_subset")
    return extract_test_images(root, ["cat", "truck"], 24)


def _config(data: Path, **kw) -> AuditConfig:
    # the control's own tests (it runs on request: --control): the null model (another run in the database) is
    # tested in test_looks_and_null.py
    return AuditConfig(model="cifar:resnet20", weights=str(WEIGHTS), data=str(data), train_split=None, clusters=3,
                       mosaics_per_pair=6, batch_size=32, **{"null": False, "control": True, **kw})


@pytest.fixture(scope="module")
def audited(cifar_subset):
    return run_audit(_config(cifar_subset), run_id="a"), run_audit(_config(cifar_subset), run_id="b")


def test_control_is_reproducible_for_a_seed(audited):
    first, second = audited
    assert [c.control for c in first.classes] == [c.control for c in second.classes]
    assert first.config["control_seed"] == second.config["control_seed"] is not None
    assert all(c.control["seed"] == first.config["control_seed"] for c in first.classes)


def test_control_differs_from_the_trained_model(audited, cifar_subset):
    result, _ = audited
    for cls in result.classes:
        trained = np.array([c.score for c in cls.clusters], dtype=float)
        control = np.array(cls.control["scores"], dtype=float)
        assert np.abs(trained - control).max() > 1e-3
        assert -1.0 <= cls.control["tau"] <= 1.0
        assert sorted(cls.control["hierarchy"]) == [0, 1, 2]
    opened = open_audit(_config(cifar_subset, classes=("cat",)))
    trained, control = opened.prepared.model.state_dict(), opened.control.model.state_dict()
    assert not torch.equal(trained["layer3.2.conv2.weight"], control["layer3.2.conv2.weight"])
    assert opened.control.layer_name == opened.prepared.layer_name == "layer3"


def test_another_seed_gives_another_control(cifar_subset):
    one = open_audit(_config(cifar_subset, classes=("cat",), seed=1))
    zero = open_audit(_config(cifar_subset, classes=("cat",), seed=0))
    assert one.control_seed != zero.control_seed
    assert not torch.equal(one.control.model.linear.weight, zero.control.model.linear.weight)


def _independent_baselines(cifar_subset: Path, name: str, members: list[str]) -> dict[str, float]:
    """A cluster's baselines from a plain forward pass of the checkpoint over its members (tests/reference.py)."""
    return baselines_by_hand(resnet20_logits([cifar_subset / "test" / name / Path(m).name for m in members]),
                             CIFAR10_CLASSES.index(name))


def test_baselines_and_agreement_in_the_document(audited, cifar_subset):
    """Every cluster's baselines equal a plain forward pass of the checkpoint over the cluster's members, with the
    audited class's column (cat 3, truck 9: a neighbouring column differs by far more than 1e-5); the agreement is
    scipy's Kendall τ of the scores against them."""
    result, _ = audited
    doc = result.to_dict()
    assert [(c["name"], c["index"]) for c in doc["classes"]] == [("cat", 3), ("truck", 9)]
    for cls in doc["classes"]:
        scores = [c["score"] for c in cls["clusters"]]
        for c in cls["clusters"]:
            expected = _independent_baselines(cifar_subset, cls["name"], c["members"])
            assert c["baselines"] == pytest.approx(expected, abs=1e-5), (cls["name"], c["id"])
        for name in ("mean_logit", "mean_softmax", "accuracy", "mean_margin"):
            tau = kendall_tau_of_scored(scores, [c["baselines"][name] for c in cls["clusters"]])
            assert cls["agreement"][name] == (pytest.approx(tau, abs=1e-12) if tau is not None else None), name
    assert result.config["method"] == "gradcam"


def test_no_control_is_another_settings_key_and_leaves_no_control(cifar_subset):
    on = open_audit(_config(cifar_subset, classes=("cat",)))
    off = open_audit(_config(cifar_subset, classes=("cat",), control=AuditConfig.control))  # the default: off
    other = open_audit(_config(cifar_subset, classes=("cat",), method="gradcam++"))
    assert off.control is None and off.control_seed is None
    assert len({str(sorted(o.settings().items())) for o in (on, off, other)}) == 3
    result = run_audit(_config(cifar_subset, classes=("cat",), control=False))
    assert result.classes[0].control is None and "control_s" not in off.timings


def test_stored_and_read_back_unchanged(cifar_subset, database_url, tmp_path):
    """Baselines, agreement, control and method through the results database (SQLite and PostgreSQL): the stored
    baselines equal a plain forward pass over each stored cluster's members, not only the run that wrote them."""
    result = recorded(_config(cifar_subset, classes=("cat",)), database_url,
                            cache_dir=str(tmp_path / "cache"))
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            back = load_audit(session=session, run_id=result.run_id)
        assert [c.control for c in back.classes] == [c.control for c in result.classes]
        assert [c.agreement for c in back.classes] == [c.agreement for c in result.classes]
        assert ([k.baselines for c in back.classes for k in c.clusters]
                == [k.baselines for c in result.classes for k in c.clusters])
        (stored,) = back.classes
        for cluster in stored.clusters:
            expected = _independent_baselines(cifar_subset, "cat", cluster.members)
            assert cluster.baselines == pytest.approx(expected, abs=1e-5), cluster.id
        assert stored.agreement["mean_logit"] == pytest.approx(
            kendall_tau_of_scored([c.score for c in stored.clusters], [c.baselines["mean_logit"] for c in stored.clusters]), abs=1e-12)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT cluster_key, method, mean_logit, mean_margin, control_score, "
                                     "tau_mean_logit, control_tau FROM dominance_history ORDER BY cluster_key")).all()
            timings = conn.execute(text("SELECT timings FROM audit_run")).scalar_one()
        cls = result.classes[0]
        assert [r.method for r in rows] == ["gradcam"] * 3
        by_index = {int(r.cluster_key.rpartition("/")[2]): r for r in rows}  # <clustering>/<class>/<index>
        assert sorted(by_index) == [0, 1, 2]
        for cluster in cls.clusters:
            expected = _independent_baselines(cifar_subset, "cat", cluster.members)
            assert by_index[cluster.id].mean_logit == pytest.approx(expected["mean_logit"], abs=1e-5)
            assert by_index[cluster.id].mean_margin == pytest.approx(expected["mean_margin"], abs=1e-5)
            assert by_index[cluster.id].control_score == pytest.approx(cls.control["scores"][cluster.id])
        assert [r.tau_mean_logit for r in rows] == pytest.approx([cls.agreement["mean_logit"]] * 3)
        assert [r.control_tau for r in rows] == pytest.approx([cls.control["tau"]] * 3)
        timings = timings if isinstance(timings, dict) else __import__("json").loads(timings)
        assert timings["control_s"] > 0 and timings["cam_s"] > 0
    finally:
        engine.dispose()


def test_report_console_and_prefect_table_say_it(audited, tmp_path, capsys):
    from rich.console import Console

    from xich.reports.report import class_table, write_report
    from xich.reports.summary import print_summary, summary_markdown

    result, _ = audited
    page = write_report(result, tmp_path).read_text()
    for cls in result.classes:
        tau = cls.agreement["mean_logit"]
        expected = ("The hierarchy is the clusters&#x27; mean-logit order" if tau == 1.0
                    else f"The hierarchy differs from the mean-logit order (Kendall τ = {tau:+.2f}")
        assert expected in page
        assert f"Randomized control (the architecture re-initialised, seed {cls.control['seed']}): hierarchy " \
               f"{' > '.join(map(str, cls.control['hierarchy']))}" in page
    assert "<th>mean logit (τ" in page and "<th>control score</th>" in page
    rows = class_table(result)
    assert [r["tau(score, mean logit)"] for r in rows] == [f"{c.agreement['mean_logit']:+.2f}" for c in result.classes]
    assert all(r["control hierarchy"].startswith(" > ".join(map(str, c.control["hierarchy"])))
               for r, c in zip(rows, result.classes))
    assert "Mean Kendall tau(score, mean logit)" in summary_markdown(result, model="m", version="1", report_uri=None)
    print_summary(result, Console())
    out = capsys.readouterr().out
    assert out.count("control (re-initialised, seed") == len(result.classes)
    assert "kendall tau(score, baseline): mean_logit" in out


def test_a_control_as_significant_as_the_model_is_flagged(audited, tmp_path):
    import copy

    from xich.reports.report import class_table, write_report
    from xich.result import summarize

    result = copy.deepcopy(audited[0])
    cls = result.classes[0]
    cls.control = {**cls.control, "significant_pairs": [[0, 1]] * max(1, len(cls.significant_pairs())),
                   "image_statistics": True}
    result.summary = summarize(result.classes)
    assert result.summary["classes_image_statistics"] == [cls.name]
    assert "Image statistics, not the model:</b>" in write_report(result, tmp_path).read_text()
    assert class_table(result)[0]["control hierarchy"].endswith("IMAGE STATISTICS, NOT THE MODEL")


@pytest.mark.parametrize("args,message", [
    (["--method", "gradcam3"], "error: --method 'gradcam3': use one of gradcam, hirescam, gradcamelementwise, "),
    (["--method", "scorecam", "--cam", "fast"], "error: --cam fast: --method scorecam has no fast path (only gradcam, "
                                                "hirescam); use --cam auto or --cam reference"),
])
def test_a_method_that_cannot_work_is_one_error_line(tmp_path, capsys, args, message):
    from xich.cli import main

    assert main(["audit", "--model", "cifar:resnet20", "--data", str(tmp_path), "--no-db", *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(message) and err.count("error:") == 1 and "Traceback" not in err


def test_head_only_control_reinitialises_the_head_and_nothing_else(cifar_subset):
    """The study's head-only control: every trunk weight equals the trained model's, the head equals the whole-model
    control's (same seed), and on real mosaics its maps differ from the trained model's and from the whole control's."""
    from xich.engine.audit import head_control_model
    from xich.errors import XichError

    opened = open_audit(_config(cifar_subset))
    head = head_control_model(opened)
    trained, fresh, ctrl = (m.model.state_dict() for m in (opened.prepared, head, opened.control))
    for key, value in fresh.items():
        same_as = ctrl if key.startswith("linear.") else trained
        assert torch.equal(value, same_as[key]), key
    assert not torch.equal(fresh["linear.weight"], trained["linear.weight"])
    assert head.layer_name == opened.prepared.layer_name and head.cam == opened.prepared.cam == "fast"
    images = opened.load("cat").eval_images[:8]
    grid = lambda a, b, c, d: torch.cat([torch.cat([a, b], -1), torch.cat([c, d], -1)], -2)  # noqa: E731
    mosaics = opened.prepared.normalize(torch.stack([grid(*images[k:k + 4]) for k in (0, 4)]))
    maps = {k: m.mosaic_cams(mosaics, 3) for k, m in (("trained", opened.prepared), ("head", head),
                                                     ("control", opened.control))}
    assert np.abs(maps["head"] - maps["trained"]).max() > 0.1
    assert np.abs(maps["head"] - maps["control"]).max() > 0.1
    with pytest.raises(XichError, match="control on"):
        head_control_model(open_audit(_config(cifar_subset, control=False)))
