"""The named likely mistakes of an assignment (its misconception catalogue), as a result records them.

A check that recognises a typical mistake says so as data (``CheckFailed.reasons`` in the CNN units'
checks); the judge records the ids on the case (``CaseResult.misconceptions``) and whether the case
judged an answer at all (``CaseResult.answered``: not for ``...``, a stub, an untrained model).  This
module reads them back for the class insight (:mod:`autograder.lms.insight`): the catalogue an
assignment's spec names (``misconceptions``: a module with ``CATALOGUE``, ``{id: title}``), the ids of
a failed answered case that the catalogue knows, and whether a question was answered.  Nothing here
reads a message's wording.
"""

from __future__ import annotations

import importlib
from functools import lru_cache


@lru_cache(maxsize=None)
def catalogue(assignment: str | None) -> dict[str, str]:
    """``{id: what the instructor reads}`` of the assignment's named mistakes; {} when it names none."""
    if not assignment:
        return {}
    from autograder import registry

    try:
        module = registry.get(assignment).misconceptions
        return dict(importlib.import_module(module).CATALOGUE) if module else {}
    except (LookupError, ImportError, AttributeError):
        return {}


def case_answered(case: dict) -> bool:
    """Whether a case judged an answer (results written before the field existed count as answered)."""
    return case.get("answered") is not False


def question_answered(question: dict) -> bool:
    """A question is answered when any of its cases judged an answer."""
    return any(case_answered(c) for c in question.get("cases") or [])


def case_misconceptions(case: dict, known: dict[str, str]) -> list[str]:
    """The catalogue's ids a failed, answered case recorded (none for a passed or unanswered case, and
    none the catalogue ``known`` does not list)."""
    if case.get("passed") or not case_answered(case):
        return []
    ids = case.get("misconceptions")
    return [i for i in ids if isinstance(i, str) and i in known] if isinstance(ids, list) else []
