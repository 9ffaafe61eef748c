"""The README is a user's guide: short (under 420 lines; design notes, choices and bench history
live in docs/), and it names no document the repository does not hold -- no "SPEC 10" or
"seed 004" of a specification that is not here, no relative link to a missing file.  The docs
that took the README's design notes are held to the same names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 420
# The docs that took the README's design notes, choices and history (issue #23).
MOVED = ("choices", "configuration", "design", "interfaces", "operations", "performance", "quotas")
MOVED += ("regulations", "sandbox", "security")
# "SPEC 10", "SPEC 3.4c", "seed 004", "the SPEC": names of documents the repository does not hold.
ABSENT_DOCUMENT = re.compile(r"\bSPEC\b|\bseed \d+", re.IGNORECASE)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    # Every doc, not only the moved ones: the ones written since are held to the same names.
    moved = [ROOT / "docs" / f"{name}.md" for name in MOVED]
    assert all(path.exists() for path in moved)
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_short_guide() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < MAX_LINES, f"README.md has {len(lines)} lines: move detail into docs/"
    headings = [line for line in lines if line.startswith("## ")]
    for wanted in ("## Two commands", "## Trying it", "## Operating it", "## Deploying", "## Configuration"):
        assert any(h.startswith(wanted) for h in headings), wanted
    for wanted in ("## Security", "## Performance", "## First day: backfill"):
        assert any(h.startswith(wanted) for h in headings), wanted


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_no_document_the_repository_does_not_hold_is_named(path: Path) -> None:
    text = path.read_text()
    named = [m.group(0) for m in ABSENT_DOCUMENT.finditer(text)]
    assert not named, f"{path.name} names documents that are not here: {named}"
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor of the same page
        file = (path.parent / target.split("#", 1)[0]).resolve()
        if not file.exists():
            missing.append(target)
    assert not missing, f"{path.name} links to files that do not exist: {missing}"


def test_the_checker_catches_what_it_is_for(tmp_path: Path) -> None:
    """The patterns find the names this README used to carry."""
    for text in ("the figures of SPEC 8", "(seed 004)", "from the SPEC and", "SPEC 3.4c"):
        assert ABSENT_DOCUMENT.search(text), text
    assert LINK.findall("see [x](docs/nowhere.md) and [y](https://example.com)") == [
        "docs/nowhere.md",
        "https://example.com",
    ]
