"""Sheets for people: CSV files an instructor or a TA opens in a spreadsheet, written private.

Every CSV the grader writes for people (grade sheet, review list, Canvas import, misconception
counts, the hand-grading sheet) goes through :class:`SafeCsvWriter`, whose cells pass
:func:`csv_cell`: text that a spreadsheet would read as a formula (a student's name or id from an
LMS, a file name, a comment) is written with a leading apostrophe, as OWASP's CSV-injection advice
says; :func:`uncsv_cell` undoes that when the grader reads such a sheet back.  Every file is
opened by :func:`private_writer`: readable by its owner only (0600), never through a link.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula
GUARD = "'"


def _formula(text: str) -> bool:
    """Whether a spreadsheet would read ``text`` as a formula: it starts so, and is not a plain number."""
    if not text.startswith(FORMULA_START):
        return False
    try:
        float(text)
        return False
    except ValueError:
        return True


def csv_cell(value):
    """A cell of a sheet an instructor opens in a spreadsheet: text that would start a formula gets a leading
    apostrophe; numbers, and text that reads as one, are left as they are.  Text whose own apostrophes come
    before such a start (``'=B2' is a formula``) gets one more, so that :func:`uncsv_cell` gives it back as
    it was."""
    if isinstance(value, str) and _formula(value.lstrip(GUARD)):
        return GUARD + value
    return value


def uncsv_cell(text: str) -> str:
    """The text :func:`csv_cell` guarded, as it was (a cell read back from a sheet the grader wrote)."""
    if text.startswith(GUARD) and _formula(text.lstrip(GUARD)):
        return text[1:]
    return text


class SafeCsvWriter:
    """``csv.writer`` whose cells go through :func:`csv_cell`: every sheet the grader writes for people."""

    def __init__(self, f, **fmtparams):
        self._w = csv.writer(f, **fmtparams)

    def writerow(self, row) -> None:
        self._w.writerow([csv_cell(v) for v in row])

    def writerows(self, rows) -> None:
        for row in rows:
            self.writerow(row)


def private_writer(path: Path, encoding: str = "utf-8"):
    """Open ``path`` for writing as a file its owner alone can read (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "w", newline="", encoding=encoding, errors="replace")  # untrusted text never stops a page


def write_private_text(path: Path, text: str) -> None:
    with private_writer(path) as f:
        f.write(text)


__all__ = ["FORMULA_START", "csv_cell", "uncsv_cell", "SafeCsvWriter", "private_writer", "write_private_text"]
