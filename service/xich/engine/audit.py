"""An audit as a sequence of stages, each taking and returning plain data (the CLI and the flows call them).

    prepare the model (open_audit) → per class: embed (eq. 1; the logits give the baselines) → cluster
    (or take a frozen clustering) → plan mosaics (eq. 2) → score mosaics (eq. 3–6; the randomized control
    scores the same mosaics) → rank clusters (eq. 7–8, p-values, intervals; agreement with the baselines)
    → place the training split (Fig. 4/5) → per-image mode (Fig. 3) → the class result
    → assemble_result: one AuditResult for every sink.

The model runtime (tracing, chunking, device) is ``runtime.py``; the equations are ``method/``.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .datasets import Dataset, ImageStream, ObjectSource, Split, open_dataset
from ..errors import XichError
from .labels import LabelList, model_indices, resolve_labels
from ..method.baselines import baseline_agreement, cluster_baselines, kendall_tau
from ..method.clustering import Clustering, assign_clusters, cluster_embeddings, clustering_from_labels
from ..method.distribution import score_share_spearman, training_distribution, training_share_se
from ..method.dominance import dominance_matrix, mosaic_dominance, quadrant_relevance
from ..method.hierarchy import hierarchy, hierarchy_scores
from ..method.looks import (RATIO_FLAG, class_evidence, flag_looks, need, null_comparison, oversample_weights,
                            representation_ratio)
from ..method.mosaic import MosaicPlan, assemble_mosaics, image_sets, plan_mosaics
from ..method.per_image import class_softmax, dominance_correlations
from ..method.significance import confidence_intervals, p_value_matrices, set_means, significant_pairs
from .models import build_model, fixed_input_size, head_name, load_weights, read_checkpoint
from ..result import (AuditedData, AuditedModel, AuditResult, ClassResult, ClusterResult, Explainer, ImageScore,
                      LabelList, MosaicResult, PerImageResult)
from ..settings import IMAGE_MAX_SIDE_FACTOR
from .config import AuditConfig, parse_normalize
from .runtime import PreparedModel

log = logging.getLogger(__name__)

def default_tile_size(model_spec: str, split: Split) -> int:
    """32 for cifar: models, 224 for torchvision: ones, else the first evaluation image's height."""
    if model_spec.startswith("cifar:"):
        return 32
    if model_spec.startswith("torchvision:"):
        return 224
    first_class = next(iter(split.images.values()))
    return int(split.read(first_class[0]).shape[0])


@dataclass
class ClassImages:
    """One class's pixels: evaluation images (and their ids) and the training split's images."""

    name: str
    index: int  # the model's output for this class
    eval_ids: list[str]
    eval_images: torch.Tensor  # uint8 (N, 3, T, T)
    train_images: torch.Tensor | ImageStream | None  # a stream: decoded in chunks when placed, never held whole
    train_population: int | None = None  # the class's training images before --train-per-class (None: not sampled)


@dataclass
class OpenedAudit:
    """Everything an audit needs before its first class: data opened, labels matched, model prepared."""

    config: AuditConfig
    dataset: Dataset
    eval_split: Split
    train_split: Split | None
    labels: LabelList
    indices: dict[str, int]  # selected class → model output index, in output order
    prepared: PreparedModel
    tile_size: int
    mosaic_size: int
    control: PreparedModel | None = None  # the same architecture, re-initialised (None: without --control)
    control_seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES), summed over classes
    null: OpenedAudit | None = None  # the null model's audit (null_audit); None with --no-null or without one
    notes: list[str] = field(default_factory=list)  # what the document's notes must say of how the audit opened

    def __post_init__(self):
        self._timing_lock = threading.Lock()

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the seconds the block takes to ``timings[stage]`` (thread-safe: classes are decoded ahead in a
        thread)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(stage, time.perf_counter() - began)

    def add_time(self, stage: str, seconds: float) -> None:
        with self._timing_lock:
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    @property
    def classes(self) -> list[str]:
        return list(self.indices)

    def load(self, name: str) -> ClassImages:
        ids = self.eval_split.images[name]
        train, population = None, None
        if self.train_split is not None:
            tr_ids = self.train_split.images.get(name, [])
            sampled = sample_training(tr_ids, self.config.train_per_class, self.config.seed, self.indices[name])
            population, tr_ids = (len(tr_ids) if len(sampled) < len(tr_ids) else None), sampled
            train = self.train_split.stream(tr_ids, self.tile_size, self.config.batch_size)
        with self.timed("decode_s"):
            ids, images = self.eval_split.load_kept(ids, self.tile_size)  # images over the size cap left out
        return ClassImages(name, self.indices[name], ids, images, train, population)

    def iter_classes(self, names: list[str]) -> Iterator[ClassImages]:
        """The classes' images in turn; the next class is decoded while the caller works on this one."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.load, names[0]) if names else None
            for n in range(len(names)):
                images = pending.result()
                pending = pool.submit(self.load, names[n + 1]) if n + 1 < len(names) else None
                yield images

    def resolved_config(self) -> dict:
        """The document's ``config``: what was asked, with ``auto`` values resolved."""
        c = self.config
        return {"clusters": c.clusters, "mosaics_per_pair": c.mosaics_per_pair, "seed": c.seed,
                "layer": self.prepared.layer_name, "cam": self.prepared.cam, "method": c.method,
                "control_seed": self.control_seed, "tile_size": self.tile_size,
                "mosaic_size": self.mosaic_size, "normalize": c.normalize, "per_image": c.per_image,
                "train_per_class": c.train_per_class, "precision": c.precision, "looks": c.looks,
                "null_seed": null_seed(c.seed) if self.null is not None else None}

    def settings(self) -> dict:
        """The settings that change numbers: what identifies a run besides model version, data and clustering.

        Architecture and weights belong to the model version, P to the clustering; batch size, device,
        --cam (fast and reference agree), class order and per-image mode change no number of the run;
        --method, the randomized control, the looks signal and the null model do, and so does --train-per-class (named only when set, so the
        keys of runs that place every training image are what they were).
        """
        mean, std = parse_normalize(self.config.normalize)
        return {"mosaics_per_pair": self.config.mosaics_per_pair, "method": self.config.method,
                "control": self.config.control, "looks": self.config.looks, "null": self.config.null,
                "seed": self.config.seed, "tile_size": self.tile_size, "mosaic_size": self.mosaic_size,
                "normalize": [list(mean), list(std)], "layer": self.prepared.layer_name,
                "classes": sorted(self.indices),
                **({"train_per_class": self.config.train_per_class} if self.config.train_per_class else {}),
                **({"precision": self.config.precision} if self.config.precision != "fp32" else {})}


def sample_training(ids: list[str], n: int | None, seed: int, class_index: int) -> list[str]:
    """``n`` of a class's training image ids, drawn without replacement, seeded by (seed, class index), in
    their order; all of them when ``n`` is None or not smaller."""
    if n is None or n >= len(ids):
        return ids
    keep = np.sort(np.random.default_rng([seed, class_index, 2]).choice(len(ids), size=n, replace=False))
    return [ids[k] for k in keep]


def open_audit(config: AuditConfig, source: ObjectSource | None = None, *,
               max_side_factor: int = IMAGE_MAX_SIDE_FACTOR, **archive_caps: int) -> OpenedAudit:
    """Stage 0: open the dataset, match its classes to the model's labels, prepare the model (``config`` is valid
    by construction). The tile and mosaic sizes left to their defaults are resolved here, once.
    ``source``: the object store of an ``s3://`` folder dataset (``Context.data_source``), read class by class.
    ``max_side_factor``: the context's XICH_IMAGE_MAX_SIDE_FACTOR (images over it are not decoded);
    ``archive_caps``: its ``archive_member_max_bytes`` and ``archive_max_bytes`` (``Settings.data_limits``)."""
    dataset = open_dataset(config.data, config.eval_split, config.train_split, source,
                           max_side_factor=max_side_factor, classes=config.classes, **archive_caps)
    eval_split = dataset.splits[config.eval_split]
    train_split = dataset.splits.get(config.train_split) if config.train_split else None
    selected = _select_classes(dataset, config.classes)
    tile = config.tile_size or default_tile_size(config.model, eval_split)
    mosaic_size = config.mosaic_size or (tile if fixed_input_size(config.model) else 2 * tile)
    model, labels, indices = load_model(config, dataset.classes)
    indices = dict(sorted(((c, indices[c]) for c in selected), key=lambda kv: kv[1]))
    prepared = PreparedModel(model, model_spec=config.model, num_classes=len(labels.names), mosaic_size=mosaic_size,
                             device=config.device, normalize=config.normalize,
                             layer=config.layer, cam=config.cam, method=config.method, precision=config.precision)
    control = control_model(config, prepared, len(labels.names), mosaic_size) if config.control else None
    seed = control_seed(config.seed) if config.control else None
    opened = OpenedAudit(config, dataset, eval_split, train_split, labels, indices, prepared, tile, mosaic_size,
                         control, seed)
    opened.null = null_audit(opened) if config.null else None
    if config.null and opened.null is None:
        opened.notes.append(f"no null model: {config.model} builds the same weights whatever the seed, so there is no "
                            f"network with random weights to compare with")
    return opened


def null_seed(seed: int) -> int:
    """The seed of the null model's weights: derived from the audit's seed, never the control's or the seed that
    initialises a model audited without --weights."""
    return int(np.random.SeedSequence([seed, 0x4E11]).generate_state(1)[0])


def null_audit(opened: OpenedAudit) -> OpenedAudit | None:
    """The null model's audit: the audited architecture with random weights (seeded by :func:`null_seed`), audited end
    to end on the same data with the same settings — its own embedding, clustering, mosaics, hierarchy and
    significance, the same target layer, CAM method and path; no control, no per-image mode, no null of its own.
    Nothing in it depends on the trained weights, so one null serves every version of a model (``pipeline``
    stores it as a run and reuses it). None for an architecture whose constructor sets fixed weights (two seeds,
    the same weights): it has no random null."""
    config = replace(opened.config, weights=None, weights_uri=None, control=False, null=False, per_image=0)
    models = []
    for seed in (null_seed(config.seed), null_seed(config.seed) + 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models.append(build_model(config.model, len(opened.labels.names)))
    model, other = models
    if all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items() if v.is_floating_point()):
        return None
    prepared = PreparedModel(model, model_spec=config.model, num_classes=len(opened.labels.names),
                             mosaic_size=opened.mosaic_size, device=str(opened.prepared.device),
                             normalize=config.normalize, layer=opened.prepared.layer_name, cam=opened.prepared.cam,
                             method=config.method, precision=config.precision)
    return OpenedAudit(config, opened.dataset, opened.eval_split, opened.train_split, opened.labels, opened.indices,
                       prepared, opened.tile_size, opened.mosaic_size)


def evidence(cls: ClassResult) -> dict:
    """``method.looks.class_evidence`` of one class's result (the model's or the null model's)."""
    nan = float("nan")
    return class_evidence(
        significant_pairs=len(cls.significant_pairs()),
        scores=np.array([nan if c.score is None else c.score for c in cls.clusters]),
        accuracy=np.array([nan if not c.baselines or c.baselines["accuracy"] is None else c.baselines["accuracy"]
                           for c in cls.clusters]),
        eval_sizes=np.array([c.eval_size for c in cls.clusters]),
        flagged=list(cls.looks["flagged"]) if cls.looks else [], spearman=cls.spearman_score_train_share)


def compare_with_null(cls: ClassResult, null_cls: ClassResult) -> dict:
    """The class's ``null`` section: its evidence against the null model's on the same class
    (``method.looks.null_comparison``)."""
    return null_comparison(evidence(cls), evidence(null_cls))


def control_seed(seed: int) -> int:
    """The seed of the control's weights: derived from the audit's seed, and never equal to the seed that
    initialises a model audited without --weights."""
    return int(np.random.SeedSequence([seed, 0xC047]).generate_state(1)[0])


def control_model(config: AuditConfig, prepared: PreparedModel, outputs: int, mosaic_size: int) -> PreparedModel:
    """The randomized control: the audited architecture with freshly initialised weights (seeded), prepared with
    the same target layer, CAM method and path. A model that scores mosaics this way knows nothing of the data."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(control_seed(config.seed))
        model = build_model(config.model, outputs)
    trained, fresh = prepared.model.state_dict(), model.state_dict()
    if all(k in trained and torch.equal(v.cpu(), trained[k].cpu()) for k, v in fresh.items() if v.is_floating_point()):
        raise XichError(f"--model {config.model!r}: building it again gives the same weights as the audited model, "
                        f"so there is no re-initialised control; audit without --control")
    return PreparedModel(model, model_spec=config.model, num_classes=outputs, mosaic_size=mosaic_size,
                         device=str(prepared.device), normalize=config.normalize,
                         layer=prepared.layer_name, cam=prepared.cam, method=config.method,
                         precision=config.precision)


def head_control_model(opened: OpenedAudit) -> PreparedModel:
    """The head-only control (the study's, not the audit's): the audited model with only its final linear head
    re-initialised, to the whole-model control's head (same seed); trunk, target layer, method and path unchanged."""
    if opened.control is None:
        raise XichError("the head-only control re-uses the randomized control's head; open the audit with the control on")
    model = copy.deepcopy(opened.prepared.model)
    head = head_name(model)
    dict(model.named_modules())[head].load_state_dict(dict(opened.control.model.named_modules())[head].state_dict())
    config = opened.config
    return PreparedModel(model, model_spec=config.model, num_classes=len(opened.labels.names),
                         mosaic_size=opened.mosaic_size, device=str(opened.prepared.device),
                         normalize=config.normalize, layer=opened.prepared.layer_name, cam=opened.prepared.cam,
                         method=config.method, precision=config.precision)


def load_model(config: AuditConfig, dataset_classes: list[str]) -> tuple[nn.Module, LabelList, dict[str, int]]:
    """The model with its weights, its label list and each dataset class's output index."""
    sd, ckpt_labels = read_checkpoint(config.weights) if config.weights else (None, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # an audit without --weights is reproducible too
        model = build_model(config.model, len(dataset_classes))
        head = head_name(model)
        outputs = int(sd[f"{head}.weight"].shape[0]) if sd is not None and f"{head}.weight" in sd else None
        labels = resolve_labels(labels_arg=config.labels, checkpoint_labels=ckpt_labels, model_spec=config.model,
                                head_outputs=outputs, dataset_classes=dataset_classes)
        indices = model_indices(labels, dataset_classes, outputs, head)
        if len(labels.names) != len(dataset_classes):
            torch.manual_seed(config.seed)
            model = build_model(config.model, len(labels.names))
    if sd is not None:
        load_weights(model, config.weights, sd)
    return model.eval(), labels, indices


def run_audit(config: AuditConfig, run_id: str | None = None, source: ObjectSource | None = None) -> AuditResult:
    """Audit every selected class of the dataset, unrecorded (recorded audits: ``pipeline.recorded_audit``)."""
    opened = open_audit(config, source)
    return assemble_result(opened, [cls for _images, cls in audit_classes(opened)], run_id or uuid.uuid4().hex)


def audit_classes(opened: OpenedAudit, names: list[str] | None = None) -> Iterator[tuple[ClassImages, ClassResult]]:
    """Each class's images and result in turn (all selected classes unless ``names``); the images are
    yielded too so that a sink can render mosaics (``explainer``) while they are loaded."""
    for images in opened.iter_classes(opened.classes if names is None else names):
        cls = audit_class(opened, images)
        if opened.null is not None:
            with opened.timed("null_s"):
                cls.null = compare_with_null(cls, audit_class(opened.null, images))
        yield images, cls


def assemble_result(opened: OpenedAudit, classes: list[ClassResult], run_id: str, model: AuditedModel | None = None,
                    notes: list[str] | None = None) -> AuditResult:
    """Last stage: the audit document of ``classes`` (in model output order), with its summary."""
    config = opened.config
    notes = [*opened.notes, *(notes or [])]
    return AuditResult.assemble(
        run_id, model=model or AuditedModel(config.model, config.weights_uri or config.weights),
        labels=LabelList(opened.labels.source, list(opened.labels.names)),
        dataset=AuditedData(config.data_uri or config.data, config.eval_split,
                            config.train_split if opened.train_split is not None else None),
        config=opened.resolved_config(), classes=classes, notes=notes, timings=stage_timings(opened.timings))


STAGES = ("decode_s", "embed_s", "cluster_s", "mosaics_s", "cam_s", "control_s", "rank_s", "train_s", "null_s")


def stage_timings(timings: Mapping[str, float]) -> dict[str, float]:
    """The document's ``timings``: seconds per stage in this process, summed over its classes. ``decode_s`` runs in
    background threads, overlapped with the others (the next class, the next training chunk); ``train_s`` is the
    training placement (its embedding, and any wait for its decoding); ``cam_s`` / ``control_s`` the model's and the
    control's CAM passes, ``mosaics_s`` assembling the mosaics they explain, ``rank_s`` the statistics (eq. 7–8),
    ``null_s`` the null model's classes (its whole audit of the class; nothing when a stored null is read back)."""
    return {k: round(float(timings[k]), 3) for k in STAGES if k in timings}


def _none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def audit_class(opened: OpenedAudit, images: ClassImages, frozen: Mapping[str, int] | None = None) -> ClassResult:
    """Every stage of one class, in order: embed, cluster, plan, score, rank, place the training split.

    With ``frozen`` (image id → cluster, from a frozen clustering) membership is taken from it and
    only the centres are recomputed, in this model's embedding space, to place the training images.
    """
    config = opened.config
    with opened.timed("embed_s"):
        embeddings, logits = embed_class(opened, images.eval_images)
    with opened.timed("cluster_s"):
        clustering, notes = cluster_class(opened, images, embeddings, frozen)
        baselines = cluster_baselines(logits, clustering.labels, clustering.n_clusters, images.index)
        plan = plan_class_mosaics(opened, clustering, images.index)
    d, *control_d = score_mosaics_with(opened, _scoring_models(opened), images.eval_images, plan, images.index)
    with opened.timed("rank_s"):
        stats = rank_clusters(plan, d, clustering.n_clusters)
        control = control_result(opened, plan, control_d[0], stats) if control_d else None
    with opened.timed("train_s"):
        placement = (place_training(opened, clustering, images.train_images, embeddings.shape[1])
                     if images.train_images is not None else None)
    train = None
    if placement is not None:  # a share's standard error: 0 when every training image was placed
        counts, shares, train_labels, train_ids = placement
        train = (train_labels, train_ids)
        placement = (counts, shares, training_share_se(counts, images.train_population or sum(counts)))
        if images.train_population is not None:
            notes.append(f"training shares from a sample of {int(sum(placement[0]))} of {images.train_population} "
                         f"training images (--train-per-class {config.train_per_class}, seed {config.seed})")
    per_image = per_image_result(opened, images, images.eval_images, logits) if config.per_image else None
    return class_result(images, clustering, plan, d, stats, placement, notes, per_image, baselines, control,
                        looks_signal=config.looks, train=train)


def _scoring_models(opened: OpenedAudit) -> dict[str, PreparedModel]:
    """The models that score each mosaic: the audited one (``cam_s``), and the control (``control_s``) if on."""
    return {"cam_s": opened.prepared, **({"control_s": opened.control} if opened.control is not None else {})}


def embed_class(opened: OpenedAudit, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 (eq. 1): GAP embeddings (N, C) and logits (N, K) of uint8 images (N, 3, T, T)."""
    return opened.prepared.embed(images, opened.config.batch_size)


def cluster_class(opened: OpenedAudit, images: ClassImages, embeddings: np.ndarray,
                  frozen: Mapping[str, int] | None = None) -> tuple[Clustering, list[str]]:
    """Stage 2: P clusters of the class's embeddings (k-means), or a frozen clustering's membership; with notes."""
    config, name = opened.config, images.name
    if frozen is None:
        clustering = cluster_embeddings(embeddings, config.clusters, random_state=config.seed)
        notes = []
        if clustering.n_clusters < config.clusters:
            notes.append(f"{clustering.n_clusters} cluster(s) instead of {config.clusters}: the class has only "
                         f"{clustering.n_clusters} distinct image(s)")
        return clustering, notes
    try:
        clustering = clustering_from_labels(embeddings, _frozen_labels(frozen, images.eval_ids, name))
    except ValueError:
        raise XichError(f"class {name}: the frozen clustering leaves a cluster without evaluation images here; "
                        f"audit the dataset it was made on, or use --clustering own") from None
    return clustering, ["cluster membership from a frozen clustering"]


def plan_class_mosaics(opened: OpenedAudit, clustering: Clustering, class_index: int) -> MosaicPlan:
    """Stage 3 (eq. 2): J mosaics per cluster pair, seeded by (seed, class index)."""
    config = opened.config
    return plan_mosaics(clustering.labels, clustering.n_clusters, config.mosaics_per_pair,
                        np.random.default_rng([config.seed, class_index]))


def score_mosaics(opened: OpenedAudit, tiles: torch.Tensor, plan: MosaicPlan, class_index: int) -> np.ndarray:
    """Stage 4 (eq. 3–6): d of ``plan.pairs[:, 0]`` on each planned mosaic; NaN where the map is all zero.

    ``tiles``: the class's images, uint8 (normalised a batch at a time, so a class holds no float copy of its
    images) or already normalised. Identical manifests (frequent in per-image mode) are rendered and explained once.
    """
    return score_mosaics_with(opened, {"cam_s": opened.prepared}, tiles, plan, class_index)[0]


def score_mosaics_with(opened: OpenedAudit, models: dict[str, PreparedModel], tiles: torch.Tensor, plan: MosaicPlan,
                       class_index: int) -> list[np.ndarray]:
    """:func:`score_mosaics` under each of ``models`` (timing key → model), on the same mosaics: each batch is
    assembled once and explained by every model; the seconds each spends go to ``opened.timings[key]``."""
    batch_size = opened.config.batch_size
    unique, inverse = np.unique(plan.images, axis=0, return_inverse=True)
    relevance = np.empty((len(models), len(unique), 4))
    for start in range(0, len(unique), batch_size):
        sl = slice(start, start + batch_size)
        with opened.timed("mosaics_s"):
            mosaics = normalized_mosaics(opened.prepared, tiles, unique[sl], opened.mosaic_size)
        for k, (key, prepared) in enumerate(models.items()):
            with opened.timed(key):
                relevance[k, sl] = quadrant_relevance(prepared.mosaic_cams(mosaics, class_index))
    in_i = plan.clusters == plan.pairs[:, :1]
    return [mosaic_dominance(r[inverse.ravel()], in_i) for r in relevance]


def normalized_mosaics(prepared: PreparedModel, tiles: torch.Tensor, manifests: np.ndarray,
                       mosaic_size: int) -> torch.Tensor:
    """Mosaics (B, 3, S, S) of ``manifests`` (B, 4), normalised: uint8 ``tiles`` are normalised only where a
    manifest uses them (the same values, element by element, as normalising them all first)."""
    if tiles.is_floating_point():
        return assemble_mosaics(tiles, manifests, mosaic_size)
    used, local = np.unique(manifests, return_inverse=True)
    return assemble_mosaics(prepared.normalize(tiles[torch.as_tensor(used)]), local.reshape(manifests.shape),
                            mosaic_size)


@dataclass(frozen=True)
class PairStatistics:
    """Per-class P×P matrices: D (eq. 8; NaN without evidence), p-values, 95 % CI, distinct image sets,
    and the hierarchy: scores (eq. 7 summed), ranks (NaN without evidence) and the ranked order."""

    D: np.ndarray
    p_raw: np.ndarray
    p_holm: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_sets: np.ndarray
    scores: np.ndarray
    rank: np.ndarray
    order: np.ndarray


def rank_clusters(plan: MosaicPlan, d: np.ndarray, n: int) -> PairStatistics:
    """Stage 5 (eq. 7–8): D from every defined mosaic; tests and intervals from each distinct image set
    counted once; the hierarchy of the clusters with evidence."""
    sets = image_sets(plan.images)
    pair_d, pair_sets = {}, {}
    n_sets = np.zeros((n, n), dtype=int)
    for i in range(n):
        for j in range(i + 1, n):
            sel = (plan.pairs[:, 0] == i) & (plan.pairs[:, 1] == j)
            pair_d[i, j] = d[sel]
            pair_sets[i, j] = set_means(d[sel], sets[sel])
            n_sets[i, j] = n_sets[j, i] = pair_sets[i, j].size
    D = dominance_matrix(pair_d, n)
    p_raw, p_holm = p_value_matrices(pair_sets, n)
    lo, hi = confidence_intervals(pair_sets, D)
    scores = hierarchy_scores(D)
    order, rank = hierarchy(scores)
    return PairStatistics(D, p_raw, p_holm, lo, hi, n_sets, scores, rank, order)


def control_result(opened: OpenedAudit, plan: MosaicPlan, d: np.ndarray, trained: PairStatistics) -> dict:
    """The randomized control of one class: its hierarchy on the same mosaics, its significant pairs, and
    Kendall's τ of its scores against the audited model's. ``image_statistics``: the control has at least as
    many significant pairs as the audited model (and some), so significance alone says nothing of the model."""
    stats = rank_clusters(plan, d, trained.scores.size)
    pairs = significant_pairs(stats.D, stats.p_holm)
    keep = ~np.isnan(stats.scores) & ~np.isnan(trained.scores)
    tau = kendall_tau(trained.scores[keep], stats.scores[keep])
    return {"seed": opened.control_seed, "scores": [_none(v) for v in stats.scores],
            "hierarchy": stats.order.tolist(), "significant_pairs": [list(p) for p in pairs], "tau": _none(tau),
            "image_statistics": bool(pairs) and len(pairs) >= len(significant_pairs(trained.D, trained.p_holm))}


def place_training(opened: OpenedAudit, clustering: Clustering, train_images: torch.Tensor | ImageStream,
                   dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """Stage 6 (Fig. 4/5): each training image goes to its nearest cluster centre → (counts, shares) per cluster,
    and each placed image's cluster with its id (ids: None for a tensor of images, which has none).

    A stream is decoded and embedded a chunk at a time; only its embeddings (n, C) are kept."""
    ids = None
    if isinstance(train_images, ImageStream):
        parts = [embed_class(opened, chunk)[0] for _ids, chunk in train_images if len(chunk)]
        opened.add_time("decode_s", train_images.decode_s)  # decoded in the stream's thread, ahead of the embedding
        train_emb = np.concatenate(parts) if parts else np.zeros((0, dim))
        ids = list(train_images.kept)
    else:
        train_emb = embed_class(opened, train_images)[0] if len(train_images) else np.zeros((0, dim))
    labels = assign_clusters(clustering, train_emb)
    return (*training_distribution(labels, clustering.n_clusters), labels, ids)


def looks_section(signal: str, stats: PairStatistics, baselines: dict[str, np.ndarray] | None,
                  eval_sizes: np.ndarray, ratio: np.ndarray, members: list[list[str]],
                  train: tuple[np.ndarray, list[str] | None] | None) -> dict | None:
    """The class's ``looks``: the clusters ``signal`` flags (``method.looks.flag_looks``), most in need first, each
    with its numbers, up to 6 example images (its first members) and its training images (nearest centre in this
    model's embedding) with the sampling weight that brings the look to its evaluation share (``xich audit
    --oversample-out``). None without baselines (no logits)."""
    if baselines is None:
        return None
    kwargs = dict(scores=stats.scores, baselines=baselines, ratio=ratio)
    flagged = flag_looks(signal, **kwargs, eval_sizes=eval_sizes, p_values_holm=stats.p_holm, dominance=stats.D)
    weights = oversample_weights(ratio, flagged)
    looks = []
    for c in flagged:
        train_ids = ([i for i, lab in zip(train[1], train[0]) if lab == c]
                     if train is not None and train[1] is not None else None)
        looks.append({"id": c, "eval_size": int(eval_sizes[c]), "representation_ratio": _none(ratio[c]),
                      "accuracy": _none(baselines["accuracy"][c]), "mean_logit": _none(baselines["mean_logit"][c]),
                      "examples": members[c][:6], "oversample_weight": weights[c], "train_images": train_ids})
    return {"signal": signal, "rule": LOOK_RULES[signal], "flagged": flagged,
            "need": [_none(v) for v in need(signal, **kwargs)], "looks": looks}


LOOK_RULES = {
    "least_dominant": "the last cluster of the hierarchy, if another beats it (Holm p < 0.05)",
    "lowest_mean_logit": "the cluster of lowest mean logit, if its accuracy is below the rest's (Fisher p < 0.05)",
    "lowest_accuracy": "the cluster of lowest accuracy, if it is below the rest's (Fisher p < 0.05)",
    "lowest_margin": "the cluster of lowest mean margin, if its accuracy is below the rest's (Fisher p < 0.05)",
    "under_represented": f"clusters whose training share is under {RATIO_FLAG} x their evaluation share",
    "weak_under_represented": (f"clusters whose training share is under {RATIO_FLAG} x their evaluation share and "
                               f"whose accuracy is below the class's"),
}


def class_result(images: ClassImages, clustering: Clustering, plan: MosaicPlan, d: np.ndarray,
                 stats: PairStatistics, placement: tuple[np.ndarray, np.ndarray] | None, notes: list[str],
                 per_image: dict | None, baselines: dict[str, np.ndarray] | None = None,
                 control: dict | None = None, looks_signal: str | None = None,
                 train: tuple[np.ndarray, list[str] | None] | None = None) -> ClassResult:
    """Last per-class stage: the ClassResult of the stages' outputs, with notes on missing evidence."""
    P, labels, eval_ids = clustering.n_clusters, clustering.labels, images.eval_ids
    notes = list(notes)
    excluded = int(np.isnan(d).sum())
    if excluded:
        notes.append(f"{excluded} mosaic(s) excluded: their Grad-CAM map is zero everywhere")
    if P > 1 and not stats.order.size:
        notes.append("no evidence: every mosaic's Grad-CAM map is zero, so the class has no hierarchy")
    elif stats.order.size < P and P > 1:
        notes.append(f"cluster(s) {', '.join(map(str, np.flatnonzero(np.isnan(stats.rank))))} without evidence: "
                     f"no mosaic against them has a non-zero Grad-CAM map")
    elif P == 1:
        notes.append("a single cluster: no pair to compare, so no hierarchy")
    counts, shares, se = (*placement, None)[:3] if placement is not None else (None, None, None)
    ranked = ~np.isnan(stats.scores)
    eval_sizes = np.bincount(labels, minlength=P)
    ratio = representation_ratio(counts, eval_sizes)
    members = [[eval_ids[k] for k in np.flatnonzero(labels == c)] for c in range(P)]
    clusters = [
        ClusterResult(
            id=c, eval_size=int((labels == c).sum()),
            train_count=None if counts is None else int(counts[c]),
            train_share=None if shares is None else float(shares[c]),
            score=_none(stats.scores[c]), rank=None if np.isnan(stats.rank[c]) else int(stats.rank[c]),
            members=members[c],
            baselines=None if baselines is None else {k: _none(v[c]) for k, v in baselines.items()},
            train_share_se=None if se is None or shares is None else _none(se[c]),
            representation_ratio=_none(ratio[c]),
        )
        for c in range(P)
    ]
    mosaics = [
        MosaicResult(pair=plan.pairs[m].tolist(), images=[eval_ids[k] for k in plan.images[m]],
                     clusters=plan.clusters[m].tolist(), d=_none(d[m]))
        for m in range(len(plan))
    ]
    ci = [[None if np.isnan(stats.ci_low[i, j]) else [float(stats.ci_low[i, j]), float(stats.ci_high[i, j])]
           for j in range(P)] for i in range(P)]
    return ClassResult(
        index=images.index, name=images.name, clusters=clusters,
        dominance=[[_none(v) for v in row] for row in stats.D], dominance_ci=ci,
        p_values=stats.p_raw.tolist(), p_values_holm=stats.p_holm.tolist(), distinct_sets=stats.n_sets.tolist(),
        hierarchy=stats.order.tolist(),
        spearman_score_train_share=(score_share_spearman(stats.scores[ranked], shares[ranked])
                                    if shares is not None else None),
        excluded_mosaics=excluded, mosaics=mosaics, notes=notes, per_image=per_image,
        agreement=None if baselines is None else baseline_agreement(stats.scores, baselines), control=control,
        looks=(looks_section(looks_signal, stats, baselines, eval_sizes, ratio, members, train)
               if looks_signal is not None and P > 1 else None),
    )


def per_image_result(opened: OpenedAudit, images: ClassImages, tiles: torch.Tensor | None = None,
                     logits: np.ndarray | None = None) -> PerImageResult:
    """Per-image mode (Fig. 3): a sample of images, each its own cluster; both images twice in each mosaic."""
    config = opened.config
    if tiles is None or logits is None:
        tiles = images.eval_images
        logits = embed_class(opened, images.eval_images)[1]
    eval_ids, class_index = images.eval_ids, images.index
    rng = np.random.default_rng([config.seed, class_index, 1])
    n = min(config.per_image, len(eval_ids))
    sample = np.sort(rng.choice(len(eval_ids), size=n, replace=False))
    plan = plan_mosaics(np.arange(n), n, config.mosaics_per_pair, rng)
    plan = MosaicPlan(plan.pairs, sample[plan.images], plan.clusters)
    d = score_mosaics(opened, tiles, plan, class_index)
    pair_d = {(i, j): d[(plan.pairs[:, 0] == i) & (plan.pairs[:, 1] == j)] for i in range(n) for j in range(i + 1, n)}
    scores = hierarchy_scores(dominance_matrix(pair_d, n))
    keep = ~np.isnan(scores)  # an image without evidence has no score to correlate
    logit = logits[sample, class_index]
    prob = class_softmax(logits[sample], class_index)
    return PerImageResult(requested=config.per_image,
                          images=[ImageScore(image=eval_ids[k], score=_none(s), logit=float(lg), softmax=float(p))
                                  for k, s, lg, p in zip(sample, scores, logit, prob)],
                          mosaics=len(plan), **dominance_correlations(scores[keep], logit[keep], prob[keep]))


def explain_stored(opened: OpenedAudit, classes: list[ClassResult]):
    """Yield (class, explain) for stored classes, with their images loaded again.

    For reports of runs read back from the database: their mosaics are rendered from the manifests.
    """
    for cls in classes:
        ids, loaded = opened.eval_split.load_kept(opened.eval_split.images[cls.name], opened.tile_size)  # as audited
        images = ClassImages(cls.name, cls.index, ids, loaded, None)
        yield cls, explainer(opened, images)


def _frozen_labels(frozen: Mapping[str, int], eval_ids: list[str], name: str) -> np.ndarray:
    missing = [i for i in eval_ids if i not in frozen]
    if missing:
        raise XichError(f"class {name}: {len(missing)} evaluation image(s) (e.g. {missing[0]}) are not in the frozen "
                        f"clustering; audit the same dataset, or use --clustering own")
    return np.array([frozen[i] for i in eval_ids])


def explainer(opened: OpenedAudit, images: ClassImages) -> Explainer:
    """``explain(image ids TL, TR, BL, BR) -> (rgb, cam)`` for one class, while the model is loaded."""
    position = {image_id: k for k, image_id in enumerate(images.eval_ids)}
    prepared, mosaic_size = opened.prepared, opened.mosaic_size

    def explain(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.array([[position[i] for i in ids]])
        used, local = np.unique(idx, return_inverse=True)
        local = local.reshape(idx.shape)
        rgb = assemble_mosaics(images.eval_images[torch.as_tensor(used)].float(), local, mosaic_size)[0]
        rgb = rgb.clamp(0, 255).byte().permute(1, 2, 0)
        cam = prepared.mosaic_cams(normalized_mosaics(prepared, images.eval_images, idx, mosaic_size), images.index)[0]
        return rgb.cpu().numpy(), cam

    return explain


def _select_classes(dataset: Dataset, wanted: tuple[str, ...] | None) -> list[str]:
    if not wanted:
        return list(dataset.classes)
    unknown = [c for c in wanted if c not in dataset.classes]
    if unknown:
        raise XichError(f"--classes: {', '.join(unknown)} not in the evaluation split; "
                        f"available: {', '.join(dataset.classes)}")
    return [c for c in dataset.classes if c in wanted]

