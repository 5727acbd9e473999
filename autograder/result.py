"""One typed result per submission, with its schema version (the JSON shape: docs/reference/result-schema.md, generated from these classes).

The engine (:mod:`autograder.engine`), the batch (:mod:`autograder.batch`: rows for inputs
that could not be graded) and the Gradescope runner (:mod:`autograder.lms.gradescope`) all build a
:class:`GradeResult`; its :meth:`GradeResult.to_dict` is what ``results/<id>.json`` holds and what
the reports read.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from autograder.faults import GRADER_ERROR_CAUSES, Fault  # noqa: F401 (GRADER_ERROR_CAUSES re-exported)

RESULT_SCHEMA_VERSION = 1

GRADED, ERROR, GRADER_ERROR = "graded", "error", "grader_error"  # error: the submission's fault, scored
STATUSES = (GRADED, ERROR, GRADER_ERROR)  # grader_error: the grader's fault, graded again by the next run

# Why a check was not decided in a run (neither passed nor failed): only the training question's accuracy
# check, whose points need a retrain of the model.  A result with such a check is provisional.
Undecided = Literal[
    "retraining_off",  # the run did not retrain models (grade --no-retrain, the Gradescope runner's --no-retrain)
    "retraining_pending",  # judged before retraining finished (a partial result, see GradeResult.retrain_pending)
]
UNDECIDED: tuple[str, ...] = get_args(Undecided)
#: Why a result is provisional, for the instructor (a sheet, the report); students read STUDENT_PROVISIONAL.
PROVISIONAL_WHY: dict[str, str] = {
    "retraining_off": "graded with retraining off, so the trained accuracy was not checked",
    "retraining_pending": "judged before retraining finished, so the trained accuracy was not checked yet",
}
#: The same, in plain words for the student's own page.
STUDENT_PROVISIONAL = ("The grader has not retrained your model yet, so the points that depend on its accuracy are "
                       "not decided: they are not counted in this total, which will change once your model is "
                       "retrained.")


def _provisional(status: str, retrain_pending: bool, undecided: list) -> Undecided | None:
    """The one definition of a provisional result: a scored result (not a grader error) with a check left
    undecided by its run, or judged before retraining finished; the first such check's reason."""
    if status == GRADER_ERROR:
        return None  # not scored at all: a grader error, said as such
    reasons = [u for u in undecided if u]
    if retrain_pending:
        return "retraining_pending"
    return reasons[0] if reasons else None


def provisional(result: dict) -> Undecided | None:
    """:attr:`GradeResult.provisional` of a result as its file holds it (the reports read dicts)."""
    return _provisional(result.get("status", GRADED), bool(result.get("retrain_pending")),
                        [c.get("undecided") for q in result.get("questions") or [] for c in q.get("cases") or []])


@dataclass
class CaseResult:
    """One Otter test case."""

    name: str  # the test case's name in Otter's test file
    hidden: bool  # a hidden check: counts, shown to the student as passed/failed only
    points: float | None  # its points (None: the question's points are split among its cases)
    passed: bool  # whether the check passed
    message: str  # the feedback: the likely mistake for a public check, a general message for a hidden one
    # the named likely mistakes this failed case recognised (ids of the assignment's misconception
    # catalogue, e.g. "flipped_filter"), as the check raised them; empty when it names none
    misconceptions: list[str] = field(default_factory=list)
    # whether the case judged an answer: false while the answer is still ``...``, a stub, a model without
    # layers, not compiled or not trained (the class insight counts answered questions only)
    answered: bool = True
    # not decided in this run (neither passed nor failed, no points), and why: "retraining_off" or
    # "retraining_pending" (the accuracy check when no retrain measured the model); None: decided
    undecided: Undecided | None = None

    def __post_init__(self) -> None:
        if self.undecided is not None and self.undecided not in UNDECIDED:
            raise ValueError(f"unknown reason for an undecided check {self.undecided!r}")


@dataclass
class QuestionResult:
    """One question (one Otter test file)."""

    name: str  # the question (Otter's test file name)
    score: float  # the points earned
    max_score: float  # the question's points
    cases: list[CaseResult] = field(default_factory=list)  # every public and hidden case

    @classmethod
    def from_dict(cls, d: dict) -> "QuestionResult":
        return cls(d["name"], float(d["score"]), float(d["max_score"]), [CaseResult(**c) for c in d.get("cases", [])])


@dataclass
class GradeResult:
    """A submission's result.  ``status``: ``graded``, ``error`` (the submission's fault: scored on what
    ran) or ``grader_error`` (never the student's: not scored, graded again by the next run).

    A result is *provisional* when a check of it was not decided by this run (``provisional`` in the
    file: ``retraining_off`` or ``retraining_pending``, computed by ``GradeResult.provisional`` from
    its cases' ``undecided``): its total leaves out points that only a retrain of the model can decide.
    The sheets and the report mark it, the Canvas import leaves it out unless asked, and the next
    ``grade`` run with retraining on grades it again."""

    assignment: str | None = None  # the assignment's name (e.g. "cnn_mnist")
    submission: str | None = None  # the notebook graded
    status: str = GRADED  # graded, error or grader_error (decided by the fault's owner)
    error: str | None = None  # why the status is not graded, for people (the fault's message)
    score: float = 0.0  # the sum of the questions' scores
    max_score: float | None = None  # the sum of their maximum scores (None: no question was judged)
    questions: list[QuestionResult] = field(default_factory=list)  # one per Otter test file
    retrain: dict | None = None  # autograder.verifier.retrain.RetrainReport, as a dict
    limits_hit: list[str] = field(default_factory=list)  # each limit the submission reached, for people
    execution: dict = field(default_factory=dict)  # seconds, cells, skipped_cells, runs, output_tail
    isolation: dict = field(default_factory=dict)  # mode, isolated, uid, notes, self_test, cgroup ("v1", "v2" or None), metering (what the kernel meters of its jail), disk (its total disk limit), both also among the notes
    versions: dict = field(default_factory=dict)  # the grader, Python, otter-grader, numpy, keras, tensorflow, jax (those installed)
    seconds: float | None = None  # wall time to grade it
    student: dict | None = None  # set by the batch: id, source, name, email, extra
    retry: bool = False  # a worker died: the next run grades it again
    retrain_pending: bool = False  # a partial result, judged before retraining finished
    variant: dict | None = None  # per-student variants: the variant judged with, and the instructor's flags
    cause: str | None = None  # with grader_error only: the fault's cause, one of the host's or the grader's
    # the typed fault behind an error or a grader_error (autograder.faults.Fault): owner (submission, host or
    # grader), cause (see the table of causes) and message; absent when graded
    fault: dict | None = None
    earlier_causes: list[str] = field(default_factory=list)  # causes of this submission's grader errors on earlier
    # runs, oldest first (set by the batch; a repeat is listed by autograder.lms.reports.repeated_grader_error)
    # hand-graded questions (Otter Assign ``manual: true``), see autograder.manual.ManualAnswer: name,
    # max_score, score (None: pending), comment, answer; their points are in max_score, and in score once graded
    manual: list[dict] = field(default_factory=list)
    schema: int = RESULT_SCHEMA_VERSION  # the version of this layout

    def __post_init__(self) -> None:
        if isinstance(self.fault, Fault):
            self.fault = self.fault.to_dict()
        if self.status not in STATUSES:
            raise ValueError(f"unknown result status {self.status!r}")
        if self.status == GRADER_ERROR and self.cause is None:
            self.cause = "unknown"
        if self.status != GRADER_ERROR:
            self.cause = None
        if self.cause is not None and self.cause not in GRADER_ERROR_CAUSES:
            raise ValueError(f"unknown grader error cause {self.cause!r}")

    @property
    def provisional(self) -> Undecided | None:
        """Why this result is provisional (its training question's accuracy was not decided by a retrain),
        or None when every check was decided (see :func:`provisional`)."""
        return _provisional(self.status, self.retrain_pending,
                            [c.undecided for q in self.questions for c in q.cases])

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def error_row(cls, fault: Fault, *, student: dict | None = None, assignment: str | None = None,
                  retry: bool = False) -> "GradeResult":
        """A row for something that was not graded (a PDF, a refused zip, an unknown assignment, a dead worker)."""
        return cls(assignment=assignment, student=student, retry=retry).fail(fault)

    def fail(self, fault: Fault) -> "GradeResult":
        """Take ``fault``: the status (``error`` for the submission's, ``grader_error`` for the host's or the
        grader's), the message and, for a grader_error, the cause follow from it."""
        self.fault = fault.to_dict()
        self.status = GRADER_ERROR if fault.graders else ERROR
        self.error = fault.message
        self.cause = fault.cause if fault.graders else None
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
        """The JSON object of ``results/<id>.json`` (docs: reference/result-schema.md); optional flags only when set."""
        out = asdict(self)
        for flag in ("retry", "retrain_pending", "variant", "cause", "fault", "earlier_causes", "manual"):
            if not out[flag]:
                del out[flag]
        for q in out["questions"]:
            for case in q["cases"]:
                if case.get("undecided") is None:
                    case.pop("undecided", None)
        if self.provisional:
            out["provisional"] = self.provisional  # computed: written for readers of the file, never read back
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "GradeResult":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["questions"] = [QuestionResult.from_dict(q) for q in d.get("questions") or []]
        return cls(**kw)
