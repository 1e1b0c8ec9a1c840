"""Mutation check: does the suite catch these bugs? (Not part of ``make test``; docs/testing.md has its last table.)

Each mutation is one exact string replacement in one file. For each, the working tree (tracked files and untracked
ones git does not ignore) is copied into a fresh temporary folder, the replacement is applied there (the text must
occur exactly once, or the script stops with an error: a mutation that no longer applies is not silently skipped),
and the tests meant to catch it run there with ``pytest -x`` under a timeout. The real checkout is never edited.

    .venv/bin/python bench/mutations.py                 # every mutation; prints a Markdown table
    .venv/bin/python bench/mutations.py --only margin   # the mutations whose name contains "margin"
    .venv/bin/python bench/mutations.py --clean         # first run every target unmutated (they must pass)

A mutation is caught when a target test fails. The table gives the first failing test, that test's own seconds
(setup, call and teardown, from pytest's JUnit XML) and the seconds of the whole pytest run (start-up and collection
included). A run that passes, or only skips, is "NOT CAUGHT". Tests use SQLite only where they are parametrized over
databases (``[sqlite]``), and one torch thread, to keep the check cheap.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.shared import ROOT, SHARED  # noqa: E402


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids (or files) expected to catch it
    why: str


MUTATIONS = [
    # --- the three of issue 27 ------------------------------------------------------------------------------------
    Mutation("baselines-other-column", "service/xich/engine/audit.py",
             "cluster_baselines(logits, clustering.labels, clustering.n_clusters, images.index)",
             "cluster_baselines(logits, clustering.labels, clustering.n_clusters, (images.index + 1) % logits.shape[1])",
             ("tests/test_baselines_real.py::test_every_cluster_baseline_equals_an_independent_forward_pass",
              "tests/test_control.py::test_baselines_and_agreement_in_the_document"),
             "the audit hands the baselines another class's logit column"),
    Mutation("migration-0008-wipes-columns", "migrations/versions/0008_sampled_shares_and_heartbeats.py",
             '    op.add_column("run_cluster", sa.Column("train_share_se", sa.Float(), nullable=True))',
             '    op.execute("UPDATE mosaic SET d = NULL")\n'
             '    op.execute("UPDATE run_class SET spearman_score_train_share = NULL")\n'
             '    op.add_column("run_cluster", sa.Column("train_share_se", sa.Float(), nullable=True))',
             ("tests/test_migrations_data.py::test_a_database_with_audits_at_an_older_revision_upgrades_to_the_same_"
              "history[sqlite-0007]",),
             "0008's upgrade also sets mosaic.d and run_class.spearman_score_train_share to NULL"),
    Mutation("embedding-spatial-max", "service/xich/engine/runtime.py",
             "embs.append(gap(fmap).float().cpu())", "embs.append(fmap.amax(dim=(2, 3)).float().cpu())",
             ("tests/test_embedding_independent.py",),
             "the GAP embedding replaced by the map's spatial maximum"),
    # --- what the new tests of issue 27 target --------------------------------------------------------------------
    Mutation("margin-max-over-all-outputs", "service/xich/method/baselines.py",
             "own - others.max(axis=1) if", "own - logits.max(axis=1) if",
             ("tests/method/test_baselines.py::test_margin_is_the_class_logit_minus_the_best_other_logit",),
             "the margin's best other logit taken over every output, the class's own included"),
    Mutation("margin-worst-other", "service/xich/method/baselines.py",
             "own - others.max(axis=1) if", "own - others.min(axis=1) if",
             ("tests/method/test_baselines.py::test_margin_is_the_class_logit_minus_the_best_other_logit",),
             "the margin against the worst other logit"),
    Mutation("history-view-swaps-clusters", "migrations/versions/0007_baselines_and_control.py",
             "JOIN cluster c ON c.id = rcl.cluster_id\n",
             "JOIN cluster c ON c.id = rcl.cluster_id + CASE rcl.cluster_index WHEN 0 THEN 1 WHEN 1 THEN -1 ELSE 0 END\n",
             ("tests/test_history.py::test_views_return_the_expected_rows[sqlite]",),
             "dominance_history gives clusters 0 and 1 of a class each other's keys"),
    Mutation("per-image-id-shifted", "service/xich/engine/audit.py",
             "ImageScore(image=eval_ids[k], ", "ImageScore(image=eval_ids[(k + 1) % len(eval_ids)], ",
             ("tests/test_report.py::test_per_image_mode_counts_and_correlations",
              "tests/test_exact_values.py::test_per_image_rows_belong_to_their_images"),
             "each per-image score stored under the next image's id"),
    Mutation("persist-class-without-clusters", "service/xich/records/persist.py",
             "    for c in cls.clusters:\n        cluster = session.scalar(",
             "    for c in cls.clusters[:0]:\n        cluster = session.scalar(",
             ("tests/test_persist.py::test_stored_audit_reads_back_equal_to_its_json[sqlite]",),
             "a class stored without its clusters"),
    Mutation("persist-members-of-another-cluster", "service/xich/records/persist.py",
             "image_id=m) for m in c.members)",
             "image_id=m) for m in cls.clusters[(c.id + 1) % len(cls.clusters)].members)",
             ("tests/test_persist.py::test_stored_audit_reads_back_equal_to_its_json[sqlite]",),
             "each cluster stored with the next cluster's members"),
    # --- caught before issue 27 (kept to show they still are) -----------------------------------------------------
    Mutation("dominance-reversed", "service/xich/method/dominance.py",
             "out[defined] = share[defined] / total[defined]", "out[defined] = 1 - share[defined] / total[defined]",
             ("tests/method/test_dominance.py",), "d of cluster j instead of cluster i (eq. 6)"),
    Mutation("holm-dropped", "service/xich/method/significance.py",
             "zip(pairs, ps, holm(ps))", "zip(pairs, ps, ps)",
             ("tests/method/test_significance.py",), "the raw p-values stored as Holm-adjusted"),
    Mutation("nearest-centre-argmax", "service/xich/method/clustering.py",
             "return d2.argmin(axis=1)", "return d2.argmax(axis=1)",
             ("tests/method/test_clustering.py",), "training images placed in the farthest cluster"),
    Mutation("hierarchy-reversed", "service/xich/method/hierarchy.py",
             "np.lexsort((scored, -scores[scored]))", "np.lexsort((scored, scores[scored]))",
             ("tests/method/test_hierarchy.py",), "the least dominant cluster ranked first"),
    Mutation("kendall-tau-flipped", "service/xich/method/baselines.py",
             "np.clip((sx * sy).sum()", "np.clip(-(sx * sy).sum()",
             ("tests/method/test_baselines.py",), "Kendall's tau with its sign flipped"),
    Mutation("train-share-denominator", "service/xich/method/distribution.py",
             "total = counts.sum()", "total = counts.max()",
             ("tests/method/test_distribution.py",), "training shares divided by the largest count"),
    Mutation("representation-ratio-inverted", "service/xich/method/looks.py",
             "(counts / counts.sum()) / eval_share", "eval_share / (counts / counts.sum())",
             ("tests/method/test_looks.py",), "the representation ratio as evaluation share over training share"),
    Mutation("null-verdict-without-error", "service/xich/method/looks.py",
             "dm - dn > 2.0 * float(np.hypot(model[\"deficit_se\"], null[\"deficit_se\"]))", "dm - dn > 0",
             ("tests/method/test_looks.py",), "above the null by any deficit, whatever its standard error"),
    Mutation("null-pairs-counted-alone", "service/xich/method/looks.py",
             "bool(above and model[\"significant_pairs\"] > null[\"significant_pairs\"])",
             "bool(model[\"significant_pairs\"] > null[\"significant_pairs\"])",
             ("tests/method/test_looks.py",), "significant pairs above one null draw's count as evidence alone"),
]


def scratch_copy(into: Path) -> None:
    """The working tree's files (tracked, and untracked ones git does not ignore) copied under ``into``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into / rel)


def apply(mutation: Mutation, root: Path) -> None:
    """The replacement, in the scratch copy; SystemExit when its text is not there exactly once."""
    target = root / mutation.path
    text = target.read_text()
    found = text.count(mutation.old)
    if found != 1:
        raise SystemExit(f"error: mutation {mutation.name}: the text to replace occurs {found} times in "
                         f"{mutation.path} (expected once); update bench/mutations.py to the current code")
    target.write_text(text.replace(mutation.old, mutation.new))


def run_tests(root: Path, tests: tuple[str, ...], timeout: float, stop_first: bool = True) -> dict:
    """pytest on ``tests`` in ``root``: its return code, seconds, and the first failing test with its seconds."""
    report = root / "junit.xml"
    env = {**os.environ, "PYTHONPATH": f"{root / 'service'}{os.pathsep}{root}",
           "XICH_SHARED_DATA": str(SHARED),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
           *(["-x"] if stop_first else []), *tests]
    began = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return {"rc": None, "seconds": time.perf_counter() - began, "failed": None, "test_s": None, "skipped": 0}
    seconds = time.perf_counter() - began
    failed, test_s, skipped = None, None, 0
    if report.is_file():
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("skipped") is not None:
                skipped += 1
            if failed is None and (case.find("failure") is not None or case.find("error") is not None):
                failed = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
                test_s = float(case.get("time", "nan"))
    return {"rc": rc, "seconds": seconds, "failed": failed, "test_s": test_s, "skipped": skipped}


def verdict(outcome: dict) -> str:
    if outcome["rc"] is None:
        return "TIMEOUT"
    if outcome["rc"] == 1 and outcome["failed"]:
        return "caught"
    if outcome["rc"] == 0:
        return f"NOT CAUGHT ({outcome['skipped']} skipped)" if outcome["skipped"] else "NOT CAUGHT"
    return f"ERROR (pytest exit {outcome['rc']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mutations whose name contains this text")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)")
    parser.add_argument("--clean", action="store_true", help="first run every target unmutated: they must pass")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or args.only in m.name]
    if not chosen:
        raise SystemExit(f"error: --only {args.only!r} names no mutation")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xich-mutations-") as tmp:
        if args.clean:
            clean = Path(tmp) / "clean"
            scratch_copy(clean)
            targets = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            outcome = run_tests(clean, targets, args.timeout * 3, stop_first=False)
            print(f"unmutated targets: pytest exit {outcome['rc']} in {outcome['seconds']:.0f} s"
                  + (f" (first failure {outcome['failed']})" if outcome["failed"] else ""), flush=True)
            if outcome["rc"] != 0:
                return 1
        for m in chosen:  # every replacement checked before any test runs: a stale list fails at once
            probe = (ROOT / m.path).read_text().count(m.old)
            if probe != 1:
                raise SystemExit(f"error: mutation {m.name}: the text to replace occurs {probe} times in {m.path} "
                                 f"(expected once); update bench/mutations.py to the current code")
        print("| mutation | file | target tests | caught? | first failing test | its s | run s |")
        print("|---|---|---|---|---|---|---|")
        missed = 0
        for k, m in enumerate(chosen):
            root = Path(tmp) / f"m{k}"
            scratch_copy(root)
            apply(m, root)
            outcome = run_tests(root, m.tests, args.timeout)
            shutil.rmtree(root, ignore_errors=True)
            result = verdict(outcome)
            missed += result != "caught"
            test_s = f"{outcome['test_s']:.1f}" if outcome["test_s"] is not None else "-"
            targets = "<br>".join(t.removeprefix("tests/") for t in m.tests)
            print(f"| {m.name}: {m.why} | {m.path.removeprefix('service/')} | {targets} | {result} | "
                  f"{(outcome['failed'] or '-').removeprefix('tests/')} | {test_s} | {outcome['seconds']:.0f} |", flush=True)
    print(f"\n{len(chosen) - missed} of {len(chosen)} caught; total {time.perf_counter() - began:.0f} s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
