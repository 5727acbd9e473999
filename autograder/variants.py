"""Per-student variants, the generic part: the setting an assignment turns on, and whose identity
chooses a submission's variant.

An assignment opts in with ``AssignmentSpec(variants=VariantConfig(enabled=True, pool_size=64))``;
its ``checks`` module then provides the hooks listed in :mod:`autograder.spec` (the numbers
themselves are course content: see ``assignments/cnn_mnist/variants.py``).  The build records the
setting in the autograder zip (``variants.json``), and the grader reads it from there.

**Identity comes from the LMS, never from the notebook.**  :func:`lms_identity` says which of the
fields the batch inputs fill (:mod:`autograder.lms.submissions`) is the student's id; the Gradescope
runner takes the submitter's e-mail from ``submission_metadata.json``.  The notebook's own
``STUDENT_ID`` counts only where there is no identity (an anonymous download, ``otter run``).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_POOL_SIZE = 64


@dataclass(frozen=True)
class VariantConfig:
    """An assignment's per-student variants; off by default (every student answers the same numbers)."""

    enabled: bool = False  # True: each student gets one variant of the pool, chosen from their identity
    pool_size: int = DEFAULT_POOL_SIZE  # how many variants the pool holds (1 to 4096)
    salt: str = ""  # change it (e.g. per term) to draw a new pool; it is public, not a secret

    def __post_init__(self):
        if not 1 <= self.pool_size <= 4096:
            raise ValueError(f"pool_size must be from 1 to 4096, got {self.pool_size}")


def lms_identity(student: dict) -> tuple[str | None, str]:
    """(identity, where it came from) of a result's ``student`` record, as the batch inputs fill it.

    Gradescope: the submitter's e-mail (what students know and type); Canvas: the Canvas user id;
    nbgrader: the student folder (the JupyterHub login); a plain file: its name (the instructor's
    naming).  An anonymous Canvas download has none: ``(None, ...)``, and the notebook's id is used.
    """
    extra = student.get("extra") or {}
    if extra.get("canvas_anonymous_id"):
        return None, "anonymous Canvas download: no identity"
    if student.get("email"):
        return student["email"], "LMS e-mail"
    if extra.get("canvas_user_id"):
        return str(extra["canvas_user_id"]), "Canvas user id"
    if extra.get("nbgrader_student"):
        return str(extra["nbgrader_student"]), "nbgrader student"
    if extra.get("sis_user_id"):
        return str(extra["sis_user_id"]), "SIS user id"
    if student.get("id"):
        return str(student["id"]), "file name"
    return None, "no identity"
