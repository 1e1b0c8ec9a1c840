"""The study's figures (sections 1-3): Fig. 3 scatter and Spearman, Fig. 4/5 training share by rank, stability."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.sections.main_run import INPUT_SIZE, NATIVE, Plan, null_band
from bench.shared import fmt


def figures(out: Path, plan: Plan, runs: dict, st: dict) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    fig3 = runs["fig3"]
    # Fig. 3 scatter for the deepest model run
    model = plan.models[-1]
    cls = list(plan.fig3_classes)
    fig, axes = plt.subplots(len(plan.scales), len(cls), figsize=(3.2 * len(cls), 3.2 * len(plan.scales)),
                             squeeze=False, layout="constrained")
    for a, s in enumerate(plan.scales):
        for b, name in enumerate(cls):
            ax, pi = axes[a, b], fig3[model][s][name]
            pts = [(i["logit"], i["score"], i["softmax"]) for i in pi["images"] if i["score"] is not None]
            x, y, p = map(np.array, zip(*pts))
            sc = ax.scatter(x, y, c=p, cmap="viridis", vmin=0, vmax=1, s=22)
            ax.set_title(f"{name}, mosaic {s} px\nSpearman logit {fmt(pi['spearman_logit'])}, "
                         f"softmax {fmt(pi['spearman_softmax'])}", fontsize=8)
            ax.set_xlabel("class logit", fontsize=8)
            if b == 0:
                ax.set_ylabel("per-image dominance score", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.colorbar(sc, ax=axes, shrink=0.6, label="softmax")
    fig.suptitle(f"Per-image dominance vs logit (cifar:{model}, {plan.fig3_images} images/class, J={plan.fig3_j})",
                 fontsize=10)
    files["fig3"] = "fig3-per-image.png"
    fig.savefig(out / files["fig3"], dpi=110, bbox_inches="tight")
    plt.close(fig)

    # Spearman(score, logit) for every model, class and scale
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    markers = {INPUT_SIZE: "o", NATIVE: "s"}
    for k, m in enumerate(plan.models):
        for s in plan.scales:
            vals = [fig3[m][s][c]["spearman_logit"] for c in cls]
            xs = np.arange(len(cls)) + (k - (len(plan.models) - 1) / 2) * 0.15
            ax.scatter(xs, vals, marker=markers.get(s, "^"), color=f"C{k}", facecolors="none" if s == NATIVE else f"C{k}",
                       label=f"{m}, {s} px", s=30)
    ax.axhline(0, color="gray", lw=0.8)
    band = null_band(plan.fig3_images)
    ax.axhspan(-band, band, color="gray", alpha=0.15, label=f"|rho| < {band:.2f} (p > 0.05, n={plan.fig3_images})")
    ax.set_xticks(range(len(cls)), cls)
    ax.set_ylabel("Spearman(score, logit)")
    ax.set_ylim(-1, 1.05)
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    ax.set_title("Per-image dominance vs logit: filled = mosaic at input size (32 px), open = native tiles (64 px)",
                 fontsize=8)
    files["fig3_rho"] = "fig3-spearman.png"
    fig.savefig(out / files["fig3_rho"], dpi=110, bbox_inches="tight")
    plt.close(fig)

    # Fig. 4/5: train share by rank
    fig, axes = plt.subplots(1, len(plan.models), figsize=(3.0 * len(plan.models), 3.0), squeeze=False, sharey=True,
                             layout="constrained")
    for k, m in enumerate(plan.models):
        ax = axes[0, k]
        for s in plan.scales:
            shares = st["main"][m][s]["train_share_by_rank"]
            ax.plot(range(len(shares)), shares, marker=markers.get(s, "^"), label=f"{s} px")
        ax.axhline(1 / plan.clusters, color="gray", lw=0.8, ls="--")
        ax.set_title(f"{m}", fontsize=9)
        ax.set_xlabel("dominance rank (0 = most)", fontsize=8)
        ax.set_xticks(range(plan.clusters))
        if k == 0:
            ax.set_ylabel("mean train share", fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle(f"Training share by dominance rank ({len(plan.main_classes)} classes, P={plan.clusters}, "
                 f"J={plan.main_j})", fontsize=9)
    files["fig45"] = "fig45-train-share.png"
    fig.savefig(out / files["fig45"], dpi=110, bbox_inches="tight")
    plt.close(fig)

    # stability
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), layout="constrained")
    keys = [("tau_mean", "Kendall tau between seeds"), ("sig_kept", "significant pairs kept"),
            ("least_same", "same least dominant cluster"), ("sd_D", "SD of D_ij across seeds")]
    for k, m in enumerate(plan.stab_models()):
        for s in plan.scales:
            rows = st["stab"][m][s]
            for ax, (key, label) in zip(axes, keys):
                ax.plot([r["J"] for r in rows], [r[key] for r in rows], marker=markers.get(s, "^"), color=f"C{k}",
                        ls="--" if s == INPUT_SIZE else "-", label=f"{m}, {s} px")
                ax.set_title(label, fontsize=9)
                ax.set_xlabel("J (mosaics per pair)", fontsize=8)
                ax.set_xticks(plan.stab_js)
    for ax in axes[:3]:
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Hierarchy stability over {len(plan.stab_seeds)} mosaic-sampling seeds, clustering fixed "
                 f"({'; '.join(f'{m}: ' + ', '.join(cs) for m, cs in plan.stab)})", fontsize=9)
    files["stability"] = "stability.png"
    fig.savefig(out / files["stability"], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return files
