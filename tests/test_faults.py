"""One typed fault from where it is raised to the result, needs_review.csv and Gradescope: its owner (the
submission, the host, the grader), its cause and its message for people.  Code decides on the cause, never on
the message's text.

Each cause is made to happen for real and its typed cause asserted: the cheap ones here, the ones that need a
jail, a retrain or a batch where those are tested (the last test checks that every cause has an assertion).
"""

from __future__ import annotations

import ast
import csv
import json
import re
import sys
from pathlib import Path

import pytest

from autograder import batch, engine, faults
from autograder.faults import CAUSES, GRADER_ERROR_CAUSES, OWNER_OF, Fault, FaultError
from autograder.lms import gradescope, reports
from autograder.lms.submissions import Submission
from autograder.probe.sandbox import ProbeResult
from autograder.result import GradeResult

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # the other test files' helpers


# --- the type --------------------------------------------------------------------------------------

def test_every_cause_has_one_owner_and_a_fault_crosses_processes_as_a_dict():
    assert set(OWNER_OF) == set(CAUSES) and set(OWNER_OF.values()) == set(faults.OWNERS)
    assert set(GRADER_ERROR_CAUSES) == {c for c in CAUSES if OWNER_OF[c] != "submission"}
    for cause in CAUSES:
        fault = Fault(cause, f"why: {cause}")
        assert Fault.from_dict(json.loads(json.dumps(fault.to_dict()))) == fault
        assert fault.owner == OWNER_OF[cause] and fault.graders == (fault.owner != "submission")
    with pytest.raises(ValueError):
        Fault("the student's fault", "a cause that is not one")
    with pytest.raises(ValueError):
        Fault("host_slow", "the host's cause, claimed for the submission", owner="submission")
    forged = Fault.from_dict({"cause": "no such cause", "owner": "submission"})  # e.g. a worker's broken output
    assert forged.cause == "grader_crash" and forged.graders


@pytest.mark.parametrize("cause", CAUSES)
def test_a_result_takes_its_status_and_cause_from_the_fault_and_keeps_the_json_fields(cause):
    result = GradeResult(assignment="cnn_mnist").fail(Fault(cause, "what people are told"))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["fault"] == {"cause": cause, "owner": OWNER_OF[cause], "message": "what people are told"}
    assert data["status"] == ("error" if OWNER_OF[cause] == "submission" else "grader_error")
    assert data["error"] == "what people are told"
    assert data.get("cause") == (cause if OWNER_OF[cause] != "submission" else None)
    assert GradeResult.from_dict(data) == result and faults.of_result(data) == Fault(cause, "what people are told")
    assert "fault" not in GradeResult().to_dict()  # graded: no fault


def test_a_result_written_before_faults_were_typed_reads_as_unknown_never_from_its_text():
    old = {"status": "grader_error", "error": "retraining failed: the host was overloaded", "student": {"id": "s"}}
    assert faults.of_result(old) == Fault("unknown", old["error"])
    assert faults.of_result({**old, "cause": "host_limit"}).cause == "host_limit"
    assert faults.of_result({"status": "error", "error": "memory limit exceeded"}) is None
    assert GradeResult.from_dict(old).cause == "unknown"


def test_needs_review_and_gradescope_carry_the_owner_and_the_cause(tmp_path):
    rows = [GradeResult(assignment="cnn_mnist", student={"id": "s1"}).fail(Fault("host_slow", "overloaded")).to_dict(),
            GradeResult(assignment="cnn_mnist", student={"id": "s2"}).fail(Fault("crashed", "exit 3")).to_dict()]
    reports.write_review_csv(rows, tmp_path / "needs_review.csv")
    review = {r["id"]: r for r in csv.DictReader(open(tmp_path / "needs_review.csv", encoding="utf-8"))}
    assert (review["s1"]["owner"], review["s1"]["cause"], review["s1"]["status"]) == ("host", "host_slow", "grader_error")
    assert (review["s2"]["owner"], review["s2"]["cause"], review["s2"]["status"]) == ("submission", "crashed", "error")
    payload = gradescope.to_gradescope(rows[0], 1.0)
    assert payload["extra_data"]["fault"] == {"cause": "host_slow", "owner": "host", "message": "overloaded"}
    assert payload["output"] == gradescope.GRADER_ERROR_MESSAGE  # never the student's 0


# --- causes made to happen here --------------------------------------------------------------------

def _grade_one(tmp_path, sub: Submission, autograders) -> dict:
    batch.grade_one(sub, autograders, str(tmp_path / "out"), batch.BatchOptions(jobs=1, progress=False, warm=0))
    return json.loads(batch.result_path(tmp_path / "out", sub.id).read_text())


def test_an_input_that_is_no_submission_is_the_submissions_input_refused(tmp_path):
    result = _grade_one(tmp_path, Submission("s1", "s1.pdf", error="not a notebook (a .pdf file)"), {"cnn_mnist": "x"})
    assert result["status"] == "error" and result["fault"]["cause"] == "input_refused"
    (tmp_path / "sub" / "a").mkdir(parents=True)
    for name in ("a/one.ipynb", "two.ipynb"):  # Gradescope: two notebooks, neither named after the assignment
        (tmp_path / "sub" / name).write_text("{}")
    assert gradescope.find_notebook(tmp_path / "sub", "cnn_mnist")[1].cause == "input_refused"


def test_a_crash_of_the_engine_is_the_graders_crash(tmp_path, monkeypatch):
    notebook = tmp_path / "s1.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

    def broken(*args, **kwargs):
        raise KeyError("a bug of the grader's")

    monkeypatch.setattr(engine, "grade_notebook", broken)
    result = _grade_one(tmp_path, Submission("s1", "s1.ipynb", notebook=notebook), {"cnn_mnist": "unused.zip"})
    assert result["status"] == "grader_error" and result["cause"] == result["fault"]["cause"] == "grader_crash"


def test_the_graders_files_changing_during_a_run_is_tampering(autograder, tmp_path, monkeypatch):
    """The probe is stood in for (its jail is tested elsewhere); the grader's fingerprint changes while it runs."""
    prints = iter(["before", "after"])
    monkeypatch.setattr(engine, "_grader_fingerprint", lambda extra: next(prints))
    monkeypatch.setattr(engine, "probe", lambda *a, **k: ProbeResult(values={}))
    result = engine.grade_notebook(tmp_path / "sub.ipynb", autograder, retrain=engine.RetrainOptions(enabled=False))
    assert result["status"] == "error" and result["fault"]["cause"] == "tampering"


def test_a_jail_that_cannot_be_chosen_is_jail_unsafe(autograder, tmp_path, monkeypatch):
    from autograder.probe import jail

    monkeypatch.setenv(jail.ENV_MODE, "nonsense")
    nb = tmp_path / "sub.ipynb"
    nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    result = engine.grade_notebook(nb, autograder, retrain=engine.RetrainOptions(enabled=False))
    assert result["status"] == "grader_error" and result["fault"]["cause"] == "jail_unsafe"
    assert result["fault"]["owner"] == "grader"


def test_data_that_cannot_be_loaded_in_the_retraining_process_is_dataset_missing(monkeypatch):
    from autograder.verifier import retrain, training
    from test_cost import _fit, _small_keras_model

    def missing(*args, **kwargs):
        raise FileNotFoundError("mnist.npz")

    monkeypatch.setattr(training, "load_data", missing)
    model = _small_keras_model()
    report = retrain.verify(model.to_json(), [_fit(model)], retrain.Settings("cnn_mnist", data_subset=(2000, 500), seeds=1),
                            cache_dir=None, isolated=False)
    assert report.fault["cause"] == "dataset_missing" and report.fault["owner"] == "grader", report
    assert report.accuracy is None and "not your fault" in report.error


def test_a_fault_error_carries_its_fault():
    with pytest.raises(FaultError) as raised:
        raise FaultError.of("host_limit", "the judge exceeded its memory limit")
    assert raised.value.fault == Fault("host_limit", "the judge exceeded its memory limit")
    assert str(raised.value) == "the judge exceeded its memory limit"


# --- every cause is asserted somewhere ---------------------------------------------------------------

def test_every_cause_is_made_to_happen_and_asserted_by_a_test():
    """Each cause appears, quoted, in an ``assert`` of some test (here or in the file that makes it happen)."""
    asserted: set[str] = set()
    skip = {"test_every_cause_is_made_to_happen_and_asserted_by_a_test",
            "test_a_result_takes_its_status_and_cause_from_the_fault_and_keeps_the_json_fields"}
    for path in TESTS.glob("test_*.py"):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_") or node.name in skip:
                continue
            lines = [line for line in (ast.get_source_segment(source, node) or "").splitlines() if "assert" in line]
            asserted |= {c for line in lines for c in re.findall(r'"(\w+)"', line)} & set(CAUSES)
            if any('["cause"]' in line for line in lines):  # the expected cause comes as a parameter
                for deco in node.decorator_list:
                    asserted |= set(re.findall(r'"(\w+)"', ast.get_source_segment(source, deco) or "")) & set(CAUSES)
    assert set(CAUSES) - asserted == set()
