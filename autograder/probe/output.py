"""What a submission printed, as the result keeps it (``execution.output_tail``): the student's own output.

Two things in a probe's raw output are the grader's, not the student's:

* **Start-up lines.** Before any student code runs, the runtime imports TensorFlow and Keras, which
  print a few lines that no setting silences (absl writes "All log messages before
  absl::InitializeLog() ..." and the CUDA probe's line before its logging is set up).  The runtime
  writes :data:`autograder.protocol.STARTUP_DONE` to its output when its start-up is over and the
  first cell is next; everything before it is the grader's and is left out.  Without the marker
  (the runtime died starting) the whole output is kept: it is then the grader's diagnosis.
* **Host paths.** Tracebacks name files of the grading host: the interpreter's folders (a virtual
  environment, its site-packages) and, outside bubblewrap, the jail's working folder.  They are
  replaced by neutral names (:data:`PYTHON`, :data:`SITE_PACKAGES`, :data:`WORK`).

What the student printed is never dropped: only the text before the runtime's marker, and only the
host's folder names inside the rest.
"""

from __future__ import annotations

import os
import re
import tempfile

from autograder import protocol

PYTHON = "<python>"  # the interpreter's folders (prefix, base prefix, environment)
SITE_PACKAGES = "<site-packages>"  # its installed packages
WORK = "<work>"  # the jail's working folder as the host names it (permission jail, no isolation)
WORK_PREFIX = "cnn-probe-"  # the jail's working folders: tempfile.mkdtemp(prefix=...) in autograder.probe.jail


def without_startup(output: str) -> str:
    """The output after the runtime's start-up marker (all of it when there is none)."""
    head, marker, rest = output.partition(protocol.STARTUP_DONE)
    return rest if marker else output


def host_paths(python: str | None = None) -> list[tuple[str, str]]:
    """(host path, neutral name) pairs, longest path first: the probe interpreter's folders and the
    host's folder of jail working folders."""
    from autograder.probe import jail

    try:
        trees = jail.python_trees(python or jail.probe_python(), [])
    except Exception:  # noqa: BLE001 - no interpreter listing: nothing of it to replace
        trees = []
    pairs = [(t.rstrip("/"), PYTHON) for t in trees if t.rstrip("/")]
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def neutral_paths(text: str, pairs: list[tuple[str, str]] | None = None) -> str:
    """``text`` with the grading host's paths replaced by neutral names."""
    if not text:
        return text
    pairs = host_paths() if pairs is None else pairs
    for path, name in pairs:
        text = re.sub(re.escape(path) + r"(?=[/\s'\":,)\]]|$)", name, text)
    text = re.sub(re.escape(PYTHON) + r"(?:/[^\s'\":,)\]]*)?/(?:site|dist)-packages(?=[/\s'\":,)\]]|$)",
                  SITE_PACKAGES, text)
    work_root = re.escape(os.path.realpath(tempfile.gettempdir()).rstrip("/"))
    text = re.sub(rf"(?:{work_root}|{re.escape(tempfile.gettempdir().rstrip('/'))})/{WORK_PREFIX}[A-Za-z0-9_]+",
                  WORK, text)
    return text


def student_output(output: str, pairs: list[tuple[str, str]] | None = None) -> str:
    """The probe's output as the result keeps it: start-up lines left out, host paths neutral."""
    return neutral_paths(without_startup(output), pairs)
