"""The HTML report: one figure per kind, and a headless-browser check that it renders."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from xich.audit import AuditConfig, run_audit
from xich.report import collect_examples, example_pairs, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(synth_data, tmp_path_factory):
    examples = {}
    config = AuditConfig(model="cifar:resnet20", data=str(synth_data), clusters=3, mosaics_per_pair=3, per_image=4,
                         device="cpu")
    result = run_audit(config, on_class=lambda cls, explain: examples.__setitem__(cls.name, collect_examples(cls, explain)))
    out = tmp_path_factory.mktemp("report")
    return result, examples, write_report(result, out, examples)


def test_per_image_mode_counts_and_correlations(report):
    result, _, _ = report
    for cls in result.classes:
        pi = cls.per_image
        assert len(pi["images"]) == 4
        assert pi["mosaics"] == 4 * 3 // 2 * 3  # all pairs of the 4 images, J = 3 each
        assert len({r["image"] for r in pi["images"]}) == 4
        assert all(0 <= r["softmax"] <= 1 and 0 <= r["score"] <= 1 for r in pi["images"])
        for key in ("pearson_logit", "spearman_logit", "pearson_softmax", "spearman_softmax"):
            assert pi[key] is None or -1 <= pi[key] <= 1


def test_one_figure_per_kind(report):
    result, examples, page = report
    text = page.read_text()
    kinds = re.findall(r'data-kind="([a-z-]+)" src="([^"]+)"', text)
    per_kind = {k: [src for kind, src in kinds if kind == k] for k in ("matrices", "mosaics", "per-image",
                                                                      "training-distribution")}
    n = len(result.classes)
    # a class whose mosaics were all excluded (all-zero maps: this model is untrained) has nothing to show
    shown = sum(1 for cls in result.classes if any(m.d is not None for m in cls.mosaics))
    assert 0 < shown
    assert [len(per_kind[k]) for k in ("matrices", "mosaics", "per-image", "training-distribution")] == [n, shown, n, 1]
    for _, src in kinds:
        with Image.open(page.parent / src) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    for cls in result.classes:
        defined = [sum(1 for m in cls.mosaics if m.pair == sorted((i, j)) and m.d is not None)
                   for _, i, j in example_pairs(cls)]
        assert len(examples[cls.name]) == sum(min(2, k) for k in defined)
        for ex in examples[cls.name]:
            assert ex.rgb.shape == (64, 64, 3) and ex.rgb.dtype == np.uint8
            assert ex.cam.shape == (64, 64) and 0 <= ex.cam.min() and ex.cam.max() <= 1


def test_example_pairs_pick_extremes(report):
    result, _, _ = report
    cls = result.classes[0]
    D = np.array(cls.dominance)
    (_, i, j), (_, k, m) = example_pairs(cls)
    assert D[i, j] == max(D[a, b] for a in range(3) for b in range(3) if a != b)
    assert abs(D[k, m] - 0.5) == min(abs(D[a, b] - 0.5) for a in range(3) for b in range(a + 1, 3))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_page_renders_in_headless_chromium(report, tmp_path):
    _, _, page = report
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-figures-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[:500]
    assert loaded.group(1) == loaded.group(2) != "0"
    shot = tmp_path / "page.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # figures drawn, not a blank page
