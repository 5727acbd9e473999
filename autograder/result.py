"""One typed result per submission, with its schema version (the JSON shape in the README).

The engine (:mod:`autograder.judge.pipeline`), the batch (:mod:`autograder.batch`: rows for inputs
that could not be graded) and the Gradescope runner (:mod:`autograder.lms.gradescope`) all build a
:class:`GradeResult`; its :meth:`GradeResult.to_dict` is what ``results/<id>.json`` holds and what
the reports read.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

RESULT_SCHEMA_VERSION = 1

GRADED, ERROR, GRADER_ERROR = "graded", "error", "grader_error"  # error: the submission's fault, scored
STATUSES = (GRADED, ERROR, GRADER_ERROR)  # grader_error: the grader's fault, graded again by the next run


@dataclass
class CaseResult:
    """One Otter test case."""

    name: str
    hidden: bool
    points: float | None
    passed: bool
    message: str


@dataclass
class QuestionResult:
    """One question (one Otter test file)."""

    name: str
    score: float
    max_score: float
    cases: list[CaseResult] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "QuestionResult":
        return cls(d["name"], float(d["score"]), float(d["max_score"]), [CaseResult(**c) for c in d.get("cases", [])])


@dataclass
class GradeResult:
    """A submission's result.  ``status``: ``graded``, ``error`` (the submission's fault: scored on what
    ran) or ``grader_error`` (never the student's: not scored, graded again by the next run)."""

    assignment: str | None = None
    submission: str | None = None
    status: str = GRADED
    error: str | None = None
    score: float = 0.0
    max_score: float | None = None
    questions: list[QuestionResult] = field(default_factory=list)
    retrain: dict | None = None  # autograder.verifier.retrain.RetrainReport, as a dict
    limits_hit: list[str] = field(default_factory=list)
    execution: dict = field(default_factory=dict)  # seconds, cells, skipped_cells, runs, output_tail
    isolation: dict = field(default_factory=dict)  # mode, isolated, uid, notes, self_test, cgroup ("v1", "v2" or None)
    versions: dict = field(default_factory=dict)
    seconds: float | None = None
    student: dict | None = None  # set by the batch: id, source, name, email, extra
    retry: bool = False  # a worker died: the next run grades it again
    retrain_pending: bool = False  # a partial result, judged before retraining finished
    variant: dict | None = None  # per-student variants: the variant judged with, and the instructor's flags
    schema: int = RESULT_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown result status {self.status!r}")

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def error_row(cls, message: str, *, status: str = ERROR, student: dict | None = None,
                  assignment: str | None = None, retry: bool = False) -> "GradeResult":
        """A row for something that was not graded (a PDF, a refused zip, an unknown assignment, a dead worker)."""
        return cls(assignment=assignment, status=status, error=message, student=student, retry=retry)

    def fail(self, message: str, status: str = ERROR) -> "GradeResult":
        self.status, self.error = status, message
        return self

    def judged(self, questions: list[dict], retrain: dict | None) -> "GradeResult":
        """Take the judge's questions and retraining report; the score is their sum."""
        self.questions = [QuestionResult.from_dict(q) for q in questions]
        self.retrain = retrain
        self.score = round(sum(q.score for q in self.questions), 6)
        self.max_score = round(sum(q.max_score for q in self.questions), 6)
        return self

    def finish(self, started: float) -> "GradeResult":
        """Stamp the wall time since ``started`` (time.monotonic()); no questions: no maximum score."""
        self.seconds = round(time.monotonic() - started, 3)
        if not self.max_score:
            self.max_score = None
        return self

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``results/<id>.json`` (README: Result file); optional flags only when set."""
        out = asdict(self)
        for flag in ("retry", "retrain_pending", "variant"):
            if not out[flag]:
                del out[flag]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "GradeResult":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["questions"] = [QuestionResult.from_dict(q) for q in d.get("questions") or []]
        return cls(**kw)
