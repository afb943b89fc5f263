"""The repository explains itself: no tracked file points outside it, every docs link resolves.

Comments and docs once cited notes that only existed on the machine the project was built on;
a user of the repository has none of them. The reasons live in ``docs/`` instead, and code
points there by anchor (``docs/design.md#versions``), so an anchor must exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Spelled in pieces so that this file does not match itself.
_OUTSIDE = re.compile(
    "|".join(
        (
            re.escape("../" + "shared"),
            r"(?<![\w.])/" + "work/",
            "PIT" + "FALLS",
            re.escape("LOCAL" + "-STACK.md"),
        )
    )
)
_DOCS_LINK = re.compile(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?")


def _tracked_text_files() -> list[Path]:
    """Files git tracks here (or, outside a git checkout, every file but dot-directories)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
        ).stdout
        paths = [REPO / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        paths = [
            p
            for p in REPO.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(REPO).parts)
        ]
    texts = []
    for path in paths:
        if path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            texts.append(path)
    return texts


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lowercase, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in doc.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


def test_no_tracked_file_refers_outside_the_repository() -> None:
    """No tracked file names a path or note outside the repository."""
    found = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert found == []


def test_every_docs_link_resolves() -> None:
    """Each ``docs/<file>.md#anchor`` written anywhere names an existing file and heading."""
    broken = []
    links = 0
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in _DOCS_LINK.finditer(text):
            links += 1
            doc, anchor = REPO / "docs" / match.group(1), match.group(2)
            if not doc.is_file():
                broken.append(f"{path.relative_to(REPO)}: {match.group(0)} (no such file)")
            elif anchor and anchor not in _anchors(doc):
                broken.append(f"{path.relative_to(REPO)}: {match.group(0)} (no such heading)")
    assert links > 0
    assert broken == []


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        pytest.param("## Item results", "item-results", id="plain"),
        pytest.param("## tansu (Kafka)", "tansu-kafka", id="punctuation"),
        pytest.param("## Luigi task history", "luigi-task-history", id="words"),
    ],
)
def test_slug_matches_github_anchors(heading: str, slug: str) -> None:
    """Anchors are computed the way GitHub renders them."""
    assert _slug(heading.lstrip("#")) == slug
