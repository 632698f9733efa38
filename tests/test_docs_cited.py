"""The notes the code cites are the repository's own: every note (``*.md``) a module, a test, a
benchmark, the project file or another document names exists (in ``docs/``, or the README at
the top), and every section it cites is a heading there: by number (``docs/protocol.md 4.2``,
lists and ranges as ``3, 8`` and ``3-10``) or by name in quotes. A citation of a file kept
elsewhere, or of a section renumbered or renamed away, fails here instead of sending a reader to
nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

NUMBER = r"\d+(?:\.\d+)?"
#: A note, then a section (or several: ``4, 8-10``) or a quoted heading, if any.
CITATION = re.compile(
    rf"\b([A-Za-z][A-Za-z0-9_-]*)\.md\b(?:`{{0,2}})"
    rf"(?: §?({NUMBER}(?:(?:, |-|\u2013){NUMBER}(?![\w%]))*)(?![\w.%-])| \"([^\"]+)\")?"
)
#: ``*.md`` names that are not notes of ours: the SDK's own index (cited in docs/protocol.md's
#: sources) and the changelogs of dependencies.
NOT_OURS = {"api", "changelog", "changes"}


def sources() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml", *DOCS.glob("*.md")]
    for top in ("src", "tests", "bench"):
        files += [p for p in (ROOT / top).rglob("*.py") if "results" not in p.parts]
    return files


def cited() -> dict[tuple[str, str], list[str]]:
    """Each (note, section number or quoted heading, "" for the note alone) cited, with
    where."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sources():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in CITATION.finditer(line):
                name, numbers, heading = m.group(1), m.group(2), m.group(3)
                # Not ours: another project's note, or a file in an address.
                if name.lower() in NOT_OURS or re.search(r"https?://\S*$", line[: m.start()]):
                    continue
                where = f"{path.relative_to(ROOT)}:{n}"
                sections = re.findall(NUMBER, numbers) if numbers else []
                for section in sections or ([heading] if heading else [""]):
                    found.setdefault((name, section), []).append(where)
    return found


def note(name: str) -> Path:
    return ROOT / "README.md" if name.lower() == "readme" else DOCS / f"{name}.md"


def headings(doc: Path) -> list[str]:
    """``doc``'s headings, outside its code blocks."""
    out, fenced = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            out.append(line.lstrip("#").strip())
    return out


def has_section(doc: Path, section: str) -> bool:
    titles = headings(doc)
    if re.fullmatch(NUMBER, section):
        return any(re.match(rf"{re.escape(section)}\.? ", t) for t in titles)
    return any(section.lower() in t.lower() for t in titles)


def test_every_cited_note_is_in_the_repo_with_the_section_cited() -> None:
    found = cited()
    # The scan sees the forms it is meant to check: a section, a list, a quoted heading.
    assert ("protocol", "4.2") in found and ("protocol-gemini", "8") in found
    missing = sorted(
        f"{name}.md: {', '.join(where[:3])}"
        for (name, _), where in found.items()
        if not note(name).is_file()
    )
    assert missing == []
    unknown = sorted(
        f"{name}.md {section!r}: {', '.join(where[:3])}"
        for (name, section), where in found.items()
        if section and note(name).is_file() and not has_section(note(name), section)
    )
    assert unknown == []
