"""Tables and records of the rare-look benchmark (bench/rare_looks.py) from its cached case records: writes
``<out>/science/rare_looks.json`` and the generated part of section 9 of ``<out>/science.md`` (between the markers
``<!-- rare_looks -->`` and ``<!-- /rare_looks -->``; text after the closing marker is kept)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import torch

from bench.sections.rare_looks_metrics import attributable, mean_ci
from bench.shared import fmt
from xich.method import looks

CONDITIONS = ("2", "5", "10")
METHODS = (*(f"{s}:top1" for s in looks.SIGNALS), *(f"{s}:rule" for s in looks.SIGNALS),
           "control_least_dominant:top1", "cleanlab:own", "cleanlab:xich", "domino_like:top1")
AUROCS = ("image_logit", "image_margin", *(f"{s}:cluster" for s in looks.SIGNALS), "cleanlab:own",
          "cleanlab:xich", "domino_like:top1")
TIER_NAMES = {"cheap": "cheap (frozen public trunk, new head)", "e2e": "end-to-end (ResNet-20 from scratch)",
              "ft": "end-to-end fine-tuned (public ResNet-20, GAP → linear, every layer trained)",
              "ft-flat": "end-to-end fine-tuned (public ResNet-20 trunk, Flatten head: Grad-CAM is not the CAM)"}
# the run that made the first published records (cheap and e2e tiers), before runs carried their provenance
FIRST_RUN = {"tiers": ["cheap", "e2e"], "code": "d5275ea", "date": "2026-12-07", "audit_minutes": 104.5,
             "train_minutes": 45.7, "invocation": "bench/rare_looks.py (default tiers)",
             "machine": "a 2-core machine shared with five other agents (load average 7-9; up to four processes of "
                        "this benchmark side by side), one torch thread per process",
             "note": "the end-to-end tier's seed 1 A-rare and B-rare models did not fit the time budget: its null only"}
MARK, END = "<!-- rare_looks -->", "<!-- /rare_looks -->"


def can_flag_nothing(method: str) -> bool:
    return method.endswith(":rule") or method.startswith("cleanlab")


def load(records_dir: Path) -> tuple[list[dict], float]:
    recs, seconds = [], 0.0
    for path in sorted(records_dir.glob("*.json")):
        d = json.loads(path.read_text())
        seconds += d["seconds"]
        recs += d["records"]
    return recs, seconds


def summarize(recs: list[dict]) -> dict:
    """Per tier × condition × method: mean F1 (95 % t-interval) over the rare cases, precision, recall,
    rarity-attributable F1 (against the null case of the same tier, seed, superclass and target look), the null's
    mean F1 and its false-flag rate (null cases where the method flags anything)."""
    null = {(r["tier"], r["train_per_super"], r["seed"], r["superclass"], r["target"]): r
            for r in recs if r["condition"] == "null"}
    out = {}
    for tier in sorted({r["tier"] for r in recs}):
        nulls = [r for r in recs if r["tier"] == tier and r["condition"] == "null"]
        for cond in CONDITIONS:
            cases = [r for r in recs if r["tier"] == tier and r["condition"] == cond]
            if not cases:
                continue
            rows = {}
            for m in (*METHODS, "best_cluster"):
                f1 = [_f1(r, m) for r in cases]
                if all(v is None for v in f1):
                    continue
                att = [attributable(_f1(r, m), _f1(n, m)) for r in cases
                       if (n := null.get((tier, r["train_per_super"], r["seed"], r["superclass"], r["target"])))
                       and _f1(r, m) is not None and _f1(n, m) is not None]
                mean, lo, hi, n = mean_ci(f1)
                null_f1 = [_f1(x, m) for x in nulls]
                rows[m] = {"f1": mean, "f1_ci": [lo, hi], "n": n,
                           "precision": _mean([r["methods"][m]["precision"] for r in cases if m in r["methods"]]),
                           "recall": _mean([r["methods"][m]["recall"] for r in cases if m in r["methods"]]),
                           "attributable_f1": mean_ci(att)[0], "attributable_f1_ci": list(mean_ci(att)[1:3]),
                           "n_attributable": len(att),
                           "null_f1": _mean(null_f1),
                           "null_false_flags": (_mean([float(x["methods"][m]["flagged_images"] > 0) for x in nulls
                                                       if m in x["methods"]]) if m in METHODS else None),
                           "n_null": sum(v is not None for v in null_f1)}
            aur = {a: {"auroc": (s := mean_ci([r["auroc"].get(a) for r in cases]))[0], "ci": [s[1], s[2]], "n": s[3],
                       "null": mean_ci([r["auroc"].get(a) for r in nulls])[0]}
                   for a in AUROCS}
            ctl = [r for r in cases if r.get("control")]
            out[f"{tier}/{cond}"] = {"tier": tier, "condition": cond, "seeds": sorted({r["seed"] for r in cases}),
                                     "methods": rows, "auroc": aur,
                                     "significant_pairs": _mean([r["significant_pairs"] for r in cases]),
                                     "null_significant_pairs": _mean([r["significant_pairs"] for r in nulls]),
                                     "control": {"significant_pairs": _mean([r["significant_pairs"] for r in ctl]),
                                                 "control_significant_pairs": _mean(
                                                     [r["control"]["significant_pairs"] for r in ctl]),
                                                 "image_statistics": _mean(
                                                     [float(r["control"]["image_statistics"]) for r in ctl])}
                                     if ctl else None}
    return out


def _f1(r: dict, m: str) -> float | None:
    if m == "best_cluster":
        return r["best_cluster_f1"]
    return r["methods"][m]["f1"] if m in r["methods"] else None


def _mean(v) -> float | None:
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else None


def models_table(recs: list[dict]) -> list[dict]:
    seen = {}
    for r in recs:
        key = (r["tier"], r["condition"], r["rare"], r["seed"])
        seen[key] = r["model_info"]
    rows = defaultdict(list)
    for (tier, cond, rare, seed), info in seen.items():
        rows[(tier, cond, rare)].append(info)
    out = []
    for (tier, cond, rare), infos in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        out.append({"tier": tier, "condition": cond, "rare": rare, "models": len(infos),
                    "recipe": infos[0]["recipe"], "train_images": infos[0]["train_images"],
                    "test_accuracy": _mean([i["test_accuracy"] for i in infos]),
                    "rare_look_accuracy": _mean([i["rare_look_accuracy"] for i in infos]),
                    "common_look_accuracy": _mean([i["common_look_accuracy"] for i in infos]),
                    "train_seconds": _mean([i["seconds"] for i in infos])})
    return out


def _ci(row) -> str:
    lo, hi = row["f1_ci"]
    return f"**{fmt(row['f1'])}** [{fmt(lo)}, {fmt(hi)}]"


def markdown(summary: dict, models: list[dict], runs: list[dict], recs: list[dict]) -> str:
    L = [MARK, "", "## 9. Finding the looks a model under-learned: a rare-look benchmark with ground truth", "",
         "Command: `make rare-looks` (`.venv/bin/python bench/rare_looks.py`; `--tiers cheap,e2e,ft,ft-flat` picks "
         "the tiers; cached models and cases are reused, and `--report-only` rewrites this section from them; a "
         "tier not in the cache keeps the records published in `docs/science/rare_looks.json`). Records: "
         "`docs/science/rare_looks.json`; models, extracted data and case folders in `~/.cache/xich-rare-looks` "
         "(never committed). The runs behind the tables (wall time summed over processes):", ""]
    L += [f"- {', '.join(r['tiers'])}: `{r['invocation']}`, code {r['code']}, {r['date']}, Python "
          f"{r.get('python', '3.11.7')}, torch {r.get('torch', '2.14.1+cu130')}, on {r['machine']}; audits and peers "
          f"{r['audit_minutes']:.1f} min, training {r['train_minutes']:.1f} min"
          + (f" ({r['note']})" if r.get("note") else "") + "." for r in runs]
    L += ["",
         "**Design.** Five superclasses of CIFAR-10 JPEGs, each made of two original classes, its *looks* "
         "(A/B): airplane/ship, automobile/truck, bird/frog, cat/dog, deer/horse; a 5-way classifier. Training: "
         "600 images per superclass, one look of every superclass rare (2 %, 5 %, 10 %: 12, 30, 60 images), "
         "look A rare or look B rare (so that rarity is not confused with a look that is merely hard), or the "
         "balanced null (300/300). Evaluation (from the test split): 1,000 images of the common look + 250 of the "
         "rare one per superclass, the look well represented as after a shift. A *case* is one superclass of one "
         "audited model; each rare case is matched with the null case of the same seed, superclass and target look "
         "(the null model audited on the same evaluation set). Each case is audited by the package (`open_audit` / "
         "`audit_class`: P = 5, J = 25, seed = the case's seed; the randomized control on in the cheap and "
         "from-scratch tiers, which measured it, off in the fine-tuned ones), and the signals of "
         "`xich.method.looks` are read on its clusters, top-1 (the cluster of greatest need: always flags one) and "
         "by their flag rule (which may flag nothing). Flagged = the union of the flagged clusters' images; "
         "precision, recall and F1 against the target look's images (F1 0 when nothing is flagged). *Best cluster*: "
         "the best F1 any single K-Means cluster reaches (what the clustering allows). In the cheap tier the clusters "
         "are K-Means on the frozen trunk's GAP features, which no head changes: for one seed and target look every "
         "rarity and the null share the clustering and differ only in the head (and the training shares); in the "
         "end-to-end tiers each model has its own features and clusters.", "",
         "**Peers, run on the same cases.** cleanlab 2.9 Datalab `underperforming_group` (in a benchmark-only venv, "
         "the `peers` extra; never the service's dependency), given the audited model's softmax and GAP features of "
         "the audit's whole evaluation set (5 superclasses, 6,250 images), with its own clustering (DBSCAN on a k-NN "
         "graph, `own`) and with XICH's clusters (`xich`); a case's flagged images are those of its superclass. "
         "Domino 0.1.5 does not install here (`pip install domino==0.1.5` in a fresh Python 3.11 venv: it pins "
         "scikit-learn 0.24.2, which pip must build from source, and the build fails with `ModuleNotFoundError: No "
         "module named 'pkg_resources'`); in its place `domino_like`: an error-aware Gaussian mixture in the spirit "
         "of DominoSlicer (bench/sections/rare_looks.py `domino_like`: per superclass, 5 diagonal Gaussians over the "
         "standardised GAP features (PCA to 16 dimensions) and the class probability, the probability's "
         "log-likelihood weighted 10 as DominoSlicer's `y_hat_log_likelihood_weight`; the slice of highest mean "
         "error flagged).", ""]
    L += ["### Models", "", "| tier | condition | rare look | models | training images | test accuracy (5-way, all "
          "10,000 test images) | rare look's accuracy | common look's accuracy | training s / model |",
          "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        L.append(f"| {m['tier']} | {m['condition']} | {m['rare'] or '–'} | {m['models']} | {m['train_images']} | "
                 f"{fmt(m['test_accuracy'], 3)} | {fmt(m['rare_look_accuracy'], 3)} | "
                 f"{fmt(m['common_look_accuracy'], 3)} | {fmt(m['train_seconds'], 0)} |")
    recipes = sorted({(m["tier"], m["recipe"]) for m in models})
    L += [""] + [f"- {t}: {r}." for t, r in recipes] + [""]
    for key, s in summary.items():
        tier, cond = s["tier"], s["condition"]
        L += [f"### {TIER_NAMES.get(tier, tier)}, look rare at {cond} %", "",
              f"Seeds {', '.join(map(str, s['seeds']))}; cases = superclass × seed × (A rare, B rare). F1 mean "
              f"[95 % t-interval] over the cases (the 5 superclasses of one model share it: read the interval as a "
              f"guide). *Attributable*: F1 here minus F1 for the same look in the matched null case. *Null false "
              f"flags*: share of the null's cases where the method flags anything (a top-1 reading always does).", "",
              "| method | F1 [95 % CI] | n | precision | recall | attributable F1 | null F1 | null false flags |",
              "|---|---|---|---|---|---|---|---|"]
        for m, row in s["methods"].items():
            ff = row["null_false_flags"]
            ff_s = "always" if m in METHODS and not can_flag_nothing(m) else fmt(ff)
            L.append(f"| {m} | {_ci(row)} | {row['n']} | {fmt(row['precision'])} | {fmt(row['recall'])} | "
                     f"{fmt(row['attributable_f1'])} | {fmt(row['null_f1'])} | "
                     f"{ff_s if m != 'best_cluster' else '–'} |")
        L += ["", "Per-image AUROC against the look (mean over cases; null: the same score in the null cases): "
              + "; ".join(f"{a} {fmt(v['auroc'])} (null {fmt(v['null'])})" for a, v in s["auroc"].items()
                          if v["n"]) + ". `image_logit` / `image_margin`: minus the image's class logit / margin "
              "(the bench's own forward pass); `<signal>:cluster`: the cluster's need given to its images.", ""]
        if s["control"]:
            L += [f"Same-mosaics control: significant pairs per case {fmt(s['control']['significant_pairs'], 1)} "
                  f"(model) against {fmt(s['control']['control_significant_pairs'], 1)} (control); share of cases "
                  f"flagged as image statistics {fmt(s['control']['image_statistics'])}.", ""]
        else:
            L += [f"Significant pairs per case {fmt(s.get('significant_pairs'), 1)} (the balanced null's "
                  f"{fmt(s.get('null_significant_pairs'), 1)}); the same-mosaics control was not run (retired from "
                  f"the default audit).", ""]
    L += [END]
    return "\n".join(L)


def _invocation(recs: list[dict], command: str) -> str:
    """The command line that made the cached records: the one given, or, for tables rewritten with --report-only,
    the tiers, rarities, seeds and epochs the records hold."""
    if "--report-only" not in command:
        return command.strip()
    conds = [c for c in CONDITIONS if any(r["condition"] == c for r in recs)]
    epochs = sorted({r["model_info"]["epochs"] for r in recs if r.get("model_info", {}).get("epochs")})
    return (f"--tiers {','.join(sorted({r['tier'] for r in recs}))} --e2e-conditions {','.join(conds)} --e2e-seeds "
            f"{','.join(str(s) for s in sorted({r['seed'] for r in recs}))}"
            + (f" --ft-epochs {','.join(map(str, epochs))}" if epochs else "") + " (tables: --report-only)")


def published(out: Path) -> dict:
    path = out / "science" / "rare_looks.json"
    return json.loads(path.read_text()) if path.exists() else {"records": [], "models": [], "runs": []}


def report(records_dir: Path, out: Path, command: str, machine: str | None = None) -> None:
    """Tables from the cached records; the tiers the cache lacks keep their published records, models and run."""
    recs, case_seconds = load(records_dir)
    old = published(out)
    tiers = sorted({r["tier"] for r in recs})
    kept = [r for r in old["records"] if r["tier"] not in tiers]
    runs = [r for r in (old["runs"] if "runs" in old else [FIRST_RUN]) if set(r["tiers"]) - set(tiers)]
    runs = [{**r, "tiers": [t for t in r["tiers"] if t not in tiers]} for r in runs]
    if recs:
        code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
        models = models_table(recs)
        runs.append({"tiers": tiers, "code": code, "date": date.today().isoformat(),
                     "python": platform.python_version(), "torch": torch.__version__,
                     "audit_minutes": case_seconds / 60, "invocation": f"bench/rare_looks.py {_invocation(recs, command)}",
                     "train_minutes": sum(m["train_seconds"] * m["models"] for m in models) / 60,
                     "machine": machine or f"a {os.cpu_count()}-core machine"})
    if not recs and not kept:
        raise SystemExit(f"error: no case records in {records_dir}; run bench/rare_looks.py without --report-only")
    models = [m for m in old["models"] if m["tier"] not in tiers] + models_table(recs)
    recs = kept + recs
    summary = summarize(recs)
    (out / "science").mkdir(parents=True, exist_ok=True)
    slim = [{k: v for k, v in r.items() if k != "model_info"} for r in recs]
    doc = {"plan": {"superclasses": {"airplane_ship": ["airplane", "ship"], "automobile_truck": ["automobile", "truck"],
                                     "bird_frog": ["bird", "frog"], "cat_dog": ["cat", "dog"],
                                     "deer_horse": ["deer", "horse"]},
                    "train_per_super": sorted({r["train_per_super"] for r in recs}), "eval": "1000 common + 250 rare",
                    "clusters": 5, "j": 25, "signals": list(looks.SIGNALS)},
           "command": "make rare-looks (.venv/bin/python bench/rare_looks.py; cases cached, --report-only rewrites the tables)",
           "runs": runs, "models": models, "summary": summary, "records": slim}
    (out / "science" / "rare_looks.json").write_text(json.dumps(_round(doc), indent=1))
    md = markdown(summary, models, runs, recs)
    page = out / "science.md"
    text = page.read_text() if page.exists() else ""
    if MARK in text:
        head, rest = text.split(MARK, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        text = head + md + tail
    else:
        text = text.rstrip("\n") + "\n\n" + md + "\n"
    page.write_text(text)
    print(md)


def _round(x):
    if isinstance(x, float):
        return None if np.isnan(x) else round(x, 4)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x
