"""The import rules of docs/architecture.md: which layer of service/xich/ may import which, read from the source
(every import statement, also those inside functions), and flows/ imported by no module of xich; and the modules
of bench/ importing each other without a cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "service" / "xich"
LAYERS = ("method", "engine", "records", "reports", "run", "hooks")
EDGES = ("xich.cli", "xich.demo")  # entry points: may import every layer
# layer -> the layers it may import (docs/architecture.md), with no exception; "core": errors, settings, atomic,
# boundary, result, label_sets
ALLOWED = {
    "method": {"method"},
    "core": {"core", "method"},
    "engine": {"core", "method", "engine"},
    "records": {"core", "method", "engine", "records"},
    "reports": {"core", "method", "records", "reports"},
    "run": {"core", "method", "engine", "records", "reports", "run"},
    "hooks": {"core", "records", "run", "hooks"},
}
THIRD_PARTY_NOT_IN_METHOD = ("sqlalchemy", "prefect", "starlette", "minio", "alembic", "mlflow", "matplotlib")


def layer(module: str) -> str:
    parts = module.split(".")
    if module in EDGES:
        return "edge"
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "core"


def imports(path: Path, module: str) -> list[str]:
    """Every module ``path`` imports (absolute names), wherever the statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found += [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
    return found


def modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out.append((path, name))
    return out


@pytest.mark.parametrize("path,module", modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_layer_imports_only_what_the_architecture_allows(path, module):
    own = layer(module)
    for target in imports(path, module):
        assert not target.startswith("flows"), f"{module} imports {target}: flows/ imports xich, never the reverse"
        if own == "method":
            assert not target.startswith(THIRD_PARTY_NOT_IN_METHOD), f"{module} (the paper) imports {target}"
        if not target.startswith("xich.") or own == "edge":
            continue
        assert layer(target) != "edge", f"{module} imports the entry point {target}"
        assert layer(target) in ALLOWED[own], (f"{module} ({own}) imports {target} ({layer(target)}); "
                                               f"{own} may import {sorted(ALLOWED[own])} (docs/architecture.md)")


def test_the_rules_see_a_violation(tmp_path):
    """The reader finds relative imports inside functions (what a violation would look like)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ..run.context import open_context\n    import flows.audit\n")
    found = imports(bad, "xich.records.bad")
    assert found == ["xich.run.context", "flows.audit"]
    assert layer(found[0]) not in ALLOWED["records"]


def bench_imports(folder: Path) -> dict[str, set[str]]:
    """Module of ``folder`` (bench/, read as the package ``bench``) -> the modules of ``folder`` it imports: named
    ``bench.x``, or ``x`` as a script in bench/ (on ``sys.path`` as it runs) may name them."""
    mods = {".".join(("bench", *p.relative_to(folder).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in sorted(folder.rglob("*.py"))}
    return {name: {m for t in imports(path, name) for m in (t, f"bench.{t}") if m in mods and m != name}
            for name, path in mods.items()}


def test_bench_modules_import_each_other_without_a_cycle():
    graph = bench_imports(ROOT / "bench")
    assert {"bench.sections.doc", "bench.shared"} <= graph["bench.study"]  # the reader sees the package's imports
    TopologicalSorter(graph).prepare()  # raises CycleError with the modules of a cycle


def test_the_bench_rule_sees_a_cycle(tmp_path):
    """A cycle through an import inside a function and a script's bare name (as study.py and study_sections.py
    had one)."""
    (tmp_path / "a.py").write_text("from bench.b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    with pytest.raises(CycleError):
        TopologicalSorter(bench_imports(tmp_path)).prepare()
