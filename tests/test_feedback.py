"""Feedback: what a student's page and the instructor's report say (no grading: the pages are pure
functions of the result files; real grades are rendered in ``test_batch.py``), and the messages of
the checks themselves: stubs, hidden checks."""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json

import markupsafe
import numpy as np
import pytest

from assignments.cnn_mnist import checks
from autograder.lms import reports
from autograder.judge.judge import Replay


def _result(sid: str, status: str = "graded", score: float = 20.0, **student_extra) -> dict:
    return {"student": {"id": sid, "source": f"{sid}.ipynb", "name": "", "email": "", "extra": student_extra},
            "assignment": "cnn_mnist", "status": status, "error": None, "score": score, "max_score": 33.0,
            "questions": [{"name": "conv2d_impl", "score": 0.0, "max_score": 4.0, "cases": [
                {"name": "test_conv2d", "hidden": False, "points": 2.0, "passed": False,
                 "message": "❌ Test case failed\n`conv2d` is not implemented yet: replace the `...` in its body with your code."},
                {"name": "test_conv2d_hidden", "hidden": True, "points": 2.0, "passed": False,
                 "message": "❌ Test case failed\n`conv2d` is not implemented yet: replace the `...` in its body with your code."}]}],
            "retrain": {"accuracy": 0.9931, "epochs": 10, "batch_size": 128, "optimizer": "Adam", "device": "CPU",
                        "backend": "tensorflow", "seconds": 95.0, "cache_hit": False, "notes": [], "error": None},
            "limits_hit": ["cell time limit (120 s) reached in cell 14"], "execution": {}}


def test_a_grader_error_is_shown_as_such_never_as_a_zero(tmp_path):
    ok = _result("1001", canvas_user_id="1001")
    fault = _result("1002", status="grader_error", score=0.0, canvas_user_id="1002")
    fault.update(error="the sandbox could not start Python (/root is 0700)", questions=[], retrain=None)
    page = reports.render_feedback(fault)
    assert "not graded yet" in page and "not of your submission" in page and "0 / 33" not in page
    reports.write_all([ok, fault], tmp_path, canvas="CNN on MNIST (4242)")
    report = (tmp_path / "report.html").read_text()
    assert "grader error: the sandbox could not start Python" in report
    assert 'id="n-grader-errors">1<' in report and "Mean score <strong>20</strong>" in report  # not (20 + 0) / 2
    grades = {r["id"]: r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert grades["1002"]["total"] == "" and grades["1002"]["status"] == "grader_error"
    canvas = list(csv.reader(open(tmp_path / "canvas_grades.csv")))
    assert [r[1] for r in canvas[2:]] == ["1001"]  # the grader's fault never reaches the gradebook


def test_a_mixed_batch_gets_one_canvas_import_per_assignment_each_with_its_own_column(tmp_path):
    """Canvas has one gradebook column per assignment: a batch of two assignments must not put the
    digits grade in the CNN column (nor out of its own points possible)."""
    digits = {**_result("1002", canvas_user_id="1002", score=17.0), "assignment": "digits", "max_score": 31.0}
    results = [_result("1001", canvas_user_id="1001"), digits]
    problems = reports.write_all(results, tmp_path, canvas="CNN on MNIST (4242)")  # one bare column: ambiguous
    assert not list(tmp_path.glob("canvas_grades*.csv"))
    assert any("'cnn_mnist=Title (assignment id)'" in p for p in problems)
    columns = reports.canvas_columns(["cnn_mnist=CNN on MNIST (4242)", "digits = Digits (4343)"])
    assert reports.write_all(results, tmp_path, canvas=columns) == []
    cnn = list(csv.reader(open(tmp_path / "canvas_grades_cnn_mnist.csv")))
    dig = list(csv.reader(open(tmp_path / "canvas_grades_digits.csv")))
    assert cnn[0][5] == "CNN on MNIST (4242)" and cnn[1][5] == "33" and [r[1] for r in cnn[2:]] == ["1001"]
    assert dig[0][5] == "Digits (4343)" and dig[1][5] == "31" and [(r[1], r[5]) for r in dig[2:]] == [("1002", "17")]
    report = (tmp_path / "report.html").read_text()
    assert "canvas_grades_cnn_mnist.csv" in report and "Digits (4343)" in report
    # and the summary's figures are per assignment (17 of 31 and 20 of 33 have no common mean)
    assert "<strong>cnn_mnist</strong>: 1 scored, mean score <strong>20</strong> / 33" in report
    assert "<strong>digits</strong>: 1 scored, mean score <strong>17</strong> / 31" in report
    with pytest.raises(ValueError, match="two Canvas columns"):
        reports.canvas_columns(["digits=A (1)", "digits=B (2)"])


def test_report_table_has_accuracy_flags_and_limits(tmp_path):
    twin = _result("1002", canvas_user_id="1002", identical_to="1001", late=True)
    reports.write_all([_result("1001", canvas_user_id="1001"), twin], tmp_path)
    report = (tmp_path / "report.html").read_text()
    assert "0.9931" in report and "byte-identical to 1001" in report and "late (Canvas)" in report
    assert "cell time limit (120 s) reached in cell 14" in report
    assert "No Canvas import written" in report and not (tmp_path / "canvas_grades.csv").exists()
    page = (tmp_path / "feedback" / "1002.html").read_text()
    assert "1001" not in page  # the classmate is on the instructor's report only


def test_hidden_checks_show_pass_or_fail_and_the_general_message():
    result = _result("1001")
    result["questions"][0]["cases"][0].update(passed=False, message="❌ Test case failed\nconv2d on the edge "
                                              "example (valid padding) returned shape (3, 4), expected (4, 3).")
    result["questions"][0]["cases"][1].update(passed=True, message="✅ Test case passed")
    page = reports.render_feedback(result)
    assert "returned shape (3, 4)" in page  # the public check's detail
    assert "hidden check:</span>\n <span class=\"ok\">passed</span>" in page.replace("\r", "")


# --- the checks' own messages -------------------------------------------------------------------

def _public_module():
    spec = importlib.util.spec_from_loader("cnn_checks_for_feedback_test", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(checks.render_public_module(), "cnn_checks.py", "exec"), mod.__dict__)
    return mod


def _template_stub(image, kernel, stride=1, padding="valid"):  # what the student notebook ships
    image = np.asarray(image, dtype=float)
    kernel = np.asarray(kernel, dtype=float)
    ...


def _raises(image, kernel, stride=1, padding="valid"):
    raise NotImplementedError


def _returns_ellipsis(image, kernel, stride=1, padding="valid"):
    return ...


def _replayed(func):
    """The same function seen through the engine: outputs recorded in the sandbox, as the probe does."""
    plan = checks.probe_plan()["conv2d"]
    outputs = []
    for case in plan:
        try:
            out = np.array(func(*[np.array(a) for a in case["args"]], **case["kwargs"]), dtype=np.float64)
            buf = io.BytesIO()
            np.save(buf, out, allow_pickle=False)  # as the probe encodes outputs
            outputs.append({"status": "ok", "npy": base64.b64encode(buf.getvalue()).decode()})
        except BaseException as exc:  # noqa: BLE001
            outputs.append({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
    return Replay("conv2d", plan, outputs)


@pytest.mark.parametrize("stub", [_template_stub, _raises, _returns_ellipsis])
@pytest.mark.parametrize("seen", ["live", "through the engine"])
def test_a_stub_is_not_implemented_yet_not_nan(stub, seen):
    func = stub if seen == "live" else _replayed(stub)
    for check in (_public_module().check_function, checks.check_function):
        with pytest.raises(AssertionError) as err:
            check("conv2d", func)
        assert "not implemented yet" in str(err.value) and "NaN" not in str(err.value)


def test_hidden_function_check_names_no_hidden_input_or_expected_value():
    def flipped(image, kernel, stride=1, padding="valid"):
        return checks._ref_conv2d(image, np.flip(kernel), stride=stride, padding=padding)

    with pytest.raises(AssertionError) as err:
        checks.check_function("conv2d", flipped)
    message = str(err.value)
    assert "wrong on 8 of 8 hidden inputs" in message
    for case in checks.hidden_cases("conv2d"):
        assert case.label not in message
    assert "expected" not in message and "flipped" not in message  # the public check names the mistake


@pytest.mark.parametrize("key", sorted(checks.ANSWERS))
def test_hidden_answer_check_does_not_repeat_the_public_one(key):
    answer = checks.ANSWERS[key]
    for mistake in answer.mistakes:
        with pytest.raises(AssertionError) as err:
            checks.check_answer(key, mistake.value)
        message = str(err.value)
        assert mistake.text not in message and "Likely mistake" not in message and "expected" not in message
        assert list(err.value.reasons) == mistake.reasons  # the instructor's insight still learns which it was
        assert str(answer.expected) not in message


def test_a_name_that_starts_a_formula_is_written_as_text_in_every_sheet(tmp_path):
    """Names and emails come from the LMS, where a student may edit them: a cell that would start a
    spreadsheet formula gets a leading apostrophe in grades.csv (and every other sheet, one writer)."""
    import csv as csv_module

    from autograder.lms import reports

    result = {"student": {"id": "1001", "name": "=HYPERLINK(\"http://x\")", "email": "@SUM(1+1)"},
              "assignment": "cnn_mnist", "status": "graded", "score": 3.0, "max_score": 36.0,
              "questions": [{"name": "conv_small", "score": 3.0}], "manual": []}
    reports.write_grades_csv([result], tmp_path / "grades.csv")
    row = list(csv_module.DictReader((tmp_path / "grades.csv").open()))[0]
    assert row["name"] == "'=HYPERLINK(\"http://x\")" and row["email"] == "'@SUM(1+1)"
    assert row["id"] == "1001" and row["total"] == "3.0" and row["conv_small"] == "3.0"


# --- provisional results: the training question not decided by a retrain -------------------------

def _training(undecided: str | None = "retraining_off") -> dict:
    hidden = {"name": "test_accuracy_hidden", "hidden": True, "points": 5, "passed": False,
              "message": "Not decided (provisional): the model was not retrained in this run, so its accuracy "
                         "was not measured."}
    if undecided:
        hidden["undecided"] = undecided
    else:
        hidden["message"] = "❌ Test case failed\nTest accuracy 0.9812 is not above 0.99."
    return {"name": "training", "score": 1.0, "max_score": 6.0, "cases": [
        {"name": "test_training", "hidden": False, "points": 1, "passed": True, "message": "✅ Test case passed"},
        hidden]}


def _provisional_result(sid: str, undecided: str | None = "retraining_off") -> dict:
    r = _result(sid, canvas_user_id=sid)
    r.update(retrain=None, limits_hit=[], questions=[*r["questions"], _training(undecided)])
    return r


def test_provisional_is_one_typed_definition_on_the_result():
    from autograder.result import CaseResult, GradeResult, QuestionResult, provisional

    typed = GradeResult.from_dict({**_provisional_result("1001"), "student": None})
    assert typed.provisional == "retraining_off" and typed.to_dict()["provisional"] == "retraining_off"
    assert provisional(_provisional_result("1001")) == "retraining_off"
    assert provisional(_provisional_result("1001", undecided=None)) is None  # decided, even though failed
    assert provisional({**_provisional_result("1001"), "retrain_pending": True}) == "retraining_pending"
    assert provisional({**_provisional_result("1001"), "status": "grader_error"}) is None  # not scored at all
    final = GradeResult(questions=[QuestionResult("training", 6, 6, [CaseResult("t", True, 5, True, "ok")])])
    assert final.provisional is None and "provisional" not in final.to_dict()
    assert "undecided" not in final.to_dict()["questions"][0]["cases"][0]
    with pytest.raises(ValueError, match="unknown reason"):
        CaseResult("t", True, 5, False, "m", undecided="because")


def test_the_judge_records_an_accuracy_it_could_not_measure_as_undecided_not_failed():
    """The judge runs the assignment's own training test; with no retrain (retraining off) or before one
    finished, the check is undecided: no points, not a failure, with why."""
    from assignments.cnn_mnist import spec as cnn_spec
    from autograder.judge import judge

    source = (cnn_spec.ASSIGNMENT.student_dir / "tests" / "training.py").read_text()
    hidden = "\n\n@test_case(points=5, hidden=True)\ndef test_accuracy_hidden(model):\n" \
             "    from assignments.cnn_mnist.checks import check_accuracy\n    check_accuracy(model)\n"
    from otter.test_files import test_case  # noqa: F401 - the test file's own import

    config = json.dumps({"class_name": "Sequential", "config": {"layers": []}})
    for retrain, reason in ((None, "retraining_off"), ({"reports": {}, "pending": True}, "retraining_pending")):
        model = judge.ExtractedModel(config, [{"epochs": 1, "batch_size": 32}], retrain)
        (question,) = judge.run_tests({"training.py": source.replace("points = [1]", "points = [1, 5]") + hidden},
                                      {"model": model})
        case = next(c for c in question["cases"] if c["hidden"])
        assert case["undecided"] == reason and not case["passed"] and "Not decided" in case["message"]
        assert "--no-retrain" not in case["message"] and "❌" not in case["message"]


def test_provisional_results_are_marked_on_every_page_and_keep_the_canvas_import_back(tmp_path):
    final = _provisional_result("1001", undecided=None)
    off = _provisional_result("1002")
    (tmp_path / "canvas_grades.csv").write_text("an import an earlier run left\n")
    reports.write_all([final, off], tmp_path, canvas="CNN on MNIST (4242)")
    grades = {r["id"]: r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert grades["1002"]["provisional"] == "retraining_off" and grades["1001"]["provisional"] == ""
    review = {r["id"]: r for r in csv.DictReader(open(tmp_path / "needs_review.csv"))}
    assert "provisional: graded with retraining off" in review["1002"]["reason"]
    assert "--canvas-provisional" in review["1002"]["reason"] and "1001" not in review
    report = (tmp_path / "report.html").read_text()
    banner = report[report.index('id="provisional"'):report.index('id="count"')]
    assert "1 result is provisional" in banner and "graded with retraining off" in banner
    assert "No Canvas import written for cnn_mnist" in report and "--canvas-provisional" in report
    assert not (tmp_path / "canvas_grades.csv").exists()  # neither this run's nor the earlier run's
    plan = reports.canvas_plan([final, off], "CNN on MNIST (4242)")
    assert plan.imports == [] and "1 result is provisional" in plan.withheld[0][3]
    page = (tmp_path / "feedback" / "1002.html").read_text()
    assert 'id="provisional"' in page and "has not retrained your model yet" in page
    assert "not decided yet" in page and ">failed<" not in page.split('id="q-training"')[1].split("</tr>")[0]
    assert "--" not in page.split("<body>")[1].replace("<!--", "")  # no command-line flag shown to a student
    assert 'id="provisional"' not in (tmp_path / "feedback" / "1001.html").read_text()

    reports.write_all([final, off], tmp_path, canvas="CNN on MNIST (4242)", canvas_provisional=True)  # asked for
    rows = list(csv.reader(open(tmp_path / "canvas_grades.csv")))
    assert sorted(r[1] for r in rows[2:]) == ["1001", "1002"]
    assert "It holds provisional totals" in (tmp_path / "report.html").read_text()
    review = {r["id"]: r for r in csv.DictReader(open(tmp_path / "needs_review.csv"))}
    assert review["1002"]["in_canvas_import"] == "yes" and "provisional" in review["1002"]["reason"]


def test_a_provisional_result_is_graded_again_by_a_run_that_retrains(tmp_path):
    from autograder import batch

    path = tmp_path / "r.json"
    path.write_text(json.dumps(_provisional_result("1002")))
    assert batch._needs_grading(path, retrain=True) and not batch._needs_grading(path, retrain=False)
    path.write_text(json.dumps(_provisional_result("1002", undecided=None)))
    assert not batch._needs_grading(path, retrain=True)


# --- the notebook's order and titles --------------------------------------------------------------

@pytest.mark.parametrize("assignment", ["cnn_mnist", "digits"])
def test_feedback_follows_the_notebooks_order_with_its_titles(assignment):
    """Order and titles come from the assignment's master notebook: every question of the unit has a
    number and a title there, and the page lists them so, whatever order the judge returned them in."""
    import re

    from autograder import outline, registry

    spec = registry.get(assignment)
    master = json.loads(spec.master_notebook.read_text())
    expected = []  # read here straight from the master's text, independently of autograder.outline
    for cell in master["cells"]:
        text = "".join(cell["source"])
        name = re.search(r"^name: (\w+)", text, re.M) if text.startswith("# BEGIN QUESTION") else None
        if name:
            expected.append([name.group(1)])
        elif cell["cell_type"] == "markdown" and expected and len(expected[-1]) == 1:
            lead = re.search(r"\*\*Question (\d+): ([^*(]+?)(?: \(graded by hand\))?\.\*\*", text)
            expected[-1].append(f"Question {lead.group(1)}: {lead.group(2)}")
    tests = {p.stem for p in (spec.student_dir / "tests").glob("*.py")}
    assert tests <= {name for name, _ in expected}, "a question of the tests is not in the notebook"
    assert [q.label for q in outline.outline(assignment)] == [label for _, label in expected]
    result = {"assignment": assignment, "student": {"id": "s"}, "status": "graded", "score": 0, "max_score": 1,
              "questions": [{"name": n, "score": 0.0, "max_score": 1.0, "cases": []} for n in sorted(tests)],
              "manual": [{"name": n, "max_score": 3.0, "score": None} for n, _ in expected if n not in tests]}
    assert [row["label"] for row in reports.feedback_rows(result)] == [label for _, label in expected]
    page = reports.render_feedback(result)
    positions = [page.index(f">{markupsafe.escape(label)}<") for _, label in expected]
    assert positions == sorted(positions)
    assert "Question 3: Output sizes" in page


def test_a_lead_without_a_title_gives_the_number_and_an_unknown_question_its_name():
    from autograder import outline

    nb = {"cells": [{"cell_type": "raw", "source": "# BEGIN QUESTION\nname: b\npoints: 1"},
                    {"cell_type": "markdown", "source": "## Part 2\n\n**Question 2.** Do b."},
                    {"cell_type": "raw", "source": "# BEGIN QUESTION\nname: a\nmanual: true"},
                    {"cell_type": "markdown", "source": "**Question 3: Say why (graded by hand).** Explain."}]}
    assert [(q.name, q.label) for q in outline.outline_from_notebook(nb)] == [("b", "Question 2"),
                                                                             ("a", "Question 3: Say why")]
    assert outline.label("cnn_mnist", "not_a_question") == "not_a_question"
    assert outline.order_key("cnn_mnist", "not_a_question") > outline.order_key("cnn_mnist", "written_pooling")


# --- grades.csv: the retrained accuracy ----------------------------------------------------------

def test_grades_csv_carries_the_retrained_accuracy(tmp_path):
    retrained, provisional_one = _result("1001"), _provisional_result("1002")
    reports.write_grades_csv([retrained, provisional_one], tmp_path / "grades.csv")
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert float(rows["1001"]["retrained_accuracy"]) == 0.9931 and rows["1002"]["retrained_accuracy"] == ""
    header = next(csv.reader(open(tmp_path / "grades.csv")))
    assert header.index("conv2d_impl") < header.index("training")  # the notebook's order: Q7 before Q10


# --- the console ------------------------------------------------------------------------------

LONG = ("Test accuracy 0.9880 is not above 0.99 (retrained from scratch: 10 epochs at batch size 1000, seed 1). "
        "The lesson's recipe (10 epochs at batch size 1000) reaches about 0.988: try more epochs. Training policy: "
        "the training question scores the retrained accuracy of whatever model you built from the allowed layers "
        "within the training budget; the structure question checks the lesson's architecture.")


@pytest.mark.parametrize("limit", [40, 120, 200, 300, 2000])
def test_console_messages_end_at_a_sentence(limit):
    text = reports.first_sentences(LONG, limit)
    kept = text.removesuffix(" ...")
    assert LONG.startswith(kept) and kept.endswith((".", "!", "?"))
    assert len(kept) <= max(limit, len(LONG.split(". ")[0]) + 1)
    assert text.endswith(" ...") == (kept != LONG)


def test_the_console_table_cuts_no_message_mid_sentence_and_counts_in_words(monkeypatch):
    from rich.console import Console

    from autograder import cli

    shown = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=shown, width=400))
    r = _result("1001")
    r["questions"].append(_training(undecided=None))
    r["questions"][-1]["cases"][1]["message"] = "❌ Test case failed\n" + LONG
    r["retrain"].update(epochs=1)
    r["manual"] = [{"name": "written_pooling", "max_score": 3.0, "score": None}]
    cli._print_results([r])
    text = shown.getvalue()
    row = next(line for line in text.splitlines() if "Question 10" in line)
    assert "reaches about 0.988: try more epochs. ..." in row and "Training policy" not in row
    assert "1 epoch," in text and "1 epochs" not in text
    assert text.index("Question 7: Implement convolution") < text.index("Question 10") < text.index("Question 11")
    assert reports.plural(1, "answer") == "1 answer" and reports.plural(2, "answer") == "2 answers"


# --- what the training question says: the run that was scored, and advice from its figures ----------

def _report(**given) -> dict:
    """A retraining report as the verifier writes it (a recipe that trains like the solution, by default)."""
    report = {"accuracy": 0.985, "accuracies": [0.985], "seeds": [1234], "epochs": 10, "seed_epochs": [10],
              "epochs_requested": 10, "batch_size": 128, "steps": 4690, "optimizer": "Adam (learning rate default)",
              "learning_rate": None, "default_learning_rate": 0.001, "input_max": 1.0, "loss": "sparse_categorical_crossentropy",
              "device": "CPU", "backend": "tensorflow", "seconds": 95.0, "cache_hit": False, "notes": [], "error": None}
    return {**report, **given}


def _advice(**given) -> str:
    from assignments.cnn_common import judging

    return " ".join(judging.training_advice(_report(**given), checks.TRAINING_FIGURES))


BLANKET = "try smaller batches or more epochs"


def test_advice_pixels_scaled_twice_says_so_and_nothing_about_batches():
    advice = _advice(input_max=1 / 255)
    assert "at most 0.00392" in advice and "divided by 255 twice" in advice and "scale the pixels to [0, 1] once" in advice
    assert "batch size" not in advice and BLANKET not in advice


def test_advice_unscaled_pixels():
    advice = _advice(input_max=255.0)
    assert "unscaled pixels (up to 255)" in advice and "Rescaling(1/255)" in advice


@pytest.mark.parametrize("rate,says", [(0.1, "is 100 times Adam's default (0.001)"),
                                       (1e-5, "is 100 times smaller than Adam's default (0.001)")])
def test_advice_a_learning_rate_far_from_the_default(rate, says):
    advice = _advice(learning_rate=rate, optimizer=f"Adam (learning rate {rate:g})")
    assert f"Your learning rate, {rate:g}, {says}" in advice
    assert _advice(learning_rate=0.002) == _advice()  # twice the default is not far from it


def test_advice_early_stopping_that_stopped_early():
    advice = _advice(epochs=4, seed_epochs=[4], epochs_requested=15, steps=15 * 469)
    assert "EarlyStopping stopped training after 4 of the 15 requested epochs" in advice


def test_advice_a_large_batch_with_few_steps_suggests_a_smaller_batch():
    advice = _advice(batch_size=1000, steps=600, epochs=10, seed_epochs=[10])
    assert "Your recipe trains 600 optimizer steps (10 epochs of 60 steps at batch size 1,000)" in advice
    assert "A smaller batch size gives more steps per epoch (batch size 128: 469 per epoch)" in advice
    assert "reaches only about 0.988" in advice


def test_advice_an_already_small_batch_with_few_epochs_suggests_more_epochs():
    advice = _advice(batch_size=128, steps=469, epochs=1, seed_epochs=[1], epochs_requested=1)
    assert "Your recipe trains 469 optimizer steps (1 epoch of 469 steps at batch size 128)" in advice
    assert "more epochs give the model the steps it needs" in advice and "smaller batch" not in advice


def test_advice_near_the_threshold_explains_the_seeds():
    advice = _advice(accuracy=0.9893, accuracies=[0.9885, 0.9893, 0.9902], seeds=[1234, 1235, 1236],
                     seed_epochs=[10, 10, 10])
    assert "trained 3 seeds and scored the median" in advice and "varied by 0.0017" in advice


def test_advice_at_chance_level_says_the_model_did_not_learn():
    advice = _advice(accuracy=0.098, accuracies=[0.098], learning_rate=0.5)
    assert "what guessing gives (10 classes)" in advice and "500 times Adam's default" in advice


def test_advice_for_a_recipe_that_trains_like_the_solution_points_at_the_model():
    advice = _advice()
    assert "compare your layers with the lesson's CNN" in advice and BLANKET not in advice


def test_the_failed_training_check_says_what_was_scored_and_its_advice():
    """Through the hidden check, as the judge runs it: the scored run's figures, then the advice."""
    from autograder.judge.judge import ExtractedModel

    report = _report(accuracy=0.9893, accuracies=[0.9885, 0.9893, 0.9902], seeds=[1234, 1235, 1236],
                     epochs=12, seed_epochs=[15, 12, 9], epochs_requested=15, steps=15 * 469)
    model = ExtractedModel('{"class_name": "Sequential", "config": {"layers": []}}', [{"epochs": 15}],
                           {"reports": {"model": report}})
    with pytest.raises(AssertionError) as failed:
        checks.check_accuracy(model)
    message = str(failed.value)
    assert message.startswith("Test accuracy 0.9893 is not above 0.99 (retrained from scratch with 3 seeds at batch size "
                              "128, Adam (learning rate default), on CPU (tensorflow), 95 s; the median counts: "
                              "seed 1234: 0.9885 after 15 epochs; seed 1235: 0.9893 after 12 of the 15 requested epochs "
                              "(EarlyStopping stopped it); seed 1236: 0.9902 after 9 of the 15 requested epochs")
    assert "EarlyStopping stopped training after 9 of the 15 requested epochs" in message
    assert "trained 3 seeds" in message and BLANKET not in message


def test_the_feedback_page_describes_the_run_that_was_scored():
    """A passed training question lists every seed's accuracy and the epochs each really trained."""
    passed = _result("1001")
    passed["retrain"] = _report(accuracy=0.9912, accuracies=[0.9905, 0.9912, 0.9931], seeds=[1234, 1235, 1236],
                                epochs=12, seed_epochs=[15, 12, 15], epochs_requested=15)
    page = reports.render_feedback(passed)
    assert "Test accuracy <strong>0.9912</strong>, retrained from scratch with 3 seeds" in page
    assert "seed 1235: 0.9912 after 12 of the 15 requested epochs (EarlyStopping stopped it)" in page
    assert "after 10 epochs" not in page
    single = _result("1002")  # a result written before the seeds' epochs were recorded still reads
    page = reports.render_feedback(single)
    assert "Test accuracy <strong>0.9931</strong>, retrained from scratch: 10 epochs at batch size 128, Adam" in page
