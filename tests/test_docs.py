"""The README and docs/ pages: every relative link resolves, every `service/xich/...` path named exists, and the
README stays short enough for a newcomer (the rest lives in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:service/xich|flows|tests|bench)/[\w/.-]+\.py)`")


def links(page: Path) -> list[str]:
    return [m for m in LINK.findall(page.read_text()) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", m)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    missing = [link for link in links(page) if not (page.parent / link.split("#", 1)[0]).exists()]
    assert missing == [], f"{page.relative_to(ROOT)}: links to nothing: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_code_path_named_exists(page):
    missing = [path for path in CODE_PATH.findall(page.read_text()) if not (ROOT / path).exists()]
    assert missing == [], f"{page.relative_to(ROOT)}: names files that do not exist: {missing}"


def test_readme_is_short_and_links_each_area():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in ("audit.md", "history.md", "service.md", "hooks.md", "docker.md", "architecture.md", "testing.md",
                 "benchmarks.md", "audit-document.md", "reliability.md"):
        assert f"](docs/{page})" in text, f"README links no docs/{page}"


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[here](missing.md) [ok](page.md) [web](https://example.org/x) [anchor](#top)")
    assert links(page) == ["missing.md", "page.md"]
    assert not (page.parent / "missing.md").exists()
