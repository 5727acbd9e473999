"""Copied code: the class's code answers compared pair by pair, the given code left out.

**What is compared.** Per assignment, the answers to the questions its spec names in
:attr:`autograder.spec.AssignmentSpec.code_answers` (for the CNN units: the ``conv2d`` and
``max_pool2d`` implementations, the model and the training cells).  A question's answer is found by
the notebook's structure, never by cell numbers: the code cells between the question's
``grader.check("name")`` cell (Otter Assign writes one after each autograded question) and the
template cell just before the question's answer cells, so cells a student added there count too.
Submissions are compared within their assignment only, across per-student variants (variants
change numbers, not the code students write).  A second file of a student (``duplicate_of``) is
left out.

**The given code is subtracted.** What every student starts from or is shown does not count: the
template's code cells (the student notebook as distributed) and the reference answers of the
master notebook (what a student who follows the lesson writes, e.g. the lesson's model), and then
every passage found in more than a share of the class's answers (common knowledge, as MOSS does).

**How a pair is scored.** copydetect (winnowing: fingerprints of k-grams of tokens, with names and
strings normalised, comments and layout ignored) fingerprints each answer; an inverted index of the
fingerprints that count (a sparse students x fingerprints matrix) gives, in one product, how many
each pair shares, so the cost follows the shared fingerprints rather than the pairs of a class of
500.  A's share is the part of A's own fingerprints (all compared answers together) that B's
answers to the same questions have, and likewise for B; the pair is flagged when the larger share
reaches :attr:`SimilaritySettings.threshold` and they share at least
:attr:`SimilaritySettings.min_shared` fingerprints.  A flag is a reason to look, not a verdict.

Everything read from a notebook is untrusted: it is read through
:func:`autograder.submission_files.read_notebook` (lstat, O_NOFOLLOW, capped), each answer is
capped, and the report's template escapes every character of it.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class SimilaritySettings:
    """How code answers are compared for copied code (``report.html``, ``needs_review.csv``)."""

    # a pair is flagged when at least this share of one notebook's own code is found in the other's
    threshold: float = 0.5
    # ... and they share at least this many fingerprints (a shared passage of n tokens holds n - kgram + 1)
    min_shared: int = 60
    # tokens per fingerprint (copydetect's noise threshold; its default is 25): shorter shared passages are not seen
    kgram: int = 20
    # winnowing window (copydetect's default, 1: every k-gram is a fingerprint, so every run gives the same result)
    window: int = 1
    # a passage found in more than this share of the class's answers to a question is common knowledge...
    common_share: float = 0.2
    common_min: int = 10  # ... and in more than this many of them: left out like the template
    max_answer_chars: int = 10_000  # a longer answer is compared on its first so many characters
    max_answer_cells: int = 10  # an answer of more code cells is compared on the last so many
    max_shown: int = 50  # pairs shown side by side in report.html (the most similar; every pair is listed)


DEFAULTS = SimilaritySettings()


SHARED, GIVEN, OWN = "shared", "given", "own"


@dataclass(frozen=True)
class Segment:
    """A piece of an answer's code as the student wrote it: ``shared`` (also in the other answer),
    ``given`` (the template's, the reference answer's or common in the class: not counted) or ``own``."""

    text: str
    kind: str


@dataclass(frozen=True)
class AnswerMatch:
    """One question's answers of a flagged pair, side by side."""

    question: str
    similarity_a: float  # share of A's own code in this answer found in B's
    similarity_b: float
    a: tuple[Segment, ...]
    b: tuple[Segment, ...]


@dataclass(frozen=True)
class SimilarPair:
    """Two submissions of one assignment whose code answers share more than the threshold."""

    assignment: str
    a: str  # student ids, a < b
    b: str
    similarity_a: float  # share of A's own code (all compared answers) found in B's
    similarity_b: float
    shared: int  # fingerprints (k-grams of tokens) the two have in common
    # the questions whose answers share code, in the assignment's order (their code: the first pairs only)
    answers: tuple[AnswerMatch, ...]

    @property
    def similarity(self) -> float:
        return max(self.similarity_a, self.similarity_b)

    def questions(self) -> list[str]:
        return [m.question for m in self.answers]


@dataclass
class SimilarityReport:
    """What :func:`check_class` found: the flagged pairs, what was compared and what could not be."""

    settings: SimilaritySettings = DEFAULTS
    pairs: list[SimilarPair] = field(default_factory=list)
    compared: dict[str, dict] = field(default_factory=dict)  # assignment -> {"questions": [...], "submissions": n}
    not_compared: list[str] = field(default_factory=list)  # an assignment or a notebook left out, and why
    error: str | None = None  # the check itself failed (a grader fault: nothing is flagged, the report says so)


# --- where a question's code answer is ----------------------------------------------------------

_CHECK = re.compile(r"""^\s*grader\.check\(\s*(['"])(?P<question>[^'"\n]+)\1\s*\)\s*$""")
ANSWER_TAG = "otter_answer_cell"  # Otter Assign's tag on the cells students fill in


def _source(cell) -> str:
    src = cell.get("source", "") if isinstance(cell, dict) else ""
    return "".join(src) if isinstance(src, list) else str(src)


def _check_question(cell) -> str | None:
    if not isinstance(cell, dict) or cell.get("cell_type") != "code":
        return None
    m = _CHECK.match(_source(cell))
    return m.group("question") if m else None


@dataclass(frozen=True)
class Layout:
    """Where the template keeps a question's code answer: after ``anchor`` (the source of the template
    cell just before the answer cells), before the question's ``grader.check`` cell."""

    question: str
    anchor: str | None
    fixed: frozenset[str]  # the sources of every template cell students do not fill in (stripped)


class TemplateError(ValueError):
    """The assignment's template lacks a question its spec names (an author's fault, said in the report)."""


def layouts(template: dict, questions: Iterable[str]) -> dict[str, Layout]:
    """Each named question's :class:`Layout` in the template (the student notebook as distributed)."""
    cells = template.get("cells") or []
    fixed = frozenset(_source(c).strip() for c in cells
                      if ANSWER_TAG not in ((c.get("metadata") or {}).get("tags") or []) and _source(c).strip())
    found: dict[str, Layout] = {}
    for i, cell in enumerate(cells):
        q = _check_question(cell)
        if q is None or q in found:
            continue
        j = i - 1
        while j >= 0 and ANSWER_TAG in ((cells[j].get("metadata") or {}).get("tags") or []):
            j -= 1
        found[q] = Layout(q, _source(cells[j]).strip() if j >= 0 else None, fixed)
    missing = [q for q in questions if q not in found]
    if missing:
        raise TemplateError(f"the template has no grader.check cell for {', '.join(missing)}")
    return {q: found[q] for q in questions}


def answer_code(nb: dict, layout: Layout, settings: SimilaritySettings = DEFAULTS) -> str | None:
    """The code of a question's answer in ``nb`` (a parsed notebook, untrusted): the code cells between
    the question's ``grader.check`` cell and the template cell before the answer (every such check
    cell: a second one put elsewhere cannot hide the answer); when the check cell is gone, the code
    cells after that template cell up to the next template cell.  None when neither is there (the
    question's cells were deleted or rewritten)."""
    cells = [c for c in (nb.get("cells") if isinstance(nb, dict) else None) or [] if isinstance(c, dict)]

    def boundary(c: dict) -> bool:
        src = _source(c).strip()
        return src == layout.anchor or src in layout.fixed or _check_question(c) is not None

    picked: set[int] = set()
    checks = [i for i, c in enumerate(cells) if _check_question(c) == layout.question]
    for check in checks:
        i = check - 1
        while i >= 0 and not boundary(cells[i]):  # stops at the previous check cell: each cell walked once
            picked.add(i)
            i -= 1
    if not checks:
        start = next((i for i, c in enumerate(cells) if _source(c).strip() == layout.anchor), None) \
            if layout.anchor is not None else None
        if start is None:
            return None
        i = start + 1
        while i < len(cells) and not boundary(cells[i]):
            picked.add(i)
            i += 1
    code = [_source(cells[i]) for i in sorted(picked) if cells[i].get("cell_type") == "code"]
    return "\n\n".join(code[-settings.max_answer_cells:])[:settings.max_answer_chars]


def reference_answers(master: dict) -> list[str]:
    """The master notebook's solution code cells (between Otter Assign's ``# BEGIN SOLUTION`` and
    ``# END SOLUTION`` raw cells): what a student who follows the lesson writes."""
    out, inside = [], False
    for cell in master.get("cells") or []:
        src = _source(cell).strip()
        if cell.get("cell_type") == "raw" and src.startswith("# BEGIN SOLUTION"):
            inside = True
        elif cell.get("cell_type") == "raw" and src.startswith("# END SOLUTION"):
            inside = False
        elif inside and cell.get("cell_type") == "code":
            out.append(_source(cell))
    return out


def given_code(template: dict, master: dict | None) -> list[str]:
    """Code that every student starts from or is shown: the template's code cells and the master's
    reference answers."""
    code = [_source(c) for c in template.get("cells") or [] if c.get("cell_type") == "code"]
    return code + (reference_answers(master) if master else [])


# --- fingerprints and comparison (copydetect) ------------------------------------------------------

def _fingerprint(code: str, settings: SimilaritySettings):
    """copydetect's fingerprint of one answer: tokens with names, strings and comments normalised."""
    from copydetect import CodeFingerprint

    return CodeFingerprint("answer.py", settings.kgram, settings.window, language="python", fp=io.StringIO(code))


def _without(fp, drop: set[int]):
    """``fp`` with the fingerprints in ``drop`` removed (given code, common knowledge).

    Done here rather than with copydetect's ``boilerplate`` argument, which also drops every passage
    that repeats within one answer (it intersects with ``assume_unique`` on a list that may repeat)."""
    from copydetect.utils import get_token_coverage

    if not drop or fp.hashes.isdisjoint(drop):
        return fp
    out = copy.copy(fp)
    out.hashes = fp.hashes - drop
    out.hash_idx = {h: i for h, i in fp.hash_idx.items() if h in out.hashes}
    out.token_coverage = get_token_coverage(out.hash_idx, fp.k, len(fp.filtered_code))
    return out


def _raw_slices(fp, hashes: set[int]):
    """Where the fingerprints ``hashes`` of ``fp`` lie in the raw code: copydetect's slices (row 0 the
    starts, row 1 the ends), mapped from the filtered code as :func:`copydetect.compare_files` maps them."""
    import numpy as np
    from copydetect.utils import get_copied_slices

    idx = [i for h in hashes & fp.hashes for i in fp.hash_idx[h]]
    slices = get_copied_slices(np.array(idx, dtype=np.int64), fp.k)
    if len(slices[0]) and len(fp.offsets) > 0:
        slices = slices + fp.offsets[:, 1][np.clip(np.searchsorted(fp.offsets[:, 0], slices), 0,
                                                   fp.offsets.shape[0] - 1)]
    return slices


def _segments(code: str, shared, given) -> tuple[Segment, ...]:
    """``code`` cut into :class:`Segment` s: ``shared`` and ``given`` are copydetect slices (start and
    end offsets in the raw code); shared wins where both cover a character."""
    kinds = [OWN] * len(code)
    for slices, kind in ((given, GIVEN), (shared, SHARED)):
        if len(slices) and len(slices[0]):
            for start, end in zip(*slices):
                start, end = max(0, int(start)), min(len(code), int(end))
                kinds[start:end] = [kind] * max(0, end - start)
    out: list[Segment] = []
    for kind, run in itertools.groupby(zip(kinds, code), key=lambda kc: kc[0]):
        out.append(Segment("".join(c for _, c in run), kind))
    return tuple(out)


def _index(prints: dict[str, object], students: list[str], drop: set[int], cap: float):
    """One question's inverted index as a sparse incidence matrix (students x fingerprints), over the
    fingerprints that are neither in ``drop`` nor common (in more than ``cap`` answers).  Returns the
    matrix of fingerprints shared by each pair (its product with its transpose), each
    student's count of fingerprints that count, and the common fingerprints."""
    import numpy as np
    from scipy import sparse

    rows, hashes = [], []
    for i, s in enumerate(students):
        own = prints[s].hashes - drop
        rows.append(np.full(len(own), i, dtype=np.int64))
        hashes.append(np.fromiter(own, dtype=np.int64, count=len(own)))
    rows_a = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    hashes_a = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.int64)
    unique, column, counts = np.unique(hashes_a, return_inverse=True, return_counts=True)
    df = counts[column]  # in how many answers each student's fingerprint is
    counted = df <= cap
    own_counts = np.bincount(rows_a[counted], minlength=len(students))
    kept = counted & (df > 1)  # a fingerprint of one answer alone can be shared by no pair
    m = sparse.csr_matrix((np.ones(int(kept.sum()), dtype=np.int64), (rows_a[kept], column[kept])),
                          shape=(len(students), len(unique)))
    return (m @ m.T).tocsr(), own_counts, set(unique[counts > cap].tolist())  # its diagonal is never read


def compare(answers: dict[str, dict[str, str]], given: Iterable[str], questions: list[str],
            settings: SimilaritySettings = DEFAULTS, assignment: str = "") -> list[SimilarPair]:
    """The flagged pairs of one assignment's submissions, most similar first.

    ``answers``: {student id: {question: code}}; ``given``: the code every student starts from or is
    shown (see :func:`given_code`).  copydetect fingerprints every answer; an inverted index of the
    fingerprints that are neither given nor common (a sparse incidence matrix) counts, in one product,
    the fingerprints every pair shares, so the cost follows the shared fingerprints, not the pairs.  A
    student's share is the part of their own fingerprints (all compared answers together) that the
    other's answers to the same questions have.  The first :attr:`SimilaritySettings.max_shown` pairs
    get their code cut into :class:`Segment` s (copydetect's ``compare_files``) for the report."""
    from copydetect import compare_files
    from scipy import sparse

    given_hashes: set[int] = set()
    for code in given:
        given_hashes |= _fingerprint(code, settings).hashes
    students = sorted(answers)
    n = len(students)
    cap = max(settings.common_min, settings.common_share * n)
    prints = {q: {s: _fingerprint(answers[s].get(q, ""), settings) for s in students} for q in questions}
    per_question, dropped = {}, {}
    total = sparse.csr_matrix((n, n), dtype="int64")
    own = [0] * n
    for q in questions:
        shared_q, own_q, common = _index(prints[q], students, given_hashes, cap)
        per_question[q] = (shared_q, own_q)
        dropped[q] = given_hashes | common  # per question: the fingerprints left out (given or common)
        total = total + shared_q
        own = [x + int(y) for x, y in zip(own, own_q)]
    upper = sparse.triu(total, k=1).tocoo()
    pairs = []
    for i, j, count in zip(upper.row.tolist(), upper.col.tolist(), upper.data.tolist()):
        sim_a, sim_b = count / own[i] if own[i] else 0.0, count / own[j] if own[j] else 0.0
        if max(sim_a, sim_b) < settings.threshold or count < settings.min_shared:
            continue
        matches = []
        for q in questions:
            shared_q, own_q = per_question[q]
            c = int(shared_q[i, j])
            if c:
                matches.append((q, c / own_q[i] if own_q[i] else 0.0, c / own_q[j] if own_q[j] else 0.0))
        pairs.append((students[i], students[j], sim_a, sim_b, count, matches))
    pairs.sort(key=lambda p: (-max(p[2], p[3]), p[0], p[1]))
    out = []
    for rank, (a, b, sim_a, sim_b, count, matches) in enumerate(pairs):
        answers_shown = []
        for q, x, y in matches:
            seg_a: tuple[Segment, ...] = ()
            seg_b: tuple[Segment, ...] = ()
            if rank < settings.max_shown:  # the code side by side, shared passages marked
                fa, fb = prints[q][a], prints[q][b]
                _, _, (slices_a, slices_b) = compare_files(_without(fa, dropped[q]), _without(fb, dropped[q]))
                seg_a = _segments(answers[a].get(q, ""), slices_a, _raw_slices(fa, dropped[q]))
                seg_b = _segments(answers[b].get(q, ""), slices_b, _raw_slices(fb, dropped[q]))
            answers_shown.append(AnswerMatch(q, round(float(x), 4), round(float(y), 4), seg_a, seg_b))
        out.append(SimilarPair(assignment, a, b, round(sim_a, 4), round(sim_b, 4), count, tuple(answers_shown)))
    return out


# --- a batch's results -----------------------------------------------------------------------------

def _load_trusted(path) -> dict:
    """A notebook that ships with the grader (the template, the master): the grader's own file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_class(results: list[dict], settings: SimilaritySettings = DEFAULTS) -> SimilarityReport:
    """Compare the code answers of a batch's submissions, per assignment.  Never raises: a fault of
    the check itself is the report's ``error`` (the rest of the batch's reports are written)."""
    report = SimilarityReport(settings)
    try:
        _check_class(results, settings, report)
    except Exception as exc:  # noqa: BLE001 - a grader fault: said, never a student's flag
        report.pairs = []
        report.error = f"the copied-code check failed: {type(exc).__name__}: {exc}"
    return report


def _check_class(results: list[dict], settings: SimilaritySettings, report: SimilarityReport) -> None:
    from autograder import registry
    from autograder.submission_files import SubmissionFileError, describe_error, read_notebook

    by_assignment: dict[str, list[dict]] = {}
    for r in results:
        if (r["student"].get("extra") or {}).get("duplicate_of") or not r.get("submission"):
            continue  # a second file of a student, or an input that was no notebook
        if r.get("assignment"):
            by_assignment.setdefault(r["assignment"], []).append(r)
    for name, rows in sorted(by_assignment.items()):
        try:
            spec = registry.get(name)
        except LookupError as exc:
            report.not_compared.append(f"{name}: not compared ({exc})")
            continue
        questions = list(spec.code_answers)
        if not questions:
            report.not_compared.append(f"{name}: not compared (its spec names no code answers)")
            continue
        template = _load_trusted(spec.student_dir / f"{spec.name}.ipynb")
        master = _load_trusted(spec.master_notebook) if spec.master_notebook.is_file() else None
        try:
            where = layouts(template, questions)
        except TemplateError as exc:
            report.not_compared.append(f"{name}: not compared ({exc})")
            continue
        answers: dict[str, dict[str, str]] = {}
        for r in rows:
            sid = r["student"]["id"]
            try:
                nb = read_notebook(r["submission"])  # lstat, O_NOFOLLOW, capped: the submission's own file
            except SubmissionFileError as exc:
                report.not_compared.append(f"{name}: {sid} not compared ({exc})")
                continue
            except (OSError, ValueError) as exc:
                report.not_compared.append(f"{name}: {sid} not compared ({describe_error(exc)})")
                continue
            found = {q: answer_code(nb, where[q], settings) for q in questions}
            missing = [q for q, code in found.items() if code is None]
            if missing:  # compared without them; said, since deleting a question's cells hides its answer
                report.not_compared.append(f"{name}: {sid}: the answer to {', '.join(missing)} was not found "
                                           f"(the question's cells were deleted or changed)")
            answers[sid] = {q: code or "" for q, code in found.items()}
        report.compared[name] = {"questions": questions, "submissions": len(answers)}
        report.pairs += compare(answers, given_code(template, master), questions, settings, name)
    report.pairs.sort(key=lambda p: (-p.similarity, p.assignment, p.a, p.b))


# --- flags ---------------------------------------------------------------------------------------------

def _percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def annotate(results: list[dict], report: SimilarityReport) -> list[dict]:
    """``results`` with each flagged student's pairs under ``similar_code`` (shallow copies; the
    inputs and the result files are untouched): what :func:`flags` reads."""
    mine: dict[str, list[dict]] = {}
    for p in report.pairs:
        for me, other, own in ((p.a, p.b, p.similarity_a), (p.b, p.a, p.similarity_b)):
            mine.setdefault(me, []).append({"assignment": p.assignment, "with": other, "own_share": own,
                                            "similarity": p.similarity, "questions": p.questions()})
    return [{**r, "similar_code": mine[r["student"]["id"]]} if r["student"]["id"] in mine else r for r in results]


def flags(r: dict) -> list[str]:
    """The copied-code flags of one row (instructor only: they name a classmate)."""
    return [f"similar code to {s['with']}: {_percent(s['own_share'])} of this notebook's own code in "
            f"{', '.join(s['questions'])} is also in theirs (see report.html)"
            for s in r.get("similar_code") or []]


__all__ = ["SimilaritySettings", "DEFAULTS", "SimilarPair", "AnswerMatch", "Segment", "SimilarityReport",
           "check_class", "compare", "annotate", "flags", "answer_code", "layouts", "given_code"]
