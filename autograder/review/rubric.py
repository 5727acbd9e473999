"""Rubric items of a hand-graded question, and what applying them does.

Items come from the master (the ``rubric`` list of the question's config, see
:func:`autograder.manual.master_rubric`) and from graders, who add items on the review page; those
are kept in ``OUT/manual_rubric.json`` (``{"<assignment>/<question>": [{"id", "points", "text"}]}``,
written atomically under the sheet's lock).

Applying items needs no other store than the sheet: an answer's comment holds the texts of the
items applied to it, one per line, then the grader's own words; its points are the sum of the
applied items' points, kept within 0 and the question's points.  So an item counts as applied when
its text is a line of the comment, and toggling one rewrites both cells.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

RUBRIC_FILE = "manual_rubric.json"
MAX_ITEM_CHARS = 500
MAX_ITEMS = 40


@dataclass(frozen=True)
class RubricItem:
    id: str
    points: float
    text: str
    source: str  # "master" or "grader"


def _key(assignment: str, question: str) -> str:
    return f"{assignment}/{question}"


def _read(out: Path, strict: bool = False) -> dict:
    """The graders' items, by question (a byte-order mark allowed).  A file that is there but cannot be read is
    empty for the page, and ``strict`` (before writing it) raises ValueError instead: writing would lose it."""
    path = Path(out) / RUBRIC_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if strict:
            raise ValueError(f"{RUBRIC_FILE} cannot be read ({exc}): fix it or move it away; nothing was changed") \
                from None
        return {}


def items(out: Path, assignment: str, question: str) -> list[RubricItem]:
    """The master's items, then the graders'."""
    from autograder import manual

    found = [RubricItem(f"m{i + 1}", points, text, "master")
             for i, (points, text) in enumerate(manual.master_rubric(assignment, question))]
    entries = _read(out).get(_key(assignment, question))
    for item in entries if isinstance(entries, list) else []:
        try:
            points = float(item["points"])
            if math.isfinite(points):  # JSON allows NaN and 1e309
                found.append(RubricItem(str(item["id"]), points, str(item["text"]), "grader"))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def add(out: Path, assignment: str, question: str, points: float, text: str) -> RubricItem:
    """A grader's new item, saved in ``OUT/manual_rubric.json``."""
    from autograder import manual_scores

    text = " ".join(text.split())
    if not text or len(text) > MAX_ITEM_CHARS:
        raise ValueError(f"a rubric item needs a text of 1 to {MAX_ITEM_CHARS} characters")
    path = Path(out) / RUBRIC_FILE
    with manual_scores.locked(path):
        data = _read(out, strict=True)
        mine = data.setdefault(_key(assignment, question), [])
        if not isinstance(mine, list):
            raise ValueError(f"{RUBRIC_FILE} holds no list of items for {_key(assignment, question)}: fix it or move it "
                             "away; nothing was changed")
        if len(mine) >= MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} rubric items per question")
        if any(i.text == text for i in items(out, assignment, question)):
            raise ValueError("the rubric has that item already")
        item = RubricItem("g" + hashlib.sha256(f"{text}\0{points}".encode()).hexdigest()[:8], points, text, "grader")
        mine.append({k: v for k, v in asdict(item).items() if k != "source"})
        _write_json(path, data)
    return item


def remove(out: Path, assignment: str, question: str, item_id: str) -> None:
    """Take a grader's item off the rubric (the master's stay; comments that hold its text keep it)."""
    from autograder import manual_scores

    path = Path(out) / RUBRIC_FILE
    with manual_scores.locked(path):
        data = _read(out, strict=True)
        key = _key(assignment, question)
        data[key] = [i for i in data.get(key, []) if str(i.get("id")) != item_id]
        _write_json(path, data)


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def applied(comment: str, rubric: list[RubricItem]) -> set[str]:
    """The ids of the items whose text is a line of ``comment``."""
    lines = {line.strip() for line in (comment or "").splitlines()}
    return {item.id for item in rubric if item.text in lines}


def own_words(comment: str, rubric: list[RubricItem]) -> str:
    """The comment without the lines that are rubric items."""
    texts = {item.text for item in rubric}
    return "\n".join(line for line in (comment or "").splitlines() if line.strip() not in texts).strip()


def toggle(item_id: str, comment: str, rubric: list[RubricItem], max_points: float) -> tuple[float, str]:
    """(points, comment) after applying ``item_id`` (or taking it off if it was applied)."""
    chosen = applied(comment, rubric) ^ {item_id}
    picked = [item for item in rubric if item.id in chosen]
    from autograder.manual_scores import round_points

    points = round_points(min(max(sum(item.points for item in picked), 0.0), max_points))  # +0.1 +0.2 -0.3 is 0
    words = own_words(comment, rubric)
    return points, "\n".join([*(item.text for item in picked), *([words] if words else [])])
