"""Hand-graded questions end to end (read from the masters, extracted as data, graders' pages, scores
merged without regrading, Canvas and Gradescope) and the class insight (misconception counts)."""

from __future__ import annotations

import base64
import csv
import importlib
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from autograder import batch, manual, registry
from autograder.engine import RetrainOptions
from autograder.lms import gradescope, insight
from autograder.lms.submissions import collect
from autograder.result import CaseResult, GradeResult, QuestionResult

NO_RETRAIN = RetrainOptions(enabled=False)
CANVAS_COLUMN = "CNN on MNIST (4242)"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _sample(assignment: str, name: str) -> Path:
    return registry.get(assignment).samples_dir / f"{name}.ipynb"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- which questions, and their answers -------------------------------------------------------

def test_each_assignments_hand_graded_questions_come_from_its_master():
    found = {name: [(q.name, q.points) for q in manual.questions_for(name)] for name in registry.names()}
    assert found["cnn_mnist"] == [("written_pooling", 3.0)] and found["digits"] == [("written_padding", 2.0)]
    prompt = manual.questions_for("cnn_mnist")[0].prompt
    assert "Question 11" in prompt and "36,928" in prompt and "A convolution shares" not in prompt  # no answer


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

    from autograder.lms import reports

    page = reports.MANUAL.render(assignment="cnn_mnist", name="written_pooling", fmt=reports.fmt, anonymous=False,
                                 prompt="", points=3, answers=[{"who": "1001", "name": "", "m": asdict(answer)}])
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    blank = manual.extract_answers(json.loads(_sample("cnn_mnist", "untouched").read_text()),
                                   manual.questions_for("cnn_mnist"))[0]
    assert blank.found and blank.blank
    missing = manual.extract_answers({"cells": [{"cell_type": "markdown", "source": "hi"}]},
                                     manual.questions_for("cnn_mnist"))[0]
    assert not missing.found


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
    ("1001,written_pooling,three,\n", 2, "not a number"),
    ("1001,written_pooling,3,\n1002,written_pooling,1,\n1001,written_pooling,2,\n", 4, "second row"),
])
def test_a_bad_scores_file_is_refused_naming_the_line_and_nothing_is_lost(graded_class, body, line, says):
    folder, out = graded_class
    _run(folder, out)
    kept = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = out.parent / "bad.csv"
    bad.write_text("id,question,points,comment\n" + body)
    with pytest.raises(manual.ManualScoresError) as err:
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
    assert all(c.startswith("anon-") and c in page for c in codes)
    assert "1001" not in page and "lovelace" not in page.lower()
    filled = out.parent / "filled.csv"
    filled.write_text("id,question,points,comment\n" + "".join(f"{c},written_pooling,2,\n" for c in codes))
    results = _run(folder, out, manual_scores=filled, anonymous=True)
    assert all(m["score"] == 2 for r in results for m in r["manual"])


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


# --- class insight ------------------------------------------------------------------------------

def test_misconception_counts_of_the_samples_follow_their_designed_mistakes(builds, tmp_path):
    """The samples record which mistakes they were written with (``expected_feedback``: a fragment of
    the message each mistaken question must give); the report counts each named mistake's students."""
    folder = tmp_path / "class"
    folder.mkdir()
    expected: dict[tuple[str, str, str], set[str]] = {}
    designed: dict[str, dict] = {}
    for name in registry.names():
        spec = registry.get(name)
        key = importlib.import_module(spec.samples).METADATA_KEY
        for sample in ("by_hand_mistakes", "shape_mistakes"):
            sid = f"{name}-{sample}"
            nb = spec.samples_dir / f"{sample}.ipynb"
            shutil.copy(nb, folder / f"{sid}.ipynb")
            meta = nbformat.read(nb, as_version=4).metadata[key]
            designed[sid] = meta["expected_failures"]
            classifier = importlib.import_module(spec.misconceptions)
            for question, fragment in meta["expected_feedback"].items():
                for mid in classifier.classify(fragment):
                    expected.setdefault((name, question, mid), set()).add(sid)
    assert len(expected) >= 10  # the samples' designed mistakes are named ones
    zips = [builds[name].autograder_zip for name in registry.names()]
    out = tmp_path / "out"
    results = batch.run_batch([folder], zips, out, batch.BatchOptions(jobs=2, retrain=NO_RETRAIN, progress=False))
    counted = {(s["assignment"], q["name"], m["id"]): set(m["students"])
               for s in insight.sections(results) for q in s["questions"] for m in q["misconceptions"]}
    for key, students in expected.items():
        assert counted.get(key) == students, key
    for (name, question, mid), students in counted.items():  # and nobody is blamed for a question they got right
        assert all(question in designed[sid] for sid in students), (name, question, mid, students)
    rows = {(r["assignment"], r["question"], r["misconception"]): int(r["students"])
            for r in _rows(out / "misconceptions.csv")}
    assert rows == {key: len(students) for key, students in counted.items()}
    report = (out / "report.html").read_text()
    assert 'id="unit-cnn_mnist"' in report and 'id="unit-digits"' in report  # one section per unit
    assert "flipped_filter" in report and "cnn_mnist-by_hand_mistakes" in report


def _insight_row(sid: str, assignment: str, accuracy: float, flipped: bool) -> dict:
    case = {"name": "test_conv_small_hidden", "hidden": True, "points": 2.0, "passed": not flipped,
            "message": "Likely mistake: flipped the filter" if flipped else "ok"}
    r = {"student": {"id": sid, "source": "", "name": "", "email": "", "extra": {}}, "assignment": assignment,
         "status": "graded", "error": None, "score": 2.0, "max_score": 33.0, "execution": {}, "limits_hit": [],
         "questions": [{"name": "conv_small", "score": 0.0 if flipped else 2.0, "max_score": 2.0, "cases": [case]}],
         "retrain": {"accuracy": accuracy, "epochs": 1, "batch_size": 32, "optimizer": "adam", "device": "CPU",
                     "backend": "tensorflow", "seconds": 1.0, "cache_hit": False, "notes": [], "error": None}}
    return manual.tag_misconceptions(r)


def test_a_mixed_batch_gets_one_insight_section_per_unit_with_its_threshold(tmp_path):
    from autograder.lms import reports

    results = [_insight_row("a", "cnn_mnist", 0.995, True), _insight_row("b", "cnn_mnist", 0.98, True),
               _insight_row("c", "cnn_mnist", 0.992, False), _insight_row("d", "digits", 0.95, False)]
    by_unit = {s["assignment"]: s for s in insight.sections(results)}
    assert set(by_unit) == {"cnn_mnist", "digits"}
    cnn = by_unit["cnn_mnist"]
    assert cnn["threshold"] == registry.get("cnn_mnist").training.threshold and cnn["below_threshold"] == 1
    (q,) = cnn["questions"]
    assert q["misconceptions"] == [{"id": "flipped_filter", "title": manual.catalogue("cnn_mnist")["flipped_filter"],
                                    "count": 2, "students": ["a", "b"]}]
    assert q["hidden"] == [{"case": "test_conv_small_hidden", "failed": 2, "total": 3, "rate": 2 / 3}]
    assert by_unit["digits"]["questions"][0]["misconceptions"] == []
    reports.write_all(results, tmp_path)
    report = (tmp_path / "report.html").read_text()
    assert report.count('<section class="unit"') == 2 and "1</strong> of 3 at or below the threshold 0.99" in report
    assert "67%" in report and "a, b" in report
    assert _rows(tmp_path / "misconceptions.csv") == [{"assignment": "cnn_mnist", "question": "conv_small",
                                                       "misconception": "flipped_filter", "title": q["misconceptions"][0]["title"],
                                                       "students": "2", "of_scored": "3", "ids": "a;b"}]


@pytest.mark.parametrize("unit", ["cnn_mnist", "digits"])
def test_every_mistake_a_unit_names_is_a_misconception_of_its_catalogue(unit):
    """A mistake added to a unit's checks without an identifier would be missing from the class insight."""
    spec = registry.get(unit)
    checks = importlib.import_module(spec.checks)
    classifier = importlib.import_module(spec.misconceptions)
    answers = checks.answers_for() if hasattr(checks, "answers_for") else checks.ANSWERS
    messages = set()
    for a in answers.values():
        messages |= {m for _, m in a.mistakes} | {m for items in a.item_mistakes for _, m in items}
        messages |= set(a.shape_hints.values())
    functions = list(checks.probe_plan())  # the functions students implement
    for name in functions:
        for case in checks.public_cases(name):
            messages |= {m for _, m in checks._function_mistakes(name, case)}
    assert len(messages) > 20
    assert [m for m in sorted(messages) if not classifier.classify(m)] == []
    assert {mid for m in messages for mid in classifier.classify(m)} <= set(classifier.CATALOGUE)
