"""Each assignment's questions as its notebook presents them: their order, numbers and titles.

Read from the assignment's master notebook (Otter Assign format), never written into the grader: each
raw ``# BEGIN QUESTION`` cell names a question (``name:``), and the first markdown cell after it opens
with the question's lead, ``**Question 3: Output sizes.**`` (number and title; the title may be left
out, ``**Question 3.**``, and a remark in brackets, ``(graded by hand)``, is not part of it).  The pages
people read (a student's feedback page, the grade sheet's columns, the report) list questions in this
order with these labels; a question the master does not name keeps its internal name, after the others.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# "**Question 11: Parameters and image size (graded by hand).**" -> number "11", title "Parameters and image size"
LEAD = re.compile(r"\*\*Question\s+(?P<number>\d+[a-z]?)\s*(?::\s*(?P<title>[^*()]*?))?\s*(?:\([^)]*\))?\s*[.:]?\s*\*\*")


@dataclass(frozen=True)
class QuestionTitle:
    """One question of an assignment's notebook."""

    name: str  # Otter's name for it (its test file, the result's question name)
    position: int  # its place in the notebook, from 0
    number: str | None = None  # as the notebook numbers it ("3"), None when its lead has none
    title: str | None = None  # its short title ("Output sizes"), None when its lead has none

    @property
    def label(self) -> str:
        """What people read: ``Question 3: Output sizes``, ``Question 3`` or the internal name."""
        if self.number is None:
            return self.title or self.name
        return f"Question {self.number}" + (f": {self.title}" if self.title else "")


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def outline_from_notebook(nb: dict) -> list[QuestionTitle]:
    """The questions of an Otter Assign master notebook, in order."""
    import yaml

    found: list[QuestionTitle] = []
    pending: str | None = None  # a question whose lead is still to be read
    for cell in nb.get("cells", []):
        src = _source(cell).strip()
        if cell.get("cell_type") == "raw" and src.startswith("# BEGIN QUESTION"):
            try:
                config = yaml.safe_load(src.split("\n", 1)[1]) if "\n" in src else {}
            except yaml.YAMLError:
                config = {}
            name = config.get("name") if isinstance(config, dict) else None
            if name is not None and str(name) not in {q.name for q in found}:
                pending = str(name)
                found.append(QuestionTitle(pending, len(found)))
        elif pending is not None and cell.get("cell_type") == "markdown":
            m = LEAD.search(src)
            if m:
                title = (m.group("title") or "").strip().rstrip(".") or None
                found[-1] = QuestionTitle(pending, found[-1].position, m.group("number"), title)
            pending = None
    return found


@lru_cache(maxsize=None)
def outline(assignment: str | None) -> tuple[QuestionTitle, ...]:
    """The assignment's questions from its master notebook (none for an unknown assignment)."""
    if not assignment:
        return ()
    from autograder import registry

    try:
        path = registry.get(assignment).master_notebook
        return tuple(outline_from_notebook(json.loads(Path(path).read_text(encoding="utf-8"))))
    except (LookupError, OSError, ValueError):
        return ()


def question(assignment: str | None, name: str) -> QuestionTitle:
    """The question ``name`` of ``assignment`` (unknown: its internal name, placed after every known one)."""
    for q in outline(assignment):
        if q.name == name:
            return q
    return QuestionTitle(name, 10**6)


def label(assignment: str | None, name: str) -> str:
    return question(assignment, name).label


def order_key(assignment: str | None, name: str) -> tuple[int, str]:
    """Sort key: the notebook's order, then the name (questions the notebook does not list)."""
    return question(assignment, name).position, name
