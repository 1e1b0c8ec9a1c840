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
import matplotlib.ticker

matplotlib.use("Agg")
# class, cluster and version names reach titles and legends (here and in history_report, which imports this module):
# outside text, never mathtext to interpret (a class folder named a$\nosuchcmd{$b crashed every figure)
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..method.baselines import order_differences  # noqa: E402
from ..result import AuditResult, ClassResult, Explainer  # noqa: E402
from .summary import overall_lines  # noqa: E402


@dataclass
class Example:
    """A mosaic to show: its title, RGB pixels (S, S, 3) uint8 and scaled Grad-CAM map (S, S)."""

    title: str
    rgb: np.ndarray
    cam: np.ndarray
    kind: str = "pair"  # "pair": a stored mosaic of an example pair; "look": four example images of a flagged look


def example_pairs(cls: ClassResult) -> list[tuple[str, int, int]]:
    """The most dominant pair (largest D_ij) and the least dominant one (D_ij closest to 0.5).

    Pairs without evidence (D_ij None) are never picked; a class with none defined has no examples.
    """
    D = cls.dominance
    P = len(D)
    off = [(i, j) for i in range(P) for j in range(P) if i != j and D[i][j] is not None]
    if not off:
        return []
    i, j = max(off, key=lambda p: (D[p[0]][p[1]], -p[0], -p[1]))
    k, m = min(((a, b) for a, b in off if a < b), key=lambda p: (abs(D[p[0]][p[1]] - 0.5), p))
    return [("most dominant", i, j), ("least dominant", k, m)]


def collect_examples(cls: ClassResult, explain: Explainer, per_pair: int = 2) -> list[Example]:
    """Render up to ``per_pair`` stored mosaics of each example pair with their Grad-CAM maps, and for each flagged
    look a mosaic of four of its example images (repeated when it has fewer) with the class's Grad-CAM map."""
    out = []
    for look in (cls.looks or {}).get("looks", []):
        shown = (look["examples"] * 4)[:4]
        if shown:
            rgb, cam = explain(shown)
            out.append(Example(f"flagged look: cluster {look['id']} (accuracy {_number(look['accuracy'])})", rgb, cam,
                               kind="look"))
    for label, i, j in example_pairs(cls):
        pair = sorted((i, j))
        shown = [m for m in cls.mosaics if m.pair == pair and m.d is not None][:per_pair]
        for m in shown:
            d_i = m.d if pair[0] == i else 1 - m.d
            rgb, cam = explain(m.images)
            out.append(Example(f"{label}: cluster {i} vs {j}, D={cls.dominance[i][j]:.2f}, d={d_i:.2f}", rgb, cam))
    return out


def file_slug(name: str) -> str:
    """``name`` (a class name) made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def _axes_for_matrix(ax, P: int, title: str) -> None:
    ax.set_xticks(range(P))
    ax.set_yticks(range(P))
    ax.set_xlabel("cluster j")
    ax.set_ylabel("cluster i")
    ax.set_title(title, fontsize=10)


def _heatmap(ax, M: np.ndarray, title: str, fmt: str, cmap: str, vmin: float, vmax: float) -> None:
    """A matrix with its values written in; NaN cells (the diagonal) are left grey, as in D's."""
    im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, vmin=vmin, vmax=vmax)
    P = M.shape[0]
    for i in range(P):
        for j in range(P):
            if np.isnan(M[i, j]):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, linewidth=0, facecolor="#dddddd"))
                continue
            ax.text(j, i, format(M[i, j], fmt), ha="center", va="center", fontsize=8,
                    color="white" if (M[i, j] - vmin) / (vmax - vmin + 1e-12) < 0.35 else "black")
    _axes_for_matrix(ax, P, title)
    plt.colorbar(im, ax=ax, fraction=0.046)


def _dominance_heatmap(ax, cls: ClassResult, fontsize: float) -> None:
    """D_ij with its 95 % CI and distinct image sets in each cell; a pair without evidence is hatched
    and says so (it is not a tie, so it is not drawn as 0.5); the diagonal is left grey."""
    P = len(cls.dominance)
    D = np.array([[np.nan if v is None else v for v in row] for row in cls.dominance], dtype=float)
    np.fill_diagonal(D, np.nan)
    im = ax.imshow(np.ma.masked_invalid(D), cmap="RdBu_r", vmin=0, vmax=1)
    for i in range(P):
        for j in range(P):
            cell = dict(xy=(j - 0.5, i - 0.5), width=1, height=1, linewidth=0)
            if i == j:
                ax.add_patch(plt.Rectangle(**cell, facecolor="#dddddd"))
            elif cls.dominance[i][j] is None:
                ax.add_patch(plt.Rectangle(**cell, facecolor="#f2f2f2", edgecolor="#999999", hatch="///"))
                ax.text(j, i, "no\nevidence", ha="center", va="center", fontsize=fontsize, color="#444444",
                        bbox=dict(facecolor="#f2f2f2", edgecolor="none", pad=1))
            else:
                d, ci, n = cls.dominance[i][j], cls.dominance_ci[i][j], cls.distinct_sets[i][j]
                lines = [f"{d:.2f}"] + ([f"[{ci[0]:.2f}, {ci[1]:.2f}]"] if ci is not None else []) + [
                    f"{n} set{'' if n == 1 else 's'}"]
                ax.text(j, i, "\n".join(lines), ha="center", va="center", fontsize=fontsize,
                        color="white" if abs(d - 0.5) > 0.3 else "black")
    _axes_for_matrix(ax, P, f"{cls.name}: dominance D(i over j), 95% CI, image sets")
    plt.colorbar(im, ax=ax, fraction=0.046)


def plot_matrices(cls: ClassResult, path: Path) -> None:
    """Fig. 2 (top): dominance matrix D_ij (with CI and distinct image sets) and Holm-corrected p-values."""
    P = len(cls.dominance)
    side = max(4.5, 1.0 * P + 1.5)  # room for three lines of text per cell
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side - 0.5))
    _dominance_heatmap(axes[0], cls, fontsize=8 if P <= 4 else 7 if P <= 6 else 5.5)
    p = np.array(cls.p_values_holm, dtype=float)
    np.fill_diagonal(p, np.nan)  # a cluster against itself: no test
    small = P > 1 and np.nanmin(p) < 0.01
    _heatmap(axes[1], p, f"{cls.name}: p-value (t-test vs 0.5, Holm)", ".0e" if small else ".2f", "viridis", 0, 1)
    fig.tight_layout()
    save_figure(fig, path)


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
    save_figure(fig, path)


def _ranked(cls: ClassResult) -> list:
    """The class's clusters that have a rank, most dominant first."""
    return sorted((c for c in cls.clusters if c.rank is not None), key=lambda c: c.rank)


def plot_training_distribution(result: AuditResult, path: Path) -> None:
    """Fig. 4/5: training share of each ranked cluster by its dominance rank, per class and across classes.

    Clusters without evidence have no rank and are not drawn; the bars are the summary's mean over
    fully ranked classes.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for cls in result.classes:
        ranked = _ranked(cls)
        if ranked and ranked[0].train_share is not None:
            ax.plot([c.rank for c in ranked], [c.train_share for c in ranked], marker="o", alpha=0.5, label=cls.name)
    by_rank = result.summary["train_share_by_rank"]
    if by_rank:
        ax.bar(range(len(by_rank)), by_rank, color="gray", alpha=0.35,
               label=f"mean over {result.summary['classes_ranked']} fully ranked class(es)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("dominance rank (0 = most dominant)")
    ax.set_ylabel("share of the class's training images")
    ax.set_title("Training distribution by dominance rank")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, off the data
    fig.tight_layout()
    save_figure(fig, path, tight=True)


def plot_per_image(cls: ClassResult, path: Path) -> None:
    """Fig. 3: per-image dominance score against class logit and softmax probability (images with a score)."""
    pi = cls.per_image
    scored = [r for r in pi.images if r.score is not None]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, key in zip(axes, ("logit", "softmax")):
        ax.scatter([getattr(r, key) for r in scored], [r.score for r in scored], s=14)
        rho = getattr(pi, f"spearman_{key}")
        ax.set_title(f"{cls.name}: dominance vs {key} (Spearman {_signed(rho)})", fontsize=9)
        ax.set_xlabel(key)
        ax.set_ylabel("per-image dominance score")
    fig.tight_layout()
    save_figure(fig, path)


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def write_report(result: AuditResult, out_dir: str | Path, examples: dict[str, list[Example]] | None = None,
                 extra_html: str = "", model: str | None = None, version: str | None = None) -> Path:
    """Write ``index.html`` and its figures under ``out_dir``; returns the page's path.

    ``model`` / ``version``: the recorded model name and version, for the title (else the spec)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = examples or {}
    title = f"XICH audit of {model or result.model.spec}" + (f" {version}" if version else "")
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>run <code>{html.escape(result.run_id)}</code></p>",
             f"<p>model <code>{html.escape(result.model.spec)}</code> weights "
             f"<code>{html.escape(str(result.model.weights))}</code>; data <code>{html.escape(result.dataset.uri)}</code>; "
             + ", ".join(f"{k}={html.escape(str(v))}" for k, v in result.config.items()) + "</p>",
             _labels_and_notes(result), extra_html]
    if any(c.clusters and c.clusters[0].train_share is not None for c in result.classes):
        parts.append("<h2>Training distribution by dominance rank (Fig. 4/5)</h2>")
        if any(_ranked(c) for c in result.classes):
            plot_training_distribution(result, out / "training_distribution.png")
            parts.append('<img class="figure" data-kind="training-distribution" src="training_distribution.png">')
        parts.append(_left_out_of_summary(result))
    if any(c.per_image for c in result.classes):
        parts.append(_per_image_finding(result))
    parts.append(_baselines_and_control_finding(result))
    for cls in result.classes:
        slug = f"{cls.index}-{file_slug(cls.name)}"
        parts.append(f"<h2>{html.escape(cls.name)}</h2>")
        parts.append(_looks_html(cls))
        looks = [e for e in examples.get(cls.name, []) if e.kind == "look"]
        if looks:
            plot_examples(looks, out / f"looks_{slug}.png")
            parts.append(f'<img class="figure" data-kind="looks" src="looks_{slug}.png">')
        parts.append("<h3>The paper's view: dominance</h3>")
        parts.append(_cluster_table(cls))
        parts.append(_class_baseline_sentences(cls))
        plot_matrices(cls, out / f"matrices_{slug}.png")
        parts.append(f'<img class="figure" data-kind="matrices" src="matrices_{slug}.png">')
        pairs = [e for e in examples.get(cls.name, []) if e.kind == "pair"]
        if pairs:
            plot_examples(pairs, out / f"mosaics_{slug}.png")
            parts.append(f'<img class="figure" data-kind="mosaics" src="mosaics_{slug}.png">')
        if cls.per_image:
            plot_per_image(cls, out / f"per_image_{slug}.png")
            parts.append(f'<div class="beside"><img class="figure" data-kind="per-image" src="per_image_{slug}.png">'
                         f"{_correlation_table(cls)}</div>")
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in cls.notes]
    return write_page(out_dir=out, title=title, body="\n".join(parts))


def _labels_and_notes(result: AuditResult) -> str:
    names = result.labels.names or []
    text = (f"<p>labels: <code>{html.escape(str(result.labels.source))}</code> "
            f"({len(names)} name{'' if len(names) == 1 else 's'} in output order)</p>")
    if lines := overall_lines(result):  # the summary the console and the Prefect artifact show
        text += "<ul class='summary'>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
    if result.notes:
        text += "<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul>"
    return text


def _left_out_of_summary(result: AuditResult) -> str:
    """Which classes the mean by rank leaves out, and why (the summary counts fully ranked classes only)."""
    without = result.summary.get("classes_without_evidence") or []
    partial = [c.name for c in result.classes if c.name not in without and any(k.rank is None for k in c.clusters)]
    text = (f"<p class='summary-scope'>Bars: mean over the {result.summary.get('classes_ranked', 0)} class(es) "
            f"whose every cluster has a rank. Clusters without evidence are not drawn.")
    if without:
        text += " Left out, no evidence at all: " + html.escape(", ".join(without)) + "."
    if partial:
        text += " Left out, some clusters without evidence: " + html.escape(", ".join(partial)) + "."
    if not without and not partial:
        text += " No class was left out."
    return text + "</p>"


def _per_image_finding(result: AuditResult) -> str:
    """The fixed statement of what per-image mode shows, with this run's measured value."""
    rhos = sorted(c.per_image.spearman_logit for c in result.classes
                  if c.per_image and c.per_image.spearman_logit is not None)
    if not rhos:
        measured = "undefined in every class (fewer than 3 images with a score, or constant values)"
    elif len(rhos) == 1:
        measured = f"{rhos[0]:+.2f}"
    else:
        measured = (f"{rhos[0]:+.2f} to {rhos[-1]:+.2f} over {len(rhos)} classes "
                    f"(median {float(np.median(rhos)):+.2f})")
    return ("<h2>Per-image dominance and the logit (Fig. 3)</h2>"
            f"<p class='finding'>In this run ({html.escape(result.model.spec)} on "
            f"<code>{html.escape(result.dataset.uri)}</code>), Spearman(per-image dominance, logit) is "
            f"<b class='measured'>{measured}</b>. The paper's Fig. 3 claims the two are non-correlated; a high value "
            "here says otherwise, and the reason is the head: with global average pooling followed by a linear "
            "layer, Grad-CAM's energy and the logit are both built from w·A (the class's weights times the last "
            "block's activations). The project measured the same on the four CIFAR ResNets (Spearman 0.91–0.98); "
            "the claim held there only when the mosaic is rescaled to the model's input size "
            "(<code>--mosaic-size</code> = tile size: mean Spearman 0.45, against 0.95 at native tiles), and only "
            "in appearance: against the logit of each image as the rescaled mosaic shows it, the correlation is "
            "0.94 again (docs/science.md).</p>")


def _mean_logit_sentence(cls: ClassResult) -> str:
    """Whether the class's hierarchy is its clusters' mean-logit order, and which clusters take other places."""
    tau = (cls.agreement or {}).get("mean_logit")
    if cls.agreement is None:
        return "No baselines were stored with this run."
    if tau is None:
        return "The hierarchy cannot be compared with the mean-logit order (fewer than two ranked clusters)."
    if tau >= 1.0:
        return ("The hierarchy is the clusters' mean-logit order (Kendall τ = 1.00): here dominance ranks the "
                "clusters as one forward pass per image does.")
    by_logit = [c.id for c in sorted(_ranked(cls), key=lambda c: (-c.baselines["mean_logit"], c.id))]
    moved = order_differences(np.array([np.nan if c.score is None else c.score for c in cls.clusters]),
                              np.array([c.baselines["mean_logit"] for c in cls.clusters], dtype=float))
    text = (f"The hierarchy differs from the mean-logit order (Kendall τ = {tau:+.2f}; by mean logit: "
            f"{' > '.join(map(str, by_logit))}): cluster(s) {', '.join(map(str, moved))} take other places. ")
    if tau >= MOSAIC_NOISE_TAU:
        return text + (f"Two audits that differ only in their mosaic seed differ as much (Kendall τ down to "
                       f"{MOSAIC_NOISE_TAU:.2f} at J = 25; docs/science.md, section 3), so the swap is within the "
                       f"mosaics' noise, not something dominance adds to the logit.")
    return text + "That difference, beyond the mosaics' noise, is what dominance adds to the logit."


# The lowest Kendall tau between the hierarchies of two audits that differ only in their mosaic seed, at J = 25 (the
# default), for ResNet-20 and ResNet-56 at both mosaic scales (docs/science.md, section 3): a hierarchy this close to
# the mean-logit order may differ from it by mosaic noise alone.
MOSAIC_NOISE_TAU = 0.80


def _looks_html(cls: ClassResult) -> str:
    """The class's headline: the looks the audit flags (by its signal) and where the class stands against the null
    model; a class audited before either existed says so."""
    parts = []
    if cls.looks:
        rows = "".join(
            f"<tr><td>{k['id']}</td><td>{k['eval_size']}</td><td>{_number(k['representation_ratio'])}</td>"
            f"<td>{_number(k['accuracy'])}</td><td>{_number(k['mean_logit'])}</td>"
            f"<td>{len(k['train_images'] or ())} (x{k['oversample_weight']:g})</td></tr>" for k in cls.looks["looks"])
        parts.append(f"<p class='looks'><b>Looks under-learned</b> ({html.escape(cls.looks['signal'])}: "
                     f"{html.escape(cls.looks['rule'])}): "
                     + (f"cluster(s) {', '.join(map(str, cls.looks['flagged']))}.</p>" if cls.looks["flagged"]
                        else "none flagged.</p>")
                     + (f"<table class='looks'><tr><th>cluster</th><th>eval size</th><th>representation ratio</th>"
                        f"<th>accuracy</th><th>mean logit</th><th>training images to oversample</th></tr>{rows}</table>"
                        if rows else ""))
    else:
        parts.append("<p class='looks'>No looks section: the run was stored before the audit flagged looks.</p>")
    if cls.null:
        n, m = cls.null, cls.null["model"]
        verdict = ("<b>above the null model</b>" if n["above_null"] else
                   "<b class='flag'>no better than the null model</b>: a network of this architecture with random "
                   "weights, audited the same way, shows as weak a look, so this class's findings are not evidence "
                   "about what this model learnt")
        parts.append(
            f"<p class='null'>Against the null model: the weakest look falls short of the class by "
            f"{_number(m['accuracy_deficit'])} in accuracy (± {_number(m['deficit_se'])}), the null's by "
            f"{_number(n['accuracy_deficit'])} (± {_number(n['deficit_se'])}): {verdict}. Significant pairs: "
            f"{m['significant_pairs']} against the null's {n['significant_pairs']}"
            + ("." if n["pairs_above_null"] else " — the null reaches them, so their significance says nothing "
               "about this model.")
            + f" Score spread {_number(m['score_spread'])} against {_number(n['score_spread'])}.</p>")
    return "".join(parts)


def _control_sentence(cls: ClassResult) -> str:
    """The randomized control beside the hierarchy, and its flag (an audit run with --control)."""
    ctl = cls.control
    text = (f"Randomized control (the architecture re-initialised, seed {ctl['seed']}): hierarchy "
            f"{' > '.join(map(str, ctl['hierarchy'])) or 'none'}, {len(ctl['significant_pairs'])} significant "
            f"pair(s) against the model's {len(cls.significant_pairs())}, Kendall τ with the model's scores "
            f"{_signed(ctl['tau'])}.")
    if ctl["image_statistics"]:
        text += (" <b class='flag'>Image statistics, not the model:</b> a network that learnt nothing finds as "
                 "many significant pairs, so their significance says nothing about what this model learnt.")
    return text


def _class_baseline_sentences(cls: ClassResult) -> str:
    return (f"<p class='baselines'>{html.escape(_mean_logit_sentence(cls))}</p>"
            + (f"<p class='control'>{_control_sentence(cls)}</p>" if cls.control else ""))


def _baselines_and_control_finding(result: AuditResult) -> str:
    """Across classes: how often the hierarchy is the mean-logit order, and which classes the control flags."""
    s = result.summary
    compared = [c for c in result.classes if c.agreement and c.agreement.get("mean_logit") is not None]
    if not compared:
        text = "No class has baselines to compare the hierarchy with."
    else:
        unlike = s.get("classes_unlike_mean_logit") or []
        text = (f"In {len(compared) - len(unlike)} of {len(compared)} class(es) the hierarchy is the clusters' "
                f"mean-logit order (mean Kendall τ {s['mean_tau_mean_logit']:+.2f}); "
                + (f"it differs in {', '.join(unlike)}." if unlike else "it differs in none.")
                + " Where they agree, one forward pass per image gives the same ranking: for a global-average-pool "
                  "→ linear head, Grad-CAM's map is the class activation map, whose mean is the logit minus the bias.")
    flagged = s.get("classes_image_statistics") or []
    if any(c.control for c in result.classes):
        text += (" Randomized control: " + (f"{', '.join(flagged)} — as many significant pairs under re-initialised "
                                            f"weights: image statistics, not the model." if flagged
                                            else "no class gets as many significant pairs under re-initialised weights."))
    return f"<h2>Dominance, the logit and a network that knows nothing</h2><p class='finding'>{html.escape(text)}</p>"


def _correlation_table(cls: ClassResult) -> str:
    pi = cls.per_image
    scored = sum(r.score is not None for r in pi.images)
    rows = "".join(f"<tr><th>{name}</th>" + "".join(f"<td>{_signed(getattr(pi, f'{kind}_{key}'))}</td>"
                                                     for key in ("logit", "softmax")) + "</tr>"
                   for name, kind in (("Pearson", "pearson"), ("Spearman", "spearman")))
    return (f"<div><table class='correlations'><tr><th></th><th>logit</th><th>softmax</th></tr>{rows}</table>"
            f"<p>{len(pi.images)} image(s) of {pi.requested} requested, "
            f"{scored} with a score; {pi.mosaics} mosaics</p></div>")


BASELINE_HEADINGS = {"mean_logit": "mean logit", "mean_softmax": "mean softmax", "accuracy": "accuracy",
                     "mean_margin": "mean margin"}


def _cluster_table(cls: ClassResult) -> str:
    """One row per cluster: rank ("no evidence" where its pairs gave none), score, sizes, training share, baselines
    and the control's score."""
    shown = [b for b in BASELINE_HEADINGS if any(c.baselines for c in cls.clusters)]
    control = cls.control["scores"] if cls.control else None
    rows = "".join(
        (f"<tr><td class='flag'>no evidence</td>" if c.rank is None else f"<tr><td>{c.rank}</td>") + f"<td>{c.id}</td>"
        f"<td>{'—' if c.score is None else f'{c.score:.3f}'}</td><td>{c.eval_size}</td>"
        f"<td>{'-' if c.train_count is None else c.train_count}</td>"
        f"<td>{'-' if c.train_share is None else f'{c.train_share:.3f}'}{_se(c.train_share_se)}</td>"
        + "".join(f"<td>{_number((c.baselines or {}).get(b))}</td>" for b in shown)
        + (f"<td>{_number(control[c.id])}</td>" if control else "") + "</tr>"
        for c in sorted(cls.clusters, key=lambda c: (c.rank is None, c.rank or 0, c.id)))
    tau = cls.agreement or {}
    heads = "".join(f"<th>{BASELINE_HEADINGS[b]} (τ {_signed(tau.get(b))})</th>" for b in shown)
    return ("<table><tr><th>rank</th><th>cluster</th><th>score</th><th>eval size</th><th>train count</th>"
            f"<th>train share</th>{heads}{'<th>control score</th>' if control else ''}</tr>"
            f"{rows}</table>")


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def save_figure(fig, path: str | Path, *, tight: bool = False) -> None:
    """A PNG of ``fig`` written atomically (``atomic.write_atomically``: never through a planted link), then closed.
    ``tight``: the saved area grows to hold what lies outside the axes (a legend placed beside them)."""
    from ..atomic import write_atomically

    extra = {"bbox_inches": "tight"} if tight else {}
    try:
        write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=90, **extra), what=str(path))
    finally:
        plt.close(fig)


def write_page(*, out_dir: str | Path, title: str, body: str) -> Path:
    """Write ``out_dir/index.html`` atomically around ``body`` (HTML); every ``img.figure`` in it is
    counted by the page's load marker (``data-figures-loaded="decoded/total"`` on ``body``).
    Returns the page's path."""
    from ..atomic import write_atomically

    page = Path(out_dir) / "index.html"
    return write_atomically(page, _PAGE.replace("{title}", html.escape(title)).replace("{body}", body), what=str(page))


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:1em auto}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img.figure{display:block;max-width:100%;margin:8px 0}
.note{color:#a50}.flag{color:#a50}.beside{display:flex;flex-wrap:wrap;gap:16px;align-items:center}
.beside img.figure{max-width:70%}</style></head>
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


def class_table(result: AuditResult) -> list[dict]:
    """One row per class for a dashboard table (the Prefect artifact): the flagged looks and the class's place against
    the null model first, then the paper's view — hierarchy, scores, train shares, significant pairs."""
    rows = []
    for cls in result.classes:
        ranked = _ranked(cls)
        looks = cls.looks or {}
        rows.append({
            "class": cls.name,
            "looks under-learned": (f"{looks['signal']}: " + (", ".join(
                f"{k['id']} (ratio {_number(k['representation_ratio'])}, accuracy {_number(k['accuracy'])})"
                for k in looks["looks"]) or "none")) if looks else "-",
            "against the null model": ("-" if cls.null is None else
                                       ("above" if cls.null["above_null"] else "no better")
                                       + f" (deficit {_number(cls.null['model']['accuracy_deficit'])} vs "
                                         f"{_number(cls.null['accuracy_deficit'])})"),
            "hierarchy": " > ".join(map(str, cls.hierarchy)) or "none (no evidence)",
            "scores": " ".join(f"{c.id}:{c.score:.2f}" for c in ranked),
            "train shares": " ".join(f"{c.id}:{_share(c.train_share, c.train_share_se)}" for c in ranked),
            "significant (Holm p < 0.05)": (", ".join(f"{i}>{j}" for i, j in cls.significant_pairs()) or "none")
                                           + ("" if cls.null is None or cls.null["pairs_above_null"]
                                              else " (no more than the null's)"),
            "spearman(score, train share)": _signed(cls.spearman_score_train_share),
            "tau(score, mean logit)": _signed((cls.agreement or {}).get("mean_logit")),
            "control hierarchy": _control_cell(cls.control),
        })
    return rows


def _control_cell(control: dict | None) -> str:
    """The control in one table cell: hierarchy, significant pairs, τ, and the flag."""
    if control is None:
        return "off"
    return (f"{' > '.join(map(str, control['hierarchy'])) or 'none'}; {len(control['significant_pairs'])} significant; "
            f"tau {_signed(control['tau'])}" + ("; IMAGE STATISTICS, NOT THE MODEL" if control["image_statistics"] else ""))


def _share(x: float | None, se: float | None = None) -> str:
    return "-" if x is None else f"{x:.3f}{_se(se)}"


def _se(se: float | None) -> str:
    """`` ± SE`` of a sampled training share (--train-per-class); nothing where every training image was placed."""
    return f" ± {se:.3f}" if se else ""
