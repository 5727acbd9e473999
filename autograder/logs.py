"""A quiet console: the grader's own log goes to ``<out>/logs/grader.log``.

TensorFlow (through absl, before its logging is initialised) writes start-up lines such as "oneDNN
custom operations are on" and "Could not find cuda drivers" straight to file descriptor 2, whatever
``TF_CPP_MIN_LOG_LEVEL`` says, once in every process that imports it.  While ``grade`` runs,
:func:`to_file` points descriptor 2 of the grader at the log file, so the batch workers it forks
inherit it too; the judge and retraining processes already capture their stderr, and every
subprocess starts with :data:`autograder.settings.QUIET_LOGGING_ENV`.  The console keeps the progress
bar and the summary (standard output) and what the grader says to the instructor on purpose
(:func:`say`).  ``grade --verbose`` leaves descriptor 2 on the console.

A student's cells print into the probe's own pipe, so their output stays in the results as before.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from autograder import settings

LOG_NAME = "logs/grader.log"
_console_fd: int | None = None  # the console's stderr while descriptor 2 points at the log


def quiet_children() -> None:
    """Every subprocess started from now on (and TensorFlow in this process) logs errors only."""
    for name, value in settings.QUIET_LOGGING_ENV.items():
        os.environ.setdefault(name, value)


def say(message: str) -> None:
    """A line for the instructor on the console's stderr, even while descriptor 2 goes to the log."""
    if _console_fd is None:
        print(message, file=sys.stderr, flush=True)
        return
    os.write(_console_fd, (message.rstrip("\n") + "\n").encode("utf-8", "replace"))


@contextmanager
def to_file(out: Path, verbose: bool = False):
    """Within: descriptor 2 of this process (and of the processes it forks) appends to
    ``<out>/logs/grader.log`` (mode 0600 in a 0700 folder), unless ``verbose``.  Yields the log's path."""
    global _console_fd
    path = Path(out) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    verbose = verbose or settings.current().verbose
    if verbose:
        settings.VERBOSE.set("1")
    else:
        quiet_children()
    if verbose or _console_fd is not None:
        yield path
        return
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        _console_fd = saved
        yield path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
        _console_fd = None
