"""Feedback: what a student's page and the instructor's report say (no grading: the pages are pure
functions of the result files; real grades are rendered in ``test_batch.py``), and the messages of
the checks themselves: stubs, hidden checks."""

from __future__ import annotations

import base64
import csv
import importlib.util
import io

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
