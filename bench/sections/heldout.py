"""Section 6 of the study (``--only heldout``): held-out halves.

Per class, one half of the test images (drawn with the seed) is clustered and audited; the other half and the
training split are placed by nearest centre (in the model's embedding space, as the audit places the training
split) and the held-out half is audited on those clusters. If the hierarchy holds on images the clustering never
saw, it is not K-Means fitting noise; the training share says how rare each cluster is in the data, and the gap
between the class logit of a cluster's training images and of its held-out test images says how much the model
fits what it saw better than what it did not (memorisation). Per-cluster records go to ``study.json`` so every
table can be recomputed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.sections.main_run import cached_images
from bench.sections.stages import _floats, _rho, _sig, _tau, open_public, score_clusters
from bench.shared import CLASSES, Clock, fmt, mean_known, say
from xich.engine.audit import OpenedAudit
from xich.method.baselines import cluster_baselines
from xich.method.clustering import assign_clusters, cluster_embeddings
from xich.method.distribution import training_distribution

HELDOUT = ("<!-- study:heldout -->", "<!-- /study:heldout -->")


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
            say(clock, f"heldout {model} {name}: tau(A, A') {fmt(s['tau_a_a2'])}, tau(A, B) {fmt(s['tau_a_b'])}, "
                       f"rho(B, share) {fmt(s['rho_b_share'])}, rho(B, gap) {fmt(s['rho_b_gap'])}")
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
        L.append(f"| {m} | {fmt(mean_known([s['tau_a_a2'] for s in ss]))} | **{fmt(mean_known([s['tau_a_b'] for s in ss]))}** "
                 f"| {fmt(mean_known([s['tau_logit_a_b'] for s in ss]))} "
                 f"| {sum(bool(s['least_same']) for s in ss)} of {len(ss)} | {sig / len(ss):.1f} "
                 f"| {kept} of {sig} | {fmt(mean_known([s['size_shift'] for s in ss]))} "
                 f"| {fmt(mean_known([s['tau_b_logit'] for s in ss]))} |")
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
        L.append(f"| {m} | {fmt(mean_known([s['rho_a_share'] for s in ss]))} | **{fmt(mean_known([s['rho_b_share'] for s in ss]))}** "
                 f"| {fmt(mean_known([s['rho_logit_b_share'] for s in ss]))} | {fmt(mean_known([s['rho_b_gap'] for s in ss]))} "
                 f"| {fmt(mean_known([s['rho_b_train_logit'] for s in ss]))} | {fmt(mean_known([s['rho_share_gap'] for s in ss]))} "
                 f"| {fmt(mean_known([s['gap_mean'] for s in ss]))} | {sum(s['least_gap_largest'] for s in ss)} of {len(ss)} |")
    L += ["", "Per class (τ(A, B) and ρ(score B, share)):", "",
          "| class | " + " | ".join(f"{m} τ(A, B) | {m} ρ(B, share)" for m in plan["models"]) + " |",
          "|---|" + "---|---|" * len(plan["models"])]
    for c in plan["classes"]:
        cells = []
        for m in plan["models"]:
            s = next((s for r, s in st if r["model"] == m and r["class"] == c), None)
            cells += [fmt(s and s["tau_a_b"]), fmt(s and s["rho_b_share"])]
        L.append(f"| {c} | " + " | ".join(cells) + " |")
    L += ["", heldout_findings(plan, st), "", HELDOUT[1]]
    return "\n".join(L)


def heldout_findings(plan: dict, st: list) -> str:
    parts = []
    for m in plan["models"]:
        ss = [s for r, s in st if r["model"] == m]
        parts.append(f"{m}: τ(A, B) {fmt(mean_known([s['tau_a_b'] for s in ss]))} against the mosaic-noise floor "
                     f"τ(A, A') {fmt(mean_known([s['tau_a_a2'] for s in ss]))}; ρ(score, share) "
                     f"{fmt(mean_known([s['rho_a_share'] for s in ss]))} on A, {fmt(mean_known([s['rho_b_share'] for s in ss]))} "
                     f"on B (mean logit on B {fmt(mean_known([s['rho_logit_b_share'] for s in ss]))}); ρ(score B, gap) "
                     f"{fmt(mean_known([s['rho_b_gap'] for s in ss]))}, ρ(score B, train mean logit) "
                     f"{fmt(mean_known([s['rho_b_train_logit'] for s in ss]))}")
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
