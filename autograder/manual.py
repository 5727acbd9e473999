"""Hand-graded questions (Otter Assign ``manual: true``), end to end.

* **Which questions.** Read from each assignment's master notebook (Otter Assign format: a raw
  ``# BEGIN QUESTION`` cell whose YAML says ``manual: true``), never hard-coded: name, points and
  the question's text (the master's markdown between the ``BEGIN QUESTION`` and ``BEGIN SOLUTION``).
* **Extraction.** On the trusted side, from the submitted notebook's JSON, without running it: the
  cells between the n-th ``<!-- BEGIN QUESTION -->`` and its ``<!-- END QUESTION -->`` (what Otter
  Assign writes into the student notebook for the n-th manual question).  The answer is untrusted
  data: bounded in size, text only (pages escape it), images only as PNG or JPEG whose bytes were
  checked and re-encoded.
* **Reference answers and rubrics.** The master's solution of each hand-graded question (its
  ``BEGIN SOLUTION`` block) and its rubric (a ``rubric`` list in its ``BEGIN QUESTION`` config), shown
  to graders only (never written into an autograder zip or a student's page).
* **Scores.** ``manual_scores.csv`` (read and written by :mod:`autograder.manual_scores`), merged
  into the results in memory when the reports are written; the result files themselves are never
  changed, so nothing graded is lost and nothing is graded again.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

#: Bounds on what one answer may bring into the results and the pages.
MAX_ANSWER_CELLS = 20
MAX_TEXT_CHARS = 20_000  # per answer, all text together
MAX_IMAGES = 4
MAX_IMAGE_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 16_000_000  # a 4000 x 4000 plot; a browser holds 4 bytes a pixel of every image it shows
PLACEHOLDERS = {"", "...", "_type your answer here, replacing this text._", "type your answer here, replacing this text."}
PENDING, GRADED_BY_HAND = "pending", "graded"
#: In an autograder zip: the hand-graded questions (the master is not bundled; the prompts are the student's too)
ZIP_FILE = "manual_questions.json"


@dataclass(frozen=True)
class ManualQuestion:
    assignment: str
    name: str
    points: float
    prompt: str  # the question's text from the master (markdown source, trusted)
    index: int  # its order among the assignment's manual questions


@dataclass
class ManualAnswer:
    """One student's answer to one hand-graded question (what ``GradeResult.manual`` holds)."""

    name: str
    max_score: float
    score: float | None = None  # None: pending
    comment: str = ""
    status: str = PENDING
    found: bool = False  # the question's markers were in the notebook
    blank: bool = True  # nothing but the template's placeholder
    truncated: bool = False
    parts: list[dict] = field(default_factory=list)  # {"kind": "markdown"|"code"|"output", "text"} | {"kind": "image", "mime", "data"}


# --- the questions, from the master notebook --------------------------------------------------

def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def questions_from_master(nb: dict, assignment: str) -> list[ManualQuestion]:
    import yaml

    found, current, prompt, in_solution = [], None, [], False
    for cell in nb.get("cells", []):
        src = _source(cell).strip()
        if cell.get("cell_type") == "raw" and src.startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(src.split("\n", 1)[1]) if "\n" in src else {}
            current = config if isinstance(config, dict) and config.get("manual") else None
            prompt, in_solution = [], False
        elif cell.get("cell_type") == "raw" and src.startswith("# BEGIN SOLUTION"):
            in_solution = True
        elif cell.get("cell_type") == "raw" and src.startswith("# END SOLUTION"):
            in_solution = False
        elif cell.get("cell_type") == "raw" and src.startswith("# END QUESTION"):
            if current is not None:
                points = current.get("points", 0)
                points = sum(points) if isinstance(points, list) else points
                found.append(ManualQuestion(assignment, str(current["name"]), float(points or 0),
                                            "\n\n".join(prompt), len(found)))
            current = None
        elif current is not None and not in_solution and cell.get("cell_type") == "markdown":
            prompt.append(_source(cell).strip())
    return found


@lru_cache(maxsize=None)
def questions_for(assignment: str | None) -> tuple[ManualQuestion, ...]:
    """The assignment's hand-graded questions, from its master notebook ([] when unknown)."""
    if not assignment:
        return ()
    from autograder import registry

    try:
        path = registry.get(assignment).master_notebook
        return tuple(questions_from_master(json.loads(Path(path).read_text(encoding="utf-8")), assignment))
    except (LookupError, OSError, ValueError):
        return ()


def reference_answers_from_master(nb: dict) -> dict[str, str]:
    """{question name: the master's solution} of each hand-graded question: the markdown and code cells between
    its ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (trusted: the instructor's own notebook)."""
    import yaml

    found, current, parts, in_solution = {}, None, [], False
    for cell in nb.get("cells", []):
        src = _source(cell).strip()
        if cell.get("cell_type") == "raw" and src.startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(src.split("\n", 1)[1]) if "\n" in src else {}
            current = str(config["name"]) if isinstance(config, dict) and config.get("manual") else None
            parts, in_solution = [], False
        elif cell.get("cell_type") == "raw" and src.startswith("# BEGIN SOLUTION"):
            in_solution = True
        elif cell.get("cell_type") == "raw" and src.startswith("# END SOLUTION"):
            in_solution = False
        elif cell.get("cell_type") == "raw" and src.startswith("# END QUESTION"):
            if current is not None and parts:
                found[current] = "\n\n".join(parts)
            current = None
        elif current is not None and in_solution and src:
            parts.append(src if cell.get("cell_type") == "markdown" else f"```python\n{src}\n```")
    return found


@lru_cache(maxsize=None)
def reference_answer(assignment: str | None, name: str) -> str:
    """The master's solution of one hand-graded question, as markdown ("" when there is none)."""
    if not assignment:
        return ""
    from autograder import registry

    try:
        path = registry.get(assignment).master_notebook
        return reference_answers_from_master(json.loads(Path(path).read_text(encoding="utf-8"))).get(name, "")
    except (LookupError, OSError, ValueError):
        return ""


def rubrics_from_master(nb: dict) -> dict[str, list[tuple[float, str]]]:
    """{question name: [(points, text)]}: the ``rubric`` list of each hand-graded question's ``BEGIN QUESTION``
    config in the master (for graders; Otter Assign ignores the key and the student notebook never has it)."""
    import yaml

    found = {}
    for cell in nb.get("cells", []):
        src = _source(cell).strip()
        if cell.get("cell_type") == "raw" and src.startswith("# BEGIN QUESTION") and "\n" in src:
            config = yaml.safe_load(src.split("\n", 1)[1])
            if isinstance(config, dict) and config.get("manual") and isinstance(config.get("rubric"), list):
                found[str(config["name"])] = [(float(item["points"]), str(item["text"])) for item in config["rubric"]
                                              if isinstance(item, dict) and "points" in item and "text" in item]
    return found


@lru_cache(maxsize=None)
def master_rubric(assignment: str | None, name: str) -> tuple[tuple[float, str], ...]:
    """The master's rubric of one hand-graded question, ((points, text), ...); () when it has none."""
    if not assignment:
        return ()
    from autograder import registry

    try:
        path = registry.get(assignment).master_notebook
        return tuple(rubrics_from_master(json.loads(Path(path).read_text(encoding="utf-8"))).get(name, []))
    except (LookupError, OSError, ValueError):
        return ()


# --- extraction from a submitted notebook (untrusted data) ------------------------------------

BEGIN, END = "<!-- BEGIN QUESTION -->", "<!-- END QUESTION -->"
_B64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")


def _image(mime: str, data) -> dict | None:
    """A PNG or JPEG output whose bytes really are one, of at most :data:`MAX_IMAGE_PIXELS` (a few kilobytes of
    PNG can decode to gigabytes in the grader's browser), re-encoded; None otherwise."""
    if isinstance(data, list):
        data = "".join(str(d) for d in data)
    if not isinstance(data, str) or len(data) > MAX_IMAGE_BYTES * 4 // 3 + 16 or not _B64.match(data):
        return None
    try:
        raw = base64.b64decode(re.sub(r"\s", "", data), validate=True)
    except (binascii.Error, ValueError):
        return None
    magic = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}[mime]
    if not raw.startswith(magic) or len(raw) > MAX_IMAGE_BYTES or not 0 < image_pixels(raw) <= MAX_IMAGE_PIXELS:
        return None
    return {"kind": "image", "mime": mime, "data": base64.b64encode(raw).decode()}


def image_pixels(raw: bytes) -> int:
    """Width times height from the image's header (nothing is decoded); 0 when it cannot be read."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: such an image is refused here
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
    except Exception:  # noqa: BLE001 - Pillow's errors for a broken or bombing image are of many kinds
        return 0
    return width * height


def _answer_parts(cells: list) -> tuple[list[dict], bool]:
    parts, chars, images, truncated = [], 0, 0, len(cells) > MAX_ANSWER_CELLS

    def text(kind: str, value) -> None:
        nonlocal chars, truncated
        value = "".join(value) if isinstance(value, list) else str(value or "")
        room = MAX_TEXT_CHARS - chars
        if room <= 0:
            truncated = True
            return
        if len(value) > room:
            value, truncated = value[:room] + "\n[... cut: the answer is longer than the grader shows]", True
        chars += len(value)
        parts.append({"kind": kind, "text": value})

    for cell in cells[:MAX_ANSWER_CELLS]:
        if not isinstance(cell, dict):
            continue
        if cell.get("cell_type") == "code":
            text("code", cell.get("source"))
            for out in cell.get("outputs") or []:
                if not isinstance(out, dict):
                    continue
                if out.get("output_type") == "stream":
                    text("output", out.get("text"))
                elif out.get("output_type") == "error":
                    text("output", f"{out.get('ename', 'Error')}: {out.get('evalue', '')}")
                data = out.get("data") if isinstance(out.get("data"), dict) else {}
                for mime in ("image/png", "image/jpeg"):
                    if mime in data and images < MAX_IMAGES:
                        img = _image(mime, data[mime])
                        if img:
                            parts.append(img)
                            images += 1
                        else:
                            text("output", f"[an {mime} output that is not a valid image, or is larger than "
                                           f"{MAX_IMAGE_PIXELS:,} pixels, was left out]")
                        break
                else:
                    if "text/plain" in data:
                        text("output", data["text/plain"])
        else:
            text("markdown", cell.get("source"))
    return parts, truncated


def extract_answers(nb: dict, questions: list[ManualQuestion] | tuple[ManualQuestion, ...]) -> list[ManualAnswer]:
    """Each manual question's answer in ``nb`` (a parsed notebook, untrusted): the cells between the
    n-th ``BEGIN QUESTION`` marker and the next ``END QUESTION`` marker."""
    cells = nb.get("cells") if isinstance(nb, dict) and isinstance(nb.get("cells"), list) else []
    spans, start = [], None
    for i, cell in enumerate(cells):
        src = _source(cell) if isinstance(cell, dict) else ""
        if cell.get("cell_type") == "markdown" if isinstance(cell, dict) else False:
            if BEGIN in src:
                start = i
            if END in src and start is not None:
                spans.append((start, i))
                start = None
    answers = []
    for q in questions:
        answer = ManualAnswer(q.name, q.points)
        if q.index < len(spans):
            first, last = spans[q.index]
            answer.found = True
            answer.parts, answer.truncated = _answer_parts(cells[first + 1:last])
            answer.blank = all(p.get("kind") != "image" and p.get("text", "").strip().lower() in PLACEHOLDERS
                               for p in answer.parts if p["kind"] != "output")
            if not answer.blank:  # the template's placeholder left beside a real answer says nothing
                answer.parts = [p for p in answer.parts
                                if p["kind"] != "markdown" or p["text"].strip().lower() not in PLACEHOLDERS]
        answers.append(answer)
    return answers


def questions_from_file(path: Path) -> tuple[ManualQuestion, ...]:
    """The questions as the build wrote them into an autograder zip (:data:`ZIP_FILE`); () if absent."""
    try:
        return tuple(ManualQuestion(**q) for q in json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return ()


def enrich(result: dict, notebook: str | os.PathLike | None,
           questions: tuple[ManualQuestion, ...] | list[ManualQuestion] | None = None) -> dict:
    """Add what the trusted side reads without running anything: the hand-graded questions' answers
    (their points join ``max_score``, pending).  Never raises: a problem here leaves the result as the
    engine made it."""
    try:
        questions = questions or questions_for(result.get("assignment"))
        if not questions or result.get("manual") or result.get("status") == "grader_error" or not notebook:
            return result
        from autograder.submission_files import read_notebook

        nb = read_notebook(notebook)  # lstat, O_NOFOLLOW, capped: the submission's file, read once
        result["manual"] = [asdict(a) for a in extract_answers(nb, questions)]
        if result.get("max_score"):
            result["max_score"] = round(result["max_score"] + sum(q.points for q in questions), 6)
    except Exception:  # noqa: BLE001 - an unreadable notebook: its answers are missing, said on the page
        result["manual"] = [asdict(ManualAnswer(q.name, q.points))
                            for q in questions or questions_for(result.get("assignment"))]
    return result


# --- the scores, merged ---------------------------------------------------------------------

def merge(results: list[dict], scores: dict[tuple[str, str], tuple[float, str]]) -> list[dict]:
    """Copies of ``results`` with the scores merged: each graded answer's points and comment, the
    total (``score``) and ``autograded_score`` (the engine's score alone).  The inputs are untouched."""
    merged = []
    for r in results:
        r = json.loads(json.dumps(r))  # the result files' contents stay as they are
        r["autograded_score"] = r.get("score")
        extra = 0.0
        for m in r.get("manual") or []:
            key = (r["student"]["id"], m["name"])
            if key in scores:
                m["score"], m["comment"] = scores[key]
                m["status"] = GRADED_BY_HAND
                extra += m["score"]
            else:
                m["score"], m["status"] = None, PENDING
        if r.get("manual") and r.get("score") is not None and r.get("status") != "grader_error":
            r["score"] = round(float(r["score"]) + extra, 6)
        merged.append(r)
    return merged


def answer_text(m: dict, limit: int = 8000) -> str:
    """The answer as plain text (images named, not shown): for Gradescope's staff-only test output."""
    if not m.get("found"):
        return "(the question's markers are missing from the notebook: open it to find the answer)"
    if m.get("blank"):
        return "(no answer: the template's placeholder only)"
    text = "\n\n".join(p["text"] if p["kind"] != "image" else f"[{p['mime']} image]" for p in m.get("parts") or [])
    return text[:limit] + ("\n[... cut]" if len(text) > limit or m.get("truncated") else "")


def pending(r: dict) -> list[dict]:
    return [m for m in r.get("manual") or [] if m.get("score") is None]
