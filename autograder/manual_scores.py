"""The hand-grading sheet, ``OUT/manual_scores.csv``: the one place hand-graded points live.

Columns ``id, question, points, comment``; one row per hand-graded answer.  People type into it,
in a text editor or a spreadsheet, and the grader reads it back on every ``grade`` run, so reading
is strict and complete and writing loses nothing:

* **How it was saved is accepted and kept.** UTF-8 with or without a BOM (Excel's "CSV UTF-8"), or
  UTF-16 with its BOM (Excel's "Unicode text"); commas, semicolons (a spreadsheet set to a language
  with decimal commas) or tabs between cells, whichever the header uses; CRLF or LF line ends; blank
  lines anywhere.  When the grader writes the file again (rows added for new submissions, ids
  turned into anonymous codes, a save of the review page) it keeps that encoding, delimiter and
  line end, and writes atomically (a temporary file renamed over it).
* **Every cell where it belongs.** A row with more or fewer cells than the header is refused: an
  unquoted decimal comma (``1,5``) or a comma in an unquoted comment would otherwise move the text
  into the wrong column.  Points are plain numbers: ASCII digits with at most one decimal separator,
  a point or a comma (``2.5``, or ``"2,5"`` in quotes), from 0 to the question's points; ``-0`` is
  0.  Nothing else (``0_3``, a fullwidth ``３``, ``1e0``, ``nan``) is read as a number.  Points the
  grader writes (a save of the review page) are plain digits to 6 decimals, with the decimal
  separator the sheet's points already use (a comma in a semicolon-separated sheet that has none yet).
* **All problems at once.** :class:`ManualScoresError` lists every problem of the file, each with
  its line, and a "did you mean" for an unknown id, code or question; a refused file merges
  nothing and is never rewritten.
* **Anonymity.** With ``--anonymous`` the graders' pages and the sheet name each student by a code
  (``anon:`` and 8 hex digits: no student id can hold a colon) made from a secret key of the output folder,
  ``OUT/.private/anonymous-key`` (0600, outside ``manual/``, which is what graders are given).
  Rows typed against either an id or a code merge to the right student; the sheet is rewritten in
  the run's way of naming (the previous file kept in ``OUT/.private/``).
* **Formulas.** Cells the grader writes pass the spreadsheet formula guard
  (:func:`autograder.lms.sheets.csv_cell`): an id or a comment that starts with ``=``, ``+``, ``-``
  or ``@`` gets a leading apostrophe, which reading removes again.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from autograder.lms.sheets import csv_cell, uncsv_cell

SCORES_FILE = "manual_scores.csv"
SCORES_HEADER = ["id", "question", "points", "comment"]
PRIVATE_DIR = ".private"  # in the output folder: what graders are never given
KEY_FILE = "anonymous-key"
OLD_KEY = Path("manual") / ".anonymous-key"  # where earlier versions kept the key (inside what graders get)
# A code holds ':', which no student id can (ids from LMS names keep letters, digits, '.', '@', '-', '_' only:
# autograder.lms.submissions.SAFE_ID), so no file name can make an id that is another student's code.
CODE_PREFIX = "anon:"
LEGACY_CODE_PREFIX = "anon-"  # codes written before: still read (where no id has that form), rewritten with CODE_PREFIX
CODE = re.compile("anon[:-][0-9a-f]{8}")
SAVES_FILE = "page-saves.jsonl"  # in OUT/.private: the review page's saves, to notice a stale copy saved over them
MAX_SAVES_LINES = 5000  # the journal is compacted to each answer's last save past this many lines
ANONYMITY_FILE = "anonymity"  # in OUT/.private: how this folder names students ("codes" or "ids"), once chosen
MAX_SHEET_BYTES = 20 * 2**20
MAX_PROBLEMS = 50  # listed one by one; the rest counted
MAX_COMMENT_CHARS = 10_000  # a saved comment: well inside what the csv module reads back (131072 a cell)
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
# points as people type them: ASCII digits, at most one decimal point or comma, an optional sign
POINTS = re.compile(r"[+-]?(?:[0-9]+(?:[.,][0-9]*)?|[.,][0-9]+)", re.ASCII)


class ManualScoresError(ValueError):
    """A hand-grading sheet that cannot be merged: every problem found, each naming its line."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path, self.problems = Path(path), list(problems)
        shown = self.problems[:MAX_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = [f"{path}: {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}, "
                 "so none of its rows were merged:", *(f"  {p}" for p in shown)]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


# --- the anonymous codes ------------------------------------------------------------------------

def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole: a private temporary file beside it (0600), synced, renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def private_folder(out: Path) -> Path:
    """``OUT/.private``: the grader's secrets and backups, a folder (0700) graders are not given."""
    folder = Path(out) / PRIVATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def anonymous_key(out: Path) -> bytes:
    """A secret of this output folder (``OUT/.private/anonymous-key``, 0600): anonymous codes are stable
    across runs and cannot be computed from ids.  Made under a lock and renamed into place whole, so a
    second process (a review page started with a grade run) waits for it and never reads it half written;
    a key left empty by a crash is replaced.  A key an earlier version left in ``manual/`` moves there, so
    the codes stay the same."""
    path = private_folder(out) / KEY_FILE
    with locked(path):
        old = Path(out) / OLD_KEY
        if old.is_file() and not old.is_symlink():
            if _read_key(path) is None:
                os.replace(old, path)
                os.chmod(path, 0o600)
            else:
                old.unlink()
        key = _read_key(path)
        if key is None:
            key = secrets.token_hex(16).encode()
            replace_atomically(path, key)  # 0600
        return key


def _read_key(path: Path) -> bytes | None:
    """The key in ``path``; None when there is none, or it is empty (a crash of an earlier version, which created
    the file before writing it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        key = f.read(4096).strip()
    return key or None


def anonymous_code(key: bytes, student_id: str) -> str:
    return CODE_PREFIX + hashlib.sha256(key + b"\0" + student_id.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Roster:
    """Who may have rows: (student id, question) -> the question's points, and each id's anonymous code."""

    expected: dict[tuple[str, str], float]
    codes: dict[str, str]  # student id -> code

    @classmethod
    def of(cls, results: list[dict], key: bytes) -> "Roster":
        expected = {}
        for r in sorted(results, key=lambda r: r["student"]["id"]):
            for m in r.get("manual") or []:
                expected[r["student"]["id"], m["name"]] = float(m["max_score"])
        return cls(expected, {r["student"]["id"]: anonymous_code(key, r["student"]["id"]) for r in results})

    def student(self, shown: str) -> str | None:
        """The student id a sheet's id cell names (a code, an id, or a code written before codes held ':');
        None if nobody's.  A code is looked up first: an id can never take the form of a code."""
        if shown.startswith(CODE_PREFIX) and shown in self._by_code:
            return self._by_code[shown]
        if shown in self.codes:
            return shown
        return self._by_code.get(shown)

    def shown(self, sid: str, anonymous: bool) -> str:
        return self.codes.get(sid, sid) if anonymous else sid

    def questions(self, sid: str) -> list[str]:
        return sorted(q for s, q in self.expected if s == sid)

    @functools.cached_property
    def _by_code(self) -> dict[str, str]:
        found = {code: sid for sid, code in self.codes.items()}
        for code, sid in list(found.items()):  # a legacy code names its student unless it is someone's id
            legacy = LEGACY_CODE_PREFIX + code[len(CODE_PREFIX):]
            if legacy not in self.codes:
                found[legacy] = sid
        return found


# --- reading ------------------------------------------------------------------------------------

@dataclass
class SheetRow:
    line: int  # where the row starts in the file
    cells: list[str]  # as written (a spreadsheet's formula guard included)

    def cell(self, i: int) -> str:
        """The cell's text as meant: the formula guard undone, spaces around it dropped."""
        return uncsv_cell(self.cells[i]).strip() if i < len(self.cells) else ""

    def set(self, i: int, text: str) -> None:
        """Cell ``i`` to mean ``text`` (kept as written: with the formula guard)."""
        self.cells[i] = csv_cell(text)

    @classmethod
    def new(cls, *texts: str) -> "SheetRow":
        """A row the grader adds (its line is 0: it is not in the file yet)."""
        return cls(0, [csv_cell(t) for t in texts])

    @property
    def key(self) -> tuple[str, str]:
        return self.cell(0), self.cell(1)


@dataclass
class Sheet:
    """A sheet's rows and the way it was saved (kept when the grader writes it again)."""

    rows: list[SheetRow] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, problem) of rows left out: see parse
    delimiter: str = ","
    encoding: str = "utf-8"  # "utf-8-sig" (with a BOM) or "utf-16" (with its BOM) as read
    lineterminator: str = "\r\n"  # what the csv module writes, and spreadsheets
    decimal: str = "."  # the decimal separator of the points the grader writes: see parse

    @property
    def delimiter_name(self) -> str:
        return DELIMITERS[self.delimiter]

    def points_text(self, value: float) -> str:
        """Points as this sheet writes them: see :func:`points_text`."""
        return points_text(value, self.decimal)


def _decode(data: bytes) -> tuple[str, str]:
    """(text, encoding) of a sheet's bytes: UTF-8 (BOM or not) or UTF-16 with its BOM."""
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):].decode("utf-8"), "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16"), "utf-16"
    return data.decode("utf-8"), "utf-8"


def parse(path: Path, strict: bool = True) -> Sheet:
    """The sheet's rows, checked for shape only (readable, the header, the number of cells of each row).
    Raises :class:`ManualScoresError` listing every problem; with ``strict=False`` the rows of the wrong
    shape are left in ``problems`` instead (for :func:`check`, which reports them with its own)."""
    path = Path(path)
    try:
        # O_NONBLOCK: a named pipe or a terminal is refused below instead of waiting forever for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ManualScoresError(path, ["is not a regular file: give the sheet itself"])
            data = f.read(MAX_SHEET_BYTES + 1)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ManualScoresError(path, ["is a symbolic link: give the file itself (the grader never follows a link "
                                           "here)"]) from None
        raise ManualScoresError(path, [f"cannot be read ({exc.strerror or exc})"]) from None
    if len(data) > MAX_SHEET_BYTES:
        raise ManualScoresError(path, [f"is larger than {MAX_SHEET_BYTES // 2**20} MB: not a hand-grading sheet"])
    try:
        text, encoding = _decode(data)
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ManualScoresError(path, [f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the sheet "
                                       "as \"CSV UTF-8\" (Excel) or with the character set Unicode (UTF-8)"]) from None
    if "\0" in text:
        raise ManualScoresError(path, ["holds NUL characters: not a text file; save the sheet as CSV"])
    sheet = Sheet(encoding=encoding, lineterminator="\r\n" if "\r\n" in text else "\n")
    first = next((line for line in text.splitlines() if line.strip()), "")
    for delimiter in DELIMITERS:
        header = next(csv.reader([first], delimiter=delimiter), [])
        if [h.strip().lower() for h in header] == SCORES_HEADER:
            sheet.delimiter = delimiter
            break
    else:
        raise ManualScoresError(path, [f"line 1: expected the header {','.join(SCORES_HEADER)}, got {first[:200]!r}"])
    problems = sheet.problems
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sheet.delimiter, strict=True)
    seen_header, end = False, 0
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            end = reader.line_num
            if "field larger than field limit" in str(exc):
                problems.append((start, f"line {start}: a cell longer than {csv.field_size_limit()} characters: "
                                        "not a hand-grading comment"))
            else:
                problems.append((start, f"line {start}: {exc} (a cell that holds a double quote is written in double "
                                        'quotes, with each quote inside doubled: "say ""why"""'))
            continue
        end = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # a blank line, or a row of empty cells
        if not seen_header:
            seen_header = True
            continue
        if len(cells) != len(SCORES_HEADER):
            problems.append((start, _shape_problem(start, len(cells), sheet.delimiter_name)))
            continue
        sheet.rows.append(SheetRow(start, cells))
    if problems and strict:
        raise ManualScoresError(path, [p for _, p in problems])
    sheet.decimal = _decimal(sheet)
    return sheet


def _decimal(sheet: Sheet) -> str:
    """The decimal separator the sheet's points already use; else a comma in a semicolon-separated sheet (what a
    spreadsheet set to a language with decimal commas saves, and the points it reads: 1.5 is a date there)."""
    used = {c for row in sheet.rows for c in row.cell(2) if c in ".,"}
    if len(used) == 1:
        return used.pop()
    return "," if sheet.delimiter == ";" else "."


def _shape_problem(line: int, n: int, delimiter: str) -> str:
    header = ", ".join(SCORES_HEADER)
    if n > len(SCORES_HEADER):
        return (f"line {line}: {n} cells where the header has {len(SCORES_HEADER)} ({header}). A {delimiter} in a "
                f"comment or a decimal comma in the points starts a new cell: put such a comment in double quotes "
                f'("Good, but ..."), and write points with a decimal point (1.5) or in double quotes ("1,5")')
    return (f"line {line}: {n} cell{'s' if n != 1 else ''} where the header has {len(SCORES_HEADER)} ({header}): "
            f"every row has all {len(SCORES_HEADER)}, empty ones too (end a row without a comment with a {delimiter})")


def round_points(value: float) -> float:
    """Points to 6 decimals (as totals are), -0 as 0: 0.1 + 0.2 is 0.3."""
    return round(float(value), 6) + 0.0


def points_text(value: float, decimal: str = ".") -> str:
    """Points as the grader writes them into a sheet: plain digits that :func:`parse_points` reads back (never
    ``1e-05``), at most 6 decimals, with ``decimal`` as the separator."""
    return f"{round_points(value):f}".rstrip("0").rstrip(".").replace(".", decimal)


def parse_points(text: str) -> float:
    """Points as a person typed them: ``2``, ``2.5``, ``2,5`` (ASCII digits, one decimal point or comma);
    ``-0`` is 0.  Raises ValueError for anything else."""
    text = text.strip()
    if not POINTS.fullmatch(text):
        raise ValueError(text)
    return float(text.replace(",", ".")) + 0.0  # + 0.0: -0 is 0


def _did_you_mean(word: str, candidates, cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=3, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check(sheet: Sheet, path: Path, roster: Roster, anonymous: bool = False) -> dict[tuple[str, str], tuple[float, str]]:
    """The sheet's filled rows as {(student id, question): (points, comment)}; rows with no points are still
    pending.  Raises :class:`ManualScoresError` listing every unknown id or question (with "did you mean"),
    points that are not a plain number or out of range, and every second row for an answer.  ``anonymous``:
    suggestions name codes only, never an id."""
    problems, scores, seen = list(sheet.problems), {}, {}
    suggestions = list(roster.codes.values()) if anonymous else [*roster.codes, *roster.codes.values()]

    def did_you_mean(word: str, candidates, cutoff: float = 0.6) -> str:
        # only for problems that can be shown: the rows are in order, so those are this check's first ones
        return _did_you_mean(word, candidates, cutoff) if len(problems) - len(sheet.problems) < MAX_PROBLEMS else ""

    for row in sheet.rows:
        shown, question = row.key
        points, comment = row.cell(2), row.cell(3)
        sid = roster.student(shown)
        if sid is None:
            if CODE.fullmatch(shown):  # random hex: only a typo (a character or two) is worth suggesting
                hint = did_you_mean(shown, roster.codes.values(), cutoff=0.84) or (
                    " (not a code of this output folder: anonymous codes come from the key in "
                    f"{PRIVATE_DIR}/{KEY_FILE} of the output folder that made them, so merge this sheet there, or "
                    "copy that key here before this folder's first anonymous run)")
            else:
                hint = did_you_mean(shown, suggestions)
            problems.append((row.line, f"line {row.line}: unknown student id {shown!r}{hint}"))
            continue
        if (sid, question) not in roster.expected:
            known = roster.questions(sid)
            hint = did_you_mean(question, known) or f" ({', '.join(known) or 'it has none'})"
            problems.append((row.line, f"line {row.line}: {question!r} is not a hand-graded question of {shown!r}{hint}"))
            continue
        if (sid, question) in seen:
            problems.append((row.line, f"line {row.line}: a second row for {shown!r}, {question!r} (first on line "
                                       f"{seen[sid, question]}): keep one"))
            continue
        seen[sid, question] = row.line
        if points == "":
            continue  # still to be graded
        try:
            value = parse_points(points)
        except ValueError:
            problems.append((row.line, f"line {row.line}: points {points!r} is not a plain number: write ASCII digits "
                                       'with a decimal point or comma, e.g. 2.5, or "2,5" in double quotes'))
            continue
        top = roster.expected[sid, question]
        if not 0 <= value <= top:
            problems.append((row.line, f"line {row.line}: points {points} out of range 0..{top:g} for {question!r}"))
            continue
        scores[sid, question] = (value, comment)
    if problems:
        raise ManualScoresError(path, [p for _, p in sorted(problems, key=lambda p: p[0])])
    return scores


def read_scores(path: Path, roster: Roster, anonymous: bool = False) -> dict[tuple[str, str], tuple[float, str]]:
    """:func:`parse` and :func:`check`: the scores of a sheet, or :class:`ManualScoresError` with all its problems."""
    return check(parse(path, strict=False), path, roster, anonymous)


def uses_codes(sheet: Sheet, roster: Roster) -> bool:
    """Whether the sheet names students by anonymous code (any row does)."""
    return any(row.cell(0) in roster._by_code and row.cell(0) not in roster.codes for row in sheet.rows)


def recorded_anonymity(out: Path) -> bool | None:
    """How the output folder names students, as its first choice recorded it (None: never chosen)."""
    try:
        text = (Path(out) / PRIVATE_DIR / ANONYMITY_FILE).read_text().strip()
    except OSError:
        return None
    return {"codes": True, "ids": False}.get(text)


def choose_anonymity(out: Path, requested: bool | None, sheet: Sheet | None, roster: Roster) -> bool:
    """Whether the graders' pages and the sheet name students by code: as requested (``--anonymous`` or
    ``--no-anonymous``); else as the folder chose before (recorded in ``OUT/.private``: a folder graded
    anonymously stays so when its sheet is deleted or replaced by one typed with ids); else as its sheet
    does.  The choice is recorded."""
    chosen = requested
    if chosen is None:
        chosen = recorded_anonymity(out)
    if chosen is None:
        chosen = bool(sheet is not None and uses_codes(sheet, roster))
    path = private_folder(out) / ANONYMITY_FILE
    if recorded_anonymity(out) is not chosen:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{ANONYMITY_FILE}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write("codes\n" if chosen else "ids\n")
        os.replace(tmp, path)
    return chosen


# --- writing ------------------------------------------------------------------------------------

def write(sheet: Sheet, path: Path) -> None:
    """The sheet written whole or not at all (a temporary file, 0600, renamed over ``path``), in the way it
    was saved (encoding, delimiter, line end); every cell passes the spreadsheet formula guard."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding=sheet.encoding, errors="replace") as f:
            w = csv.writer(f, delimiter=sheet.delimiter, lineterminator=sheet.lineterminator)
            w.writerow(SCORES_HEADER)
            # as written, a guard added where a text editor left a formula unguarded (never a second one)
            w.writerows([csv_cell(uncsv_cell(c)) for c in row.cells] for row in sheet.rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def backup(path: Path, out: Path, why: str) -> Path:
    """A copy of the sheet as it was, in ``OUT/.private/`` (never given to graders: it may name students)."""
    target = private_folder(out) / f"{Path(path).stem}.{time.strftime('%Y%m%d-%H%M%S')}.{why}{Path(path).suffix}"
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{target.stem.rsplit('~', 1)[0]}~{n}{target.suffix}")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Path(path).read_bytes())
    return target


def install(given: Path, target: Path, out: Path) -> Path | None:
    """``given`` (a sheet already read and checked) copied to ``target`` atomically; a different file that
    was at ``target`` is kept in ``OUT/.private/`` first (its path returned), so nothing typed there is lost."""
    data = Path(given).read_bytes()
    kept = None
    with locked(target):
        if Path(target).is_file() and Path(target).read_bytes() != data:
            kept = backup(target, out, "replaced")
        replace_atomically(Path(target), data)
    return kept


@dataclass
class SheetUpdate:
    """What :func:`update` changed: rows added (new answers), rows whose id cell was rewritten
    (anonymity turned on or off), and where the previous file was kept (when rows were rewritten)."""

    added: int = 0
    renamed: int = 0
    backup: Path | None = None
    # the review page's saves that a stale copy of the sheet had undone, put back (one line each, for people)
    restored: list[str] = field(default_factory=list)


# --- the review page's saves, remembered ------------------------------------------------------------
# A spreadsheet that opened the sheet before the page saved scores into it, and is saved later, writes its
# old copy over those scores.  The page keeps a journal of its saves (OUT/.private/page-saves.jsonl): an
# answer whose row holds again exactly what the page replaced, in a file someone rewrote since, lost the
# page's save to such a copy; the next page load or grade run puts it back and says so.  A row changed to
# anything else was edited on purpose and is left as it is.

def _saves_path(sheet_path: Path) -> Path:
    return private_folder(Path(sheet_path).parent) / SAVES_FILE


def _state_json(state: tuple[float | None, str]) -> list:
    return [state[0], state[1]]


def _is_state(value) -> bool:
    """Whether a journal's state is (points or None, comment) as the page saves it."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)
            and (value[0] is None or (isinstance(value[0], (int, float)) and not isinstance(value[0], bool))))


def _record_saves(sheet_path: Path, entries: list[dict]) -> None:
    """Append the page's saves to the journal (under the sheet's lock: the caller holds it)."""
    journal = _saves_path(sheet_path)
    written = version(sheet_path)
    lines = [json.dumps({**e, "version": written, "at": time.time()}, ensure_ascii=True) + "\n" for e in entries]
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a", encoding="ascii") as f:
        f.writelines(lines)


def _last_saves(sheet_path: Path) -> dict[tuple[str, str], dict]:
    """{(student id, question): the page's last save of it} (what the journal holds; a damaged line is skipped)."""
    journal = _saves_path(sheet_path)
    found: dict[tuple[str, str], dict] = {}
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return found
    with os.fdopen(fd, encoding="ascii", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
                if all(_is_state(entry[k]) for k in ("before", "after")):
                    found[(str(entry["sid"]), str(entry["question"]))] = entry
            except (ValueError, KeyError, TypeError):
                continue
    return found


def _rewrite_saves(sheet_path: Path, entries: list[dict]) -> None:
    replace_atomically(_saves_path(sheet_path), "".join(json.dumps(e, ensure_ascii=True) + "\n"
                                                        for e in entries).encode("ascii"))


def _restore_dropped_saves(sheet: Sheet, path: Path, roster: Roster, anonymous: bool) -> list[str]:
    """Put back into ``sheet`` each page save a stale copy undid (see above); the journal keeps only what is
    still to be watched.  Returns a line per answer put back."""
    saves = _last_saves(path)
    if not saves:
        return []
    current = version(path)
    restored, keep = [], []
    for (sid, question), entry in saves.items():
        if (sid, question) not in roster.expected:
            continue  # an answer no longer graded: forgotten
        row = find(sheet, roster, sid, question)
        try:
            now = cell_state(row)
        except ValueError:
            keep.append(entry)
            continue
        before, after = tuple(entry.get("before") or (None, "")), tuple(entry.get("after") or (None, ""))
        if entry.get("version") != current and now == before and now != after:
            if row is None:
                row = SheetRow.new(roster.shown(sid, anonymous), question, "", "")
                sheet.rows.append(row)
            row.set(2, "" if after[0] is None else sheet.points_text(after[0]))
            row.set(3, after[1])
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(entry.get("at") or 0)))
            shown = roster.shown(sid, anonymous)
            points = "pending" if after[0] is None else f"{after[0]:g} points"
            restored.append(f"{shown}, {question}: the review page saved {points} at {when}, and the sheet was later "
                            f"saved from a copy opened before that (a spreadsheet left open?), which dropped it; the "
                            f"page's score is put back (change it in the page or the sheet if that was meant)")
            continue  # settled
        if now == after:
            keep.append(entry)  # still as the page left it: a later stale copy could still undo it
    if restored or len(keep) != len(saves) or sum(1 for _ in open(_saves_path(path), "rb")) > MAX_SAVES_LINES:
        _rewrite_saves(path, keep)
    return restored


@contextlib.contextmanager
def locked(path: Path):
    """Hold the sheet's lock (``.<name>.lock`` beside it, ``flock``): every writer of the grader (a ``grade``
    run, each save of the review page, in any process or thread) re-reads and writes the sheet inside it."""
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update(path: Path, roster: Roster, anonymous: bool, out: Path) -> SheetUpdate:
    with locked(path):
        return _update(path, roster, anonymous, out)


def _update(path: Path, roster: Roster, anonymous: bool, out: Path) -> SheetUpdate:
    """Make ``path`` hold one row per hand-graded answer, each naming its student the run's way (code or id).

    A new file gets a row per answer.  An existing one (already read and checked) keeps every row as typed;
    rows for new answers are added, and id cells naming the student the other way are rewritten (after a
    copy of the file is kept in ``OUT/.private/``), so the graders' pages and the sheet agree."""
    path = Path(path)
    sheet = parse(path) if path.is_file() else Sheet()
    change = SheetUpdate()
    if path.is_file():
        change.restored = _restore_dropped_saves(sheet, path, roster, anonymous)
    have = set()
    for row in sheet.rows:
        sid = roster.student(row.cell(0))
        if sid is None:
            continue
        have.add((sid, row.cell(1)))
        wanted = roster.shown(sid, anonymous)
        if row.cell(0) != wanted:
            row.set(0, wanted)
            change.renamed += 1
    new = [(roster.shown(sid, anonymous), q) for sid, q in roster.expected if (sid, q) not in have]
    sheet.rows.extend(SheetRow.new(shown, question, "", "") for shown, question in sorted(new))
    change.added = len(new)
    if path.is_file() and not (change.added or change.renamed or change.restored):
        return change
    if change.renamed:
        change.backup = backup(path, out, "before-codes" if anonymous else "before-ids")
    write(sheet, path)
    return change


def version(path: Path) -> str:
    """A digest of the sheet's bytes ("" when there is none): it changes whenever anyone saves it."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def rows_by_answer(sheet: Sheet, roster: Roster) -> dict[tuple[str, str], SheetRow]:
    """{(student id, question): its row} (the first, where a sheet with problems has two)."""
    found: dict[tuple[str, str], SheetRow] = {}
    for row in sheet.rows:
        sid = roster.student(row.cell(0))
        if sid is not None:
            found.setdefault((sid, row.cell(1)), row)
    return found


def find(sheet: Sheet, roster: Roster, sid: str, question: str) -> SheetRow | None:
    """The row of one answer, whether it names the student by id or by code."""
    return next((row for row in sheet.rows if row.cell(1) == question and roster.student(row.cell(0)) == sid), None)


def cell_state(row: SheetRow | None) -> tuple[float | None, str]:
    """(points, comment) of a row as they count: points None while pending."""
    if row is None or row.cell(2) == "":
        return None, row.cell(3) if row is not None else ""
    return parse_points(row.cell(2)), row.cell(3)


@dataclass(frozen=True)
class Change:
    """One answer's new points (None: pending) and comment, with what the grader saw before changing them
    (``seen``): a cell that differs from ``seen`` when saved was changed meanwhile by someone else."""

    sid: str
    question: str
    points: float | None
    comment: str
    seen: tuple[float | None, str]


@dataclass
class Saved:
    """What :func:`save` did: answers written, answers already so, and conflicts (student id, the points
    and comment someone else saved meanwhile), which were left as they are."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, float | None, str]] = field(default_factory=list)


def save(path: Path, roster: Roster, anonymous: bool, changes: list[Change]) -> Saved:
    """Write ``changes`` into the sheet: under its lock, the file read again as it is now (a spreadsheet's
    save, another grader's, a ``grade`` run), each change checked against what its grader saw, and the
    whole file written atomically in the way it was saved.  A sheet with problems is not written
    (:class:`ManualScoresError`: fix it first); points out of range, and a comment the sheet could not hold (a NUL,
    more than :data:`MAX_COMMENT_CHARS`), are refused (ValueError)."""
    path = Path(path)
    for c in changes:
        if "\0" in c.comment:
            raise ValueError("a comment cannot hold a NUL character")
        if len(c.comment) > MAX_COMMENT_CHARS:
            raise ValueError(f"a comment is at most {MAX_COMMENT_CHARS} characters")
        top = roster.expected.get((c.sid, c.question))
        if top is None:
            raise ValueError(f"{c.question!r} is not a hand-graded question of this student")
        if c.points is not None and not 0 <= c.points <= top:
            raise ValueError(f"points {c.points:g} out of range 0..{top:g}")
    done = Saved()
    journal: list[dict] = []
    with locked(path):
        sheet = parse(path, strict=False) if path.is_file() else Sheet()
        check(sheet, path, roster, anonymous)  # raises with every problem: a broken sheet is not overwritten
        for c in changes:
            row = find(sheet, roster, c.sid, c.question)
            now = cell_state(row)
            new = (None if c.points is None else round_points(c.points), c.comment.strip())
            if now == new:
                done.unchanged.append(c.sid)
                continue
            if now != (c.seen[0], c.seen[1].strip()):
                done.conflicts.append((c.sid, *now))
                continue
            if row is None:
                row = SheetRow.new(roster.shown(c.sid, anonymous), c.question, "", "")
                sheet.rows.append(row)
            row.set(2, "" if new[0] is None else sheet.points_text(new[0]))
            row.set(3, new[1])
            done.written.append(c.sid)
            journal.append({"sid": c.sid, "question": c.question, "before": _state_json(now),
                            "after": _state_json(new)})
        if done.written:
            write(sheet, path)
            _record_saves(path, journal)
    return done


__all__ = ["SCORES_FILE", "SCORES_HEADER", "ManualScoresError", "Roster", "Sheet", "SheetRow", "SheetUpdate",
           "anonymous_key", "anonymous_code", "parse", "parse_points", "points_text", "round_points", "check", "read_scores", "uses_codes",
           "write", "update", "backup", "install", "private_folder", "locked", "version", "find", "rows_by_answer",
           "cell_state", "Change", "Saved", "save"]
