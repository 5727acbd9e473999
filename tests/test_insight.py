"""Class insight: the mistakes the checks name as data (typed reason ids, never message text), counted
per question among the students who answered it (an untouched question names no mistake)."""

from __future__ import annotations

import csv
import importlib
import shutil
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest

from autograder import batch, misconceptions, registry
from autograder.judge import judge
from autograder.engine import RetrainOptions
from autograder.lms import insight

NO_RETRAIN = RetrainOptions(enabled=False)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _public(unit: str) -> types.ModuleType:
    spec = registry.get(unit)
    module = types.ModuleType(f"{spec.public_module_stem}_insight_under_test")
    exec(compile(spec.render_public_module(), spec.public_module_name, "exec"), module.__dict__)
    return module


# --- end to end: the samples ----------------------------------------------------------------------

def test_the_samples_designed_mistakes_are_counted_by_their_ids_and_untouched_work_by_none(builds, tmp_path):
    """Every unit's samples graded in one batch: each designed mistake is recorded by its id on its
    question (the samples' metadata, ``expected_misconceptions``), no other id appears, and an
    untouched notebook records none and answers nothing, so it is in no question's denominator."""
    folder = tmp_path / "class"
    folder.mkdir()
    designed: dict[str, dict] = {}
    for name in registry.names():
        spec = registry.get(name)
        key = importlib.import_module(spec.samples).METADATA_KEY
        for sample in ("by_hand_mistakes", "shape_mistakes", "untouched"):
            sid = f"{name}-{sample}"
            nb = spec.samples_dir / f"{sample}.ipynb"
            shutil.copy(nb, folder / f"{sid}.ipynb")
            designed[sid] = nbformat.read(nb, as_version=4).metadata[key]["expected_misconceptions"]
    assert sum(len(ids) for d in designed.values() for ids in d.values()) >= 15
    zips = [builds[name].autograder_zip for name in registry.names()]
    out = tmp_path / "out"
    results = batch.run_batch([folder], zips, out, batch.BatchOptions(jobs=2, retrain=NO_RETRAIN, progress=False))
    by_id = {r["student"]["id"]: r for r in results}
    for sid, expected in designed.items():
        recorded = {q["name"]: sorted({m for c in q["cases"] for m in c["misconceptions"]})
                    for q in by_id[sid]["questions"]}
        assert {q: ids for q, ids in recorded.items() if ids} == {q: sorted(ids) for q, ids in expected.items()}, sid
    for name in registry.names():
        untouched = by_id[f"{name}-untouched"]
        assert untouched["status"] == "graded" and untouched["questions"]
        assert not [q["name"] for q in untouched["questions"] if misconceptions.question_answered(q)], name
    sections = {s["assignment"]: s for s in insight.sections(results)}
    for name in registry.names():
        section = sections[name]
        assert section["n_scored"] == 3
        for q in section["questions"]:  # the untouched notebook answered nothing: never in a denominator
            answered_by = {sid for sid in (f"{name}-by_hand_mistakes", f"{name}-shape_mistakes")
                           if misconceptions.question_answered(next(x for x in by_id[sid]["questions"]
                                                                   if x["name"] == q["name"]))}
            assert q["answered"] == len(answered_by), (name, q["name"])
            for m in q["misconceptions"]:
                assert f"{name}-untouched" not in m["students"] and m["count"] <= q["answered"]
    rows = {(r["assignment"], r["question"], r["misconception"]): (int(r["students"]), int(r["of_answered"]))
            for r in _rows(out / "misconceptions.csv")}
    assert rows == {(s["assignment"], q["name"], m["id"]): (m["count"], q["answered"])
                    for s in sections.values() for q in s["questions"] for m in q["misconceptions"]}
    report = (out / "report.html").read_text()
    assert 'id="unit-cnn_mnist"' in report and 'id="unit-digits"' in report  # one section per unit
    assert "flipped_filter" in report and "cnn_mnist-by_hand_mistakes" in report
    assert "1 of 2 students who answered" in report and "cnn_mnist-untouched</td>" not in report.split("Hidden checks")[0]


# --- the judge records what the checks raise, never what they say --------------------------------

TEST_FILE = '''from otter.test_files import test_case

OK_FORMAT = False

name = "q"
points = 1

@test_case(points=None, hidden=False)
def test_q(x):
{body}
'''


def _judged(body: str, env: dict) -> dict:
    (question,) = judge.run_tests({"q.py": TEST_FILE.format(body=body)}, env)
    (case,) = question["cases"]
    return case


def test_a_message_that_only_mentions_a_mistake_records_none():
    """The old classifier matched "rows and columns" in any message (the template's own); the judge now
    reads ``reasons`` only."""
    case = _judged("    raise AssertionError(\"rows and columns are swapped, flipped the filter, 'same' padding\")",
                   {"x": np.zeros(3)})
    assert not case["passed"] and case["misconceptions"] == [] and case["answered"]
    assert judge.failure_reasons(AssertionError("Likely mistake: forgot the bias")) == []


def test_the_reasons_a_check_raises_are_recorded_on_its_failed_case():
    case = _judged("    from assignments.cnn_common.public_checks import CheckFailed\n"
                   "    raise CheckFailed('not right', ['flipped_filter', 'forgot_bias', 'flipped_filter'])",
                   {"x": np.zeros(3)})
    assert case["misconceptions"] == ["flipped_filter", "forgot_bias"] and case["answered"]
    passed = _judged("    pass", {"x": np.zeros(3)})
    assert passed["passed"] and passed["misconceptions"] == [] and passed["answered"]


@pytest.mark.parametrize("env", [{"x": ...}, {}], ids=["still ...", "not defined"])
def test_an_unanswered_value_is_not_an_answer_and_names_no_mistake(env):
    case = _judged("    from assignments.cnn_common.public_checks import CheckFailed\n"
                   "    raise CheckFailed('x is not answered', ['swapped_axes'])", env)
    assert case["answered"] is False and case["misconceptions"] == []


def test_a_check_that_says_not_answered_is_not_an_answer():
    case = _judged("    from assignments.cnn_common.public_checks import NotAnswered\n"
                   "    raise NotAnswered('`conv2d` is not implemented yet', ['flipped_filter'])",
                   {"x": np.zeros(3)})
    assert case["answered"] is False and case["misconceptions"] == []


def test_reasons_are_plain_bounded_identifiers():
    """The reasons come from the grader's own checks, but the result file and the report take them as
    data: anything but a short identifier is dropped, and there are at most a few."""
    exc = AssertionError("x")
    exc.reasons = ["flipped_filter", "<script>alert(1)</script>", "x" * 200, 7, None, "Forgot", "ok_id",
                   *[f"id_{i}" for i in range(20)]]
    assert judge.failure_reasons(exc) == ["flipped_filter", "ok_id", *[f"id_{i}" for i in range(6)]]
    exc.reasons = "flipped_filter"  # a string is not a list of ids
    assert judge.failure_reasons(exc) == []


# --- what the checks raise ----------------------------------------------------------------------

def _named_mistakes(unit: str) -> list:
    """Every typical mistake a unit's checks know (answers, table entries, wrong shapes, functions)."""
    checks = registry.get(unit).checks_module()
    answers = checks.answers_for() if hasattr(checks, "answers_for") else checks.ANSWERS
    mistakes = []
    for a in answers.values():
        mistakes += [*a.mistakes, *(m for items in a.item_mistakes for m in items), *a.shape_hints]
    for name in checks.probe_plan():  # the functions students implement
        for case in checks.public_cases(name) + checks.hidden_cases(name):
            mistakes += checks._function_mistakes(name, case)
            mistakes += getattr(checks, "_public_shape_hints", lambda *_: [])(name, case)
    return mistakes


@pytest.mark.parametrize("unit", ["cnn_mnist", "digits"])
def test_every_mistake_a_unit_names_has_an_id_of_its_catalogue(unit):
    """A mistake added to a unit's checks without a known id would be missing from the class insight."""
    known = misconceptions.catalogue(unit)
    mistakes = _named_mistakes(unit)
    assert len(mistakes) > 20 and known
    assert [m.text for m in mistakes if not m.reasons or not set(m.reasons) <= set(known)] == []
    from assignments.cnn_common import public_checks  # the ids the model check names are the catalogue's too

    assert set(public_checks._SETTING_REASONS.values()) | {"forgot_relu", "swapped_axes"} <= set(known)


@pytest.mark.parametrize("unit", ["cnn_mnist", "digits"])
def test_an_untouched_answer_raises_not_answered_and_names_nothing(unit):
    """What an untouched notebook holds: ``...``, stub functions, ``models.Sequential()`` without layers,
    a model neither compiled nor trained; the public and the hidden checks say "not answered"."""
    checks = registry.get(unit).checks_module()
    public = _public(unit)

    def stub(*args, **kwargs):
        return None

    empty = {"class_name": "Sequential", "config": {"name": "sequential", "layers": []}}
    hidden_model = types.SimpleNamespace(to_json=lambda: __import__("json").dumps(empty), fits=[],
                                         require_lesson_model=False)
    calls = [*[(c, k, ...) for k in checks.ANSWERS for c in (public.check_answer, checks.check_answer)],
             *[(c, f, stub) for f in checks.probe_plan() for c in (public.check_function, checks.check_function)],
             *[(c, f, None) for f in checks.probe_plan() for c in (public.check_function, checks.check_function)]]
    for check, key, value in calls:
        with pytest.raises(AssertionError) as err:
            check(key, value)
        assert getattr(err.value, "answered", True) is False and not err.value.reasons, (check, key, str(err.value))
    for check in (public.check_model, checks.check_model, public.check_training, checks.check_accuracy):
        with pytest.raises(AssertionError) as err:
            check(empty if check is not checks.check_accuracy else hidden_model)
        assert getattr(err.value, "answered", True) is False and not err.value.reasons, (check, str(err.value))


# --- counting ----------------------------------------------------------------------------------

def _row(sid: str, assignment: str, accuracy: float, case: dict) -> dict:
    return {"student": {"id": sid, "source": "", "name": "", "email": "", "extra": {}}, "assignment": assignment,
            "status": "graded", "error": None, "score": 2.0, "max_score": 33.0, "execution": {}, "limits_hit": [],
            "questions": [{"name": "conv_small", "score": 0.0 if not case["passed"] else 2.0, "max_score": 2.0,
                           "cases": [{"name": "test_conv_small_hidden", "hidden": True, "points": 2.0, **case}]}],
            "retrain": {"accuracy": accuracy, "epochs": 1, "batch_size": 32, "optimizer": "adam", "device": "CPU",
                        "backend": "tensorflow", "seconds": 1.0, "cache_hit": False, "notes": [], "error": None}}


FLIPPED = {"passed": False, "message": "Likely mistake: flipped the filter", "misconceptions": ["flipped_filter"]}
RIGHT = {"passed": True, "message": "ok", "misconceptions": []}
UNTOUCHED = {"passed": False, "message": "`conv_small` is not answered yet: replace the ... with a 2x2 numpy array "
                                         "(rows and columns)", "misconceptions": [], "answered": False}


def test_a_mixed_batch_gets_one_insight_section_per_unit_counted_among_those_who_answered(tmp_path):
    from autograder.lms import reports

    results = [_row("a", "cnn_mnist", 0.995, FLIPPED), _row("b", "cnn_mnist", 0.98, FLIPPED),
               _row("c", "cnn_mnist", 0.992, RIGHT), _row("u", "cnn_mnist", 0.5, UNTOUCHED),
               _row("d", "digits", 0.95, RIGHT)]
    by_unit = {s["assignment"]: s for s in insight.sections(results)}
    assert set(by_unit) == {"cnn_mnist", "digits"}
    cnn = by_unit["cnn_mnist"]
    assert cnn["threshold"] == registry.get("cnn_mnist").training.threshold and cnn["below_threshold"] == 2
    (q,) = cnn["questions"]
    assert q["answered"] == 3 and cnn["n_scored"] == 4  # the untouched notebook is scored, and answered nothing
    assert q["misconceptions"] == [{"id": "flipped_filter", "title": misconceptions.catalogue("cnn_mnist")["flipped_filter"],
                                    "count": 2, "students": ["a", "b"]}]
    assert q["hidden"] == [{"case": "test_conv_small_hidden", "failed": 3, "total": 4, "rate": 3 / 4}]
    assert by_unit["digits"]["questions"][0]["misconceptions"] == []
    reports.write_all(results, tmp_path)
    report = (tmp_path / "report.html").read_text()
    assert report.count('<section class="unit"') == 2 and "2</strong> of 4 at or below the threshold 0.99" in report
    assert "2 of 3 students who answered" in report and "a, b" in report and "75%" in report
    assert _rows(tmp_path / "misconceptions.csv") == [{"assignment": "cnn_mnist", "question": "conv_small",
                                                       "misconception": "flipped_filter", "title": q["misconceptions"][0]["title"],
                                                       "students": "2", "of_answered": "3", "ids": "a;b"}]


def test_ids_the_catalogue_does_not_know_or_on_unanswered_or_passed_cases_are_not_counted():
    known = misconceptions.catalogue("cnn_mnist")
    assert misconceptions.case_misconceptions({"passed": False, "misconceptions": ["flipped_filter", "made_up"]},
                                              known) == ["flipped_filter"]
    assert misconceptions.case_misconceptions({**UNTOUCHED, "misconceptions": ["swapped_axes"]}, known) == []
    assert misconceptions.case_misconceptions({**RIGHT, "misconceptions": ["swapped_axes"]}, known) == []
    assert misconceptions.case_misconceptions({"passed": False, "misconceptions": "flipped_filter"}, known) == []
    assert misconceptions.catalogue("no_such_unit") == {} and misconceptions.catalogue(None) == {}
