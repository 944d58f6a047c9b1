"""The documentation points only at files of this repository, and every file it links to exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", REPO / "THREAT_MODEL.md", *(REPO / "docs").rglob("*.md")])
#: ``[text](target)``; targets with a scheme (https:, mailto:) or only an anchor are not files
_LINK = re.compile(r"\]\(([^)\s]+)\)")
#: a path that leaves the repository: absolute machine paths or a climb above its root
_OUTSIDE = re.compile(r"(?<![\w.])(/work/|/home/|/tmp/|/root/|\.\./shared\b)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(REPO), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"
    outside = _OUTSIDE.findall(text)
    assert outside == [], f"{doc.name} names paths outside the repository: {outside}"
