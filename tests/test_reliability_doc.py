"""docs/reliability.md: its table of bad inputs and faults names tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
COLUMNS = ["input or fault", "exact message (first words are enough, verbatim)", "exit code",
           "left in database and store", "test"]
MIN_ROWS = 20


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; ``\\|`` is a pipe inside a cell."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def read_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the first ``|``-table in ``text`` (the separator row skipped)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.lstrip().startswith("|"):
            break
        block.append(_cells(line))
    header, separator, *rows = block
    assert all(set(c) <= set(":-") and c for c in separator), separator
    return header, rows


def defined_tests(path: Path) -> set[str]:
    """``test_x`` for top-level test functions and ``Class::test_x`` for methods of test classes in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {f"{node.name}::{m.name}" for m in node.body
                      if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name.startswith("test_")}
    return names


@pytest.fixture(scope="module")
def table() -> tuple[list[str], list[list[str]]]:
    return read_table(DOC.read_text())


def test_table_has_its_columns_and_enough_rows(table):
    header, rows = table
    assert header == COLUMNS
    assert len(rows) >= MIN_ROWS, f"{len(rows)} rows"
    for row in rows:
        assert len(row) == len(COLUMNS), row
        assert all(row), row  # no empty cell


def test_every_named_test_exists(table):
    _, rows = table
    cache: dict[Path, set[str]] = {}
    missing = []
    for row in rows:
        ref = row[-1].strip("`")
        file, sep, name = ref.partition("::")
        assert sep and file.startswith("tests/") and file.endswith(".py"), f"not tests/FILE.py::test_name: {ref}"
        path = ROOT / file
        if not path.is_file():
            missing.append(ref)
            continue
        if name not in cache.setdefault(path, defined_tests(path)):
            missing.append(ref)
    assert not missing, missing


def test_the_parser_reads_escaped_pipes_and_classes(tmp_path):
    header, rows = read_table("intro\n\n| a | b |\n|---|:-:|\n| x \\| y | z |\n\nafter\n")
    assert header == ["a", "b"] and rows == [["x | y", "z"]]
    src = tmp_path / "test_x.py"
    src.write_text("def test_a():\n    pass\n\nclass TestB:\n    def test_c(self):\n        pass\n\n"
                   "def helper():\n    pass\n")
    assert defined_tests(src) == {"test_a", "TestB::test_c"}
