"""One audit's summary in words: the lines that the console (``xich audit``), the report page and the Prefect
artifact all render, so the three never say different things. Light (no numpy, no plotting)."""

from __future__ import annotations

from ..result import AuditResult, ClassResult


def _f(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _interval(ci: list[float] | None) -> str:
    """`` [low, high]`` of a dominance; nothing for a pair without one (a single distinct image set)."""
    return "" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def headline(result: AuditResult, *, model: str | None = None, version: str | None = None) -> str:
    """What was audited, how: the title of every rendering."""
    c = result.config
    return (f"XICH audit of {model or result.model.spec}{f' {version}' if version else ''}: run {result.run_id} · "
            f"model {result.model.spec} · data {result.dataset.uri} · layer {c.get('layer')} · method "
            f"{c.get('method', 'gradcam')} ({c.get('cam')}) · P={c.get('clusters')} J={c.get('mosaics_per_pair')} "
            f"seed={c.get('seed')}")


def looks_lines(cls: ClassResult) -> list[str]:
    """The headline of a class: the looks the model under-learned (``cls.looks``, by the signal the audit leads
    with), then where the class stands against the null model (``cls.null``)."""
    lines = []
    if cls.looks:
        flagged = "; ".join(
            f"cluster {k['id']} (eval {k['eval_size']}, representation ratio {_f(k['representation_ratio'], '.2f')}, "
            f"accuracy {_f(k['accuracy'], '.2f')}, mean logit {_f(k['mean_logit'], '.2f')}, "
            f"{len(k['train_images'] or ())} training images to oversample x{k['oversample_weight']:g})"
            for k in cls.looks["looks"])
        lines.append(f"looks under-learned ({cls.looks['signal']}): {flagged or 'none flagged'}")
    if cls.null:
        n, m = cls.null, cls.null["model"]
        lines.append(f"null model (random weights): accuracy deficit of the weakest look {_f(m['accuracy_deficit'], '.2f')}"
                     f" against the null's {_f(n['accuracy_deficit'], '.2f')} -> "
                     + ("above the null" if n["above_null"] else "no better than the null: this class's findings "
                        "say nothing a network that knows nothing would not")
                     + f"; significant pairs {m['significant_pairs']} against the null's {n['significant_pairs']}"
                     + ("" if n["pairs_above_null"] else " (the null reaches them: not evidence)"))
    return lines


def class_lines(cls: ClassResult) -> list[str]:
    """One class's findings: the looks it flags and its place against the null model (the headline), then the
    paper's view — its hierarchy, the significant pairs (counted only where they stand above the null model's),
    agreement with the baselines, the control, the per-image correlations — and its notes."""
    pairs_count = cls.null is None or cls.null["pairs_above_null"]
    lines = [*looks_lines(cls),
             "hierarchy (the paper's view): " + (" > ".join(map(str, cls.hierarchy)) or "none (no evidence)")
             + ("" if cls.spearman_score_train_share is None
                else f"   spearman(score, train share) = {cls.spearman_score_train_share:+.2f}"),
             ("significant (Holm p < 0.05): " if pairs_count else
              "significant (Holm p < 0.05), no more than the null model's: ") + (", ".join(
                 f"{i}>{j} (D={cls.dominance[i][j]:.2f}{_interval(cls.dominance_ci[i][j])}, "
                 f"p={cls.p_values_holm[i][j]:.1e}, {cls.distinct_sets[i][j]} image sets)"
                 for i, j in cls.significant_pairs()) or "none")]
    if cls.agreement:
        lines.append("kendall tau(score, baseline): " + "  ".join(f"{b} {_signed(v)}" for b, v in cls.agreement.items())
                     + ("   (hierarchy = mean-logit order)" if cls.agreement["mean_logit"] == 1.0 else ""))
    if cls.control:
        ctl = cls.control
        lines.append(f"control (re-initialised, seed {ctl['seed']}): " + (" > ".join(map(str, ctl["hierarchy"]))
                     or "none") + f"   {len(ctl['significant_pairs'])} significant   tau {_f(ctl['tau'], '+.2f')}"
                     + ("   [image statistics, not the model]" if ctl["image_statistics"] else ""))
    if cls.per_image:
        pi = cls.per_image
        lines.append(f"per-image ({len(pi.images)} images): " + "  ".join(
            f"{k} {_signed(getattr(pi, k))}"
            for k in ("pearson_logit", "spearman_logit", "pearson_softmax", "spearman_softmax")))
    return lines + [f"note: {note}" for note in cls.notes]


def overall_lines(result: AuditResult) -> list[str]:
    """Across classes (``result.summary``): the training share by rank, the correlations, the classes that stand
    out. The run's own notes are not among them (each rendering lists them)."""
    s, lines = result.summary, []
    looked = [c for c in result.classes if c.looks]
    if looked:
        lines.append(f"Looks under-learned ({looked[0].looks['signal']}): " + ("; ".join(
            f"{c.name}: cluster(s) {', '.join(map(str, c.looks['flagged']))}" for c in looked if c.looks["flagged"])
            or "none flagged"))
    nulled = [c for c in result.classes if c.null]
    if nulled:
        above = [c.name for c in nulled if c.null["above_null"]]
        lines.append(f"Above the null model (random weights, audited the same way): {len(above)} of {len(nulled)} "
                     f"class(es)" + (f" ({', '.join(above)})" if above else "") + "; significant pairs no more than "
                     f"the null's in {sum(not c.null['pairs_above_null'] for c in nulled)} class(es)")
    if s["train_share_by_rank"]:
        lines.append(f"Mean training share by dominance rank (0 = most dominant), over {s['classes_ranked']} fully "
                     f"ranked class(es): " + ", ".join(f"{r}: {v:.3f}" for r, v in enumerate(s["train_share_by_rank"])))
    if s["mean_spearman"] is not None:
        lines.append(f"Mean Spearman(score, training share) over classes: {s['mean_spearman']:+.3f}")
    lowest = [f"{c.name}: cluster {c.hierarchy[-1]}" for c in result.classes if len(c.hierarchy) > 1]
    if lowest:
        lines.append("Least dominant cluster per class: " + "; ".join(lowest))
    if s.get("mean_tau_mean_logit") is not None:
        lines.append(f"Mean Kendall tau(score, mean logit): {s['mean_tau_mean_logit']:+.2f}; hierarchy differs from "
                     f"the mean-logit order in: {', '.join(s.get('classes_unlike_mean_logit') or []) or 'none'}")
    if s.get("classes_image_statistics"):
        lines.append(f"Randomized control as significant (image statistics, not the model): "
                     f"{', '.join(s['classes_image_statistics'])}")
    if s["classes_without_evidence"]:
        lines.append(f"Without a hierarchy (no evidence): {', '.join(s['classes_without_evidence'])}")
    return lines


def summary_markdown(result: AuditResult, *, model: str, version: str, report_uri: str | None) -> str:
    """The summary as markdown (the Prefect artifact), linking the report in the object store."""
    parts = [f"# {headline(result, model=model, version=version)}", *overall_lines(result),
             *(f"Note: {note}" for note in result.notes)]
    if report_uri:
        parts.append(f"Report: [{report_uri}]({report_uri})")
    return "\n\n".join(parts)


def print_summary(result: AuditResult, console) -> None:
    """The summary on a rich ``console``: per class a table of its clusters, then its lines; then the overall ones."""
    from rich.table import Table

    from ..method.baselines import BASELINES

    console.print(f"[bold]{headline(result)}[/]", highlight=False)
    console.print(f"labels: {result.labels.source}", highlight=False)
    for cls in result.classes:
        table = Table(title=f"{cls.name} (model output {cls.index})", title_justify="left")
        baselines = any(cl.baselines for cl in cls.clusters)
        flagged = cls.looks["flagged"] if cls.looks else []
        for col in ("rank", "cluster", "flag", "score", "eval size", "train count", "train share", "ratio",
                    *(("mean logit", "softmax", "accuracy", "margin") if baselines else ()),
                    *(("control score",) if cls.control else ())):
            table.add_column(col, justify="right")
        for cl in sorted(cls.clusters, key=lambda x: (x.rank is None, x.rank, x.id)):
            table.add_row(_f(cl.rank, "d"), str(cl.id), str(flagged.index(cl.id) + 1) if cl.id in flagged else "",
                          _f(cl.score), str(cl.eval_size), _f(cl.train_count, "d"),
                          _f(cl.train_share) + (f" ± {cl.train_share_se:.3f}" if cl.train_share_se else ""),
                          _f(cl.representation_ratio, ".2f"),
                          *((_f(cl.baselines[b]) for b in BASELINES) if baselines else ()),
                          *((_f(cls.control["scores"][cl.id]),) if cls.control else ()))
        console.print(table)
        for line in class_lines(cls):
            console.print(f"  {line}", highlight=False)
    for line in [*overall_lines(result), *(f"note: {note}" for note in result.notes)]:
        console.print(line, highlight=False)
