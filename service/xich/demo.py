"""`xich demo`: what the service is for, on one machine with nothing but the embedded database.

Planted-bias data → v1 trained with the paper's recipe → audited (the audit-model-version flow's sequence) →
its audit flags the looks v1 under-learned and writes their training images as an oversample file → v2 trained
from that file (the product path: detect → fix → verify) → audited on v1's clustering (the model's reference, made
by its first audit) → the history shows the look's change in the headline signal, and the paper's dominance view.
The known answer: each class has one look that is rare in training (``ground_truth.json``); the audit never reads
it, the demo only checks the audit's flags against it.
"""

from __future__ import annotations

import html
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .result import AuditResult
from .engine.synth import SynthSpec, write_synth
from .engine.train import TrainConfig, read_oversample, train

MODEL = "cifar:resnet20"
# A look is a hatching orientation: train with an augmentation that keeps every orientation what it is
# (a horizontal flip would turn the diagonal look's lines into the antidiagonal look's, and back).
AUGMENT = "rot180"
# The trained weights depend on the order of floating-point sums, so on the number of torch threads: measured on
# 2026-12-01 (seed 0, 2-core machine), v1 trained with 2 threads reproduces the README's run (the rare look's cluster
# last in 4 of 4 classes, moved up in 4 of 4 in v2), while with 1 thread v1 learnt the rare look (found in 0 of 4).
# The demo therefore trains (and audits: the scores' sums too) with a fixed count on every machine.
TRAIN_THREADS = 2


@dataclass
class RareFinding:
    class_name: str
    rare_subgroup: int
    cluster: int
    rare_in_cluster: int
    rare_total: int
    rank: int | None  # None: the cluster has no evidence, so no rank
    n_clusters: int
    train_share: float | None
    score: float | None
    losses: int = 0  # clusters that dominate it significantly (D > 0.5, Holm p < 0.05)
    flagged: bool = False  # the audit's looks section flags this cluster (the headline signal)
    accuracy: float | None = None  # the cluster's accuracy (its images classified as the class)
    representation_ratio: float | None = None

    @property
    def found(self) -> bool:
        """The rare subgroup's cluster is the least or second-least dominant."""
        return self.rank is not None and self.rank >= self.n_clusters - 2


def locate_rare(result: AuditResult, truth: dict) -> list[RareFinding]:
    """For each class, the cluster holding most of the rare subgroup's evaluation images."""
    split = result.dataset.eval_split
    findings = []
    for cls in result.classes:
        rare = truth["rare"][cls.name]
        counts = [sum(truth["subgroup"][f"{split}/{m}"] == rare for m in c.members) for c in cls.clusters]
        best = max(range(len(counts)), key=lambda c: (counts[c], -c))
        c = cls.clusters[best]
        findings.append(RareFinding(cls.name, rare, best, counts[best], sum(counts), c.rank, len(cls.clusters),
                                    c.train_share, c.score, sum(j == best for _i, j in cls.significant_pairs()),
                                    flagged=bool(cls.looks) and best in cls.looks["flagged"],
                                    accuracy=(c.baselines or {}).get("accuracy"),
                                    representation_ratio=c.representation_ratio))
    return findings


def training_line(step: int, version: str, epochs: int, augment: str, oversample: dict[str, float] | None) -> str:
    """The line that announces a training: on the data as written (each class's rare look rare), or from the
    previous version's oversample file (``oversample``: training image id → sampling weight)."""
    how = ("on the data as written (each class's rare look rare)" if oversample is None
           else f"from v1's oversample file ({len(oversample)} training images of the flagged looks, weights "
                f"{min(oversample.values(), default=1):g}-{max(oversample.values(), default=1):g})")
    return (f"{step}/6 training {version}: {MODEL}, {epochs} epochs (AdamW, label smoothing, warm-up + cosine; "
            f"augmentation {augment}) {how}")


def run_demo(out: str | Path, seed: int = 0, epochs: int = 8, say=print, augment: str = AUGMENT,
             spec: SynthSpec | None = None) -> dict[str, tuple[AuditResult, list[RareFinding]]]:
    """Run the whole demo under ``out`` (its database, store and reports too); ``say`` receives the
    human-readable lines. Returns each version's audit and findings."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = spec or SynthSpec(seed=seed)
    for stale in ("xich.db", "xich.db.locks", "store", "report", "history"):  # the demo's own records, fresh each run
        path = out / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    from .run.context import context
    from .settings import Settings

    # the demo's own database, store and cache: a context of its own, the caller's environment untouched
    with context(Settings(database_url=f"sqlite:///{out / 'xich.db'}", store_url=str(out / "store"),
                          cache_dir=str(out / "cache"))) as ctx, _torch_threads(TRAIN_THREADS):
        return _versions(ctx, out, spec, seed, epochs, say, augment)  # trained and audited: the same on a machine


@contextmanager
def _torch_threads(n: int):
    """Train with ``n`` intra-op threads whatever the machine has, the caller's count back afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _versions(ctx, out: Path, spec: SynthSpec, seed: int, epochs: int, say, augment: str) -> dict:
    from .run.pipeline import audit_registered

    say(f"1/6 planted-bias dataset: {spec.classes} shapes x {spec.subgroups} looks, one look per class rare "
        f"({spec.rare_fraction:.0%} of training) -> {out / 'data'}")
    truth = write_synth(out / "data", spec)
    settings = {"clusters": spec.subgroups, "seed": seed, "per_image": 12}
    results, oversample, oversample_file = {}, None, out / "v1-oversample.json"
    for step, version in ((2, "v1"), (4, "v2")):
        say(training_line(step, version, epochs, augment, oversample))
        weights = out / f"{version}.pt"
        train(TrainConfig(data=str(out / "data"), model=MODEL, out=str(weights), epochs=epochs, seed=seed,
                          augment=augment, oversample=oversample),
              on_epoch=lambda e, loss, acc: say(f"    epoch {e}: loss {loss:.3f}  eval accuracy {acc:.3f}"))
        clustering = "own" if version == "v1" else "auto (v1's, the model's reference clustering)"
        say(f"{step + 1}/6 audit of {version} (the audit-model-version flow's sequence, in this process): "
            f"P={spec.subgroups}, J=25, 12 images per class in per-image mode, clustering {clustering}, null model")
        done = audit_registered(ctx, {"model": DEMO_MODEL, "version": version, "model_spec": MODEL,
                                      "weights_uri": str(weights), "dataset_uri": str(out / "data"),
                                      "settings": settings})
        result = _stored(ctx, done["run_id"])
        findings = locate_rare(result, truth)
        results[version] = (result, findings, done["report"])
        for f, cls in zip(findings, result.classes):
            say(f"    {f.class_name:9s} flagged {cls.looks['flagged'] if cls.looks else '-'}   rare look "
                f"{f.rare_subgroup}: {f.rare_in_cluster}/{f.rare_total} of its test images in cluster {f.cluster} "
                f"(accuracy {_num(f.accuracy)}, representation ratio {_num(f.representation_ratio)}; dominance rank "
                f"{_num(f.rank)} of {f.n_clusters}); {'above' if cls.null and cls.null['above_null'] else 'not above'} "
                f"the null model")
        if version == "v1":  # its first complete audit: v1's clustering is the reference, with no command
            oversample_file.write_bytes(ctx.store.get_bytes(f"runs/{result.run_id}/oversample.json"))
            oversample = read_oversample(oversample_file)
            say(f"    v1's audit wrote {oversample_file.name} ({len(oversample)} training images of its flagged looks; "
                f"`xich train --oversample` takes it); v1's clustering is the model's reference: v2 is audited on "
                f"the same clusters; report {done['report']}")
    v1, v2 = results["v1"][1], results["v2"][1]
    flagged = sum(f.flagged for f in v1)
    pairs = [(a.accuracy, b.accuracy) for a, b in zip(v1, v2) if a.accuracy is not None and b.accuracy is not None]
    better = sum(b > a for a, b in pairs)
    worse = sum(b < a for a, b in pairs)
    moved = sum(b.rank is not None and a.rank is not None and b.rank < a.rank for a, b in zip(v1, v2))
    found = sum(f.found for f in v1)
    lines = [f"v1: the audit flagged the rare look's cluster in {flagged} of {len(v1)} classes "
             f"({results['v1'][0].classes[0].looks['signal'] if results['v1'][0].classes[0].looks else '-'})",
             f"v2 (trained from v1's oversample file): the rare look's accuracy rose in {better}, fell in {worse} of "
             f"{len(v2)} classes (mean {_mean(a.accuracy for a in v1)} -> {_mean(b.accuracy for b in v2)}); flagged "
             f"again in {sum(f.flagged for f in v2)} (oversampling draws a look more often but adds no image, so its "
             f"training share, and the flag, stay)",
             f"the paper's view: the rare look's cluster least or second-least dominant in {found} of {len(v1)} classes "
             f"in v1; moved up in {moved} of {len(v2)} in v2"]
    losses = (sum(f.losses for f in v1), sum(f.losses for f in v2))
    lines.append(f"significant losses of those clusters (Holm p < 0.05): {losses[0]} in v1 -> {losses[1]} in v2")
    say("6/6 history of the rare looks' clusters (accuracy and representation ratio: the headline signal's numbers; "
        "rank 0 = most dominant; losses: clusters that beat it significantly):")
    for a, b in zip(v1, v2):
        say(f"    {a.class_name:9s} cluster {a.cluster}: flagged {_yes(a.flagged)} -> {_yes(b.flagged)}, accuracy "
            f"{_num(a.accuracy)} -> {_num(b.accuracy)}, ratio {_num(a.representation_ratio)} -> "
            f"{_num(b.representation_ratio)}, rank {_num(a.rank)} -> {_num(b.rank)}, losses {a.losses} -> {b.losses}")
    page = _write_pages(ctx, out, results, lines)
    for line in lines:
        say(line)
    say(f"report: {page}")
    (out / "demo.json").write_text(json.dumps({
        "flagged_v1": flagged, "accuracy_up_v2": better, "accuracy_down_v2": worse, "found_v1": found, "moved_up_v2": moved,
        "classes": len(v1), "oversample_images": len(oversample),
        "findings": {v: [f.__dict__ for f in results[v][1]] for v in results}}, indent=1))
    return {v: results[v][:2] for v in results}


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    return _num(sum(values) / len(values) if values else None)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


DEMO_MODEL = "demo-shapes"


def _num(x: float | int | None) -> str:
    """A number as the demo prints it (a rank whole, a score or share to 3 places); ``-`` where there is none."""
    return "-" if x is None else str(x) if isinstance(x, int) else f"{x:.3f}"


def _stored(ctx, run_id: str) -> AuditResult:
    from .records.persist import load_audit

    with ctx.session() as session:
        return load_audit(session=session, run_id=run_id)


def _write_pages(ctx, out: Path, results: dict, lines: list[str]) -> Path:
    """The demo's page: the finding, each version's report (in the demo's object store), the history page."""
    from .reports.history_report import write_history_report
    from .reports.report import write_page

    from .run.publish import report_link

    # every link relative: the demo's folder moved, or served over HTTP, keeps them working
    history = write_history_report(session_or_engine=ctx.engine, model_name=DEMO_MODEL, out_dir=out / "history",
                                   report_uri=lambda run_id: report_link(ctx, run_id, page_dir=out / "history"))
    parts = ["<h1>XICH demo: v1 → v2</h1>", "".join(f"<p><b>{html.escape(line)}</b></p>" for line in lines),
             f"<p><a href='../{history.parent.name}/index.html'>history of {DEMO_MODEL} across versions</a></p>"]
    for version, (result, findings, _uri) in results.items():
        href = report_link(ctx, result.run_id, page_dir=out / "report")
        parts.append(f"<h2>{version}: <a href='{html.escape(href)}'>audit report</a> (run {result.run_id})</h2>")
        found = sum(f.found for f in findings)
        parts.append(_findings_html(findings, f"planted rare look's cluster least or second-least dominant in "
                                              f"{found} of {len(findings)} classes"))
    return write_page(out_dir=out / "report", title="XICH demo", body="\n".join(parts))


def _findings_html(findings: list[RareFinding], line: str) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(f.class_name)}</td><td>{f.rare_subgroup}</td><td>{f.cluster}</td>"
        f"<td>{f.rare_in_cluster}/{f.rare_total}</td><td>{f.rank} of {f.n_clusters}</td>"
        f"<td>{'-' if f.train_share is None else f'{f.train_share:.3f}'}</td><td>{'yes' if f.found else 'no'}</td></tr>"
        for f in findings)
    return (f"<p>{html.escape(line)}</p><table><tr><th>class</th><th>rare look</th>"
            f"<th>its cluster</th><th>rare images there</th><th>rank</th><th>train share</th><th>found</th></tr>"
            f"{rows}</table>")
