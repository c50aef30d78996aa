"""The repository is self-contained: no text in it sends the reader to documents outside it.

A user clones only this repository, so comments, docstrings, configs and docs cite `docs/<name>.md` (which must
exist, with the `#section` a citation names), never the reference notes kept beside a checkout: `../shared/...`,
`shared/docs/`, `DESIGN.md`, or `benchmarks.md` / `paper.md` / `recipes.md` / `style.md` without the `docs/`
prefix. Inside `docs/`, a bare `<name>.md` is a link to a sibling doc and must exist there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".cfg", ".ini", ".sh", ".rst"}
NAMES = {"Makefile", "Dockerfile"}
# tests/conftest.py looks for optional fixtures in a folder beside the checkout, which is legitimate; this file
# spells out the patterns it forbids.
ALLOWED = {"tests/conftest.py", "tests/unit/test_self_contained.py"}

OUTSIDE = re.compile(r"\.\./shared|shared/docs|DESIGN\.md", re.IGNORECASE)
# The outside notes' names, with whatever path leads to them.
NOTES = re.compile(r"([\w./-]*?)\b((?:benchmarks|paper|recipes|style)\.md)\b", re.IGNORECASE)
CITED = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
# Inside docs/: links to a sibling doc, `(name.md)` or `(name.md#anchor)`.
SIBLING = re.compile(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)")


def text_files() -> list[str]:
    """Tracked files, and new ones git does not ignore, that hold text worth checking (relative paths)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the files to check are the ones git lists")
    return sorted({p for p in listed if (Path(p).suffix in SUFFIXES or Path(p).name in NAMES) and (ROOT / p).is_file()})


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """The anchors of a doc's headings (outside code blocks)."""
    found, fenced = set(), False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.*)", line)):
            found.add(slug(match.group(1)))
    return found


def lines(path: str):
    yield from enumerate((ROOT / path).read_text(encoding="utf-8", errors="replace").splitlines(), 1)


def outside_note(path: str, line: str) -> bool:
    """Whether `line` names one of the outside notes: anywhere, a name not written `docs/<name>`; inside docs/, a
    bare name is a sibling doc, fine when it exists."""
    for prefix, name in NOTES.findall(line):
        if prefix == "docs/" or (path.startswith("docs/") and not prefix and (ROOT / "docs" / name).is_file()):
            continue
        return True
    return False


def test_no_file_cites_documents_outside_the_repository():
    offences = [
        f"{path}:{number}: {line.strip()}"
        for path in text_files()
        if path not in ALLOWED
        for number, line in lines(path)
        if OUTSIDE.search(line) or outside_note(path, line)
    ]
    assert not offences, "cite the repository's docs/ instead of documents outside it:\n" + "\n".join(offences)


def test_every_cited_doc_and_section_exists():
    missing = []
    for path in text_files():
        for number, line in lines(path):
            cited = [(f"docs/{name}", anchor) for name, anchor in CITED.findall(line)]
            if path.startswith("docs/"):
                cited += [(f"docs/{name}", anchor) for name, anchor in SIBLING.findall(line)]
            for doc, anchor in cited:
                if not (ROOT / doc).is_file():
                    missing.append(f"{path}:{number}: {doc} does not exist")
                elif anchor and anchor not in anchors(ROOT / doc):
                    missing.append(f"{path}:{number}: {doc} has no section #{anchor}")
    assert not missing, "\n".join(missing)


def test_the_docs_index_is_complete():
    """Every doc is listed in the README's Documentation paragraph."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlisted = [doc.name for doc in sorted((ROOT / "docs").glob("*.md")) if f"docs/{doc.name}" not in readme]
    assert not unlisted, f"README.md does not list {unlisted}"
