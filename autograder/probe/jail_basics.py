"""What a jail and the fork server that starts jails both name: the fault of a jail that cannot be made or
trusted, the working folder as a jail sees it, and the time a jail may take to start (the grader's, never a
submission's).  Its own module so that the fork server (:mod:`autograder.probe.forkserver`) need not import
:mod:`autograder.probe.jail`, which imports it."""

from __future__ import annotations

from autograder.faults import Fault, FaultError

WORK_INSIDE = "/sandbox"  # the working folder as the probe sees it under bwrap
STARTUP_SECONDS = 300.0  # generous: the grader's own start-up is never charged to a submission


class JailError(FaultError):
    """The grader cannot isolate a submission: a grader fault, never the student's (cause ``jail_unsafe``, or
    ``interpreter`` where the jailed Python cannot start)."""

    def __init__(self, message: str, cause: str = "jail_unsafe"):
        super().__init__(Fault(cause, message))
