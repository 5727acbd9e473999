"""Find installed assignments by name.

The list of installed assignments is the entry-point group ``autograder.assignments`` (in
``pyproject.toml``: ``cnn_mnist = "assignments.cnn_mnist.spec:ASSIGNMENT"``).  Where the package
is not installed (the Gradescope image runs it from ``lib/``), every ``assignments.<name>.spec``
module found beside it is used instead.  An unknown name is a :class:`UnknownAssignment` that
names it and lists the known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from autograder.spec import NOTEBOOK_METADATA_KEY, AssignmentSpec

ENTRY_POINT_GROUP = "autograder.assignments"


class UnknownAssignment(LookupError):
    """No installed assignment has this name (the notebook or zip names one this grader lacks)."""

    def __init__(self, name, known):
        self.name = name
        super().__init__(f"unknown assignment {name!r}: this grader has "
                         f"{', '.join(repr(k) for k in known) or 'no assignments'} installed")


def _check(spec, where: str) -> AssignmentSpec:
    if not isinstance(spec, AssignmentSpec):
        raise TypeError(f"{where} is not an AssignmentSpec")
    return spec


@lru_cache(maxsize=1)
def _installed() -> dict[str, AssignmentSpec]:
    from importlib.metadata import entry_points

    found: dict[str, AssignmentSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = _check(ep.load(), f"entry point {ep.name} ({ep.value})")
        found[spec.name] = spec
    try:
        import assignments
    except ImportError:
        return found
    for info in pkgutil.iter_modules(assignments.__path__):  # not installed (e.g. lib/ on Gradescope)
        if info.ispkg and info.name not in found:
            try:
                module = importlib.import_module(f"assignments.{info.name}.spec")
            except ModuleNotFoundError:
                continue
            spec = getattr(module, "ASSIGNMENT", None)
            if spec is not None:
                found[_check(spec, module.__name__).name] = spec
    return found


def all_assignments() -> list[AssignmentSpec]:
    """Every installed assignment, by name."""
    return [spec for _, spec in sorted(_installed().items())]


def names() -> list[str]:
    return sorted(_installed())


def get(name: str) -> AssignmentSpec:
    """The spec of the assignment called ``name``; :class:`UnknownAssignment` if there is none."""
    specs = _installed()
    if name not in specs:
        raise UnknownAssignment(name, sorted(specs))
    return specs[name]


def notebook_assignment(nb) -> str | None:
    """The assignment a notebook belongs to, from its metadata (written by the build), else None."""
    meta = (nb.get("metadata") or {}) if isinstance(nb, dict) else {}
    entry = meta.get(NOTEBOOK_METADATA_KEY)
    name = entry.get("assignment") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and name else None
