"""Hand-graded questions (Otter Assign ``manual: true``), end to end, and the misconception tags.

* **Which questions.** Read from each assignment's master notebook (Otter Assign format: a raw
  ``# BEGIN QUESTION`` cell whose YAML says ``manual: true``), never hard-coded: name, points and
  the question's text (the master's markdown between the ``BEGIN QUESTION`` and ``BEGIN SOLUTION``).
* **Extraction.** On the trusted side, from the submitted notebook's JSON, without running it: the
  cells between the n-th ``<!-- BEGIN QUESTION -->`` and its ``<!-- END QUESTION -->`` (what Otter
  Assign writes into the student notebook for the n-th manual question).  The answer is untrusted
  data: bounded in size, text only (pages escape it), images only as PNG or JPEG whose bytes were
  checked and re-encoded.
* **Scores.** ``manual_scores.csv`` (id, question, points, comment): written ready to fill in, read
  back and checked line by line (:class:`ManualScoresError` names the line), merged into the
  results in memory when the reports are written; the result files themselves are never changed,
  so nothing graded is lost and nothing is graded again.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from autograder.misconceptions import catalogue, tag_misconceptions  # noqa: F401 (re-exported)

#: Bounds on what one answer may bring into the results and the pages.
MAX_ANSWER_CELLS = 20
MAX_TEXT_CHARS = 20_000  # per answer, all text together
MAX_IMAGES = 4
MAX_IMAGE_BYTES = 1_000_000
PLACEHOLDERS = {"", "...", "_type your answer here, replacing this text._", "type your answer here, replacing this text."}
SCORES_HEADER = ["id", "question", "points", "comment"]
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


class ManualScoresError(ValueError):
    """A manual scores file that cannot be merged; the message names the file and the line."""


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


# --- extraction from a submitted notebook (untrusted data) ------------------------------------

BEGIN, END = "<!-- BEGIN QUESTION -->", "<!-- END QUESTION -->"
_B64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")


def _image(mime: str, data) -> dict | None:
    """A PNG or JPEG output whose bytes really are one, re-encoded; None otherwise."""
    if isinstance(data, list):
        data = "".join(str(d) for d in data)
    if not isinstance(data, str) or len(data) > MAX_IMAGE_BYTES * 4 // 3 + 16 or not _B64.match(data):
        return None
    try:
        raw = base64.b64decode(re.sub(r"\s", "", data), validate=True)
    except (binascii.Error, ValueError):
        return None
    magic = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}[mime]
    if not raw.startswith(magic) or len(raw) > MAX_IMAGE_BYTES:
        return None
    return {"kind": "image", "mime": mime, "data": base64.b64encode(raw).decode()}


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
                            text("output", f"[an {mime} output that is not a valid image was left out]")
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
    (their points join ``max_score``, pending) and the misconception ids of each failed case.
    Never raises: a problem here leaves the result as the engine made it."""
    try:
        tag_misconceptions(result)
    except Exception:  # noqa: BLE001
        pass
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


# --- the scores file ----------------------------------------------------------------------------

def anonymous_key(out: Path) -> bytes:
    """A secret of this output folder: anonymous codes are stable across runs, not guessable from ids."""
    path = out / "manual" / ".anonymous-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    return path.read_text().strip().encode()


def anonymous_code(key: bytes, student_id: str) -> str:
    return "anon-" + hashlib.sha256(key + b"\0" + student_id.encode()).hexdigest()[:8]


def expected_rows(results: list[dict]) -> list[tuple[str, str, float]]:
    """(student id, question, points) for every hand-graded question of every result that has one."""
    rows = []
    for r in sorted(results, key=lambda r: r["student"]["id"]):
        for m in r.get("manual") or []:
            rows.append((r["student"]["id"], m["name"], float(m["max_score"])))
    return rows


def write_template(results: list[dict], path: Path, codes: dict[str, str] | None = None) -> int:
    """``manual_scores.csv`` with one empty row per hand-graded answer; ``codes`` (id -> anonymous
    code) writes codes instead of ids.  An existing file keeps its rows; rows it lacks (new
    submissions) are appended.  Returns the rows added."""
    have = set()
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                have.add(((row.get("id") or "").strip(), (row.get("question") or "").strip()))
    new = []
    for sid, question, _ in expected_rows(results):
        shown = (codes or {}).get(sid, sid)
        if (shown, question) not in have and (sid, question) not in have:
            new.append([shown, question, "", ""])
    if codes:
        new.sort()
    if path.is_file():
        if new:
            with open(path, "a", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(new)
        return len(new)
    from autograder.lms.sheets import private_writer

    with private_writer(path) as f:
        w = csv.writer(f)
        w.writerow(SCORES_HEADER)
        w.writerows(new)
    return len(new)


def read_scores(path: Path, results: list[dict], codes: dict[str, str] | None = None) -> dict[tuple[str, str], tuple[float, str]]:
    """The filled rows of a scores file as {(student id, question): (points, comment)}; rows with no
    points are still pending.  Refused whole (:class:`ManualScoresError`, naming the line) for an
    unknown id or question, points that are not a number or out of 0..max, a duplicate row."""
    allowed = {(sid, q): pts for sid, q, pts in expected_rows(results)}
    ids = {sid for sid, _ in allowed} | {r["student"]["id"] for r in results}
    by_code = {code: sid for sid, code in (codes or {}).items()}
    scores: dict[tuple[str, str], tuple[float, str]] = {}
    seen: dict[tuple[str, str], int] = {}
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ManualScoresError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:4] != SCORES_HEADER:
            raise ManualScoresError(f"{path}, line 1: expected the header {','.join(SCORES_HEADER)}, got {','.join(header)}")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            row = (row + ["", "", "", ""])[:4]
            shown, question, points, comment = (cell.strip() for cell in row)
            sid = by_code.get(shown, shown)
            if sid not in ids:
                raise ManualScoresError(f"{path}, line {line}: unknown student id {shown!r}")
            if (sid, question) not in allowed:
                known = sorted({q for s, q in allowed if s == sid})
                raise ManualScoresError(f"{path}, line {line}: {question!r} is not a hand-graded question of {shown!r}"
                                        f" ({', '.join(known) or 'it has none'})")
            if (sid, question) in seen:
                raise ManualScoresError(f"{path}, line {line}: a second row for {shown!r}, {question!r} "
                                        f"(first on line {seen[sid, question]})")
            seen[sid, question] = line
            if points == "":
                continue  # still to be graded
            try:
                value = float(points)
            except ValueError:
                raise ManualScoresError(f"{path}, line {line}: points {points!r} is not a number") from None
            top = allowed[sid, question]
            if not (0 <= value <= top) or value != value:
                raise ManualScoresError(f"{path}, line {line}: points {points} out of range 0..{top:g} for {question!r}")
            scores[sid, question] = (value, comment)
    return scores


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
