"""The notes the code cites are the repository's own: every ``docs/NAME.md`` a module, a test, a
benchmark or another document names exists in ``docs/``, and every section it cites by number
(``docs/protocol.md 4.2``) is a heading there. A citation of a file kept elsewhere, or of a
section renumbered away, fails here instead of sending a reader to nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: A note, or a note and a section: ``docs/protocol.md 4.2``, ``protocol-gemini.md 3-10``.
CITATION = re.compile(r"\b([a-z][a-z0-9-]*)\.md\b(?: §?(\d+(?:\.\d+)?))?")
#: Files named ``*.md`` that are not notes of ours: the SDK's own index (docs/protocol.md, sources).
NOT_OURS = {"api"}


def cited() -> dict[tuple[str, str | None], list[str]]:
    """Each (document, section or None) cited, with where."""
    sources = [
        *(ROOT / "src").rglob("*.py"),
        *(ROOT / "tests").glob("*.py"),
        *(ROOT / "bench").glob("*.py"),
        *(ROOT / "bench" / "harness").glob("*.py"),
        *DOCS.glob("*.md"),
        ROOT / "README.md",
    ]
    found: dict[tuple[str, str | None], list[str]] = {}
    for path in sources:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in CITATION.finditer(line):
                if m.group(1) in NOT_OURS or m.group(1) == "readme":
                    continue
                where = f"{path.relative_to(ROOT)}:{n}"
                found.setdefault((m.group(1), m.group(2)), []).append(where)
    return found


def headings(doc: Path) -> set[str]:
    """The section numbers of ``doc``'s headings (``## 4.`` and ``### 4.2`` give 4 and 4.2)."""
    numbers = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{1,5} (\d+(?:\.\d+)?)\.? ", line)
        if m:
            numbers.add(m.group(1))
    return numbers


def test_every_cited_note_is_in_docs_with_the_section_cited() -> None:
    found = cited()
    assert ("protocol", "4.2") in found  # the scan sees the citations it is meant to check
    missing = sorted(
        f"{name}.md: {', '.join(found[(name, sec)][:3])}"
        for name, sec in found
        if sec is None and not (DOCS / f"{name}.md").is_file()
    )
    assert missing == []
    unknown = sorted(
        f"{name}.md {sec}: {', '.join(where[:3])}"
        for (name, sec), where in found.items()
        if sec is not None
        and (DOCS / f"{name}.md").is_file()
        and sec not in headings(DOCS / f"{name}.md")
    )
    assert unknown == []
    cited_elsewhere = sorted(
        f"{name}.md {sec}: {', '.join(where[:3])}"
        for (name, sec), where in found.items()
        if sec is not None and not (DOCS / f"{name}.md").is_file()
    )
    assert cited_elsewhere == []
