"""Running an audit: model and data at the edges, the method in between, one AuditResult out."""

from __future__ import annotations

import logging
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .datasets import Dataset, Split, open_dataset
from .errors import XichError
from .labels import LabelList, model_indices, resolve_labels
from .method.clustering import assign_clusters, cluster_embeddings, clustering_from_labels
from .method.distribution import score_share_spearman, training_distribution
from .method.dominance import dominance_matrix, mosaic_dominance, quadrant_relevance
from .method.embedding import gap, layer_output
from .method.gradcam import gap_linear_cam, reference_cams, scale_cams
from .method.hierarchy import hierarchy, hierarchy_scores
from .method.mosaic import MosaicPlan, assemble_mosaics, image_sets, plan_mosaics
from .method.per_image import class_softmax, dominance_correlations
from .method.significance import confidence_intervals, p_value_matrices, set_means
from .device import resolve_device
from .models import (build_model, find_target_layer, gap_linear_head, head_name, load_weights, probe_logits,
                     read_checkpoint)
from .result import AuditResult, ClassResult, ClusterResult, Explainer, MosaicResult, summarize

log = logging.getLogger(__name__)

PIXELS_PER_CHUNK = 64 * 32 * 32  # CPU inference chunk: 64 CIFAR tiles, or 16 mosaics of 64×64

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class AuditConfig:
    model: str
    data: str
    weights: str | None = None
    eval_split: str = "test"
    train_split: str | None = "train"
    clusters: int = 5
    mosaics_per_pair: int = 25
    seed: int = 0
    layer: str = "auto"
    cam: str = "auto"
    tile_size: int | None = None
    mosaic_size: int | None = None
    normalize: str = "imagenet"
    classes: tuple[str, ...] | None = None
    batch_size: int = 128
    device: str | None = None
    per_image: int = 0
    labels: str | None = None  # --labels: a built-in set or a file (see labels.py)
    data_uri: str | None = None  # where --data / --weights came from (s3://…) when read from a local copy
    weights_uri: str | None = None


def parse_normalize(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``imagenet|cifar|none`` or ``m1,m2,m3/s1,s2,s3`` → (mean, std)."""
    if spec in NORMALIZATIONS:
        return NORMALIZATIONS[spec]
    try:
        mean_s, std_s = spec.split("/")
        mean, std = tuple(float(v) for v in mean_s.split(",")), tuple(float(v) for v in std_s.split(","))
    except ValueError:
        mean, std = (), ()
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise XichError(f"--normalize {spec!r}: use imagenet, cifar, none or m1,m2,m3/s1,s2,s3 (positive stds)")
    return mean, std


class _Tap(nn.Module):
    """Model wrapper returning (target layer's feature map, logits) from one forward."""

    def __init__(self, model: nn.Module, layer: nn.Module):
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with layer_output(self.layer) as box:
            logits = self.model(x)
        return box["out"], logits


class PreparedModel:
    """A model ready to audit: weights loaded, target layer and CAM path chosen, on its device.

    Inference runs through a traced, frozen copy (conv–BN folding roughly doubles CPU speed);
    the copy is checked against the eager model on a probe and dropped if it disagrees.
    """

    def __init__(self, config: AuditConfig, model: nn.Module, num_classes: int, tile_size: int,
                 mosaic_size: int | None = None):
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).eval()
        mean, std = parse_normalize(config.normalize)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        # the probe has the mosaics' size: the Grad-CAM layer must keep a spatial map there
        side = mosaic_size or 2 * tile_size
        probe = self.normalize(torch.zeros(2, 3, side, side, dtype=torch.uint8, device=self.device)
                               + torch.arange(2, device=self.device, dtype=torch.uint8).view(2, 1, 1, 1) * 120)
        probe_logits(self.model, probe, config.model, num_classes)
        self.layer_name = find_target_layer(self.model, probe, config.layer)
        self.layer = dict(self.model.named_modules())[self.layer_name]
        self.head = gap_linear_head(self.model, self.layer, probe)
        if config.cam == "fast" and self.head is None:
            raise XichError(f"--cam fast: layer {self.layer_name!r} does not feed a global-average-pool → linear head; "
                            f"use --cam reference or --cam auto")
        self.cam = "reference" if config.cam == "reference" or self.head is None else "fast"
        self._tap = _Tap(self.model, self.layer).eval()
        self._traced: dict[tuple[int, ...], Callable] = {}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) → normalised float on the model's device."""
        return (images.to(self.device).float() / 255.0 - self.mean) / self.std

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature map, logits) of a normalised batch, under inference mode.

        On the CPU the batch runs in chunks of about PIXELS_PER_CHUNK input pixels, which keep the
        activations in cache: measured here, 16 mosaics of 64×64 run ~1.3× faster per mosaic than 64.
        """
        step = batch.shape[0] if self.device.type != "cpu" else max(1, PIXELS_PER_CHUNK // (batch.shape[2] * batch.shape[3]))
        with torch.inference_mode():
            run = self._runner(batch)
            if step >= batch.shape[0]:
                return run(batch)
            parts = [run(batch[k:k + step]) for k in range(0, batch.shape[0], step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _runner(self, batch: torch.Tensor) -> Callable:
        key = tuple(batch.shape[1:])
        if key not in self._traced:
            self._traced[key] = self._trace(batch[:2])
        return self._traced[key]

    def _trace(self, probe: torch.Tensor) -> Callable:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(self._tap, probe)))
                a, b = traced(probe), self._tap(probe)
            if all(torch.allclose(x, y, rtol=1e-3, atol=1e-4) for x, y in zip(a, b)):
                return traced
            log.info("traced model disagrees with eager model; using eager")
        except Exception as exc:  # tracing is an optimisation: any failure means the eager path
            log.info("tracing failed (%s); using eager model", exc)
        return self._tap

    def embed(self, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """GAP embeddings (eq. 1) and logits of uint8 images (N, 3, T, T) → (N, C), (N, K)."""
        embs, logits = [], []
        for start in range(0, images.shape[0], batch_size):
            fmap, out = self.forward(self.normalize(images[start:start + batch_size]))
            embs.append(gap(fmap).float().cpu())
            logits.append(out.float().cpu())
        return torch.cat(embs).numpy(), torch.cat(logits).numpy()

    def mosaic_cams(self, mosaics: torch.Tensor, class_index: int) -> np.ndarray:
        """Scaled Grad-CAM maps (eq. 3–4) of normalised mosaics (B, 3, S, S) → (B, S, S)."""
        size = (mosaics.shape[2], mosaics.shape[3])
        classes = [class_index] * mosaics.shape[0]
        if self.cam == "reference":
            return reference_cams(self.model, self.layer, mosaics, classes)
        fmap, _ = self.forward(mosaics)
        raw = gap_linear_cam(fmap, self.head.weight.detach(), torch.tensor(classes, device=self.device))
        return scale_cams(raw, size).cpu().numpy()


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
    train_images: torch.Tensor | None


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

    @property
    def classes(self) -> list[str]:
        return list(self.indices)

    def load(self, name: str) -> ClassImages:
        ids = self.eval_split.images[name]
        train = None
        if self.train_split is not None:
            tr_ids = self.train_split.images.get(name, [])
            train = self.train_split.load(tr_ids, self.tile_size)
        return ClassImages(name, self.indices[name], ids, self.eval_split.load(ids, self.tile_size), train)

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
                "layer": self.prepared.layer_name, "cam": self.prepared.cam, "tile_size": self.tile_size,
                "mosaic_size": self.mosaic_size, "normalize": c.normalize, "per_image": c.per_image}

    def settings(self) -> dict:
        """The settings that change numbers: what identifies a run besides model version, data and clustering.

        Architecture and weights belong to the model version, P to the clustering; batch size, device,
        --cam (fast and reference agree), class order and per-image mode change no number of the run.
        """
        mean, std = parse_normalize(self.config.normalize)
        return {"mosaics_per_pair": self.config.mosaics_per_pair,
                "seed": self.config.seed, "tile_size": self.tile_size, "mosaic_size": self.mosaic_size,
                "normalize": [list(mean), list(std)], "layer": self.prepared.layer_name,
                "classes": sorted(self.indices)}


def open_audit(config: AuditConfig) -> OpenedAudit:
    """Validate the settings, open the dataset, match its classes to the model's labels, prepare the model."""
    check_config(config)
    dataset = open_dataset(config.data, config.eval_split, config.train_split)
    eval_split = dataset.splits[config.eval_split]
    train_split = dataset.splits.get(config.train_split) if config.train_split else None
    selected = _select_classes(dataset, config.classes)
    tile = config.tile_size or default_tile_size(config.model, eval_split)
    mosaic_size = config.mosaic_size or 2 * tile
    model, labels, indices = load_model(config, dataset.classes)
    indices = dict(sorted(((c, indices[c]) for c in selected), key=lambda kv: kv[1]))
    prepared = PreparedModel(config, model, len(labels.names), tile, mosaic_size)
    return OpenedAudit(config, dataset, eval_split, train_split, labels, indices, prepared, tile, mosaic_size)


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


def run_audit(config: AuditConfig, progress: Callable[[str, int], None] | None = None,
              on_class: Callable[[ClassResult, Explainer], None] | None = None, run_id: str | None = None) -> AuditResult:
    """Audit every selected class of the dataset, unrecorded (the results database is ``runs.recorded_audit``).

    ``progress(label, total)`` is called before each class; ``on_class(result, explain)`` after it,
    with ``explain(image_ids) -> (rgb, cam)`` rendering a manifest while the model is loaded.
    """
    opened = open_audit(config)
    results = []
    for images in opened.iter_classes(opened.classes):
        if progress:
            progress(images.name, len(opened.classes))
        results.append(audit_class(opened, images))
        if on_class:
            on_class(results[-1], explainer(opened, images))
    return assemble_result(opened, results, run_id or uuid.uuid4().hex)


def assemble_result(opened: OpenedAudit, classes: list[ClassResult], run_id: str, model: dict | None = None,
                    notes: list[str] | None = None) -> AuditResult:
    """The audit document of ``classes`` (in model output order), with its summary."""
    config = opened.config
    classes = sorted(classes, key=lambda c: c.index)
    return AuditResult(
        run_id=run_id,
        model=model or {"spec": config.model, "weights": config.weights_uri or config.weights},
        labels={"source": opened.labels.source, "names": list(opened.labels.names)},
        dataset={"uri": config.data_uri or config.data, "eval_split": config.eval_split,
                 "train_split": config.train_split if opened.train_split is not None else None},
        config=opened.resolved_config(),
        classes=classes,
        summary=summarize(classes),
        notes=list(notes or []),
    )


def _none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def audit_class(opened: OpenedAudit, images: ClassImages, frozen: Mapping[str, int] | None = None) -> ClassResult:
    """Cluster one class, measure dominance on its mosaics, and relate it to the training split.

    With ``frozen`` (image id → cluster, from a frozen clustering) membership is taken from it and
    only the centres are recomputed, in this model's embedding space, to place the training images.
    """
    config, prepared, name, eval_ids = opened.config, opened.prepared, images.name, images.eval_ids
    notes = []
    embeddings, logits = prepared.embed(images.eval_images, config.batch_size)
    if frozen is None:
        clustering = cluster_embeddings(embeddings, config.clusters, random_state=config.seed)
        if clustering.n_clusters < config.clusters:
            notes.append(f"{clustering.n_clusters} cluster(s) instead of {config.clusters}: the class has only "
                         f"{clustering.n_clusters} distinct image(s)")
    else:
        try:
            clustering = clustering_from_labels(embeddings, _frozen_labels(frozen, eval_ids, name))
        except ValueError:
            raise XichError(f"class {name}: the frozen clustering leaves a cluster without evaluation images here; "
                            f"audit the dataset it was made on, or use --clustering own") from None
        notes.append("cluster membership from a frozen clustering")
    P = clustering.n_clusters
    labels = clustering.labels

    tiles = prepared.normalize(images.eval_images)
    plan = plan_mosaics(labels, P, config.mosaics_per_pair, np.random.default_rng([config.seed, images.index]))
    d = _mosaic_dominance(prepared, tiles, plan, images.index, opened.mosaic_size, config.batch_size)
    stats = pair_statistics(plan, d, P)
    scores = hierarchy_scores(stats.D)
    order, rank = hierarchy(scores)
    excluded = int(np.isnan(d).sum())
    if excluded:
        notes.append(f"{excluded} mosaic(s) excluded: their Grad-CAM map is zero everywhere")
    if P > 1 and not order.size:
        notes.append("no evidence: every mosaic's Grad-CAM map is zero, so the class has no hierarchy")
    elif order.size < P and P > 1:
        notes.append(f"cluster(s) {', '.join(map(str, np.flatnonzero(np.isnan(rank))))} without evidence: "
                     f"no mosaic against them has a non-zero Grad-CAM map")
    elif P == 1:
        notes.append("a single cluster: no pair to compare, so no hierarchy")

    counts = shares = None
    if images.train_images is not None:
        train_emb = (prepared.embed(images.train_images, config.batch_size)[0] if len(images.train_images)
                     else np.zeros((0, embeddings.shape[1])))
        counts, shares = training_distribution(assign_clusters(clustering, train_emb), P)
    ranked = ~np.isnan(scores)
    clusters = [
        ClusterResult(
            id=c, eval_size=int((labels == c).sum()),
            train_count=None if counts is None else int(counts[c]),
            train_share=None if shares is None else float(shares[c]),
            score=_none(scores[c]), rank=None if np.isnan(rank[c]) else int(rank[c]),
            members=[eval_ids[k] for k in np.flatnonzero(labels == c)],
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
        index=images.index, name=name, clusters=clusters,
        dominance=[[_none(v) for v in row] for row in stats.D], dominance_ci=ci,
        p_values=stats.p_raw.tolist(), p_values_holm=stats.p_holm.tolist(), distinct_sets=stats.n_sets.tolist(),
        hierarchy=order.tolist(),
        spearman_score_train_share=(score_share_spearman(scores[ranked], shares[ranked])
                                    if shares is not None else None),
        excluded_mosaics=excluded, mosaics=mosaics, notes=notes,
        per_image=per_image_result(opened, images, tiles, logits) if config.per_image else None,
    )


@dataclass(frozen=True)
class PairStatistics:
    """Per-class P×P matrices: D (eq. 8; NaN without evidence), p-values, 95 % CI, distinct image sets."""

    D: np.ndarray
    p_raw: np.ndarray
    p_holm: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_sets: np.ndarray


def pair_statistics(plan: MosaicPlan, d: np.ndarray, n: int) -> PairStatistics:
    """D from every defined mosaic; tests and intervals from each distinct image set counted once."""
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
    return PairStatistics(D, p_raw, p_holm, lo, hi, n_sets)


def explain_stored(opened: OpenedAudit, classes: list[ClassResult]):
    """Yield (class, explain) for stored classes, with their images loaded again.

    For reports of runs read back from the database: their mosaics are rendered from the manifests.
    """
    for cls in classes:
        ids = opened.eval_split.images[cls.name]
        images = ClassImages(cls.name, cls.index, ids, opened.eval_split.load(ids, opened.tile_size), None)
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
        rgb = assemble_mosaics(images.eval_images.float(), idx, mosaic_size)[0].clamp(0, 255).byte().permute(1, 2, 0)
        cam = prepared.mosaic_cams(assemble_mosaics(prepared.normalize(images.eval_images), idx, mosaic_size),
                                   images.index)[0]
        return rgb.cpu().numpy(), cam

    return explain


def _mosaic_dominance(prepared: PreparedModel, tiles: torch.Tensor, plan: MosaicPlan, class_index: int,
                      mosaic_size: int, batch_size: int) -> np.ndarray:
    """d of ``plan.pairs[:, 0]`` on each planned mosaic (eq. 5–6); NaN where the map is all zero.

    Identical manifests (frequent in per-image mode) are rendered and explained once.
    """
    unique, inverse = np.unique(plan.images, axis=0, return_inverse=True)
    relevance = np.empty((len(unique), 4))
    for start in range(0, len(unique), batch_size):
        sl = slice(start, start + batch_size)
        mosaics = assemble_mosaics(tiles, unique[sl], mosaic_size)
        relevance[sl] = quadrant_relevance(prepared.mosaic_cams(mosaics, class_index))
    return mosaic_dominance(relevance[inverse.ravel()], plan.clusters == plan.pairs[:, :1])


def per_image_result(opened: OpenedAudit, images: ClassImages, tiles: torch.Tensor | None = None,
                     logits: np.ndarray | None = None) -> dict:
    """Fig. 3: a sample of images, each its own cluster; both images twice in each mosaic."""
    config, prepared = opened.config, opened.prepared
    if tiles is None or logits is None:
        tiles = prepared.normalize(images.eval_images)
        logits = prepared.embed(images.eval_images, config.batch_size)[1]
    eval_ids, class_index = images.eval_ids, images.index
    rng = np.random.default_rng([config.seed, class_index, 1])
    n = min(config.per_image, len(eval_ids))
    sample = np.sort(rng.choice(len(eval_ids), size=n, replace=False))
    plan = plan_mosaics(np.arange(n), n, config.mosaics_per_pair, rng)
    plan = MosaicPlan(plan.pairs, sample[plan.images], plan.clusters)
    d = _mosaic_dominance(prepared, tiles, plan, class_index, opened.mosaic_size, config.batch_size)
    pair_d = {(i, j): d[(plan.pairs[:, 0] == i) & (plan.pairs[:, 1] == j)] for i in range(n) for j in range(i + 1, n)}
    scores = hierarchy_scores(dominance_matrix(pair_d, n))
    keep = ~np.isnan(scores)  # an image without evidence has no score to correlate
    logit = logits[sample, class_index]
    prob = class_softmax(logits[sample], class_index)
    return {
        "requested": config.per_image,
        "images": [{"image": eval_ids[k], "score": _none(s), "logit": float(lg), "softmax": float(p)}
                   for k, s, lg, p in zip(sample, scores, logit, prob)],
        "mosaics": len(plan),
        **dominance_correlations(scores[keep], logit[keep], prob[keep]),
    }


def check_config(config: AuditConfig) -> None:
    """Refuse settings that cannot work, with the flag to change."""
    for name in ("clusters", "mosaics_per_pair", "batch_size"):
        if getattr(config, name) < 1:
            raise XichError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    for name in ("seed", "per_image"):
        if getattr(config, name) < 0:
            raise XichError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(config, name)}")
    if config.cam not in ("auto", "fast", "reference"):
        raise XichError(f"--cam {config.cam!r}: use auto, fast or reference")
    for name in ("tile_size", "mosaic_size"):
        value = getattr(config, name)
        if value is not None and value < 8:
            raise XichError(f"--{name.replace('_', '-')} must be at least 8 pixels, got {value}")
    parse_normalize(config.normalize)


def _select_classes(dataset: Dataset, wanted: tuple[str, ...] | None) -> list[str]:
    if not wanted:
        return list(dataset.classes)
    unknown = [c for c in wanted if c not in dataset.classes]
    if unknown:
        raise XichError(f"--classes: {', '.join(unknown)} not in the evaluation split; "
                        f"available: {', '.join(dataset.classes)}")
    return [c for c in dataset.classes if c in wanted]

