"""The misconception catalogue: the named mistakes an assignment's checks point to (its ``misconceptions``
module: ``CATALOGUE`` of ids and titles, ``classify(message)``), and the tagging of each failed case of a
result with the ids its message names.  Read by the hand-graded questions' enrichment
(:mod:`autograder.manual`) and the class insight (:mod:`autograder.lms.insight`).
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def _classifier(assignment: str | None):
    if not assignment:
        return None
    import importlib

    from autograder import registry

    try:
        module = registry.get(assignment).misconceptions
        return importlib.import_module(module) if module else None
    except (LookupError, ImportError):
        return None


def catalogue(assignment: str | None) -> dict[str, str]:
    module = _classifier(assignment)
    return dict(getattr(module, "CATALOGUE", {})) if module else {}


def tag_misconceptions(result: dict) -> dict:
    """Tag each failed case with the misconception ids its message names (the assignment's catalogue)."""
    module = _classifier(result.get("assignment"))
    for q in result.get("questions") or []:
        for c in q.get("cases") or []:
            if not c.get("misconceptions"):  # the judge's cases come with an empty list
                c["misconceptions"] = module.classify(c.get("message", "")) if module and not c.get("passed") else []
    return result
