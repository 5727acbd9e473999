"""Copied code (autograder.lms.similarity): the class's code answers compared pair by pair.

A synthetic class (tests/similarity_class.py: six honest students who follow the lesson, each in
their own way, one renamed-variables copy and one reordered copy) must flag exactly the copies; the
bundled samples and untouched notebooks flag nothing; the answers are found by the notebook's
structure; student code reaches the report escaped; a notebook that cannot be read is listed, never
flagged; a fault of the check is the grader's, said in the report.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from assignments.cnn_common import reference
from assignments.cnn_common.samples import Sample, fill
from autograder import registry
from autograder.lms import reports, similarity

sys.path.insert(0, str(Path(__file__).parent))
from similarity_class import CLASS, COPIED_PAIRS, HONEST  # noqa: E402

CNN = registry.get("cnn_mnist")


def _student_notebook(spec=CNN) -> nbformat.NotebookNode:
    return nbformat.read(spec.student_dir / f"{spec.name}.ipynb", as_version=4)


def _notebook(answers: dict[str, str]) -> nbformat.NotebookNode:
    """The cnn_mnist student notebook filled with one student's code answers."""
    return fill(_student_notebook(), Sample("student", "", functions={"conv2d": answers["conv2d"],
                                                                     "max_pool2d": answers["max_pool2d"]},
                                            model=answers["model"], training=answers["training"]), "synthetic")


def _result(sid: str, notebook: Path, assignment: str = "cnn_mnist", **extra) -> dict:
    return {"student": {"id": sid, "source": notebook.name, "name": "", "email": "", "extra": extra},
            "assignment": assignment, "submission": str(notebook), "status": "graded", "error": None,
            "score": 20.0, "max_score": 36.0, "questions": [{"name": "conv2d_impl", "score": 4.0, "max_score": 4.0,
                                                              "cases": []}],
            "retrain": None, "limits_hit": [], "execution": {}}


def _class_results(tmp_path: Path, students: dict[str, dict[str, str]]) -> list[dict]:
    results = []
    for sid, answers in students.items():
        path = tmp_path / f"{sid}.ipynb"
        nbformat.write(_notebook(answers), path)
        results.append(_result(sid, path))
    return results


def _function(name: str, header: str, body: str):
    namespace = {"np": np}
    exec(f"{header}\n{body}", namespace)  # noqa: S102 - the test's own synthetic answers
    return namespace[name]


def test_the_synthetic_students_really_solve_the_questions():
    """The synthetic class is honest work: every conv2d and max_pool2d in it is right (the reference
    math on random sizes, strides and paddings), so "no false alarm" is about real solutions."""
    rng = np.random.default_rng(0)
    for sid, answers in CLASS.items():
        conv2d = _function("conv2d", 'def conv2d(image, kernel, stride=1, padding="valid"):\n'
                                     '    image = np.asarray(image, dtype=float)\n'
                                     '    kernel = np.asarray(kernel, dtype=float)', answers["conv2d"])
        pool = _function("max_pool2d", "def max_pool2d(x, size=2):\n    x = np.asarray(x, dtype=float)",
                         answers["max_pool2d"])
        for _ in range(40):
            h, w = rng.integers(4, 12, 2)
            kh, kw = rng.integers(1, 4, 2)
            stride, padding = int(rng.integers(1, 4)), str(rng.choice(["valid", "same", "full"]))
            image, kernel = rng.normal(size=(h, w)), rng.normal(size=(kh, kw))
            expected = reference.conv2d(image, kernel, stride=stride, padding=padding)
            assert np.allclose(conv2d(image, kernel, stride, padding), expected), (sid, h, w, kh, kw, stride, padding)
            size = int(rng.integers(1, 4))
            assert np.allclose(pool(image, size), reference.max_pool2d(image, pool_size=size)), (sid, size)


def test_a_synthetic_class_flags_exactly_the_copies(tmp_path):
    found = similarity.check_class(_class_results(tmp_path, CLASS))
    assert found.error is None and found.not_compared == []
    assert found.compared == {"cnn_mnist": {"questions": list(CNN.code_answers), "submissions": len(CLASS)}}
    assert {(p.a, p.b) for p in found.pairs} == COPIED_PAIRS
    renamed = next(p for p in found.pairs if (p.a, p.b) == ("ana", "gus"))
    # every answer of the renamed copy is ana's: all four questions are shown, nearly all of the code marked
    assert renamed.questions() == list(CNN.code_answers) and renamed.similarity > 0.9
    reordered = next(p for p in found.pairs if (p.a, p.b) == ("chen", "hal"))
    assert {"conv2d_impl", "max_pool_impl", "training"} <= set(reordered.questions())
    assert reordered.similarity >= similarity.DEFAULTS.threshold and reordered.shared >= similarity.DEFAULTS.min_shared
    conv = next(m for m in reordered.answers if m.question == "conv2d_impl")
    assert "".join(s.text for s in conv.a) == similarity.answer_code(
        json.loads((tmp_path / "chen.ipynb").read_text()),
        similarity.layouts(json.loads((CNN.student_dir / "cnn_mnist.ipynb").read_text()), ["conv2d_impl"])["conv2d_impl"])
    assert any(s.kind == similarity.SHARED and "kernel[a, b] * src[a:a + stride" in s.text for s in conv.b)  # the copied line is marked


def test_honest_pairs_stay_far_below_the_threshold(tmp_path):
    """With the threshold out of the way, the honest pairs' scores show the margin the default leaves."""
    loose = dataclasses.replace(similarity.DEFAULTS, threshold=0.0, min_shared=0)
    found = similarity.check_class(_class_results(tmp_path, CLASS), loose)
    honest = [p for p in found.pairs if (p.a, p.b) not in COPIED_PAIRS]
    assert honest and max(p.similarity for p in honest) < similarity.DEFAULTS.threshold / 2
    assert min(p.similarity for p in found.pairs if (p.a, p.b) in COPIED_PAIRS) > 1.3 * similarity.DEFAULTS.threshold


@pytest.mark.parametrize("assignment", ["cnn_mnist", "digits"])
def test_the_bundled_samples_and_untouched_notebooks_flag_nothing(tmp_path, assignment):
    spec = registry.get(assignment)
    samples = sorted(spec.samples_dir.glob("*.ipynb"))
    results = [_result(p.stem, p, assignment) for p in samples]
    untouched = spec.samples_dir / "untouched.ipynb"
    results += [_result(f"blank{i}", untouched, assignment, identical_to="untouched" if i else None) for i in range(3)]
    found = similarity.check_class(results)
    assert found.error is None and found.not_compared == []
    assert found.compared[assignment]["submissions"] == len(samples) + 3
    assert found.pairs == []
    # nothing but the template: no code of their own to compare at all
    loose = dataclasses.replace(similarity.DEFAULTS, threshold=0.0, min_shared=0)
    assert not [p for p in similarity.check_class(results, loose).pairs if {p.a, p.b} & {"blank0", "blank1", "blank2"}]


def _layout(question: str):
    template = json.loads((CNN.student_dir / "cnn_mnist.ipynb").read_text())
    return similarity.layouts(template, [question])[question]


def test_an_answer_is_found_by_the_notebooks_structure_not_its_cell_numbers():
    nb = json.loads(json.dumps(_notebook(HONEST["ben"])))  # sources as one string each
    layout = _layout("conv2d_impl")
    answer = similarity.answer_code(nb, layout)
    assert answer.startswith("def conv2d(") and "total += padded[y * stride + u" in answer
    assert "grader.check" not in answer and "**Question" not in answer
    # cells added above shift every position: the answer is the same
    shifted = dict(nb, cells=[nbformat.v4.new_markdown_cell("my notes"), nbformat.v4.new_code_cell("x = 1")] * 3
                   + nb["cells"])
    assert similarity.answer_code(shifted, layout) == answer
    # a helper cell the student added between the question and the answer is part of the answer
    i = next(i for i, c in enumerate(nb["cells"]) if c["source"].startswith("def conv2d("))
    helper = nbformat.v4.new_code_cell("def helper(a):\n    return a * 2")
    with_helper = dict(nb, cells=nb["cells"][:i] + [helper] + nb["cells"][i:])
    assert similarity.answer_code(with_helper, layout) == helper["source"] + "\n\n" + answer
    # the check cell deleted: the answer is what follows the question's text, up to the next template cell
    no_check = dict(nb, cells=[c for c in nb["cells"] if c["source"] != 'grader.check("conv2d_impl")'])
    assert similarity.answer_code(no_check, layout) == answer
    # neither there: nothing to compare, never another question's code
    bare = dict(nb, cells=[c for c in nb["cells"] if c["source"] != 'grader.check("conv2d_impl")'
                           and not c["source"].startswith("## Part 5")
                           and not c["source"].startswith("**Question 7.")])
    assert similarity.answer_code(bare, layout) is None
    # a second check cell put elsewhere (with other code before it) cannot hide the answer
    decoy = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell('grader.check("conv2d_impl")')]
    assert similarity.answer_code(dict(nb, cells=decoy + nb["cells"]), layout) == "x = 1\n\n" + answer


def test_an_answer_is_capped():
    nb = json.loads(json.dumps(_notebook(HONEST["ana"])))
    i = next(i for i, c in enumerate(nb["cells"]) if c["source"].startswith("def conv2d("))
    nb["cells"][i]["source"] += "\n" + "# padding\n" * 50_000
    assert len(similarity.answer_code(nb, _layout("conv2d_impl"))) == similarity.DEFAULTS.max_answer_chars
    many = [nbformat.v4.new_code_cell(f"y{k} = {k}") for k in range(1000)]
    nb["cells"][i:i + 1] = many  # a thousand cells between the question and its check
    code = similarity.answer_code(nb, _layout("conv2d_impl"))
    assert code.split("\n\n") == [c["source"] for c in many[-similarity.DEFAULTS.max_answer_cells:]]


def test_a_deleted_question_is_said(tmp_path):
    results = _class_results(tmp_path, {"ana": HONEST["ana"], "ben": HONEST["ben"]})
    nb = json.loads((tmp_path / "ben.ipynb").read_text())
    nb["cells"] = [c for c in nb["cells"] if "grader.check(\"training\")" not in "".join(c["source"])
                   and not "".join(c["source"]).startswith("**Question 10.")]
    (tmp_path / "ben.ipynb").write_text(json.dumps(nb))
    found = similarity.check_class(results)
    assert found.not_compared == ["cnn_mnist: ben: the answer to training was not found (the question's cells "
                                  "were deleted or changed)"]
    assert found.compared["cnn_mnist"]["submissions"] == 2  # compared on the rest


def test_a_template_without_a_named_question_is_said_not_guessed():
    template = json.loads((CNN.student_dir / "cnn_mnist.ipynb").read_text())
    with pytest.raises(similarity.TemplateError, match="no grader.check cell for nonexistent"):
        similarity.layouts(template, ["conv2d_impl", "nonexistent"])


def test_common_knowledge_does_not_make_a_pair():
    """A passage in more than a fifth of the class (and more than 10 notebooks: a helper the course
    forum passed round) counts as given code; students alike only in it are not flagged, while a pair
    that also shares its own code still is."""
    helper = HONEST["fay"]["conv2d"]
    answers = {f"s{i:02d}": {"conv2d_impl": helper + "\n" + f"    # student {i}\n", "training": f"x = {i}"}
               for i in range(12)}
    loose = dataclasses.replace(similarity.DEFAULTS, min_shared=0)
    assert similarity.compare(answers, [], ["conv2d_impl", "training"], loose) == []
    answers["s00"]["max_pool_impl"] = answers["s01"]["max_pool_impl"] = HONEST["ben"]["max_pool2d"]
    pairs = similarity.compare(answers, [], ["conv2d_impl", "max_pool_impl"], loose)
    assert [(p.a, p.b, p.questions()) for p in pairs] == [("s00", "s01", ["max_pool_impl"])]
    # the same two answers in a class of 2: nothing is common, every shared passage counts
    pair = similarity.compare({k: answers[k] for k in ("s00", "s01")}, [], ["conv2d_impl"], loose)
    assert [(p.a, p.b, p.similarity) for p in pair] == [("s00", "s01", 1.0)]


def test_given_code_is_left_out():
    """Code every student starts from or is shown (the template, the reference answers) makes no pair."""
    code = HONEST["chen"]["conv2d"]
    answers = {"a": {"q": code}, "b": {"q": code}}
    assert similarity.compare(answers, [code], ["q"]) == []
    assert [(p.a, p.b) for p in similarity.compare(answers, [], ["q"])] == [("a", "b")]


ATTACK = '</pre><script>alert("x")</script><img src=x onerror=alert(1)>'


def test_student_code_is_escaped_in_the_report_and_flagged_in_needs_review(tmp_path):
    attacker = {**HONEST["ana"], "conv2d": HONEST["ana"]["conv2d"] + f"\n    # {ATTACK}\n    s = '{ATTACK}'"}
    copy = {**attacker}
    results = _class_results(tmp_path, {"ana": attacker, "gus": copy, "ben": HONEST["ben"]})
    out = tmp_path / "out"
    out.mkdir()
    reports.write_all(results, out)
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page and "</pre><script>" not in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(" in page  # shown as text, in the side-by-side cells
    assert 'id="similar-code"' in page and "A flag is a reason to look, not a verdict" in page
    section = page[page.index('id="similar-code"'):page.index('id="submissions"')]
    assert "ana" in section and "gus" in section and "conv2d_impl" in section
    cells = [part.split("</pre>")[0] for part in section.split("<pre>")[1:]]  # the side-by-side code cells
    assert len(cells) == 8 and all("<mark>" in cell for cell in cells)  # four questions, two sides, shared code marked
    assert any('<span class="given">' in cell and "np.asarray" in cell for cell in cells)  # the template's lines: grey
    assert "ben</a>" not in section
    review = {r["id"]: r["reason"] for r in csv.DictReader(open(out / "needs_review.csv"))}
    assert "similar code to gus" in review["ana"] and "similar code to ana" in review["gus"]
    assert "conv2d_impl" in review["ana"] and "similar code" not in review["ben"]
    # the flag is on the report's row too, never on a student's own page
    assert "similar code to gus" in page
    assert "gus" not in (out / "feedback" / "ana.html").read_text()


def test_a_notebook_that_cannot_be_read_is_listed_never_flagged(tmp_path):
    results = _class_results(tmp_path, {"ana": HONEST["ana"], "gus": HONEST["ana"]})
    link = tmp_path / "link.ipynb"
    os.symlink(tmp_path / "ana.ipynb", link)
    garbage = tmp_path / "garbage.ipynb"
    garbage.write_text('{"cells": [ <script>')
    results += [_result("linker", link), _result("broken", garbage), _result("gus~2", tmp_path / "gus.ipynb",
                                                                            duplicate_of="gus")]
    found = similarity.check_class(results)
    assert [(p.a, p.b) for p in found.pairs] == [("ana", "gus")]  # the second file of gus is not compared
    assert found.compared["cnn_mnist"]["submissions"] == 2
    said = "\n".join(found.not_compared)
    assert "linker not compared" in said and "symbolic link" in said
    assert "broken not compared" in said and "<script>" not in said  # the file's content is never quoted


def test_unknown_assignments_and_faults_of_the_check_are_said(tmp_path, monkeypatch):
    results = _class_results(tmp_path, {"ana": HONEST["ana"], "gus": HONEST["ana"]})
    results.append({**_result("x", tmp_path / "ana.ipynb"), "assignment": "no_such_unit"})
    found = similarity.check_class(results)
    assert any(line.startswith("no_such_unit: not compared") for line in found.not_compared)

    def broken(*args, **kwargs):
        raise RuntimeError("index exploded")

    monkeypatch.setattr(similarity, "compare", broken)
    found = similarity.check_class(results)
    assert found.pairs == [] and "RuntimeError: index exploded" in found.error
    out = tmp_path / "out"
    out.mkdir()
    assert reports.write_all(results, out) == []  # every other file is still written
    page = (out / "report.html").read_text()
    assert "Not checked: the copied-code check failed" in page and "fault of the grader" in page
    assert "similar code" not in (out / "needs_review.csv").read_text()
