"""Sheets for people: every CSV file the grader writes for an instructor (grades.csv, the Canvas import,
needs_review.csv, misconceptions.csv, the hand-graded scores template) is private to its owner (0600) and
written through :class:`SafeCsvWriter`, so that text from a submission or an LMS never starts a
spreadsheet formula.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def csv_cell(value):
    """A cell of a sheet an instructor opens in a spreadsheet: text that would start a formula (a student's
    name or email from an LMS, a file name) gets a leading apostrophe (OWASP's CSV injection advice);
    numbers, and text that reads as one, are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


class SafeCsvWriter:
    """``csv.writer`` whose cells go through :func:`csv_cell`: every sheet the grader writes for people."""

    def __init__(self, f):
        self._w = csv.writer(f)

    def writerow(self, row) -> None:
        self._w.writerow([csv_cell(v) for v in row])

    def writerows(self, rows) -> None:
        for row in rows:
            self.writerow(row)


def private_writer(path: Path):
    """Open ``path`` for writing as a file its owner alone can read (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "w", newline="", encoding="utf-8", errors="replace")  # untrusted text never stops a page


def write_private_text(path: Path, text: str) -> None:
    with private_writer(path) as f:
        f.write(text)
