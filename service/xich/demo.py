"""`xich demo`: planted-bias data → the paper's training recipe → audit → report, all local.

The known answer: each class has one subgroup that is rare in training. The paper predicts that
the cluster holding it is among the least dominant; the demo checks that, class by class.
"""

from __future__ import annotations

import html
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from .audit import AuditConfig, assemble_result, audit_classes, explainer, open_audit
from .report import collect_examples, write_report
from .result import AuditResult
from .synth import SynthSpec, write_synth
from .train import TrainConfig, train

MODEL = "cifar:resnet20"
# A look is a hatching orientation: train with an augmentation that keeps every orientation what it is
# (a horizontal flip would turn the diagonal look's lines into the antidiagonal look's, and back).
AUGMENT = "rot180"


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

    @property
    def found(self) -> bool:
        """The rare subgroup's cluster is the least or second-least dominant."""
        return self.rank is not None and self.rank >= self.n_clusters - 2


def locate_rare(result: AuditResult, truth: dict) -> list[RareFinding]:
    """For each class, the cluster holding most of the rare subgroup's evaluation images."""
    split = result.dataset["eval_split"]
    findings = []
    for cls in result.classes:
        rare = truth["rare"][cls.name]
        counts = [sum(truth["subgroup"][f"{split}/{m}"] == rare for m in c.members) for c in cls.clusters]
        best = max(range(len(counts)), key=lambda c: (counts[c], -c))
        c = cls.clusters[best]
        findings.append(RareFinding(cls.name, rare, best, counts[best], sum(counts), c.rank, len(cls.clusters),
                                    c.train_share, c.score))
    return findings


def run_demo(out: str | Path, seed: int = 0, epochs: int = 8, say=print,
             augment: str = AUGMENT) -> tuple[AuditResult, list[RareFinding]]:
    """Run the whole demo under ``out``; ``say`` receives the human-readable lines; ``augment`` names the
    training augmentation (``xich.train.AUGMENTATIONS``)."""
    out = Path(out)
    spec = SynthSpec(seed=seed)
    say(f"1/4 planted-bias dataset: {spec.classes} shapes x {spec.subgroups} looks, one look per class rare "
        f"({spec.rare_fraction:.0%} of training) -> {out / 'data'}")
    truth = write_synth(out / "data", spec)
    say(f"2/4 training {MODEL} for {epochs} epochs (AdamW, label smoothing, warm-up + cosine; augmentation {augment})")
    weights = out / "weights.pt"
    train(TrainConfig(data=str(out / "data"), model=MODEL, out=str(weights), epochs=epochs, seed=seed,
                      augment=augment),
          on_epoch=lambda e, loss, acc: say(f"    epoch {e}: loss {loss:.3f}  eval accuracy {acc:.3f}"))
    say(f"3/4 audit: P={spec.subgroups} clusters per class, J=25 mosaics per pair, 12 images per class in per-image mode")
    examples: dict = {}
    config = AuditConfig(model=MODEL, data=str(out / "data"), weights=str(weights), clusters=spec.subgroups,
                         seed=seed, per_image=12)
    opened = open_audit(config)
    classes = []
    for images, cls in audit_classes(opened):
        classes.append(cls)
        examples[cls.name] = collect_examples(cls, explainer(opened, images))
    result = assemble_result(opened, classes, uuid.uuid4().hex)
    result.write_json(out / "audit.json")
    findings = locate_rare(result, truth)
    for f, cls in zip(findings, result.classes):
        say(f"    {f.class_name:9s} hierarchy {' > '.join(map(str, cls.hierarchy))}   rare look {f.rare_subgroup}: "
            f"{f.rare_in_cluster}/{f.rare_total} of its test images in cluster {f.cluster}, "
            f"rank {f.rank} of {f.n_clusters}, train share {f.train_share:.3f}")
    hits = sum(f.found for f in findings)
    line = (f"planted rare subgroup found (its cluster least or second-least dominant) in {hits} of "
            f"{len(findings)} classes")
    page = write_report(result, out / "report", examples, extra_html=_findings_html(findings, line))
    say(f"4/4 report: {page}")
    say(line)
    (out / "demo.json").write_text(json.dumps({"found": hits, "classes": len(findings),
                                               "findings": [f.__dict__ for f in findings]}, indent=1))
    return result, findings


def _findings_html(findings: list[RareFinding], line: str) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(f.class_name)}</td><td>{f.rare_subgroup}</td><td>{f.cluster}</td>"
        f"<td>{f.rare_in_cluster}/{f.rare_total}</td><td>{f.rank} of {f.n_clusters}</td>"
        f"<td>{'-' if f.train_share is None else f'{f.train_share:.3f}'}</td><td>{'yes' if f.found else 'no'}</td></tr>"
        for f in findings)
    return (f"<h2>Planted bias</h2><p><b>{html.escape(line)}</b></p><table><tr><th>class</th><th>rare look</th>"
            f"<th>its cluster</th><th>rare images there</th><th>rank</th><th>train share</th><th>found</th></tr>"
            f"{rows}</table>")
