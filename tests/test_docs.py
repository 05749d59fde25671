"""The documentation holds together: the README stays short and reaches every page of docs/, and
every relative link in them points at a file that exists."""
from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures.helpers import REPO

README_MAX_BYTES = 15_000  # read in ten minutes; everything else lives in docs/
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_short():
    assert (REPO / "README.md").stat().st_size <= README_MAX_BYTES


def test_the_readme_links_every_docs_page():
    linked = {(REPO / target).resolve() for target in LINK.findall((REPO / "README.md").read_text())}
    unlinked = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_every_relative_link_resolves():
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
