"""Every document the code, tests, benchmarks and docs point to is in the repository, with the cited section.

A reference is any ``*.md`` path in a source or Markdown file. It must name a file of the repository, relative to
the repository root (a Markdown file under docs/ may also point to a neighbour by its bare name, as Markdown links
do). A section citation after it (``docs/paper.md §5``, ``docs/design.md §3, §4``) must name a numbered heading of
that file, and ``docs/perf-notes.md, surprise N`` a numbered item. Names of files jaxprune itself writes are
allowed by name, each with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: `*.md` names that are outputs of jaxprune, not documents of the repository.
WRITTEN_BY_JAXPRUNE = {
    "report.md": "the summary `jaxprune demo` and `jaxprune prune` write into their output folder",
    "sensitivity.md": "the sensitivity table `jaxprune demo` and `jaxprune sensitivity` write into their output folder",
}

_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.I)
_MD = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
_SECTIONS = re.compile(r"\A(?:[\s,(–-]|and\s)*(§\s?\d+(?:\.\d+)*(?:(?:[\s,–-]|and\s)*§\s?\d+(?:\.\d+)*)*)")
_SURPRISES = re.compile(r"\A,?\s*surprises?\s+(\d+(?:(?:\s*,\s*|\s+and\s+)\d+)*)")
_HEADING = re.compile(r"^#+\s+(\d+)\.", re.M)
_ITEM = re.compile(r"^(\d+)\.\s", re.M)


def _sources() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder, pattern in (("jaxprune", "*.py"), ("benchmarks", "*.py"), ("tests", "*.py"), ("docs", "*.md")):
        files += sorted((ROOT / folder).rglob(pattern))
    # This file is left out: its checker test holds broken references on purpose.
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def _resolve(ref: str, where: Path) -> Path | None:
    for base in (ROOT, where.parent) if where.suffix == ".md" else (ROOT,):
        if (base / ref).is_file():
            return base / ref
    return None


def bad_references(text: str, where: Path) -> list[str]:
    """What is wrong with the document references in `text` (the contents of `where`): one line per problem."""
    text = _URL.sub(" ", text)
    problems = []
    for m in _MD.finditer(text):
        ref = m.group(1)
        line = text.count("\n", 0, m.start()) + 1
        if ref in WRITTEN_BY_JAXPRUNE:
            continue
        target = _resolve(ref, where)
        if target is None:
            problems.append(f"line {line}: {ref} does not exist")
            continue
        rest = text[m.end() : m.end() + 200]
        sections = _SECTIONS.match(rest)
        if sections:
            have = set(_HEADING.findall(target.read_text(encoding="utf-8")))
            for number in re.findall(r"§\s?(\d+)", sections.group(1)):
                if number not in have:
                    problems.append(f"line {line}: {ref} has no section §{number}")
        surprises = _SURPRISES.match(rest)
        if surprises:
            have = set(_ITEM.findall(target.read_text(encoding="utf-8")))
            for number in re.findall(r"\d+", surprises.group(1)):
                if number not in have:
                    problems.append(f"line {line}: {ref} has no item {number}")
    return problems


def test_every_document_reference_exists():
    sources = _sources()
    assert ROOT / "jaxprune" / "surgery.py" in sources and ROOT / "docs" / "design.md" in sources
    bad = {}
    for f in sources:
        problems = bad_references(f.read_text(encoding="utf-8"), f)
        if problems:
            bad[str(f.relative_to(ROOT))] = problems
    assert bad == {}


def test_the_design_and_paper_notes_are_in_the_repository():
    for name in ("design.md", "paper.md", "perf-notes.md"):
        assert (ROOT / "docs" / name).is_file(), name
    design = set(_HEADING.findall((ROOT / "docs" / "design.md").read_text(encoding="utf-8")))
    paper = set(_HEADING.findall((ROOT / "docs" / "paper.md").read_text(encoding="utf-8")))
    assert design == {str(i) for i in range(1, 9)}
    assert paper == {str(i) for i in range(0, 11)}


def test_the_checker_catches_missing_files_sections_and_items():
    where = ROOT / "jaxprune" / "x.py"
    text = (
        "see docs/paper.md §5, §6 and docs/design.md §4\n"  # fine
        "see paper.md §5\n"  # not at the root
        "see docs/nope.md\n"  # no such file
        "see docs/design.md §9 and docs/paper.md §1-§12\n"  # no such sections
        "see docs/perf-notes.md, surprise 2; docs/perf-notes.md, surprises 1 and 99\n"  # no item 99
        "writes report.md and https://example.org/other.md\n"  # an output and a URL: fine
    )
    assert bad_references(text, where) == [
        "line 2: paper.md does not exist",
        "line 3: docs/nope.md does not exist",
        "line 4: docs/design.md has no section §9",
        "line 4: docs/paper.md has no section §12",
        "line 5: docs/perf-notes.md has no item 99",
    ]
    assert bad_references("a neighbour: paper.md §3", ROOT / "docs" / "results.md") == []
