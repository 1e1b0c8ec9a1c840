"""Running an audit: model and data at the edges, the method in between, one AuditResult out."""

from __future__ import annotations

import logging
import uuid
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .datasets import Dataset, Split, open_dataset
from .errors import XichError
from .method.clustering import assign_clusters, cluster_embeddings, clustering_from_labels
from .method.distribution import score_share_spearman, train_share_by_rank, training_distribution
from .method.dominance import dominance_matrix, mosaic_dominance, quadrant_relevance
from .method.embedding import gap, layer_output
from .method.gradcam import gap_linear_cam, reference_cams, scale_cams
from .method.hierarchy import hierarchy, hierarchy_scores
from .method.mosaic import MosaicPlan, assemble_mosaics, plan_mosaics
from .method.per_image import class_softmax, dominance_correlations
from .method.significance import p_value_matrices
from .models import build_model, find_target_layer, gap_linear_head, load_weights
from .result import AuditResult, ClassResult, ClusterResult, Explainer, MosaicResult

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

    def __init__(self, config: AuditConfig, num_classes: int, tile_size: int, mosaic_size: int | None = None):
        self.device = _device(config.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # an audit without --weights is reproducible too
            model = build_model(config.model, num_classes)
        if config.weights:
            load_weights(model, config.weights)
        self.model = model.to(self.device).eval()
        mean, std = parse_normalize(config.normalize)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        # the probe has the mosaics' size: the Grad-CAM layer must keep a spatial map there
        side = mosaic_size or 2 * tile_size
        probe = self.normalize(torch.zeros(2, 3, side, side, dtype=torch.uint8, device=self.device)
                               + torch.arange(2, device=self.device, dtype=torch.uint8).view(2, 1, 1, 1) * 120)
        with torch.inference_mode():
            out = self.model(probe)
        if out.ndim != 2 or out.shape[1] != num_classes:
            raise XichError(f"--model {config.model}: outputs shape {tuple(out.shape)}, expected (batch, {num_classes}) "
                            f"for the dataset's {num_classes} classes")
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


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise XichError(f"--device {name}: not usable here ({str(exc).splitlines()[0]}); use cpu or cuda") from None
    return device


def default_tile_size(model_spec: str, split: Split) -> int:
    """32 for cifar: models, 224 for torchvision: ones, else the first evaluation image's height."""
    if model_spec.startswith("cifar:"):
        return 32
    if model_spec.startswith("torchvision:"):
        return 224
    first_class = next(iter(split.images.values()))
    return int(split.read(first_class[0]).shape[0])


def run_audit(config: AuditConfig, progress: Callable[[str, int], None] | None = None,
              on_class: Callable[[ClassResult, Explainer], None] | None = None, *,
              skip_classes: frozenset[str] = frozenset(), run_id: str | None = None,
              frozen: Mapping[str, Mapping[str, int]] | None = None) -> AuditResult:
    """Audit every selected class of the dataset (but ``skip_classes``, already audited elsewhere).

    ``progress(label, total)`` is called before each class; ``on_class(result, explain)`` after it,
    with ``explain(image_ids) -> (rgb, cam)`` rendering a stored manifest while the model is loaded.
    The summary covers the classes audited here. ``frozen`` maps class name → (image id → cluster)
    for classes whose membership comes from a frozen clustering.
    """
    check_config(config)
    dataset = open_dataset(config.data, config.eval_split, config.train_split)
    eval_split = dataset.splits[config.eval_split]
    train_split = dataset.splits.get(config.train_split) if config.train_split else None
    selected = [c for c in _select_classes(dataset, config.classes) if c not in skip_classes]
    if frozen is not None and any(c not in frozen for c in selected):
        missing = [c for c in selected if c not in frozen]
        raise XichError(f"class(es) {', '.join(missing)} are not in the frozen clustering; audit its classes "
                        f"(--classes {','.join(sorted(frozen))}) or use --clustering own")
    tile = config.tile_size or default_tile_size(config.model, eval_split)
    mosaic_size = config.mosaic_size or 2 * tile
    prepared = PreparedModel(config, len(dataset.classes), tile, mosaic_size)
    step = progress or (lambda label, total: None)

    results: list[ClassResult] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        # decode the next class's images while the model works on this one
        def load(name: str):
            ev_ids = eval_split.images[name]
            tr_ids = train_split.images.get(name, []) if train_split else []
            return ev_ids, eval_split.load(ev_ids, tile), (train_split.load(tr_ids, tile) if train_split else None)

        pending = pool.submit(load, selected[0]) if selected else None
        for n, name in enumerate(selected):
            ev_ids, ev_images, tr_images = pending.result()
            pending = pool.submit(load, selected[n + 1]) if n + 1 < len(selected) else None
            step(name, len(selected))
            index = dataset.classes.index(name)
            results.append(audit_class(prepared, config, index, name, ev_ids, ev_images, tr_images, mosaic_size,
                                       (frozen or {}).get(name)))
            if on_class:
                on_class(results[-1], _explainer(prepared, ev_ids, ev_images, index, mosaic_size))

    cfg = {
        "clusters": config.clusters, "mosaics_per_pair": config.mosaics_per_pair, "seed": config.seed,
        "layer": prepared.layer_name, "cam": prepared.cam, "tile_size": tile, "mosaic_size": mosaic_size,
        "normalize": config.normalize, "per_image": config.per_image,
    }
    return AuditResult(
        run_id=run_id or uuid.uuid4().hex,
        model={"spec": config.model, "weights": config.weights_uri or config.weights},
        dataset={"uri": config.data_uri or config.data, "eval_split": config.eval_split,
                 "train_split": config.train_split if train_split else None},
        config=cfg,
        classes=results,
        summary=summarize(results),
    )


def summarize(classes: list[ClassResult]) -> dict:
    """Across classes: mean train share by dominance rank (Fig. 5) and mean Spearman(score, train share)."""
    ranked = [np.array([c.train_share for c in sorted(r.clusters, key=lambda c: c.rank)]) for r in classes
              if r.clusters and r.clusters[0].train_share is not None]
    rhos = [r.spearman_score_train_share for r in classes if r.spearman_score_train_share is not None]
    return {"train_share_by_rank": train_share_by_rank(ranked), "mean_spearman": float(np.mean(rhos)) if rhos else None}


def audit_class(prepared: PreparedModel, config: AuditConfig, class_index: int, name: str, eval_ids: list[str],
                eval_images: torch.Tensor, train_images: torch.Tensor | None, mosaic_size: int,
                frozen: Mapping[str, int] | None = None) -> ClassResult:
    """Cluster one class, measure dominance on its mosaics, and relate it to the training split.

    With ``frozen`` (image id → cluster, from a frozen clustering) membership is taken from it and
    only the centres are recomputed, in this model's embedding space, to place the training images.
    """
    notes = []
    embeddings, logits = prepared.embed(eval_images, config.batch_size)
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

    tiles = prepared.normalize(eval_images)
    plan = plan_mosaics(labels, P, config.mosaics_per_pair, np.random.default_rng([config.seed, class_index]))
    d = _mosaic_dominance(prepared, tiles, plan, class_index, mosaic_size, config.batch_size)
    pair_d = _pair_values(plan, d, P)
    D = dominance_matrix(pair_d, P)
    p_raw, p_holm = p_value_matrices(pair_d, P)
    scores = hierarchy_scores(D)
    order, rank = hierarchy(scores)
    excluded = int(np.isnan(d).sum())
    if excluded:
        notes.append(f"{excluded} mosaic(s) excluded: their Grad-CAM map is zero everywhere")

    counts = shares = None
    if train_images is not None:
        train_emb, _ = prepared.embed(train_images, config.batch_size) if len(train_images) else (np.zeros((0, 1)), None)
        counts, shares = training_distribution(assign_clusters(clustering, train_emb), P)
    clusters = [
        ClusterResult(
            id=c, eval_size=int((labels == c).sum()),
            train_count=None if counts is None else int(counts[c]),
            train_share=None if shares is None else float(shares[c]),
            score=float(scores[c]), rank=int(rank[c]),
            members=[eval_ids[k] for k in np.flatnonzero(labels == c)],
        )
        for c in range(P)
    ]
    mosaics = [
        MosaicResult(pair=plan.pairs[m].tolist(), images=[eval_ids[k] for k in plan.images[m]],
                     clusters=plan.clusters[m].tolist(), d=None if np.isnan(d[m]) else float(d[m]))
        for m in range(len(plan))
    ]
    return ClassResult(
        index=class_index, name=name, clusters=clusters, dominance=D.tolist(), p_values=p_raw.tolist(),
        p_values_holm=p_holm.tolist(), hierarchy=order.tolist(),
        spearman_score_train_share=score_share_spearman(scores, shares), excluded_mosaics=excluded,
        mosaics=mosaics, notes=notes,
        per_image=_per_image(prepared, config, class_index, eval_ids, tiles, logits, mosaic_size)
        if config.per_image else None,
    )


def explain_stored(config: AuditConfig, result: AuditResult, classes: list[ClassResult]):
    """Yield (class, explain) for stored classes, with the model and images loaded again.

    For reports of runs read back from the database: their mosaics are rendered from the manifests.
    """
    dataset = open_dataset(config.data, config.eval_split, None)
    split = dataset.splits[config.eval_split]
    tile, mosaic_size = result.config["tile_size"], result.config["mosaic_size"]
    prepared = PreparedModel(config, len(dataset.classes), tile, mosaic_size)
    for cls in classes:
        ids = split.images[cls.name]
        yield cls, _explainer(prepared, ids, split.load(ids, tile), cls.index, mosaic_size)


def _frozen_labels(frozen: Mapping[str, int], eval_ids: list[str], name: str) -> np.ndarray:
    missing = [i for i in eval_ids if i not in frozen]
    if missing:
        raise XichError(f"class {name}: {len(missing)} evaluation image(s) (e.g. {missing[0]}) are not in the frozen "
                        f"clustering; audit the same dataset, or use --clustering own")
    return np.array([frozen[i] for i in eval_ids])


def _explainer(prepared: PreparedModel, eval_ids: list[str], eval_images: torch.Tensor, class_index: int,
               mosaic_size: int) -> Explainer:
    position = {image_id: k for k, image_id in enumerate(eval_ids)}

    def explain(images: list[str]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.array([[position[i] for i in images]])
        rgb = assemble_mosaics(eval_images.float(), idx, mosaic_size)[0].clamp(0, 255).byte().permute(1, 2, 0)
        cam = prepared.mosaic_cams(assemble_mosaics(prepared.normalize(eval_images), idx, mosaic_size), class_index)[0]
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


def _pair_values(plan: MosaicPlan, d: np.ndarray, n: int) -> dict[tuple[int, int], np.ndarray]:
    return {(i, j): d[(plan.pairs[:, 0] == i) & (plan.pairs[:, 1] == j)] for i in range(n) for j in range(i + 1, n)}


def _per_image(prepared: PreparedModel, config: AuditConfig, class_index: int, eval_ids: list[str],
               tiles: torch.Tensor, logits: np.ndarray, mosaic_size: int) -> dict:
    """Fig. 3: a sample of images, each its own cluster; both images twice in each mosaic."""
    rng = np.random.default_rng([config.seed, class_index, 1])
    n = min(config.per_image, len(eval_ids))
    sample = np.sort(rng.choice(len(eval_ids), size=n, replace=False))
    plan = plan_mosaics(np.arange(n), n, config.mosaics_per_pair, rng)
    plan = MosaicPlan(plan.pairs, sample[plan.images], plan.clusters)
    d = _mosaic_dominance(prepared, tiles, plan, class_index, mosaic_size, config.batch_size)
    scores = hierarchy_scores(dominance_matrix(_pair_values(plan, d, n), n))
    logit = logits[sample, class_index]
    prob = class_softmax(logits[sample], class_index)
    return {
        "images": [{"image": eval_ids[k], "score": float(s), "logit": float(lg), "softmax": float(p)}
                   for k, s, lg, p in zip(sample, scores, logit, prob)],
        "mosaics": len(plan),
        **dominance_correlations(scores, logit, prob),
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

