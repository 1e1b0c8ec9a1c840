"""The audit report: one HTML page with the paper's figures (Fig. 2–5), PNGs beside it.

Reads an AuditResult; never recomputes a number. Mosaic examples need pixels and Grad-CAM maps,
which the audit hands over through :func:`collect_examples` while the model is loaded.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .result import AuditResult, ClassResult, Explainer  # noqa: E402



@dataclass
class Example:
    """A mosaic to show: its title, RGB pixels (S, S, 3) uint8 and scaled Grad-CAM map (S, S)."""

    title: str
    rgb: np.ndarray
    cam: np.ndarray


def example_pairs(cls: ClassResult) -> list[tuple[str, int, int]]:
    """The most dominant pair (largest D_ij) and the least dominant one (D_ij closest to 0.5)."""
    D = np.array(cls.dominance)
    P = D.shape[0]
    if P < 2:
        return []
    off = [(i, j) for i in range(P) for j in range(P) if i != j]
    i, j = max(off, key=lambda p: (D[p], -p[0], -p[1]))
    k, m = min(((a, b) for a, b in off if a < b), key=lambda p: (abs(D[p] - 0.5), p))
    return [("most dominant", i, j), ("least dominant", k, m)]


def collect_examples(cls: ClassResult, explain: Explainer, per_pair: int = 2) -> list[Example]:
    """Render up to ``per_pair`` stored mosaics of each example pair with their Grad-CAM maps."""
    out = []
    for label, i, j in example_pairs(cls):
        pair = sorted((i, j))
        shown = [m for m in cls.mosaics if m.pair == pair and m.d is not None][:per_pair]
        for m in shown:
            d_i = m.d if pair[0] == i else 1 - m.d
            rgb, cam = explain(m.images)
            out.append(Example(f"{label}: cluster {i} vs {j}, D={cls.dominance[i][j]:.2f}, d={d_i:.2f}", rgb, cam))
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def _heatmap(ax, M: np.ndarray, title: str, fmt: str, cmap: str, vmin: float, vmax: float) -> None:
    im = ax.imshow(M, cmap=cmap, vmin=vmin, vmax=vmax)
    P = M.shape[0]
    for i in range(P):
        for j in range(P):
            ax.text(j, i, format(M[i, j], fmt), ha="center", va="center", fontsize=8,
                    color="white" if (M[i, j] - vmin) / (vmax - vmin + 1e-12) < 0.35 else "black")
    ax.set_xticks(range(P))
    ax.set_yticks(range(P))
    ax.set_xlabel("cluster j")
    ax.set_ylabel("cluster i")
    ax.set_title(title, fontsize=10)
    plt.colorbar(im, ax=ax, fraction=0.046)


def plot_matrices(cls: ClassResult, path: Path) -> None:
    """Fig. 2 (top): dominance matrix D_ij and Holm-corrected p-values."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    _heatmap(axes[0], np.array(cls.dominance), f"{cls.name}: dominance D(i over j)", ".2f", "RdBu_r", 0, 1)
    p = np.array(cls.p_values_holm)
    _heatmap(axes[1], p, f"{cls.name}: p-value (t-test vs 0.5, Holm)", ".0e" if p.min() < 0.01 else ".2f", "viridis", 0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_examples(examples: list[Example], path: Path) -> None:
    """Fig. 2 (bottom): mosaics with their Grad-CAM maps overlaid."""
    fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 3.6), squeeze=False)
    for ax, ex in zip(axes[0], examples):
        ax.imshow(ex.rgb, interpolation="nearest")
        ax.imshow(ex.cam, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        h, w = ex.cam.shape
        ax.axhline(h / 2 - 0.5, color="white", lw=0.8)
        ax.axvline(w / 2 - 0.5, color="white", lw=0.8)
        ax.set_title(ex.title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_training_distribution(result: AuditResult, path: Path) -> None:
    """Fig. 4/5: training share of each cluster by its dominance rank, per class and across classes."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for cls in result.classes:
        ranked = sorted(cls.clusters, key=lambda c: c.rank)
        if ranked and ranked[0].train_share is not None:
            ax.plot([c.rank for c in ranked], [c.train_share for c in ranked], marker="o", alpha=0.5, label=cls.name)
    by_rank = result.summary["train_share_by_rank"]
    ax.bar(range(len(by_rank)), by_rank, color="gray", alpha=0.35, label="mean over classes")
    ax.set_xlabel("dominance rank (0 = most dominant)")
    ax.set_ylabel("share of the class's training images")
    ax.set_title("Training distribution by dominance rank")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_per_image(cls: ClassResult, path: Path) -> None:
    """Fig. 3: per-image dominance score against class logit and softmax probability."""
    pi = cls.per_image
    score = [r["score"] for r in pi["images"]]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, key in zip(axes, ("logit", "softmax")):
        ax.scatter([r[key] for r in pi["images"]], score, s=14)
        rho = pi[f"spearman_{key}"]
        ax.set_title(f"{cls.name}: dominance vs {key} (Spearman {'n/a' if rho is None else f'{rho:+.2f}'})", fontsize=9)
        ax.set_xlabel(key)
        ax.set_ylabel("per-image dominance score")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(result: AuditResult, out_dir: str | Path, examples: dict[str, list[Example]] | None = None,
                 extra_html: str = "") -> Path:
    """Write ``index.html`` and its figures under ``out_dir``; returns the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = examples or {}
    parts = [f"<h1>XICH audit {html.escape(result.run_id)}</h1>",
             f"<p>model <code>{html.escape(result.model['spec'])}</code> weights "
             f"<code>{html.escape(str(result.model['weights']))}</code>; data <code>{html.escape(result.dataset['uri'])}</code>; "
             + ", ".join(f"{k}={html.escape(str(v))}" for k, v in result.config.items()) + "</p>", extra_html]
    if any(c.clusters and c.clusters[0].train_share is not None for c in result.classes):
        plot_training_distribution(result, out / "training_distribution.png")
        parts.append('<h2>Training distribution by dominance rank (Fig. 4/5)</h2>'
                     '<img class="figure" data-kind="training-distribution" src="training_distribution.png">')
    for cls in result.classes:
        slug = f"{cls.index}-{_slug(cls.name)}"
        parts.append(f"<h2>{html.escape(cls.name)}</h2>")
        parts.append(_cluster_table(cls))
        plot_matrices(cls, out / f"matrices_{slug}.png")
        parts.append(f'<img class="figure" data-kind="matrices" src="matrices_{slug}.png">')
        if examples.get(cls.name):
            plot_examples(examples[cls.name], out / f"mosaics_{slug}.png")
            parts.append(f'<img class="figure" data-kind="mosaics" src="mosaics_{slug}.png">')
        if cls.per_image:
            plot_per_image(cls, out / f"per_image_{slug}.png")
            parts.append(f'<img class="figure" data-kind="per-image" src="per_image_{slug}.png">')
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in cls.notes]
    page = out / "index.html"
    tmp = page.with_name("index.html.tmp")
    tmp.write_text(_PAGE.replace("{body}", "\n".join(parts)))
    tmp.replace(page)
    return page


def _cluster_table(cls: ClassResult) -> str:
    rows = "".join(
        f"<tr><td>{c.rank}</td><td>{c.id}</td><td>{c.score:.3f}</td><td>{c.eval_size}</td>"
        f"<td>{'-' if c.train_count is None else c.train_count}</td>"
        f"<td>{'-' if c.train_share is None else f'{c.train_share:.3f}'}</td></tr>"
        for c in sorted(cls.clusters, key=lambda c: c.rank))
    return ("<table><tr><th>rank</th><th>cluster</th><th>score</th><th>eval size</th><th>train count</th>"
            f"<th>train share</th></tr>{rows}</table>")


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>XICH audit report</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:1em auto}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img.figure{display:block;max-width:100%;margin:8px 0}
.note{color:#a50}</style></head>
<body>
{body}
<script>
// marks how many figures decoded, so a headless browser check can read it from the DOM
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.figure");
  var ok = Array.prototype.filter.call(imgs, function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-figures-loaded", ok + "/" + imgs.length);
});
</script>
</body></html>
"""
