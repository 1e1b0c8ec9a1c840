"""Sections 1-4 of the study: one run per model, every class, both mosaic scales.

1. per-image dominance against logit and softmax (the paper's Fig. 3), at mosaic scale = the model's input size
   (32 px: the 2×2 grid rescaled) and at native tiles (64 px);
2. training share by dominance rank and Spearman(score, train share) (Fig. 4/5), per model, both scales;
3. stability: with the clustering fixed, the hierarchy's agreement across mosaic-sampling seeds at several J
   (Kendall's tau, significant pairs that stay significant, the least dominant cluster);
4. a planted shift: part of one class's test images turned in a way training never showed (vertical flip, 90°
   rotation); is the cluster holding them the least dominant?

``run`` returns the raw results (what ``--save-runs`` pickles); ``main_stats`` and ``stability_stats`` the numbers
the page and study.json give. Every number comes from the audit's own stage functions (``open_audit``,
``audit_class``, ``per_image_result``, ``summarize``); this module only chooses the subsets, seeds and scales.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from bench.shared import CLASSES, WEIGHTS, Clock, fmt, say
from xich.engine.audit import AuditConfig, ClassImages, OpenedAudit, audit_class, open_audit, per_image_result
from xich.method.distribution import score_share_spearman
from xich.result import ClassResult, summarize

INPUT_SIZE = 32  # the CIFAR ResNets' input side: mosaic scale "model input size"
NATIVE = 64  # 2 × 32-px tiles: each image at its own resolution
ALPHA = 0.05  # Holm-corrected significance level, as in the report


@dataclass(frozen=True)
class Plan:
    """What the study runs; ``full()`` is ``make study``, ``quick()`` the smoke run."""

    models: tuple[str, ...]
    scales: tuple[int, ...] = (INPUT_SIZE, NATIVE)
    clusters: int = 5
    seed: int = 0
    # (2) training share: every class, every model
    main_classes: tuple[str, ...] = CLASSES
    main_j: int = 25
    train_per_class: int = 2000
    # (1) per-image (Fig. 3)
    fig3_classes: tuple[str, ...] = ("airplane", "cat", "dog", "truck")
    fig3_images: int = 20
    fig3_j: int = 10
    # (3) stability
    stab: tuple[tuple[str, tuple[str, ...]], ...] = (("resnet20", ("airplane", "cat", "truck")),
                                                     ("resnet56", ("cat", "truck")))
    stab_js: tuple[int, ...] = (10, 25, 50)
    stab_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # (4) planted shift
    shift_models: tuple[str, ...] = ("resnet20", "resnet56")
    shift_classes: tuple[str, ...] = ("automobile", "cat", "horse")
    shift_transforms: tuple[str, ...] = ("vflip", "rot90")
    shift_fraction: float = 0.25

    def stab_models(self) -> list[str]:
        return [m for m, _ in self.stab]

    def stab_classes(self, model: str | None = None) -> list[str]:
        return sorted({c for m, cs in self.stab if model in (None, m) for c in cs}, key=CLASSES.index)

    @staticmethod
    def full() -> "Plan":
        return Plan(models=tuple(WEIGHTS))

    @staticmethod
    def quick() -> "Plan":
        return Plan(models=("resnet20",), main_classes=("cat", "truck"), main_j=5, train_per_class=200,
                    fig3_classes=("cat",), fig3_images=8, fig3_j=6, stab=(("resnet20", ("cat",)),), stab_js=(5, 10),
                    stab_seeds=(0, 1, 2), shift_models=("resnet20",), shift_classes=("truck",),
                    shift_transforms=("vflip",))


TRANSFORMS = {
    "vflip": lambda x: torch.flip(x, dims=[2]),  # upside down: CIFAR training flips horizontally only
    "rot90": lambda x: torch.rot90(x, 1, dims=[2, 3]),  # a quarter turn: never in CIFAR training
}



# ----------------------------------------------------------------------------------------------------
# running


def config_for(data: Path, model: str, scale: int, plan: Plan, **kw) -> AuditConfig:
    return AuditConfig(model=f"cifar:{model}", weights=str(data / "cifar-resnet" / WEIGHTS[model]),
                       data=str(data / "cifar10-jpeg"), clusters=plan.clusters, mosaics_per_pair=plan.main_j,
                       seed=plan.seed, mosaic_size=scale, classes=tuple(plan.main_classes), device="cpu",
                       **{"control": True, **kw})  # the study reads the control (published with it on)


def with_settings(opened: OpenedAudit, **changes) -> OpenedAudit:
    """The same opened audit (data, prepared model) with other J / seed / per-image settings."""
    return dataclasses.replace(opened, config=dataclasses.replace(opened.config, **changes))


def membership(result: ClassResult) -> dict[str, int]:
    return {image: c.id for c in result.clusters for image in c.members}


def with_train_shares(result: ClassResult, reference: ClassResult) -> ClassResult:
    """``result`` (audited on the same frozen clustering, without the training split) with the training
    counts of ``reference``: the clustering and the training split's assignment do not depend on the
    mosaic scale, so they are computed once per model and class."""
    assert membership(result) == membership(reference), "the scales must share one clustering"
    clusters = [dataclasses.replace(c, train_count=r.train_count, train_share=r.train_share)
                for c, r in zip(result.clusters, reference.clusters)]
    ranked = [c for c in clusters if c.score is not None]
    rho = score_share_spearman(np.array([c.score for c in ranked]), np.array([c.train_share for c in ranked]))
    return dataclasses.replace(result, clusters=clusters, spearman_score_train_share=rho)


def audit_both_scales(opened: dict[int, OpenedAudit], images: ClassImages, scales: tuple[int, ...],
                      frozen: dict[str, int] | None = None) -> dict[int, ClassResult]:
    """One class at every scale: the first scale clusters (or takes ``frozen``) and places the training
    split; the others reuse that clustering (frozen) and its training counts."""
    first, *rest = scales
    out = {first: audit_class(opened[first], images, frozen=frozen)}
    no_train = dataclasses.replace(images, train_images=None)
    for s in rest:
        out[s] = with_train_shares(audit_class(opened[s], no_train, frozen=membership(out[first])), out[first])
    return out


def shifted(images: ClassImages, transform: str, fraction: float, seed: int) -> tuple[ClassImages, set[str]]:
    """The class with ``fraction`` of its evaluation images transformed (ids tagged); training untouched."""
    rng = np.random.default_rng([seed, images.index, 7])
    n = len(images.eval_ids)
    pick = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))
    ev = images.eval_images.clone()
    ev[pick] = TRANSFORMS[transform](ev[pick])
    ids = list(images.eval_ids)
    for k in pick:
        ids[k] = f"{ids[k]}#{transform}"
    return dataclasses.replace(images, eval_ids=ids, eval_images=ev), {ids[k] for k in pick}


def decode_classes(data: Path, plan: Plan, clock: Clock) -> dict[str, ClassImages]:
    """Each class's JPEGs decoded once (all test images, ``train_per_class`` training images), reused
    by every model and scale."""
    opened = open_audit(dataclasses.replace(config_for(data, plan.models[0], INPUT_SIZE, plan),
                                            classes=tuple(CLASSES)))
    names = sorted(set(plan.main_classes) | set(plan.fig3_classes) | set(plan.stab_classes()) | set(plan.shift_classes),
                   key=CLASSES.index)
    out = {}
    for name in names:
        ids = opened.eval_split.images[name]
        tr_ids = opened.train_split.images[name]
        rng = np.random.default_rng([plan.seed, CLASSES.index(name), 3])
        take = np.sort(rng.choice(len(tr_ids), size=min(plan.train_per_class, len(tr_ids)), replace=False))
        out[name] = ClassImages(name, opened.indices[name], ids, opened.eval_split.load(ids, opened.tile_size),
                                opened.train_split.load([tr_ids[k] for k in take], opened.tile_size))
        say(clock, f"decoded {name}: {len(ids)} test, {len(take)} of {len(tr_ids)} train images")
    return out


def run(data: Path, plan: Plan, clock: Clock) -> dict:
    with clock.section("decode"):
        images = decode_classes(data, plan, clock)
    main: dict = {}  # model -> scale -> [ClassResult]
    fig3: dict = {}  # model -> scale -> class -> per-image dict
    stab: dict = {}  # model -> scale -> class -> J -> seed -> ClassResult
    shift: list = []
    stab_time: dict = {}  # model -> scale -> J -> seconds of each audit_class call
    for model in plan.models:
        opened = {s: open_audit(config_for(data, model, s, plan)) for s in plan.scales}
        main[model] = {s: [] for s in plan.scales}
        for name in plan.main_classes:
            im = images[name]
            with clock.section("main"):
                res = audit_both_scales(opened, im, plan.scales)
            for s in plan.scales:
                main[model][s].append(res[s])
            say(clock, f"{model} {name}: hierarchy " + ", ".join(
                f"{s} px {res[s].hierarchy} rho={fmt(res[s].spearman_score_train_share)}" for s in plan.scales))
            if name in plan.fig3_classes:
                with clock.section("fig3"):
                    first = opened[plan.scales[0]].prepared
                    logits = first.embed(im.eval_images, opened[plan.scales[0]].config.batch_size)[1]
                    tiles = first.normalize(im.eval_images)
                    for s in plan.scales:
                        pi = asdict(per_image_result(with_settings(opened[s], per_image=plan.fig3_images,
                                                                   mosaics_per_pair=plan.fig3_j), im, tiles, logits))
                        pi["spearman_logit_shown"] = shown_logit_rho(opened[s], im, tiles, pi)
                        fig3.setdefault(model, {}).setdefault(s, {})[name] = pi
                say(clock, f"{model} {name}: per-image spearman(score, logit) " + ", ".join(
                    f"{s} px {fmt(fig3[model][s][name]['spearman_logit'])}" for s in plan.scales))
            if name in plan.stab_classes(model):
                frozen = membership(res[plan.scales[0]])
                no_train = dataclasses.replace(im, train_images=None)
                with clock.section("stability"):
                    for s, j, seed in itertools.product(plan.scales, plan.stab_js, plan.stab_seeds):
                        t = time.perf_counter()
                        r = audit_class(with_settings(opened[s], seed=seed, mosaics_per_pair=j), no_train, frozen=frozen)
                        stab_time.setdefault(model, {}).setdefault(s, {}).setdefault(j, []).append(
                            time.perf_counter() - t)
                        stab.setdefault(model, {}).setdefault(s, {}).setdefault(name, {}).setdefault(j, {})[seed] = r
                say(clock, f"{model} {name}: stability done")
            if model in plan.shift_models and name in plan.shift_classes:
                for tf in plan.shift_transforms:
                    sim, planted = shifted(im, tf, plan.shift_fraction, plan.seed)
                    with clock.section("shift"):
                        res_s = audit_both_scales(opened, sim, plan.scales)
                    row = shift_row(model, name, tf, planted, res_s, plan.scales)
                    shift.append(row)
                    say(clock, f"{model} {name} {tf}: shifted cluster rank " + ", ".join(
                        f"{s} px {row['scales'][s]['rank']}" for s in plan.scales))
    return {"main": main, "fig3": fig3, "stab": stab, "shift": shift, "stab_time": stab_time}


def shown_logit_rho(opened: OpenedAudit, im: ClassImages, tiles: torch.Tensor, pi: dict) -> float | None:
    """Spearman of the per-image scores with the class logit of each image *as the mosaic shows it*:
    resized (bilinear, antialiased, as the mosaic is) to half the mosaic's side. At native tiles that is
    the ordinary logit; at input size, the logit of the 16-px image. A diagnostic, not part of the audit."""
    side = opened.mosaic_size // 2
    keep = [i for i in pi["images"] if i["score"] is not None]
    if len(keep) < 3:
        return None
    idx = [im.eval_ids.index(i["image"]) for i in keep]
    x = tiles[idx]
    if side != x.shape[-1]:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    logits = opened.prepared.forward(x)[1][:, im.index].numpy()
    return float(stats.spearmanr([i["score"] for i in keep], logits).statistic)


def shift_row(model: str, name: str, tf: str, planted: set[str], res: dict[int, ClassResult],
              scales: tuple[int, ...]) -> dict:
    """The cluster holding most planted images, its purity and recall, and its rank at each scale."""
    clusters = res[scales[0]].clusters
    hits = [sum(m in planted for m in c.members) for c in clusters]
    cid = int(np.argmax(hits))
    row = {"model": model, "class": name, "transform": tf, "planted": len(planted), "cluster": cid,
           "size": clusters[cid].eval_size, "purity": hits[cid] / clusters[cid].eval_size,
           "recall": hits[cid] / len(planted), "train_share": clusters[cid].train_share,
           "eval_share": clusters[cid].eval_size / sum(c.eval_size for c in clusters),
           "majority_clusters": [c.id for c, h in zip(clusters, hits) if h > c.eval_size / 2], "scales": {}}
    for s in scales:
        r = res[s]
        P = len(r.clusters)
        c = r.clusters[cid]
        p = np.array(r.p_values_holm)
        D = np.array([[np.nan if v is None else v for v in rowd] for rowd in r.dominance])
        # significantly dominated: D < 0.5 with Holm p < alpha against every other cluster
        dominated = all(p[cid, j] < ALPHA and D[cid, j] < 0.5 for j in range(P) if j != cid)
        row["scales"][s] = {"rank": c.rank, "score": c.score, "least": c.rank == P - 1,
                            "dominated_by_all": bool(dominated), "hierarchy": r.hierarchy}
    return row


# ----------------------------------------------------------------------------------------------------
# statistics of the runs


def significant(r: ClassResult) -> set[tuple[int, int]]:
    """Significant ordered pairs (winner, loser) at Holm p < ALPHA."""
    P, out = len(r.clusters), set()
    for i in range(P):
        for j in range(P):
            d = r.dominance[i][j]
            if i != j and d is not None and d > 0.5 and r.p_values_holm[i][j] < ALPHA:
                out.add((i, j))
    return out


def stability_stats(per_class: dict[str, dict[int, dict[int, ClassResult]]], js) -> list[dict]:
    """Per J: agreement between every two seeds, pooled over classes."""
    rows = []
    for j in js:
        taus, kept, sig_total, n_sig, least_same, sd_d = [], 0, 0, [], [], []
        for name, by_j in per_class.items():
            runs = by_j[j]
            seeds = sorted(runs)
            scores = {s: np.array([np.nan if c.score is None else c.score for c in runs[s].clusters]) for s in seeds}
            sig = {s: significant(runs[s]) for s in seeds}
            least = {s: runs[s].hierarchy[-1] if runs[s].hierarchy else None for s in seeds}
            for s in seeds:
                n_sig.append(len(sig[s]))
            for a, b in itertools.combinations(seeds, 2):
                ok = ~np.isnan(scores[a]) & ~np.isnan(scores[b])
                taus.append(stats.kendalltau(scores[a][ok], scores[b][ok]).statistic)
                least_same.append(least[a] == least[b])
            for a, b in itertools.permutations(seeds, 2):
                kept += len(sig[a] & sig[b])
                sig_total += len(sig[a])
            Ds = np.array([[[np.nan if v is None else v for v in row] for row in runs[s].dominance] for s in seeds])
            P = Ds.shape[1]
            iu = np.triu_indices(P, 1)
            sd_d.append(np.nanstd(Ds[:, iu[0], iu[1]], axis=0, ddof=1).mean())
        rows.append({"J": j, "tau_mean": float(np.nanmean(taus)), "tau_min": float(np.nanmin(taus)),
                     "sig_per_class": float(np.mean(n_sig)), "sig_kept": kept / sig_total if sig_total else None,
                     "least_same": float(np.mean(least_same)), "sd_D": float(np.mean(sd_d)),
                     "n_seed_pairs": len(taus)})
    return rows


def main_stats(results: list[ClassResult]) -> dict:
    summary = summarize(results)
    ratio_rho, least_lowest = [], 0
    for r in results:
        ranked = [c for c in r.clusters if c.rank is not None]
        shares = np.array([c.train_share for c in ranked])
        ratio = shares / np.array([c.eval_size / sum(k.eval_size for k in r.clusters) for c in ranked])
        scores = np.array([c.score for c in ranked])
        if len(ranked) > 1 and np.ptp(scores) > 0:
            ratio_rho.append(stats.spearmanr(scores, ratio).statistic)
        if ranked:
            last = max(ranked, key=lambda c: c.rank)
            least_lowest += last.train_share == shares.min()
    return {**summary, "mean_spearman_ratio": float(np.mean(ratio_rho)) if ratio_rho else None,
            "least_has_lowest_share": int(least_lowest), "n_classes": len(results),
            "rhos": {r.name: r.spearman_score_train_share for r in results}}



def null_band(n: int) -> float:
    """|Spearman rho| below which p > 0.05 for n points (t approximation)."""
    t = stats.t.ppf(0.975, n - 2)
    return float(t / np.sqrt(n - 2 + t * t))



def cached_images(data: Path, classes: tuple[str, ...], extra: tuple[str, ...], train_per_class: int, seed: int,
                  clock: Clock, cache: Path) -> dict[str, ClassImages]:
    """``decode_classes`` of ``classes`` (and ``extra``), kept beside the study's models (outside the repository)
    for later runs of other sections and models."""
    plan_main = Plan(models=("resnet20",), main_classes=classes, train_per_class=train_per_class,
                     fig3_classes=(), stab=(), shift_classes=extra, seed=seed)
    decoded = cache / f"decoded-{seed}-{train_per_class}-{'-'.join(classes)}.pt"
    with clock.section("decode"):
        if decoded.is_file():
            return {k: ClassImages(**v) for k, v in torch.load(decoded, weights_only=True).items()}
        images = decode_classes(data, plan_main, clock)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({k: dataclasses.asdict(v) for k, v in images.items()}, decoded)
    return images
