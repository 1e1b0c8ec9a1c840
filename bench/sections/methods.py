"""Section 7 of the study (``--only methods``): attribution methods and randomized controls.

On the same clusters and the same mosaics: Grad-CAM, Grad-CAM++, LayerCAM, EigenCAM (and Score-CAM where
affordable), the whole-model randomized control (the audit's) and a head-only control (only the final linear head
re-initialised, ``engine.audit.head_control_model``), over several classes and seeds (each seed its own K-Means
and mosaics). Per-cluster records go to ``study.json`` so every table can be recomputed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.sections.main_run import cached_images
from bench.sections.stages import _floats, _sig, _tau, open_public, score_clusters
from bench.shared import CLASSES, Clock, fmt, mean_known, say
from xich.engine.audit import OpenedAudit, head_control_model
from xich.method.baselines import cluster_baselines
from xich.method.clustering import cluster_embeddings

METHODS = ("<!-- study:methods -->", "<!-- /study:methods -->")


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
                    f"{k} {fmt(_tau(g, v['scores']))}" for k, v in rec["keys"].items() if k != plan.methods[0])
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
            taus = [fmt(mean_known([_tau(r["keys"][k]["scores"], r["keys"][k2]["scores"]) for r in rows]))
                    if k2 != k else "1" for k2 in keys]
            L.append(f"| {model} | {k} | " + " | ".join(taus)
                     + f" | **{fmt(mean_known([_tau(r['keys'][k]['scores'], r['mean_logit']) for r in rows]))}**"
                     f" | {np.mean([len(r['keys'][k]['significant']) for r in rows]):.1f}"
                     f" | {sum(r['keys'][k]['hierarchy'][-1:] == r['keys'][ref]['hierarchy'][-1:] for r in rows)} of "
                     f"{len(rows)} | {np.mean([r['seconds'].get(k, np.nan) for r in rows]):.1f} |")
    L += ["", "Per model, class and seed: τ with the mean logit of each key, and significant pairs (trained model "
          f"{ref} / control / head control):", "",
          "| model | class | seed | " + " | ".join(keys) + " | significant pairs |",
          "|---|---|---|" + "---|" * (len(keys) + 1)]
    for r in recs:
        L.append(f"| {r['model']} | {r['class']} | {r['seed']} | " + " | ".join(
            fmt(_tau(r["keys"][k]["scores"], r["mean_logit"])) for k in keys) + " | " + " / ".join(
            str(len(r["keys"][k]["significant"])) for k in (ref, "control", "head control")) + " |")
    L += ["", methods_findings(plan, recs), "", METHODS[1]]
    return "\n".join(L)


def methods_findings(plan: dict, recs: list) -> str:
    ref = plan["methods"][0]
    others = plan["methods"][1:]
    parts = []
    for model in plan["models"]:
        rows = [r for r in recs if r["model"] == model]
        tau_ref = {k: mean_known([_tau(r["keys"][k]["scores"], r["keys"][ref]["scores"]) for r in rows]) for k in others}
        flagged = {k: sum(0 < len(r["keys"][k]["significant"]) >= len(r["keys"][ref]["significant"]) for r in rows)
                   for k in ("control", "head control")}  # as the audit's control_result flags image_statistics
        parts.append(
            f"*{model}* ({len(rows)} cases): mean τ with {ref} " + ", ".join(f"{k} {fmt(v)}" for k, v in tau_ref.items())
            + "; with the mean logit " + ", ".join(
                f"{k} {fmt(mean_known([_tau(r['keys'][k]['scores'], r['mean_logit']) for r in rows]))}"
                for k in plan["methods"])
            + "; controls' mean τ with the trained model " + ", ".join(
                f"{k} {fmt(mean_known([_tau(r['keys'][k]['scores'], r['keys'][ref]['scores']) for r in rows]))}"
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
