"""Two sections of the study (bench/study.py) that run on their own and splice into docs/science.md:

    .venv/bin/python bench/study.py --only heldout    # 6. held-out halves
    .venv/bin/python bench/study.py --only methods    # 7. attribution methods and randomized controls

6. **Held-out halves.** Per class, one half of the test images (drawn with the seed) is clustered and audited; the
   other half and the training split are placed by nearest centre (in the model's embedding space, as the audit
   places the training split) and the held-out half is audited on those clusters. If the hierarchy holds on images
   the clustering never saw, it is not K-Means fitting noise; the training share says how rare each cluster is in the
   data, and the gap between the class logit of a cluster's training images and of its held-out test images says how
   much the model fits what it saw better than what it did not (memorisation).
7. **Attribution methods and randomized controls.** On the same clusters and the same mosaics: Grad-CAM,
   Grad-CAM++, LayerCAM, EigenCAM (and Score-CAM where affordable), the whole-model randomized control (the audit's)
   and a head-only control (only the final linear head re-initialised, ``engine.audit.head_control_model``), over
   several classes and seeds (each seed its own K-Means and mosaics).

Every number comes from the audit's own stages (embedding, ``cluster_embeddings``, ``assign_clusters``,
``plan_mosaics``, ``score_mosaics_with``, ``rank_clusters``, ``cluster_baselines``); per-cluster records go to
``docs/science/study.json`` so every table can be recomputed.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from study import CLASSES, WEIGHTS, Clock, _fmt, cached_images, say
from xich.engine.audit import (AuditConfig, OpenedAudit, head_control_model, open_audit, rank_clusters,
                               score_mosaics_with)
from xich.engine.runtime import PreparedModel
from xich.method.baselines import cluster_baselines, kendall_tau
from xich.method.clustering import assign_clusters, cluster_embeddings
from xich.method.distribution import training_distribution
from xich.method.mosaic import plan_mosaics
from xich.method.significance import significant_pairs

HELDOUT = ("<!-- study:heldout -->", "<!-- /study:heldout -->")
METHODS = ("<!-- study:methods -->", "<!-- /study:methods -->")


@dataclass(frozen=True)
class HeldoutPlan:
    models: tuple[str, ...] = ("resnet20", "resnet56")  # the public CIFAR ResNets, native tiles (64-px mosaics)
    classes: tuple[str, ...] = CLASSES
    clusters: int = 5
    j: int = 25
    seed: int = 0
    train_per_class: int = 2000

    @staticmethod
    def quick() -> "HeldoutPlan":
        return HeldoutPlan(models=("resnet20",), classes=("cat", "truck"), j=5, train_per_class=200)


@dataclass(frozen=True)
class MethodsPlan:
    models: tuple[str, ...] = ("resnet20",)
    # Score-CAM left out: one forward pass per layer3 channel (64) per mosaic (bench/bench_methods.py: about 50×
    # the fast Grad-CAM's time per mosaic), too slow for 8 × 250 mosaics here; section 5 has it at 32 px, 2 classes.
    methods: tuple[str, ...] = ("gradcam", "gradcam++", "layercam", "eigencam")
    classes: tuple[str, ...] = ("airplane", "cat", "dog", "truck")
    seeds: tuple[int, ...] = (0, 1)
    clusters: int = 5
    j: int = 25
    train_per_class: int = 2000  # only to share the decoded images with the other sections

    @staticmethod
    def quick() -> "MethodsPlan":
        return MethodsPlan(methods=("gradcam", "gradcam++", "eigencam"), classes=("cat",), seeds=(0, 1), j=5,
                           train_per_class=200)


def open_public(data: Path, model: str, classes: tuple[str, ...], clusters: int, j: int, seed: int,
                method: str = "gradcam", control: bool = False, cache: Path | None = None) -> OpenedAudit:
    """A public CIFAR ResNet at the package's defaults (native tiles: 64-px mosaics), or one of the study's trained
    models (``resnet20-flat``, ``resnet20-mlp``, ``vit``: from ``cache``, trained there first if absent; their
    32-px mosaics, the only input size they take)."""
    if model in WEIGHTS:
        weights = data / "cifar-resnet" / WEIGHTS[model]
    else:
        from study_models import trained_models

        weights = trained_models(data, cache=cache, specs=(f"cifar:{model}",))[f"cifar:{model}"]
    return open_audit(AuditConfig(model=f"cifar:{model}", weights=str(weights), data=str(data / "cifar10-jpeg"),
                                  clusters=clusters, mosaics_per_pair=j, seed=seed, classes=classes, device="cpu",
                                  method=method, control=control))


def score_clusters(opened: OpenedAudit, models: dict[str, PreparedModel], tiles, labels: np.ndarray, n: int,
                   index: int, seed: int) -> dict:
    """J mosaics per pair of the clusters ``labels`` (seeded by [seed, class index], as the audit plans them),
    scored by every model on the same mosaics → key → PairStatistics."""
    plan = plan_mosaics(labels, n, opened.config.mosaics_per_pair, np.random.default_rng([seed, index]))
    ds = score_mosaics_with(opened, models, tiles, plan, index)
    return {k: rank_clusters(plan, d, n) for k, d in zip(models, ds)}


def _floats(a) -> list[float | None]:
    return [None if v is None or np.isnan(v) else float(v) for v in np.asarray(a, dtype=float)]


def _tau(a, b) -> float | None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    return None if ok.sum() < 2 else _floats([kendall_tau(a[ok], b[ok])])[0]


def _rho(a, b) -> float | None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def _mean(vals) -> float | None:
    v = [x for x in vals if x is not None and not np.isnan(x)]
    return float(np.mean(v)) if v else None


def _sig(st) -> set[tuple[int, int]]:
    return {tuple(p) for p in significant_pairs(st.D, st.p_holm)}


# ----------------------------------------------------------------------------------------------------
# 6. held-out halves


def heldout_class(opened: OpenedAudit, im, plan: HeldoutPlan) -> dict:
    """One class: cluster half A, place half B and the training split, score A (twice: two mosaic seeds, the
    sampling noise floor) and B on A's clusters; per cluster its sizes, share, scores and baselines."""
    bs, P, index = opened.config.batch_size, plan.clusters, im.index
    emb, logits = opened.prepared.embed(im.eval_images, bs)
    tr_emb, tr_logits = opened.prepared.embed(im.train_images, bs)
    perm = np.random.default_rng([plan.seed, index, 11]).permutation(len(emb))
    a, b = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:])
    clustering = cluster_embeddings(emb[a], P, random_state=plan.seed)
    n = clustering.n_clusters
    lab_a, lab_b, lab_t = clustering.labels, assign_clusters(clustering, emb[b]), assign_clusters(clustering, tr_emb)
    counts, shares = training_distribution(lab_t, n)
    models = {"cam_s": opened.prepared}
    st_a = score_clusters(opened, models, im.eval_images[a], lab_a, n, index, plan.seed)["cam_s"]
    st_a2 = score_clusters(opened, models, im.eval_images[a], lab_a, n, index, plan.seed + 1)["cam_s"]
    size_b = np.bincount(lab_b, minlength=n)
    st_b = (score_clusters(opened, models, im.eval_images[b], lab_b, n, index, plan.seed)["cam_s"]
            if size_b.min() > 0 else None)  # a cluster without held-out images: no held-out hierarchy
    base = {k: cluster_baselines(lg, lab, n, index) for k, (lg, lab) in
            {"a": (logits[a], lab_a), "b": (logits[b], lab_b), "train": (tr_logits, lab_t)}.items()}
    return {"class": im.name, "hierarchy_a": st_a.order.tolist(),
            "hierarchy_b": None if st_b is None else st_b.order.tolist(),
            "significant_a": sorted(map(list, _sig(st_a))), "significant_a2": sorted(map(list, _sig(st_a2))),
            "significant_b": None if st_b is None else sorted(map(list, _sig(st_b))),
            "clusters": [{"id": c, "size_a": int((lab_a == c).sum()), "size_b": int(size_b[c]),
                          "train_count": int(counts[c]), "train_share": float(shares[c]),
                          "score_a": _floats([st_a.scores[c]])[0], "score_a2": _floats([st_a2.scores[c]])[0],
                          "score_b": None if st_b is None else _floats([st_b.scores[c]])[0],
                          "baselines": {k: {m: float(v[c]) for m, v in bl.items()} for k, bl in base.items()}}
                         for c in range(n)]}


def heldout_stats(rec: dict) -> dict:
    """The per-class numbers of the section's tables, from one record."""
    cl = rec["clusters"]
    col = lambda k: np.array([np.nan if c[k] is None else c[k] for c in cl], dtype=float)  # noqa: E731
    base = lambda half, m: np.array([c["baselines"][half][m] for c in cl])  # noqa: E731
    sa, sa2, sb, share = col("score_a"), col("score_a2"), col("score_b"), col("train_share")
    gap = base("train", "mean_logit") - base("b", "mean_logit")  # what the model fits better on images it saw
    sig_a, sig_b = {tuple(p) for p in rec["significant_a"]}, {tuple(p) for p in rec["significant_b"] or []}
    least = lambda h: h[-1] if h else None  # noqa: E731
    return {"tau_a_a2": _tau(sa, sa2), "tau_a_b": _tau(sa, sb),
            "tau_logit_a_b": _tau(base("a", "mean_logit"), base("b", "mean_logit")),
            "tau_b_logit": _tau(sb, base("b", "mean_logit")),
            "least_same": None if rec["hierarchy_b"] is None else least(rec["hierarchy_a"]) == least(rec["hierarchy_b"]),
            "sig_a": len(sig_a), "sig_b": len(sig_b), "sig_kept": len(sig_a & sig_b),
            "size_shift": float(np.mean(np.abs(col("size_b") - col("size_a")) / np.maximum(col("size_a"), 1))),
            "rho_a_share": _rho(sa, share), "rho_b_share": _rho(sb, share),
            "rho_logit_b_share": _rho(base("b", "mean_logit"), share),
            "rho_b_gap": _rho(sb, gap), "rho_b_train_logit": _rho(sb, base("train", "mean_logit")),
            "rho_share_gap": _rho(share, gap), "gap_mean": float(np.mean(gap)),
            "least_gap_largest": bool(rec["hierarchy_b"]) and int(np.argmax(gap)) == least(rec["hierarchy_b"])}


def run_heldout(data: Path, plan: HeldoutPlan, clock: Clock, cache: Path) -> dict:
    images = cached_images(data, plan.classes, (), plan.train_per_class, plan.seed, clock, cache)
    records = []
    for model in plan.models:
        opened = open_public(data, model, plan.classes, plan.clusters, plan.j, plan.seed, cache=cache)
        for name in plan.classes:
            with clock.section("heldout"):
                t = time.perf_counter()
                rec = {"model": model, **heldout_class(opened, images[name], plan),
                       "seconds": time.perf_counter() - t}
            records.append(rec)
            s = heldout_stats(rec)
            say(clock, f"heldout {model} {name}: tau(A, A') {_fmt(s['tau_a_a2'])}, tau(A, B) {_fmt(s['tau_a_b'])}, "
                       f"rho(B, share) {_fmt(s['rho_b_share'])}, rho(B, gap) {_fmt(s['rho_b_gap'])}")
    return {"plan": dataclasses.asdict(plan), "records": records, "seconds": dict(clock.spent),
            "total_seconds": clock.total()}


def heldout_markdown(res: dict, command: str) -> str:
    plan, recs = res["plan"], res["records"]
    P = plan["clusters"]
    st = [(r, heldout_stats(r)) for r in recs]
    runs = res.get("runs") or [{"command": command, "models": plan["models"], "total_seconds": res["total_seconds"]}]
    L = [HELDOUT[0], "", "## 6. Held-out halves: K-Means fitting, rarity in the data, or memorisation?", "",
         "Commands: " + "; ".join(f"`{r['command']}` ({', '.join(r['models'])}: {r['total_seconds'] / 60:.1f} min)"
                                  for r in runs) + ", on a 2-core machine shared with other work. "
         f"Models: {', '.join('cifar:' + m for m in plan['models'])} (public ResNets: 64-px mosaics of native tiles; "
         f"the study's trained models of section 5: their 32-px input). Classes: {len(plan['classes'])}; P = {P}, "
         f"J = {plan['j']}, seed {plan['seed']}; "
         f"{plan['train_per_class']} training images per class. Per class the 1,000 test images are split in two "
         "halves (drawn with the seed): K-Means clusters half A, which is audited; half B and the training images "
         "are placed by nearest centre, as the audit places the training split, and half B is audited on A's "
         "clusters. A' is half A audited again with the next mosaic seed: the mosaic-sampling noise floor.", "",
         "Per model, means over classes: Kendall τ between the clusters' scores on A and A' (same images, other "
         "mosaics), on A and B (images the clustering never saw), and between the mean class logits on A and B; "
         "classes whose least dominant cluster is the same on A and B; significant pairs (Holm p < 0.05) on A, "
         "and how many of them are significant in the same direction on B; the mean relative change of a "
         "cluster's size from A to B.", "",
         "| model | τ(A, A') | τ(A, B) | τ(mean logit A, B) | same least dominant | significant pairs A | kept on B "
         "| size change | τ(B, mean logit B) |", "|---|---|---|---|---|---|---|---|---|"]
    for m in plan["models"]:
        ss = [s for r, s in st if r["model"] == m]
        kept = sum(s["sig_kept"] for s in ss)
        sig = sum(s["sig_a"] for s in ss)
        L.append(f"| {m} | {_fmt(_mean([s['tau_a_a2'] for s in ss]))} | **{_fmt(_mean([s['tau_a_b'] for s in ss]))}** "
                 f"| {_fmt(_mean([s['tau_logit_a_b'] for s in ss]))} "
                 f"| {sum(bool(s['least_same']) for s in ss)} of {len(ss)} | {sig / len(ss):.1f} "
                 f"| {kept} of {sig} | {_fmt(_mean([s['size_shift'] for s in ss]))} "
                 f"| {_fmt(_mean([s['tau_b_logit'] for s in ss]))} |")
    L += ["", "Rarity and memorisation, on the held-out half B (means over classes of Spearman ρ over a class's "
          f"{P} clusters; under no relation one class's ρ has a standard deviation of {1 / np.sqrt(P - 1):.2f}, a mean "
          f"over {len(plan['classes'])} classes about {1 / np.sqrt(P - 1) / np.sqrt(len(plan['classes'])):.2f}). "
          "*Share*: the cluster's share of the training images. *Gap*: the mean class logit of the cluster's "
          "training images minus that of its held-out test images (how much better the model fits what it saw); "
          "*train mean logit*: that of its training images alone. "
          "Last column: classes in which the least dominant cluster on B has the largest gap (1 in "
          f"{P} by chance).", "",
          "| model | ρ(score A, share) | ρ(score B, share) | ρ(mean logit B, share) | ρ(score B, gap) "
          "| ρ(score B, train mean logit) | ρ(share, gap) | mean gap | least dominant = largest gap |",
          "|---|---|---|---|---|---|---|---|---|"]
    for m in plan["models"]:
        ss = [s for r, s in st if r["model"] == m]
        L.append(f"| {m} | {_fmt(_mean([s['rho_a_share'] for s in ss]))} | **{_fmt(_mean([s['rho_b_share'] for s in ss]))}** "
                 f"| {_fmt(_mean([s['rho_logit_b_share'] for s in ss]))} | {_fmt(_mean([s['rho_b_gap'] for s in ss]))} "
                 f"| {_fmt(_mean([s['rho_b_train_logit'] for s in ss]))} | {_fmt(_mean([s['rho_share_gap'] for s in ss]))} "
                 f"| {_fmt(_mean([s['gap_mean'] for s in ss]))} | {sum(s['least_gap_largest'] for s in ss)} of {len(ss)} |")
    L += ["", "Per class (τ(A, B) and ρ(score B, share)):", "",
          "| class | " + " | ".join(f"{m} τ(A, B) | {m} ρ(B, share)" for m in plan["models"]) + " |",
          "|---|" + "---|---|" * len(plan["models"])]
    for c in plan["classes"]:
        cells = []
        for m in plan["models"]:
            s = next((s for r, s in st if r["model"] == m and r["class"] == c), None)
            cells += [_fmt(s and s["tau_a_b"]), _fmt(s and s["rho_b_share"])]
        L.append(f"| {c} | " + " | ".join(cells) + " |")
    L += ["", heldout_findings(plan, st), "", HELDOUT[1]]
    return "\n".join(L)


def heldout_findings(plan: dict, st: list) -> str:
    parts = []
    for m in plan["models"]:
        ss = [s for r, s in st if r["model"] == m]
        parts.append(f"{m}: τ(A, B) {_fmt(_mean([s['tau_a_b'] for s in ss]))} against the mosaic-noise floor "
                     f"τ(A, A') {_fmt(_mean([s['tau_a_a2'] for s in ss]))}; ρ(score, share) "
                     f"{_fmt(_mean([s['rho_a_share'] for s in ss]))} on A, {_fmt(_mean([s['rho_b_share'] for s in ss]))} "
                     f"on B (mean logit on B {_fmt(_mean([s['rho_logit_b_share'] for s in ss]))}); ρ(score B, gap) "
                     f"{_fmt(_mean([s['rho_b_gap'] for s in ss]))}, ρ(score B, train mean logit) "
                     f"{_fmt(_mean([s['rho_b_train_logit'] for s in ss]))}")
    return ("**What this section shows** (numbers from this run; read a difference within the standard errors above "
            "as a tie). " + "; ".join(parts) + ". How to read it: τ(A, B) close to τ(A, A') means the hierarchy "
            "holds on images the clustering never saw, so it is not K-Means fitting noise of one half; ρ(score B, "
            "share) measures the relation with rarity in the training data on held-out images. The gap contains "
            "minus the held-out mean logit, which dominance follows closely here, so a negative ρ(score B, gap) "
            "follows from that alone; what tells memorisation from hard data is the training images' own logit: "
            "ρ(score B, train mean logit) near 0 with a negative ρ(score B, gap) would mean the model fits the "
            "losing clusters' training images as well as the others' but not their new images (memorisation); a "
            "positive one means those clusters are fitted worse on training images too (hard or rare data). "
            "Limits: one split and one K-Means seed per class; the training shares "
            f"from {plan['train_per_class']} training images per class; where the hierarchy is close to the "
            "mean-logit order (sections 5 and 7), the same questions asked of the mean logit get much the same "
            "answers.")


# ----------------------------------------------------------------------------------------------------
# 7. attribution methods and randomized controls


def methods_class(opened: dict[str, OpenedAudit], im, seed: int, plan: MethodsPlan) -> dict:
    """One class and seed: K-Means (seed) on every test image, J mosaics per pair (seed), scored under every method
    and both controls on the same mosaics; per key its scores, hierarchy and significant pairs, and its seconds."""
    first = opened[plan.methods[0]]
    emb, logits = first.prepared.embed(im.eval_images, first.config.batch_size)
    clustering = cluster_embeddings(emb, plan.clusters, random_state=seed)
    n = clustering.n_clusters
    models = {m: o.prepared for m, o in opened.items()}
    models |= {"control": first.control, "head control": head_control_model(first)}
    first.timings.clear()
    st = score_clusters(first, models, im.eval_images, clustering.labels, n, im.index, seed)
    base = cluster_baselines(logits, clustering.labels, n, im.index)
    return {"class": im.name, "seed": seed, "sizes": np.bincount(clustering.labels, minlength=n).tolist(),
            "mean_logit": [float(v) for v in base["mean_logit"]],
            "seconds": {k: float(v) for k, v in first.timings.items()},
            "keys": {k: {"scores": _floats(s.scores), "hierarchy": s.order.tolist(),
                         "significant": sorted(map(list, _sig(s)))} for k, s in st.items()}}


def run_methods(data: Path, plan: MethodsPlan, clock: Clock, cache: Path) -> dict:
    images = cached_images(data, CLASSES, (), plan.train_per_class, 0, clock, cache)  # the other sections' file
    records = []
    for model in plan.models:
        for seed in plan.seeds:
            # one opened audit per method; the first carries the controls (seeded with the audit's seed)
            opened = {m: open_public(data, model, plan.classes, plan.clusters, plan.j, seed, method=m,
                                     control=(k == 0), cache=cache) for k, m in enumerate(plan.methods)}
            for name in plan.classes:
                with clock.section("methods"):
                    rec = {"model": model, **methods_class(opened, images[name], seed, plan)}
                records.append(rec)
                g = rec["keys"][plan.methods[0]]["scores"]
                say(clock, f"methods {model} {name} seed {seed}: tau vs {plan.methods[0]}: " + ", ".join(
                    f"{k} {_fmt(_tau(g, v['scores']))}" for k, v in rec["keys"].items() if k != plan.methods[0])
                    + "; s: " + ", ".join(f"{k} {v:.0f}" for k, v in rec["seconds"].items()))
    return {"plan": dataclasses.asdict(plan), "records": records, "seconds": dict(clock.spent),
            "total_seconds": clock.total()}


def methods_markdown(res: dict, command: str) -> str:
    plan, recs = res["plan"], res["records"]
    keys = [*plan["methods"], "control", "head control"]
    ref = plan["methods"][0]
    runs = res.get("runs") or [{"command": command, "models": plan["models"], "total_seconds": res["total_seconds"]}]
    L = [METHODS[0], "", "## 7. Attribution methods and randomized controls", "",
         "Commands: " + "; ".join(f"`{r['command']}` ({', '.join(r['models'])}: {r['total_seconds'] / 60:.1f} min)"
                                  for r in runs) + ", on a 2-core machine shared with other work. "
         f"Models: {', '.join('cifar:' + m for m in plan['models'])} (public ResNets: 64-px mosaics of native tiles; "
         "the study's trained models of section 5: their 32-px input). "
         f"Classes: {', '.join(plan['classes'])}; seeds {', '.join(map(str, plan['seeds']))} (each seed its own "
         f"K-Means and its own mosaics); P = {plan['clusters']}, J = {plan['j']}; all 1,000 test images per class. "
         "Within a class and seed every method and both controls score the same mosaics of the same clusters. "
         "*Control*: the audit's randomized control, the whole architecture re-initialised (seeded from the audit's "
         "seed). *Head control*: only the final linear head re-initialised (to the control's head), the trained "
         "trunk kept (`engine.audit.head_control_model`; in the study only, not in the audit).", "",
         "Per model and key, means over its class × seed cases: Kendall τ of its cluster scores with each other "
         "key's, with the clusters' mean class logit, significant pairs per class (Holm p < 0.05, of "
         f"{plan['clusters'] * (plan['clusters'] - 1) // 2}), cases whose least dominant cluster is "
         f"{ref}'s, and seconds per class (scoring only).", "",
         "| model | key | " + " | ".join(f"τ with {k}" for k in keys) + " | τ with mean logit | significant pairs "
         f"| same least dominant as {ref} | s per class |", "|---|---|" + "---|" * (len(keys) + 4)]
    for model in plan["models"]:
        for k in keys:
            rows = [r for r in recs if r["model"] == model]
            taus = [_fmt(_mean([_tau(r["keys"][k]["scores"], r["keys"][k2]["scores"]) for r in rows]))
                    if k2 != k else "1" for k2 in keys]
            L.append(f"| {model} | {k} | " + " | ".join(taus)
                     + f" | **{_fmt(_mean([_tau(r['keys'][k]['scores'], r['mean_logit']) for r in rows]))}**"
                     f" | {np.mean([len(r['keys'][k]['significant']) for r in rows]):.1f}"
                     f" | {sum(r['keys'][k]['hierarchy'][-1:] == r['keys'][ref]['hierarchy'][-1:] for r in rows)} of "
                     f"{len(rows)} | {np.mean([r['seconds'].get(k, np.nan) for r in rows]):.1f} |")
    L += ["", "Per model, class and seed: τ with the mean logit of each key, and significant pairs (trained model "
          f"{ref} / control / head control):", "",
          "| model | class | seed | " + " | ".join(keys) + " | significant pairs |",
          "|---|---|---|" + "---|" * (len(keys) + 1)]
    for r in recs:
        L.append(f"| {r['model']} | {r['class']} | {r['seed']} | " + " | ".join(
            _fmt(_tau(r["keys"][k]["scores"], r["mean_logit"])) for k in keys) + " | " + " / ".join(
            str(len(r["keys"][k]["significant"])) for k in (ref, "control", "head control")) + " |")
    L += ["", methods_findings(plan, recs), "", METHODS[1]]
    return "\n".join(L)


def methods_findings(plan: dict, recs: list) -> str:
    ref = plan["methods"][0]
    others = plan["methods"][1:]
    parts = []
    for model in plan["models"]:
        rows = [r for r in recs if r["model"] == model]
        tau_ref = {k: _mean([_tau(r["keys"][k]["scores"], r["keys"][ref]["scores"]) for r in rows]) for k in others}
        flagged = {k: sum(0 < len(r["keys"][k]["significant"]) >= len(r["keys"][ref]["significant"]) for r in rows)
                   for k in ("control", "head control")}  # as the audit's control_result flags image_statistics
        parts.append(
            f"*{model}* ({len(rows)} cases): mean τ with {ref} " + ", ".join(f"{k} {_fmt(v)}" for k, v in tau_ref.items())
            + "; with the mean logit " + ", ".join(
                f"{k} {_fmt(_mean([_tau(r['keys'][k]['scores'], r['mean_logit']) for r in rows]))}"
                for k in plan["methods"])
            + "; controls' mean τ with the trained model " + ", ".join(
                f"{k} {_fmt(_mean([_tau(r['keys'][k]['scores'], r['keys'][ref]['scores']) for r in rows]))}"
                for k in ("control", "head control"))
            + "; significant pairs per class " + ", ".join(
                f"{k} {np.mean([len(r['keys'][k]['significant']) for r in rows]):.1f}"
                for k in (ref, "control", "head control"))
            + "; cases where a control has at least as many significant pairs as the trained model (the audit's "
            "\"image statistics, not the model\" flag) " + ", ".join(f"{k} {v} of {len(rows)}" for k, v in flagged.items()))
    return ("**What this section shows** (numbers from this run; a mean over a handful of cases: differences of a "
            "few hundredths are ties). " + ". ".join(parts) + ". "
            "Score-CAM is not in this section: it runs the model once per channel of the target layer (64 here), "
            "about 50 times the fast Grad-CAM's time per mosaic (`bench/bench_methods.py`, "
            "[attribution-methods.md](attribution-methods.md)), too slow for this section's budget; section 5 has it "
            f"at 32 px on two classes. Limits: {len(plan['classes'])} classes, {len(plan['seeds'])} seeds, one "
            "control seed per audit seed.")


def section_main(args, data: Path, out: Path, cache: Path, command: str) -> int:
    """``--only heldout`` / ``--only methods``: run the section, keep its records in study.json (the other sections'
    kept) and splice its text into science.md."""
    import json

    from study import splice_section

    clock = Clock()
    js = out / "science" / "study.json"
    if args.rerender:  # the section's text again from its saved records (after a change of wording or tables)
        res = json.loads(js.read_text())[args.only]
        markers, render = (HELDOUT, heldout_markdown) if args.only == "heldout" else (METHODS, methods_markdown)
        splice_section(out / "science.md", render(res, res["command"]), markers)
        say(clock, f"rewrote section {args.only} of {out / 'science.md'} from {js}")
        return 0
    some = args.heldout_models if args.only == "heldout" else args.methods_models
    if args.only == "heldout":
        plan = HeldoutPlan.quick() if args.quick else HeldoutPlan()
        plan = dataclasses.replace(plan, models=tuple(some.split(","))) if some else plan
        res, markers, render = run_heldout(data, plan, clock, cache), HELDOUT, heldout_markdown
    else:
        plan = MethodsPlan.quick() if args.quick else MethodsPlan()
        plan = dataclasses.replace(plan, models=tuple(some.split(","))) if some else plan
        res, markers, render = run_methods(data, plan, clock, cache), METHODS, methods_markdown
    res["command"] = command
    res["runs"] = [{"command": command, "models": list(res["plan"]["models"]), "total_seconds": res["total_seconds"]}]
    (out / "science").mkdir(parents=True, exist_ok=True)
    doc = json.loads(js.read_text()) if js.is_file() else {}
    old = doc.get(args.only)
    if some and old:  # a run of some models: the others' records kept
        keep = [m for m in old["plan"]["models"] if m not in plan.models]
        res["plan"]["models"] = keep + list(plan.models)
        res["records"] = [r for r in old["records"] if r["model"] in keep] + res["records"]
        res["runs"] = [r for r in old.get("runs") or [{"command": old["command"], "models": old["plan"]["models"],
                                                        "total_seconds": old["total_seconds"]}]
                       if set(r["models"]) & set(keep)] + res["runs"]
    doc[args.only] = res
    js.write_text(json.dumps(doc, indent=1, default=float))
    if not (out / "science.md").is_file():
        (out / "science.md").write_text("# The science behind the defaults\n")
    splice_section(out / "science.md", render(res, command), markers)
    say(clock, f"wrote section {args.only} into {out / 'science.md'} and {js}")
    return 0
