"""One typed fault, from where it is raised to the result, ``needs_review.csv`` and Gradescope.

A :class:`Fault` says whose it is (:data:`Owner`: the submission, the host or the grader), why (its
:data:`Cause`, one of :data:`CAUSES`, each with one owner) and what people are told (its message).  It is
raised as :class:`FaultError`, crosses processes as a dict (:meth:`Fault.to_dict`, :meth:`Fault.from_dict`)
and is stored in the result (``GradeResult.fault``), where it decides the status: the submission's fault is
``error`` (scored on what ran), the host's or the grader's is ``grader_error`` (never the student's: not
scored, graded again by the next run).  Code decides on the cause, never on the message's text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

Owner = Literal["submission", "host", "grader"]
SUBMISSION, HOST, GRADER = "submission", "host", "grader"
OWNERS: tuple[str, ...] = get_args(Owner)

Cause = Literal[
    # --- the submission's (status error; for a retrain: the recipe is refused, with the figures) ---
    "unreadable",  # the submitted file could not be read as a notebook (a link, not JSON, too large)
    "input_refused",  # an input that is not a submission to grade (a PDF, a refused archive, a second file)
    "unknown_assignment",  # the notebook names no assignment of this run, or one that is not installed
    "memory_limit",  # the run went over its memory limit
    "process_limit",  # the run started more processes than its limit
    "notebook_time_limit",  # the notebook went over its time limit
    "interrupt_ignored",  # a cell over its time limit ignored the interrupt (a cell that heeds it only loses that cell)
    "crashed",  # the run ended before grading finished (an exit, a signal)
    "tampering",  # the grader's own files changed while the submission ran
    "recipe_refused",  # the model's recipe cannot be retrained (refused by a rule, the budget or Keras)
    "recipe_too_slow",  # retraining the recipe would take longer than allowed on this host running normally
    "recipe_memory",  # retraining the recipe needs more memory than allowed
    # --- the host's (status grader_error) ---
    "host_limit",  # the host ran short: the grader's own start-up or process over its memory limit, disk
    "host_slow",  # the host ran measurably slower than normal (starved of CPU, or slower than its calibration)
    "timeout_infrastructure",  # a grader's safety net ran out (a clock the submission's limits never reach)
    "worker_died",  # a batch worker process died
    # --- the grader's (status grader_error) ---
    "grader_crash",  # the grader's own code failed (the judge, a retrain worker, an exception in the engine)
    "dataset_missing",  # the assignment's data could not be found or verified
    "interpreter",  # Python, the kernel or the jail could not start
    "jail_unsafe",  # no safe jail here: the jail's self-test failed, or no isolation is available
    "unknown",  # a result written before causes were recorded
]
CAUSES: tuple[str, ...] = get_args(Cause)
_HOST_CAUSES = ("host_limit", "host_slow", "timeout_infrastructure", "worker_died")
_GRADER_CAUSES = ("grader_crash", "dataset_missing", "interpreter", "jail_unsafe", "unknown")
OWNER_OF: dict[str, str] = {c: HOST if c in _HOST_CAUSES else GRADER if c in _GRADER_CAUSES else SUBMISSION
                            for c in CAUSES}
# the recipe's causes: a retraining report's fault only (the result stays graded; its training check fails)
RECIPE_CAUSES: tuple[str, ...] = ("recipe_refused", "recipe_too_slow", "recipe_memory")
# the causes of a grader_error (the host's and the grader's), as GradeResult.cause holds them
GRADER_ERROR_CAUSES: tuple[str, ...] = tuple(c for c in CAUSES if OWNER_OF[c] != SUBMISSION)


@dataclass(frozen=True)
class Fault:
    """Whose fault, why, and what people are told.  ``owner`` follows from ``cause`` (:data:`OWNER_OF`)."""

    cause: str  # one of autograder.faults.CAUSES
    message: str  # for people: the student (their own faults) or the instructor
    owner: str = ""  # submission, host or grader (filled from the cause)

    def __post_init__(self) -> None:
        if self.cause not in CAUSES:
            raise ValueError(f"unknown fault cause {self.cause!r}")
        if not self.owner:
            object.__setattr__(self, "owner", OWNER_OF[self.cause])
        if self.owner != OWNER_OF[self.cause]:
            raise ValueError(f"a {self.cause!r} fault is the {OWNER_OF[self.cause]}'s, not the {self.owner}'s")

    @property
    def graders(self) -> bool:
        """The host's or the grader's fault: a ``grader_error``, never the student's."""
        return self.owner != SUBMISSION

    def with_message(self, message: str) -> "Fault":
        return Fault(self.cause, message)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fault":
        """A fault that crossed a process or a file; anything malformed is the grader's own crash."""
        try:
            return cls(str(d["cause"]), str(d.get("message") or ""))
        except (KeyError, TypeError, ValueError):
            return cls("grader_crash", f"a malformed fault record: {d!r}"[:500])


class FaultError(Exception):
    """Raised with a :class:`Fault`; ``str(exc)`` is its message."""

    def __init__(self, fault: Fault):
        super().__init__(fault.message)
        self.fault = fault

    @classmethod
    def of(cls, cause: str, message: str) -> "FaultError":
        return cls(Fault(cause, message))


def of_result(result: dict) -> Fault | None:
    """The fault of a result dict (``results/<id>.json``): its ``fault``, or, for a result written before faults
    were typed, one read from its status and cause (never from its message)."""
    if result.get("fault"):
        return Fault.from_dict(result["fault"])
    status = result.get("status")
    if status == "grader_error":
        cause = result.get("cause") if result.get("cause") in GRADER_ERROR_CAUSES else "unknown"
        return Fault(cause, str(result.get("error") or ""))
    return None
