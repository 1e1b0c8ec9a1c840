"""The one result type of an audit: plain dataclasses that every sink (JSON, report, database) reads.

Data only at import (no numpy): the registry hooks and ``xich register`` read it. The across-class summary
(:func:`summarize`) loads numpy and the method when it is called.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

Explainer = Callable[[list[str]], "tuple[np.ndarray, np.ndarray]"]  # image ids (TL, TR, BL, BR) -> (rgb, cam)


@dataclass
class ClusterResult:
    """``score`` and ``rank`` are None for a cluster without evidence (no defined mosaic against any other).
    ``baselines``: what one forward pass per image says (``method.baselines.BASELINES``: mean class logit,
    mean softmax, accuracy, mean margin over the cluster's evaluation images); None in documents made
    before they were computed."""

    id: int
    eval_size: int
    train_count: int | None
    train_share: float | None
    score: float | None
    rank: int | None
    members: list[str]
    baselines: dict[str, float | None] | None = None
    train_share_se: float | None = None  # standard error of train_share under --train-per-class (0: every image)
    representation_ratio: float | None = None  # train share / evaluation share (method.looks); None without training


@dataclass
class MosaicResult:
    """One mosaic's manifest; ``d`` is the dominance of ``pair[0]`` over ``pair[1]`` (None if excluded)."""

    pair: list[int]
    images: list[str]
    clusters: list[int]
    d: float | None


@dataclass
class ImageScore:
    """One sampled image of per-image mode: its dominance score (None without evidence), class logit and softmax."""

    image: str
    score: float | None
    logit: float
    softmax: float


@dataclass
class PerImageResult:
    """Per-image mode (Fig. 3, ``--per-image N``): ``requested`` images asked for, those sampled (each its own
    cluster), the mosaics scored, and the correlations of the images' scores with their logits and softmax values
    (``method.per_image.dominance_correlations``; None where undefined)."""

    requested: int | None
    images: list[ImageScore]
    mosaics: int | None
    pearson_logit: float | None = None
    spearman_logit: float | None = None
    pearson_softmax: float | None = None
    spearman_softmax: float | None = None

    @classmethod
    def from_dict(cls, doc: dict) -> PerImageResult:
        return cls(**{**doc, "images": [ImageScore(**r) for r in doc["images"]]})


@dataclass
class ClassResult:
    """One class: ``index`` is the model's output for it; ``dominance[i][j]`` is None for a pair without
    evidence; ``dominance_ci[i][j]`` is [low, high] (95 %, t-based on distinct image sets) or None;
    ``distinct_sets[i][j]`` counts the pair's distinct image sets; ``hierarchy`` lists the ranked clusters.
    ``agreement``: Kendall's τ between the clusters' scores and each baseline (None where undefined).
    ``control``: the randomized control (the same mosaics under the architecture re-initialised):
    ``seed``, ``scores``, ``hierarchy``, ``significant_pairs``, ``tau`` (against ``scores``) and
    ``image_statistics`` (as many significant pairs as the model, or more); None with --no-control.
    ``looks``: the looks the audit flags as under-learned, by the signal it leads with (``engine.audit.looks_section``:
    ``signal``, ``rule``, ``flagged`` cluster ids most in need first, ``need`` per cluster, and per flagged cluster
    its numbers, example images and training images); None in documents made before it existed.
    ``null``: where this class's evidence stands against the null model (the same architecture with random weights
    audited end to end: ``method.looks.null_comparison``); None with --no-null and in older documents."""

    index: int
    name: str
    clusters: list[ClusterResult]
    dominance: list[list[float | None]]
    dominance_ci: list[list[list[float] | None]]
    p_values: list[list[float]]
    p_values_holm: list[list[float]]
    distinct_sets: list[list[int]]
    hierarchy: list[int]
    spearman_score_train_share: float | None
    excluded_mosaics: int
    mosaics: list[MosaicResult]
    notes: list[str] = field(default_factory=list)
    per_image: PerImageResult | None = None
    agreement: dict[str, float | None] | None = None
    control: dict | None = None
    looks: dict | None = None
    null: dict | None = None

    def significant_pairs(self, alpha: float = 0.05) -> list[tuple[int, int]]:
        """(i, j) where cluster i dominates j (D > 0.5) with a Holm-adjusted p below ``alpha``."""
        P = len(self.clusters)
        return [(i, j) for i in range(P) for j in range(P)
                if self.dominance[i][j] is not None and self.dominance[i][j] > 0.5 and self.p_values_holm[i][j] < alpha]


@dataclass
class AuditedModel:
    """The run header's model: its spec and where its weights came from (None: initialised, not trained)."""

    spec: str
    weights: str | None = None


@dataclass
class LabelList:
    """The run header's labels: the model's class names in output order, and where they came from."""

    source: str | None
    names: list[str]


@dataclass
class AuditedData:
    """The run header's dataset: where it came from, the split audited and the training split placed (None: none)."""

    uri: str
    eval_split: str | None = None
    train_split: str | None = None


@dataclass
class AuditResult:
    """One audit: the run header (``run_id``, ``model``, ``labels``, ``dataset``, the resolved ``config``), every
    class, the across-class ``summary`` and the run's notes. ``to_dict`` is the audit document."""

    run_id: str
    model: AuditedModel
    labels: LabelList
    dataset: AuditedData
    config: dict
    classes: list[ClassResult]
    summary: dict
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # seconds per stage (``engine.audit.stage_timings``), and the run's

    @classmethod
    def assemble(cls, run_id: str, *, model: AuditedModel, labels: LabelList, dataset: AuditedData, config: dict,
                 classes: list[ClassResult], notes: list[str] | None = None,
                 timings: dict | None = None) -> AuditResult:
        """The one place a result is put together, computed or read back: the classes in model output order and
        the across-class summary derived from them (:func:`summarize`), so a stored run reads back as computed.
        ``config``: the resolved settings; ``timings``: seconds per stage."""
        classes = sorted(classes, key=lambda c: c.index)
        return cls(run_id=run_id, model=model, labels=labels, dataset=dataset, config=config, classes=classes,
                   summary=summarize(classes), notes=list(notes or []), timings=dict(timings or {}))

    def to_dict(self) -> dict:
        return asdict(self)

    def oversample(self) -> dict[str, float]:
        """The oversample file of this audit (``xich train --oversample``): each training image of a flagged look
        (placed in it by nearest centre) → the look's sampling weight; images of no flagged look are left out."""
        return {image: look["oversample_weight"] for cls in self.classes if cls.looks
                for look in cls.looks["looks"] for image in look["train_images"] or ()}

    @classmethod
    def from_dict(cls, doc: dict) -> AuditResult:
        """The inverse of ``to_dict``: an audit document (``--json``, ``audit.json`` in the store) as dataclasses."""
        classes = [ClassResult(**{**c, "clusters": [ClusterResult(**k) for k in c["clusters"]],
                                  "mosaics": [MosaicResult(**m) for m in c["mosaics"]],
                                  "per_image": PerImageResult.from_dict(c["per_image"]) if c.get("per_image") else None})
                   for c in doc["classes"]]
        return cls(**{**doc, "model": AuditedModel(**doc["model"]), "labels": LabelList(**doc["labels"]),
                      "dataset": AuditedData(**doc["dataset"]), "classes": classes})

    def to_json(self) -> str:
        """The audit document; never contains NaN."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def write_json(self, path: str | Path) -> None:
        """Write the JSON document atomically (``atomic.write_atomically``: a device or symlink there is refused)."""
        from .atomic import write_atomically

        write_atomically(path, self.to_json(), what=str(path))


def summarize(classes: list[ClassResult]) -> dict:
    """Across classes: mean train share by dominance rank (Fig. 5) and mean Spearman(score, train share).

    Only classes whose every cluster has a rank (evidence against the others) enter the rank
    table: a class with unranked clusters would shift every rank below them.
    """
    import numpy as np

    from .method.distribution import train_share_by_rank

    ranked = [np.array([c.train_share for c in sorted(r.clusters, key=lambda c: c.rank)]) for r in classes
              if r.clusters and r.clusters[0].train_share is not None and all(c.rank is not None for c in r.clusters)
              and len(r.clusters) > 1]
    rhos = [r.spearman_score_train_share for r in classes if r.spearman_score_train_share is not None]
    taus = [r.agreement["mean_logit"] for r in classes if r.agreement and r.agreement["mean_logit"] is not None]
    return {"train_share_by_rank": train_share_by_rank(ranked), "mean_spearman": float(np.mean(rhos)) if rhos else None,
            "classes_ranked": len(ranked), "classes_without_evidence": [r.name for r in classes if not r.hierarchy],
            "mean_tau_mean_logit": float(np.mean(taus)) if taus else None,
            "classes_unlike_mean_logit": [r.name for r in classes if r.agreement
                                          and r.agreement["mean_logit"] is not None and r.agreement["mean_logit"] < 1.0],
            "classes_image_statistics": [r.name for r in classes if r.control and r.control["image_statistics"]]}


def least_dominant_share(classes: list[ClassResult]) -> float | None:
    """Mean over classes of the training share of each class's least dominant cluster (the last of its hierarchy).

    The paper's reading (Fig. 4/5): the clusters that lose are those the model saw little of in training, so a
    small value says that, per class, the look the model explains least is rare in its training data. Classes
    without a hierarchy are left out; None without a training split or without any ranked class.
    """
    import numpy as np

    shares = [next(c.train_share for c in cls.clusters if c.id == cls.hierarchy[-1]) for cls in classes
              if cls.hierarchy]
    shares = [s for s in shares if s is not None]
    return float(np.mean(shares)) if shares else None
