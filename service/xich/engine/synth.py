"""A planted-bias image dataset: classes told apart by shape, subgroups by a visible nuisance.

Each image is hatching: the shape is a patch hatched in one orientation on a background hatched in the
perpendicular one, so only the change of orientation draws it. A class has ``subgroups`` looks: the
hatching orientation (and a colour); every look paints half the pixels, so none is brighter by
construction. In ``train/`` one look is rare in every class (``rare_fraction`` of the class; which look
depends on the seed), so the model sees little of it anywhere; in ``test/`` looks are balanced. The known answer is written to ``ground_truth.json`` so that an audit can be checked: the
paper predicts the rare look's cluster to be among the least dominant.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import XichError

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "bar")
# a look's hatching orientation, and the perpendicular one its background is hatched with
ORIENTATIONS = {"diagonal": "antidiagonal", "antidiagonal": "diagonal", "horizontal": "vertical",
                "vertical": "horizontal"}
SIZE = 32


@dataclass(frozen=True)
class SynthSpec:
    classes: int = 4
    subgroups: int = 4
    rare_fraction: float = 0.03
    train_per_class: int = 200
    test_per_subgroup: int = 60
    seed: int = 0


def rare_subgroup(class_index: int, subgroups: int, seed: int = 0) -> int:
    """The rare subgroup of a class: one look, rare in every class, chosen by the seed."""
    return (subgroups - 1 + seed) % subgroups


def write_synth(out: str | Path, spec: SynthSpec) -> dict:
    """Write ``train/`` and ``test/`` image folders and ``ground_truth.json`` under ``out``; returns the truth."""
    if not 2 <= spec.classes <= len(SHAPES):
        raise XichError(f"--classes must be between 2 and {len(SHAPES)}, got {spec.classes}")
    if not 2 <= spec.subgroups <= len(ORIENTATIONS):
        raise XichError(f"--subgroups must be between 2 and {len(ORIENTATIONS)} (one per hatching orientation), "
                        f"got {spec.subgroups}")
    if not 0 < spec.rare_fraction < 1 / spec.subgroups:
        raise XichError(f"--rare-fraction must be in (0, 1/subgroups), got {spec.rare_fraction}")
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    truth: dict = {"subgroup": {}, "rare": {}}
    for c, shape in enumerate(SHAPES[: spec.classes]):
        rare = rare_subgroup(c, spec.subgroups, spec.seed)
        truth["rare"][shape] = rare
        n_rare = rare_counts(spec)[0]
        n_common = spec.train_per_class - n_rare
        train_groups = [rare] * n_rare + [_common(k, rare, spec.subgroups) for k in range(n_common)]
        test_groups = [s for s in range(spec.subgroups) for _ in range(spec.test_per_subgroup)]
        for split, groups in (("train", train_groups), ("test", test_groups)):
            folder = out / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for k, s in enumerate(rng.permutation(groups)):
                rel = f"{split}/{shape}/{k:04d}.png"
                draw_image(c, int(s), spec, rng).save(out / rel)
                truth["subgroup"][rel] = int(s)
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True))
    return truth


def rare_counts(spec: SynthSpec) -> tuple[int, int]:
    """Training images per class of the rare look and of each other look (on average): (rare, common)."""
    n_rare = max(1, round(spec.rare_fraction * spec.train_per_class))
    return n_rare, (spec.train_per_class - n_rare) / (spec.subgroups - 1)


def balancing_factor(spec: SynthSpec) -> float:
    """The oversampling factor that draws the rare look as often as each other look (``oversampling_weights``):
    common / rare images per class, e.g. 194/3 / 6 = 10.8 for the defaults."""
    n_rare, n_common = rare_counts(spec)
    return n_common / n_rare


def oversampling_weights(truth: dict, factor: float, split: str = "train") -> dict[str, float]:
    """Sampling weights for ``TrainConfig.oversample``: ``factor`` for each ``split`` image of its class's rare
    look (by ``ground_truth.json``), keyed by image id as the dataset names it (``"circle/0007.png"``);
    other images are left out, i.e. weigh 1."""
    if not (isinstance(factor, (int, float)) and not isinstance(factor, bool) and 0 < factor < float("inf")):
        raise XichError(f"the oversampling factor must be a finite number above 0, got {factor!r}")
    prefix = f"{split}/"
    weights = {}
    for rel, subgroup in truth["subgroup"].items():
        if rel.startswith(prefix):
            image_id = rel[len(prefix):]
            if subgroup == truth["rare"][image_id.split("/", 1)[0]]:
                weights[image_id] = float(factor)
    return weights


def _common(k: int, rare: int, subgroups: int) -> int:
    others = [s for s in range(subgroups) if s != rare]
    return others[k % len(others)]


def _palette(class_index: int, subgroup: int, spec: SynthSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Foreground and background colours of one (class, subgroup) look."""
    hue = subgroup / spec.subgroups + 0.03 * class_index
    fg = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.9, 0.95))
    bg = tuple(int(255 * v) for v in colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.35, 0.35))
    return fg, bg


def draw_image(class_index: int, subgroup: int, spec: SynthSpec, rng: np.random.Generator) -> Image.Image:
    """One 32×32 RGB image: the class's shape as a patch of hatching in the subgroup's orientation, on
    hatching at the perpendicular orientation, both in the subgroup's colour: only the change of
    orientation draws the shape, so recognising it takes features of that orientation."""
    fg, bg = _palette(class_index, subgroup, spec)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    orientation = list(ORIENTATIONS)[subgroup]
    mask = _shape_mask(SHAPES[class_index], rng)
    painted = (_hatching(ORIENTATIONS[orientation], xx, yy) & ~mask) | (_hatching(orientation, xx, yy) & mask)
    base = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    base[:] = bg
    base[painted] = fg
    base += rng.normal(0, 8, size=base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _shape_mask(shape: str, rng: np.random.Generator) -> np.ndarray:
    img = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(8, 12)
    cx, cy = rng.uniform(r + 1, SIZE - r - 1, size=2)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=255)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    else:  # bar
        draw.rectangle([cx - r, cy - r * 0.3, cx + r, cy + r * 0.3], fill=255)
    return np.asarray(img) > 127


def _hatching(orientation: str, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Stripes two pixels wide every four pixels; every orientation paints half of the image."""
    coord = {"diagonal": xx - yy, "antidiagonal": xx + yy, "horizontal": yy, "vertical": xx}[orientation]
    return coord % 4 < 2
