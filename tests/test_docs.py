"""Every relative link and every ``docs/...`` reference in the repository points at a file that exists.

A clone has to stand alone: a reader who follows a link in the README or in ``docs/``, or a
``docs/...`` reference in a docstring, must find the file. Two kinds of reference are walked:

- **markdown links and images** ``[text](path)``, ``![alt](path)``, ``[label]: path`` and
  ``<img src="path">`` in ``README.md``, ``docs/*.md`` and the published reports
  (``results/*/*.md``), resolved relative to the file that holds them. Links inside code
  (fenced blocks, backticks) are not links. ``http(s)``/``mailto`` links and pure anchors
  (``#...``) are ignored, and an anchor after a path is dropped;
- **path mentions containing a ``docs/`` folder** (``docs/paper.md``, also ``sibling/docs/x.md``
  or ``../sibling/docs/x.md``, which do not exist in a clone) in the same markdown files and in
  the source text of ``hybridlib/**/*.py``, ``benchmarks/*.py``, ``tests/*.py``, ``params/*.yaml``
  and the cells of ``notebooks/*.ipynb``: docstrings, comments and messages alike. They are
  resolved relative to the repository root, or to the file when they start with ``./`` or
  ``../``. A target must be a file or folder inside the repository.

Backticked paths of generated output (``runs/default/report.md``) are neither links nor
``docs/`` mentions, so they are not checked: they describe what a run writes.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator, NamedTuple
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]

MARKDOWN_FILES = ("README.md", "docs/*.md", "results/*/*.md")
# Files whose text is searched for ``docs/...`` mentions besides the markdown files.
SOURCE_FILES = ("hybridlib/**/*.py", "benchmarks/*.py", "tests/*.py", "params/*.yaml", "notebooks/*.ipynb")
# This file's fixtures hold broken references on purpose.
SKIPPED = ("tests/test_docs.py",)

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
# A code span may wrap lines but not cross a blank line (an unmatched backtick hides nothing beyond it).
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1)(?!\n[ \t]*\n)[\s\S])+?\1")
# [text](target "title") and ![alt](target); the target may be wrapped in <...>.
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|[^\s)]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]\n]+\]:\s*(<[^>\n]*>|\S+)", re.MULTILINE)
_IMG_SRC = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
# A path token with a ``docs`` folder in it: not preceded by a path character, so that the tail
# of a longer path or URL does not count on its own; it ends on a word character, so that
# sentence punctuation after it is not part of it.
_DOCS_MENTION = re.compile(r"(?<![\w/.:~\\-])((?:\.{1,2}/|[\w.-]+/)*docs/[\w./-]*\w)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


class Reference(NamedTuple):
    """One reference: the file holding it, where in that file, the target as written, and its kind."""

    source: str
    where: str
    target: str
    kind: str  # "link" (relative to the file) or "docs" (relative to the root, or to the file for ./ ../)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _blank(match: re.Match) -> str:
    """The matched code replaced by spaces, newlines kept, so that offsets and line numbers stay true."""
    return re.sub(r"[^\n]", " ", match.group(0))


def markdown_links(text: str) -> list[tuple[int, str]]:
    """``(line, target)`` of every link and image in markdown ``text`` outside code; targets as written."""
    prose = _CODE_SPAN.sub(_blank, _FENCE.sub(_blank, text))
    found = sorted((match.start(), match.group(1).strip("<>"))
                   for pattern in (_INLINE_LINK, _REFERENCE_DEF, _IMG_SRC) for match in pattern.finditer(prose))
    return [(_line(prose, offset), target) for offset, target in found]


def docs_mentions(text: str) -> list[tuple[int, str]]:
    """``(line, path)`` of every path in ``text`` that goes through a ``docs/`` folder (URLs left out)."""
    plain = _URL.sub(_blank, text)
    return [(_line(plain, m.start()), m.group(1)) for m in _DOCS_MENTION.finditer(plain)]


def _notebook_cells(path: Path) -> Iterator[tuple[str, str]]:
    """``(where, source)`` of every cell of a notebook (markdown and code)."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for number, cell in enumerate(cells, 1):
        source = cell.get("source", "")
        yield f"cell {number}", "".join(source) if isinstance(source, list) else source


def _files(root: Path, patterns: tuple) -> list[Path]:
    paths = {p for pattern in patterns for p in root.glob(pattern) if p.is_file()}
    return sorted(p for p in paths if p.relative_to(root).as_posix() not in SKIPPED)


def references(root: Path) -> Iterator[Reference]:
    """Every relative link and ``docs/`` mention in the files this module walks, under ``root``."""
    markdown = _files(root, MARKDOWN_FILES)
    for path in markdown:
        name, text = path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")
        for line, target in markdown_links(text):
            yield Reference(name, f"line {line}", target, "link")
        for line, target in docs_mentions(text):
            yield Reference(name, f"line {line}", target, "docs")
    for path in _files(root, SOURCE_FILES):
        name = path.relative_to(root).as_posix()
        if path.suffix == ".ipynb":
            for where, source in _notebook_cells(path):
                for line, target in docs_mentions(source):
                    yield Reference(name, f"{where} line {line}", target, "docs")
        else:
            text = path.read_text(encoding="utf-8")
            for line, target in docs_mentions(text):
                yield Reference(name, f"line {line}", target, "docs")


def resolve(root: Path, reference: Reference) -> Path | None:
    """The file a reference points at, or None when it is not to be checked (a URL, an anchor)."""
    target = reference.target
    if _SCHEME.match(target) or target.startswith(("#", "//")):
        return None
    target = unquote(target.split("#", 1)[0].split("?", 1)[0])
    if not target:
        return None
    from_file = reference.kind == "link" or target.startswith(("./", "../"))
    base = (root / reference.source).parent if from_file else root
    return (root / target.lstrip("/")) if target.startswith("/") else base / target


def _exists_exactly(root: Path, path: Path) -> bool:
    """Whether ``path`` (inside ``root``) exists with the exact case of every part, as in a git clone
    on a case-sensitive file system (macOS and Windows would find ``Figure.PNG`` for ``figure.png``)."""
    folder = root
    for part in path.relative_to(root).parts:
        if not folder.is_dir() or part not in os.listdir(folder):
            return False
        folder = folder / part
    return True


def broken_references(root: Path) -> list[str]:
    """One line per reference under ``root`` whose target is missing or lies outside ``root``."""
    root = root.resolve()
    problems = []
    for reference in references(root):
        path = resolve(root, reference)
        if path is None:
            continue
        path = path.resolve()
        inside = path == root or root in path.parents
        if not inside or not _exists_exactly(root, path):
            why = "outside the repository" if not inside else "no such file"
            problems.append(f"{reference.source} {reference.where}: {reference.target} "
                            f"({'link' if reference.kind == 'link' else 'docs/ reference'}: {why})")
    return problems


# --------------------------------------------------------------------------------- the repository

def test_every_link_and_docs_reference_resolves():
    problems = broken_references(REPO)
    assert not problems, "references to files that do not exist in a clone:\n" + "\n".join(problems)


def test_the_walk_covers_the_files_that_cite_the_docs():
    # A walk that silently read nothing would pass the test above; these are known to cite docs/.
    sources = {r.source for r in references(REPO)}
    assert {"README.md", "docs/design.md", "docs/paper.md"} <= sources
    assert any(s.startswith("hybridlib/") for s in sources)
    assert any(s.startswith("notebooks/") for s in sources)


# ------------------------------------------------------------------------------ the checker itself

@pytest.mark.parametrize("text, expected", [
    ("see [the paper](docs/paper.md).", ["docs/paper.md"]),
    ("![fig](figures/a.png) and ![b](<my figs/b.png> \"title\")", ["figures/a.png", "my figs/b.png"]),
    ("[x](paper.md#claims) [y](#top) [z](https://example.org/a.md)",
     ["paper.md#claims", "#top", "https://example.org/a.md"]),
    ("[a [nested] label](a.md)", ["a.md"]),
    ("[ref]: docs/ref.md\n", ["docs/ref.md"]),
    ('<img src="figures/c.png" width="300">', ["figures/c.png"]),
    ("`[not a link](gone.md)` and\n```\n[nor this](gone.md)\n```\n", []),
])
def test_markdown_links_are_found_outside_code(text, expected):
    assert [target for _, target in markdown_links(text)] == expected


@pytest.mark.parametrize("text, expected", [
    ("Protocol (docs/paper.md, \"Evaluation\").", ["docs/paper.md"]),
    ("the notes (sibling/docs/default-model.md) report", ["sibling/docs/default-model.md"]),
    ("a ../sibling/docs/paper.md citation", ["../sibling/docs/paper.md"]),
    ("``docs/data-format.md``", ["docs/data-format.md"]),
    ("https://github.com/o/r/blob/main/docs/x.md", []),
    ("docs/        scaling.md (GPU estimates)", []),
    ("f\"docs/{name}.md\" and mydocs/x.md", []),
])
def test_docs_mentions_are_paths_through_a_docs_folder(text, expected):
    assert [target for _, target in docs_mentions(text)] == expected


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_broken_references_are_named_and_good_ones_pass(tmp_path):
    root = tmp_path / "repo"
    _write(tmp_path / "outside.md", "exists, but not in the repository")
    _write(root / "docs" / "paper.md", "# Paper\n[design](design.md) [readme](../README.md#set-up)\n")
    _write(root / "figures" / "a.png", "")
    _write(root / "README.md", "\n".join([
        "[paper](docs/paper.md) ![fig](figures/a.png) [web](https://example.org) [top](#top)",
        "![missing figure](figures/missing.png)",
        "[escape](../outside.md) [case](Figures/a.png)",
        "Notes: sibling/docs/default-model.md; generated: `runs/default/report.md`.",
        "`[in code](nowhere.md)`",
    ]) + "\n")
    _write(root / "hybridlib" / "models" / "encoder.py",
           '"""Layout: docs/paper.md; details in docs/gone.md."""\n# see docs/design.md\n')
    _write(root / "benchmarks" / "bench.py", "# numbers from ../sibling/docs/paper.md\n")
    notebook = {"cells": [{"cell_type": "markdown", "source": ["# title\n", "built as in `docs/paper.md`"]},
                          {"cell_type": "code", "source": "x = 1  # docs/notebook-notes.md"}]}
    _write(root / "notebooks" / "01.ipynb", json.dumps(notebook))

    problems = broken_references(root)

    missing_design = ["docs/paper.md line 2: design.md (link: no such file)",
                      "hybridlib/models/encoder.py line 2: docs/design.md (docs/ reference: no such file)"]
    assert problems == [
        "README.md line 2: figures/missing.png (link: no such file)",
        "README.md line 3: ../outside.md (link: outside the repository)",
        "README.md line 3: Figures/a.png (link: no such file)",
        "README.md line 4: sibling/docs/default-model.md (docs/ reference: no such file)",
        missing_design[0],
        "benchmarks/bench.py line 1: ../sibling/docs/paper.md (docs/ reference: no such file)",
        "hybridlib/models/encoder.py line 1: docs/gone.md (docs/ reference: no such file)",
        missing_design[1],
        "notebooks/01.ipynb cell 2 line 1: docs/notebook-notes.md (docs/ reference: no such file)",
    ]

    _write(root / "docs" / "design.md", "# Design\n")  # the missing target appears: both references pass
    assert broken_references(root) == [p for p in problems if p not in missing_design]
