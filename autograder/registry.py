"""Find installed assignments by name.

The list of installed assignments is the entry-point group ``autograder.assignments`` (in
``pyproject.toml``: ``cnn_mnist = "assignments.cnn_mnist.spec:ASSIGNMENT"``).  Where the package
is not installed (the Gradescope image runs it from ``lib/``), every ``assignments.<name>.spec``
module found beside it is used instead.  An unknown name is a :class:`UnknownAssignment` that
names it and lists the known ones.  An entry point that cannot be loaded (a stale install, a
package shadowed by another ``assignments`` folder, a plug-in with a bug) does not stop the others:
it is listed by :func:`broken`, and asking for it by name raises :class:`BrokenAssignment` with
the cause.
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


class BrokenAssignment(LookupError):
    """An installed assignment whose plug-in cannot be loaded; the message says why."""

    def __init__(self, name, cause):
        self.name = name
        super().__init__(f"assignment {name!r} is installed but cannot be loaded: {cause}")


def _check(spec, where: str) -> AssignmentSpec:
    if not isinstance(spec, AssignmentSpec):
        raise TypeError(f"{where} is not an AssignmentSpec")
    return spec


@lru_cache(maxsize=1)
def _scan() -> tuple[dict[str, AssignmentSpec], dict[str, str]]:
    """(loadable assignments by name, causes of the entry points that failed to load by name)."""
    from importlib.metadata import entry_points

    found: dict[str, AssignmentSpec] = {}
    failed: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = _check(ep.load(), f"entry point {ep.name} ({ep.value})")
        except Exception as exc:  # noqa: BLE001 - one bad plug-in must not hide the others
            failed[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
            continue
        found[spec.name] = spec
    try:
        import assignments
    except ImportError:
        return found, failed
    for info in pkgutil.iter_modules(assignments.__path__):  # not installed (e.g. lib/ on Gradescope)
        if info.ispkg and info.name not in found:
            try:
                module = importlib.import_module(f"assignments.{info.name}.spec")
            except ModuleNotFoundError:
                continue
            spec = getattr(module, "ASSIGNMENT", None)
            if spec is not None:
                found[_check(spec, module.__name__).name] = spec
    return found, {name: cause for name, cause in failed.items() if name not in found}


def _installed() -> dict[str, AssignmentSpec]:
    return _scan()[0]


def broken() -> dict[str, str]:
    """Installed assignments that cannot be loaded, with the cause of each."""
    return dict(_scan()[1])


def all_assignments() -> list[AssignmentSpec]:
    """Every installed assignment, by name."""
    return [spec for _, spec in sorted(_installed().items())]


def names() -> list[str]:
    return sorted(_installed())


def get(name: str) -> AssignmentSpec:
    """The spec of the assignment called ``name``; :class:`UnknownAssignment` if there is none."""
    specs, failed = _scan()
    if name in failed:
        raise BrokenAssignment(name, failed[name])
    if name not in specs:
        raise UnknownAssignment(name, sorted(specs))
    return specs[name]


def notebook_assignment(nb) -> str | None:
    """The assignment a notebook belongs to, from its metadata (written by the build), else None."""
    meta = (nb.get("metadata") or {}) if isinstance(nb, dict) else {}
    entry = meta.get(NOTEBOOK_METADATA_KEY)
    name = entry.get("assignment") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and name else None
