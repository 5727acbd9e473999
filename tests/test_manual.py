"""Hand-graded questions end to end (read from the masters, extracted as data, graders' pages, scores
merged without regrading, Canvas and Gradescope).  The class insight is in ``test_insight.py``."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from autograder import batch, manual, manual_scores, registry
from autograder.engine import RetrainOptions
from autograder.lms import gradescope
from autograder.lms.submissions import collect
from autograder.result import CaseResult, GradeResult, QuestionResult

NO_RETRAIN = RetrainOptions(enabled=False)
CANVAS_COLUMN = "CNN on MNIST (4242)"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _sample(assignment: str, name: str) -> Path:
    return registry.get(assignment).samples_dir / f"{name}.ipynb"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _manual_page(answers: list[dict], reference: str = "") -> str:
    """The graders' page of cnn_mnist's hand-graded question, rendered as write_manual_pages renders it."""
    from autograder.lms import reports, safe_markdown

    return reports.MANUAL.render(assignment="cnn_mnist", name="written_pooling", fmt=reports.fmt, anonymous=False,
                                 prompt="**Question 11** <b>x</b>", points=3, answers=answers, reference=reference,
                                 md=safe_markdown.render, csp=safe_markdown.CSP, score_class=reports.score_class)


# --- which questions, and their answers -------------------------------------------------------

def test_each_assignments_hand_graded_questions_come_from_its_master():
    found = {name: [(q.name, q.points) for q in manual.questions_for(name)] for name in registry.names()}
    assert found["cnn_mnist"] == [("written_pooling", 3.0)] and found["digits"] == [("written_padding", 2.0)]
    prompt = manual.questions_for("cnn_mnist")[0].prompt
    assert "Question 11" in prompt and "36,928" in prompt and "A convolution shares" not in prompt  # no answer


@pytest.mark.parametrize("unit", ["cnn_mnist", "digits"])
def test_reference_answers_and_rubrics_come_from_the_master_for_graders_only(unit):
    (question,) = manual.questions_for(unit)
    reference = manual.reference_answer(unit, question.name)
    rubric = manual.master_rubric(unit, question.name)
    assert len(reference) > 200 and sum(points for points, _ in rubric) == question.points
    student = (registry.get(unit).master_notebook.parent.parent / "student" / f"{unit}.ipynb").read_text()
    assert reference[:60] not in student and not any(text[:40] in student for _, text in rubric)


def _answered(cells: list) -> dict:
    nb = nbformat.read(_sample("cnn_mnist", "untouched"), as_version=4)
    begin = next(i for i, c in enumerate(nb.cells) if manual.BEGIN in c.source)
    end = next(i for i, c in enumerate(nb.cells) if manual.END in c.source)
    nb.cells[begin + 1:end] = cells
    return json.loads(nbformat.writes(nb))


def test_an_answer_is_bounded_data_with_only_real_images():
    code = nbformat.v4.new_code_cell("plt.plot(x)")
    code.outputs = [nbformat.v4.new_output("stream", text="printed\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(PNG).decode()}),
                    nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(b"<svg onload=x>").decode()})]
    nb = _answered([code, nbformat.v4.new_markdown_cell("<script>alert(1)</script> " + "x" * 30_000)])
    (answer,) = manual.extract_answers(nb, manual.questions_for("cnn_mnist"))
    assert answer.found and not answer.blank and answer.truncated
    assert sum(len(p.get("text", "")) for p in answer.parts) <= manual.MAX_TEXT_CHARS + 100
    images = [p for p in answer.parts if p["kind"] == "image"]
    assert len(images) == 1 and base64.b64decode(images[0]["data"]) == PNG  # the fake PNG is left out
    assert any("not a valid image" in p.get("text", "") for p in answer.parts)
    from dataclasses import asdict


    page = _manual_page([{"who": "1001", "name": "", "m": asdict(answer)}])
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    blank = manual.extract_answers(json.loads(_sample("cnn_mnist", "untouched").read_text()),
                                   manual.questions_for("cnn_mnist"))[0]
    assert blank.found and blank.blank
    missing = manual.extract_answers({"cells": [{"cell_type": "markdown", "source": "hi"}]},
                                     manual.questions_for("cnn_mnist"))[0]
    assert not missing.found


class _Tags:
    """Every tag and attribute of a page, as a browser's parser sees them."""

    def __init__(self, page: str):
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict]] = []
        tags = self.tags

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                tags.append((tag, {k: v or "" for k, v in attrs}))

        Parser().feed(page)


ATTACKS = [
    "<script>alert(1)</script>",
    "[click](javascript:alert(2))",
    "[click](JaVaScRiPt:alert(3))",
    "<img src=x onerror=alert(4)>",
    "![x](x\" onerror=\"alert(5))",
    "<iframe src=\"https://evil.example\"></iframe>",
    "<a href=\"javascript:alert(6)\">raw link</a>",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCg3KTwvc2NyaXB0Pg==)",
    "![beacon](https://evil.example/pixel.png)",
    "<svg onload=alert(8)>",
    "<style>body{display:none}</style>",
]


def test_answers_render_as_markdown_that_runs_no_script_with_the_reference_and_coloured_scores():
    answers = [{"who": who, "name": "", "m": {"name": "written_pooling", "max_score": 3.0, "score": score,
                                             "found": True, "blank": False, "truncated": False, "comment": "",
                                             "parts": [{"kind": "markdown", "text": text}]}}
               for who, score, text in [("a", None, "**Shared** weights, `3x3` filters\n\n- one\n- two"),
                                        ("b", 0.0, "\n\n".join(ATTACKS)), ("c", 1.5, "partly"), ("d", 3.0, "all")]]
    page = _manual_page(answers, reference="A convolution *shares* one filter.")
    tags = _Tags(page).tags
    assert not [t for t, _ in tags if t in ("script", "iframe", "svg", "object", "embed", "a")]  # no link at all
    assert [t for t, _ in tags].count("style") == 1  # the page's own stylesheet only
    for tag, attrs in tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("href", "src"):
            value = attrs.get(name, "").strip().lower()
            assert not value.startswith(("javascript:", "vbscript:", "data:text", "http")), (tag, attrs)
    (csp,) = [a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "<strong>Shared</strong> weights, <code>3x3</code>" in page and "<li>one</li>" in page  # markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "not loaded: https://evil.example/pixel.png" in page
    assert "<strong>Question 11</strong> &lt;b&gt;x&lt;/b&gt;" in page  # the master's text, as markdown too
    assert 'id="reference"' in page and "A convolution <em>shares</em> one filter." in page
    points = dict(re.findall(r'class="who"><bdi>(\w)</bdi></strong>.*?class="points (\w+)"', page, re.S))
    assert points == {"a": "pending", "b": "bad", "c": "part", "d": "ok"}  # 0 / 3 is not green


# --- scores merged without regrading ----------------------------------------------------------

def _fake_result(sub, wrong_filter: bool) -> dict:
    """What the engine would have written (autograded 33 points: conv_small and 31 others)."""
    cases = [CaseResult("test_conv_small", False, 2.0, not wrong_filter,
                        "❌ Test case failed\n`conv_small` is not right yet. Likely mistake: flipped the filter; in deep "
                        "learning the filter slides over the image as is" if wrong_filter else "✅ Test case passed")]
    r = GradeResult(assignment="cnn_mnist", submission=str(sub.notebook))
    r.questions = [QuestionResult("conv_small", 0.0 if wrong_filter else 2.0, 2.0, cases),
                   QuestionResult("rest", 20.0, 31.0, [CaseResult("test_rest", True, 31.0, False, "partly")])]
    r.score, r.max_score = sum(q.score for q in r.questions), 33.0
    result = r.to_dict()
    result["student"] = batch._identity(sub)
    return manual.enrich(result, sub.notebook)


@pytest.fixture
def graded_class(tmp_path, monkeypatch):
    """A class whose results exist already in OUT (as an earlier `grade` left them); grading is
    forbidden from here on: every later run must reuse them."""
    folder = tmp_path / "canvas"
    folder.mkdir()
    shutil.copy(_sample("cnn_mnist", "solution"), folder / "lovelaceada_1001_5001_cnn_mnist.ipynb")
    shutil.copy(_sample("cnn_mnist", "by_hand_mistakes"), folder / "turingalan_1002_5002_cnn_mnist.ipynb")
    out = tmp_path / "out"
    for sub in collect([folder], out):
        batch.write_json_atomically(batch.result_path(out, sub.id), _fake_result(sub, sub.id == "1002"))

    def no_grading(*args, **kwargs):
        raise AssertionError("graded again")

    from autograder import engine

    monkeypatch.setattr(batch, "_run_parallel", no_grading)
    monkeypatch.setattr(batch, "grade_one", no_grading)
    monkeypatch.setattr(engine, "grade_notebook", no_grading)
    return folder, out


def _run(folder, out, **options):
    return batch.run_batch([folder], {"cnn_mnist": "unused.zip"}, out,
                           batch.BatchOptions(jobs=1, retrain=NO_RETRAIN, progress=False, canvas=CANVAS_COLUMN,
                                              **options))


def test_filled_scores_reach_totals_grades_canvas_and_feedback_without_regrading(graded_class):
    folder, out = graded_class
    results = {r["student"]["id"]: r for r in _run(folder, out)}
    before = {p.name: p.read_bytes() for p in (out / "results").glob("*.json")}
    # pending: the maximum counts the hand-graded points, the import waits, the pages say so
    assert results["1001"]["max_score"] == 36.0 and results["1001"]["score"] == 22.0
    grades = {r["id"]: r for r in _rows(out / "grades.csv")}
    assert grades["1001"]["written_pooling"] == "pending" and grades["1001"]["max_score"] == "36.0"
    assert grades["1001"]["pending_by_hand"] == "1"
    canvas = _rows(out / "canvas_grades.csv")
    assert canvas[0][CANVAS_COLUMN] == "36" and len(canvas) == 1  # "Points Possible" only: the import waits
    assert "waits for 1 hand-graded question" in (out / "needs_review.csv").read_text()
    page = (out / "feedback" / "1001.html").read_text()
    assert "To be graded by hand" in page and "22 / 36" in page and "3 points still to be graded by hand" in page
    report = (out / "report.html").read_text()
    assert '<strong id="n-pending">2</strong>' in report
    grader_page = (out / "manual" / "cnn_mnist-written_pooling.html").read_text()
    assert "Question 11" in grader_page and "A convolution shares" in grader_page and "1002" in grader_page
    assert 'id="reference"' in grader_page  # the master's solution, for graders
    template = _rows(out / "manual_scores.csv")
    assert [(r["id"], r["question"], r["points"]) for r in template] == [("1001", "written_pooling", ""),
                                                                         ("1002", "written_pooling", "")]

    # a grader fills the file in; the next run merges it, grading nothing
    filled = out.parent / "filled.csv"
    filled.write_text("id,question,points,comment\n1001,written_pooling,3,Clear and complete.\n"
                      "1002,written_pooling,1.5,\"Pooling yes, sharing no.\"\n")
    results = {r["student"]["id"]: r for r in _run(folder, out, manual_scores=filled)}
    assert results["1001"]["score"] == 25.0 and results["1002"]["score"] == pytest.approx(20 + 1.5)
    grades = {r["id"]: r for r in _rows(out / "grades.csv")}
    assert grades["1001"]["total"] == "25.0" and grades["1002"]["written_pooling"] == "1.5"
    assert grades["1001"]["pending_by_hand"] == ""
    canvas = {r["ID"]: r[CANVAS_COLUMN] for r in _rows(out / "canvas_grades.csv")}
    assert canvas == {"": "36", "1001": "25", "1002": "21.5"}
    page = (out / "feedback" / "1002.html").read_text()
    assert "1.5 / 3" in page and "Pooling yes, sharing no." in page and "21.5 / 36" in page
    assert "still to be graded" not in page
    assert '<strong id="n-pending">0</strong>' in (out / "report.html").read_text()
    # the result files are as graded; the scores live in OUT/manual_scores.csv, which the next run reads
    assert {p.name: p.read_bytes() for p in (out / "results").glob("*.json")} == before
    assert (out / "manual_scores.csv").read_text() == filled.read_text()
    again = {r["student"]["id"]: r for r in _run(folder, out)}
    assert again["1001"]["score"] == 25.0


@pytest.mark.parametrize("body, line, says", [
    ("1001,written_pooling,3,\n9999,written_pooling,1,\n", 3, "unknown student id '9999'"),
    ("1001,written_poolin,3,\n", 2, "'written_poolin' is not a hand-graded question"),
    ("1001,written_pooling,4,\n", 2, "out of range 0..3"),
    ("1001,written_pooling,-1,\n", 2, "out of range"),
    ("1001,written_pooling,three,\n", 2, "not a plain number"),
    ("1001,written_pooling,3,\n1002,written_pooling,1,\n1001,written_pooling,2,\n", 4, "second row"),
])
def test_a_bad_scores_file_is_refused_naming_the_line_and_nothing_is_lost(graded_class, body, line, says):
    folder, out = graded_class
    _run(folder, out)
    kept = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = out.parent / "bad.csv"
    bad.write_text("id,question,points,comment\n" + body)
    with pytest.raises(manual_scores.ManualScoresError) as err:
        _run(folder, out, manual_scores=bad)
    assert f"line {line}:" in str(err.value) and says in str(err.value)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()
            if p.name != "batch.json"} == {k: v for k, v in kept.items() if k.name != "batch.json"}


def test_anonymous_pages_show_codes_that_the_scores_file_accepts(graded_class):
    folder, out = graded_class
    _run(folder, out, anonymous=True)
    page = (out / "manual" / "cnn_mnist-written_pooling.html").read_text()
    template = _rows(out / "manual_scores.csv")
    codes = [r["id"] for r in template]
    assert all(c.startswith("anon:") and c in page for c in codes)
    assert "1001" not in page and "lovelace" not in page.lower()
    filled = out.parent / "filled.csv"
    filled.write_text("id,question,points,comment\n" + "".join(f"{c},written_pooling,2,\n" for c in codes))
    results = _run(folder, out, manual_scores=filled, anonymous=True)
    assert all(m["score"] == 2 for r in results for m in r["manual"])


def test_anonymous_after_a_first_run_rewrites_the_sheet_with_the_pages_codes_keeping_what_was_typed(graded_class):
    folder, out = graded_class
    _run(folder, out)  # a first run names students by id
    (out / "manual_scores.csv").write_text("id,question,points,comment\n1001,written_pooling,2,\"Good, clear\"\n"
                                           "1002,written_pooling,,\n")
    results = {r["student"]["id"]: r for r in _run(folder, out, anonymous=True)}
    assert results["1001"]["manual"][0]["score"] == 2 and results["1001"]["manual"][0]["comment"] == "Good, clear"
    page = (out / "manual" / "cnn_mnist-written_pooling.html").read_text()
    rows = _rows(out / "manual_scores.csv")
    assert all(r["id"].startswith("anon:") and f">{r['id']}<" in page for r in rows) and len(rows) == 2
    assert "1001" not in (out / "manual_scores.csv").read_text() + page
    graded = next(r for r in rows if r["points"])
    assert graded == {"id": graded["id"], "question": "written_pooling", "points": "2", "comment": "Good, clear"}
    (kept,) = (out / ".private").glob("manual_scores.*.csv")  # the sheet as it was, with ids, outside manual/
    assert "1001,written_pooling,2" in kept.read_text()
    assert (out / ".private" / "anonymous-key").is_file() and not list((out / "manual").glob(".*"))
    # a TA types against the codes: the points reach the right student
    (out / "manual_scores.csv").write_text("id,question,points,comment\n" + "".join(
        f"{r['id']},written_pooling,{3 if r is graded else 1},\n" for r in rows))
    results = {r["student"]["id"]: r for r in _run(folder, out)}  # no flag: the folder stays anonymous
    assert results["1001"]["manual"][0]["score"] == 3 and results["1002"]["manual"][0]["score"] == 1
    assert "1001" not in (out / "manual" / "cnn_mnist-written_pooling.html").read_text()
    _run(folder, out, anonymous=False)  # asked for ids: the pages and the sheet both name ids again
    assert sorted(r["id"] for r in _rows(out / "manual_scores.csv")) == ["1001", "1002"]
    assert ">1001<" in (out / "manual" / "cnn_mnist-written_pooling.html").read_text()


def test_a_spreadsheets_sheet_merges_and_the_next_plain_run_adds_no_row(graded_class):
    """Excel's "CSV UTF-8": a BOM, CRLF, a trailing empty line; first with an unquoted decimal comma."""
    folder, out = graded_class
    _run(folder, out)
    sheet = out / "manual_scores.csv"
    sheet.write_bytes("\ufeffid,question,points,comment\r\n1001,written_pooling,1,5,Explains weight sharing\r\n"
                      "1002,written_pooling,0,none\r\n\r\n".encode())
    typed = sheet.read_bytes()
    with pytest.raises(manual_scores.ManualScoresError, match="line 2: 5 cells"):
        _run(folder, out)
    assert sheet.read_bytes() == typed  # nothing the TA typed is lost
    sheet.write_bytes(typed.replace(b"1,5,Explains", b'"1,5",Explains'))
    for _ in range(2):  # a plain run after the BOM'd sheet merged: the same scores, no duplicate row
        results = {r["student"]["id"]: r for r in _run(folder, out)}
        assert results["1001"]["manual"][0]["score"] == 1.5 and results["1002"]["manual"][0]["score"] == 0
        assert len(_rows(sheet)) == 2 and sheet.read_bytes().startswith(b"\xef\xbb\xbf")
    page = (out / "manual" / "cnn_mnist-written_pooling.html").read_text()
    assert '<span class="points part">1.5 / 3</span>' in page and '<span class="points bad">0 / 3</span>' in page


def test_a_refused_sheet_says_so_on_the_console_and_exits_2_listing_every_problem(graded_class):
    from typer.testing import CliRunner

    from autograder import cli

    folder, out = graded_class
    _run(folder, out)
    (out / "manual_scores.csv").write_text("id,question,points,comment\n1001,written_pooling,0_3,\n"
                                           "[red]1002,written_pooling,1,\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "logs" not in p.parts}
    run = CliRunner().invoke(cli.app, ["grade", str(folder), "--autograder", str(out.parent / "unused.zip"),
                                       "--out", str(out)])
    assert run.exit_code == 2, run.output
    text = " ".join(run.output.split())
    assert "Hand-grading sheet refused" in text and "2 problems, so none of its rows were merged" in text
    assert "line 2: points '0_3' is not a plain number" in text and "did you mean '1002'" in text
    assert "'[red]1002'" in text and "Nothing was merged and nothing was lost" in text
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "logs" not in p.parts} == before


# --- Gradescope ---------------------------------------------------------------------------------

def test_gradescope_lists_the_hand_graded_question_for_staff_pending_and_not_scored():
    nb = _answered([nbformat.v4.new_markdown_cell("Weights are shared across positions.")])
    result = {"assignment": "cnn_mnist", "status": "graded", "score": 2.0, "max_score": 33.0, "questions": [
        {"name": "conv_small", "score": 2.0, "max_score": 2.0,
         "cases": [{"name": "test_conv_small", "hidden": False, "points": 2.0, "passed": True, "message": "ok"}]}]}
    path = Path(__file__).resolve().parent / "_gs_answer.ipynb"
    try:
        path.write_text(json.dumps(nb))
        manual.enrich(result, path)
    finally:
        path.unlink()
    payload = gradescope.to_gradescope(result, 5.0)
    (test,) = [t for t in payload["tests"] if "graded by hand" in t["name"]]
    assert test["visibility"] == "hidden" and test["score"] == 0 and test["max_score"] == 0  # staff only, not scored
    assert "pending" in test["name"] and "Weights are shared across positions." in test["output"]
    assert "status" not in test and payload["score"] == 2.0
    from test_gradescope import _assert_valid_results

    _assert_valid_results(payload)
    assert "graded by hand" in payload["output"]


def test_the_autograder_zip_carries_the_hand_graded_questions(built):
    import zipfile

    with zipfile.ZipFile(built.autograder_zip) as z:
        questions = json.loads(z.read(manual.ZIP_FILE))
    assert [(q["name"], q["points"]) for q in questions] == [("written_pooling", 3.0)]
    assert "A convolution shares" not in json.dumps(questions)  # the question, never the answer
    assert "one small filter is shared" not in json.dumps(questions)  # nor the graders' rubric
