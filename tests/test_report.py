"""The HTML report: one figure per kind, and a headless-browser check that it renders."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from reference import logits_of
from builders import audit_result, class_result, cluster, resnet20_config
from xich.engine.audit import assemble_result, audit_classes, explainer, open_audit
from xich.reports.report import _dominance_heatmap, collect_examples, example_pairs, write_report
from xich.result import AuditResult, ClassResult, ClusterResult, ImageScore, MosaicResult, PerImageResult


@pytest.fixture(scope="module")
def report(synth_data, tmp_path_factory):
    examples = {}
    config = resnet20_config(synth_data, clusters=3, mosaics_per_pair=3, per_image=4)
    opened = open_audit(config)
    classes = []
    for images, cls in audit_classes(opened):
        classes.append(cls)
        examples[cls.name] = collect_examples(cls, explainer(opened, images))
    result = assemble_result(opened, classes, "report-test")
    out = tmp_path_factory.mktemp("report")
    return result, examples, write_report(result, out, examples), opened.prepared.model


def test_per_image_mode_counts_and_correlations(report, synth_data):
    """Counts and ranges, and each sampled image's logit and softmax tied to its image id: an eager float64 pass of
    the audited model over the file the id names (tests/reference.py), the class's own output."""
    result, _, _, model = report
    for cls in result.classes:
        pi = cls.per_image
        assert len(pi.images) == 4
        assert pi.mosaics == 4 * 3 // 2 * 3  # all pairs of the 4 images, J = 3 each
        assert len({r.image for r in pi.images}) == 4
        assert {r.image for r in pi.images} <= {m for c in cls.clusters for m in c.members}
        assert pi.requested == 4
        assert all(0 <= r.softmax <= 1 and (r.score is None or 0 <= r.score <= 1) for r in pi.images)
        logits = logits_of(model, [synth_data / "test" / r.image for r in pi.images])
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        np.testing.assert_allclose([r.logit for r in pi.images], logits[:, cls.index], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose([r.softmax for r in pi.images], exp[:, cls.index] / exp.sum(axis=1), rtol=0,
                                   atol=1e-6)
        assert np.ptp(logits[:, cls.index]) > 1e-3  # the images' logits differ: one given to another image shows
        for key in ("pearson_logit", "spearman_logit", "pearson_softmax", "spearman_softmax"):
            assert getattr(pi, key) is None or -1 <= getattr(pi, key) <= 1


def test_one_figure_per_kind(report):
    result, examples, page, _ = report
    text = page.read_text()
    kinds = re.findall(r'data-kind="([a-z-]+)" src="([^"]+)"', text)
    per_kind = {k: [src for kind, src in kinds if kind == k] for k in ("matrices", "mosaics", "per-image",
                                                                      "training-distribution", "looks")}
    n = len(result.classes)
    # a class whose mosaics were all excluded (all-zero maps: this model is untrained) has nothing to show
    shown = sum(1 for cls in result.classes if any(m.d is not None for m in cls.mosaics))
    assert 0 < shown
    assert [len(per_kind[k]) for k in ("matrices", "mosaics", "per-image", "training-distribution")] == [n, shown, n, 1]
    assert len(per_kind["looks"]) == sum(1 for cls in result.classes if cls.looks["flagged"])
    for _, src in kinds:
        with Image.open(page.parent / src) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    for cls in result.classes:
        defined = [sum(1 for m in cls.mosaics if m.pair == sorted((i, j)) and m.d is not None)
                   for _, i, j in example_pairs(cls)]
        pairs = [ex for ex in examples[cls.name] if ex.kind == "pair"]
        assert len(pairs) == sum(min(2, k) for k in defined)
        # one mosaic of four example images for each flagged look, titled with its cluster
        looks = [ex.title for ex in examples[cls.name] if ex.kind == "look"]
        assert looks == [f"flagged look: cluster {k['id']} (accuracy {k['accuracy']:.3f})" for k in cls.looks["looks"]]
        for ex in examples[cls.name]:
            assert ex.rgb.shape == (64, 64, 3) and ex.rgb.dtype == np.uint8
            assert ex.cam.shape == (64, 64) and 0 <= ex.cam.min() and ex.cam.max() <= 1


def test_example_pairs_pick_extremes(report):
    result, _, _, _ = report
    for cls in result.classes:
        D = cls.dominance
        defined = [(a, b) for a in range(3) for b in range(3) if a != b and D[a][b] is not None]
        if not defined:
            assert example_pairs(cls) == []
            continue
        (_, i, j), (_, k, m) = example_pairs(cls)
        assert D[i][j] == max(D[a][b] for a, b in defined)
        assert abs(D[k][m] - 0.5) == min(abs(D[a][b] - 0.5) for a, b in defined if a < b)


def test_page_renders_in_headless_chromium(report, headless_chromium):
    _, _, page, _ = report
    decoded, total, pixels = headless_chromium(page)
    assert decoded == total > 0
    assert pixels.shape[:2] == (2000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # figures drawn, not a blank page


# A hand-built audit: "cat" has a pair without evidence and an unranked cluster (2), "dog" is fully
# ranked (one pair with a single image set, so no CI) and has per-image scores, "bird" has no evidence.

def _cluster(id: int, rank: int | None, score: float | None, share: float) -> ClusterResult:
    return cluster(id, rank=rank, score=score, train_share=share, train_count=int(share * 100),
                   members=[f"img{id}_{k}.png" for k in range(4)])


def _class(index: int, name: str, clusters: list[ClusterResult], D: list, ci: list, sets: list,
           per_image: PerImageResult | None = None) -> ClassResult:
    P = len(clusters)
    p = [[1.0 if i == j or D[i][j] is None else 0.01 for j in range(P)] for i in range(P)]
    mosaics = [MosaicResult(pair=[i, j], images=[f"img{i}_0.png", f"img{j}_0.png", f"img{i}_1.png", f"img{j}_1.png"],
                            clusters=[i, j, i, j], d=D[i][j]) for i in range(P) for j in range(i + 1, P)]
    return class_result(name, clusters, index=index, dominance=D, dominance_ci=ci, p_values=p, distinct_sets=sets,
                        mosaics=mosaics, per_image=per_image)


@pytest.fixture
def hand_built() -> AuditResult:
    cat = _class(0, "cat", [_cluster(0, 1, 0.4, 0.5), _cluster(1, 0, 0.6, 0.3), _cluster(2, None, None, 0.2)],
                 D=[[0.5, 0.4, None], [0.6, 0.5, None], [None, None, 0.5]],
                 ci=[[None, [0.3, 0.5], None], [[0.5, 0.7], None, None], [None, None, None]],
                 sets=[[0, 6, 0], [6, 0, 0], [0, 0, 0]])
    per_image = PerImageResult(requested=5, mosaics=30, pearson_logit=0.88, spearman_logit=0.93,
                               pearson_softmax=0.41, spearman_softmax=0.52,
                               images=[ImageScore(image=f"i{k}.png", score=None if k == 4 else 0.3 + 0.1 * k,
                                                  logit=1.0 + k, softmax=0.2 * k) for k in range(5)])
    dog = _class(1, "dog", [_cluster(0, 0, 0.7, 0.6), _cluster(1, 2, 0.35, 0.1), _cluster(2, 1, 0.45, 0.3)],
                 D=[[0.5, 0.8, 0.6], [0.2, 0.5, 0.5], [0.4, 0.5, 0.5]],
                 ci=[[None, [0.7, 0.9], None], [[0.1, 0.3], None, [0.4, 0.6]], [None, [0.4, 0.6], None]],
                 sets=[[0, 6, 1], [6, 0, 5], [1, 5, 0]], per_image=per_image)
    bird = _class(2, "bird", [_cluster(0, None, None, 0.5), _cluster(1, None, None, 0.5)],
                  D=[[0.5, None], [None, 0.5]], ci=[[None, None], [None, None]], sets=[[0, 0], [0, 0]])
    bird.notes.append("no evidence: every mosaic's Grad-CAM map is zero, so the class has no hierarchy")
    classes = [cat, dog, bird]
    return audit_result(classes, labels={"source": "checkpoint 'classes'", "names": ["cat", "dog", "bird"]},
                        dataset={"uri": "/data/pets"}, config={"clusters": 3},
                        notes=["labels matched to the dataset's folders by name"])


def test_no_evidence_is_shown_not_hidden(hand_built, tmp_path):
    page = write_report(hand_built, tmp_path)
    text = page.read_text()
    assert "checkpoint &#x27;classes&#x27;" in text and "labels matched to the dataset&#x27;s folders by name" in text
    cat = text.split("<h2>cat</h2>", 1)[1].split("<h2>", 1)[0]
    rows = re.findall(r"<tr><td[^>]*>([^<]*)</td><td>(\d+)</td><td>([^<]*)</td>", cat)
    assert rows == [("0", "1", "0.600"), ("1", "0", "0.400"), ("no evidence", "2", "—")]
    table = re.search(r"<table><tr><th>rank</th>(.*?)</table>", cat).group(0)  # no column is empty on every row
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr><td.*?</tr>", table)]
    assert len({len(row) for row in cells}) == 1 and all(any(column) for column in zip(*cells))
    assert len(re.findall(r"<th>", table)) == len(cells[0])
    scope = re.search(r"<p class='summary-scope'>(.*?)</p>", text).group(1)
    assert "mean over the 1 class(es)" in scope
    assert "no evidence at all: bird" in scope and "some clusters without evidence: cat" in scope
    assert "Without a hierarchy (no evidence): bird" in text
    kinds = re.findall(r'data-kind="([a-z-]+)"', text)
    assert kinds.count("matrices") == 3 and kinds.count("training-distribution") == 1 and kinds.count("per-image") == 1


def test_per_image_numbers_and_finding_are_printed(hand_built, tmp_path):
    text = write_report(hand_built, tmp_path).read_text()
    table = re.search(r"<table class='correlations'>(.*?)</table>", text).group(1)
    assert re.findall(r"<td>([^<]*)</td>", table) == ["+0.88", "+0.41", "+0.93", "+0.52"]
    assert "5 image(s) of 5 requested, 4 with a score; 30 mosaics" in text
    finding = re.search(r"<p class='finding'>(.*?)</p>", text, flags=re.S).group(1)
    assert "Spearman 0.91–0.98" in finding and "w·A" in finding and "Fig. 3" in finding
    assert "<b class='measured'>+0.93</b>" in finding
    # it speaks of the audited model and data first, never as if every report were on another model's data
    assert finding.startswith("In this run (cifar:resnet20 on <code>/data/pets</code>)")
    assert "ResNet-20/CIFAR-10" not in text


def test_dominance_cells_say_no_evidence_never_a_tie(hand_built):
    cat = hand_built.classes[0]
    fig, ax = plt.subplots()
    try:
        _dominance_heatmap(ax, cat, fontsize=8)
        cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    finally:
        plt.close(fig)
    assert cells == {(0, 1): "0.40\n[0.30, 0.50]\n6 sets", (1, 0): "0.60\n[0.50, 0.70]\n6 sets",
                     (0, 2): "no\nevidence", (2, 0): "no\nevidence", (1, 2): "no\nevidence", (2, 1): "no\nevidence"}
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert sorted((round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in hatched) == [(0, 2), (1, 2), (2, 0), (2, 1)]


def test_single_image_set_has_no_interval(hand_built):
    fig, ax = plt.subplots()
    try:
        _dominance_heatmap(ax, hand_built.classes[1], fontsize=8)
        cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    finally:
        plt.close(fig)
    assert cells[0, 2] == "0.60\n1 set" and cells[1, 2] == "0.50\n[0.40, 0.60]\n5 sets"


def test_example_pairs_skip_pairs_without_evidence(hand_built):
    cat, dog, bird = hand_built.classes
    assert example_pairs(cat) == [("most dominant", 1, 0), ("least dominant", 0, 1)]
    assert example_pairs(dog) == [("most dominant", 0, 1), ("least dominant", 1, 2)]
    assert example_pairs(bird) == []


def test_hand_built_page_renders(hand_built, tmp_path, headless_chromium):
    page = write_report(hand_built, tmp_path / "report")
    decoded, total, pixels = headless_chromium(page)
    assert decoded == total == 5  # training distribution, three matrices, one per-image figure
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


def test_the_console_the_report_and_the_artifact_render_one_summary(hand_built, tmp_path, capsys):
    import html

    from rich.console import Console

    from xich.reports.summary import class_lines, overall_lines, print_summary, summary_markdown

    lines = overall_lines(hand_built)
    assert "Least dominant cluster per class: cat: cluster 0; dog: cluster 1" in lines
    assert "Without a hierarchy (no evidence): bird" in lines
    page = write_report(hand_built, tmp_path).read_text()
    markdown = summary_markdown(hand_built, model="m", version="1", report_uri="s3://b/r.html")
    print_summary(hand_built, Console(soft_wrap=True, width=200))
    console = capsys.readouterr().out
    for line in lines:
        assert html.escape(line) in page and line in markdown and line in console
    assert ("per-image (5 images): pearson_logit +0.88  spearman_logit +0.93  pearson_softmax +0.41  spearman_softmax "
            "+0.52") in class_lines(hand_built.classes[1])
    assert all(line in console for cls in hand_built.classes for line in class_lines(cls))
    assert markdown.endswith("Report: [s3://b/r.html](s3://b/r.html)")


def test_a_document_reads_back_as_the_same_typed_result(hand_built):
    again = AuditResult.from_dict(hand_built.to_dict())
    assert again == hand_built and isinstance(again.classes[1].per_image.images[0], ImageScore)
    assert again.to_json() == hand_built.to_json()


def test_an_audit_without_the_control_says_nothing_of_it(report):
    """The control is off by default (--control turns it on): no paragraph, column or finding speaks of it."""
    result, _, page, _ = report
    text = page.read_text()
    assert result.config["control_seed"] is None and all(c.control is None for c in result.classes)
    assert "<p class='control'>" not in text and "control score" not in text and "Randomized control" not in text
