"""Per-student variants end to end (issue 13): built notebook, engine, batch reports, Gradescope identity.

Grading runs the real probe (sandbox) and judge, without retraining: the training question is the
verifier's business and the same for every variant.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys

import nbformat
import numpy as np
import pytest

from assignments.cnn_mnist import checks, variants
from autograder.engine import RetrainOptions
from autograder.probe.sandbox import Limits
from autograder.variants import VariantConfig, lms_identity

CONFIG = VariantConfig(enabled=True)
POOL = variants.pool("cnn_mnist", CONFIG.pool_size, CONFIG.salt)
BY_HAND = ["conv_small", "edge_output", "output_sizes", "rgb_conv", "max_pooling", "layer_table"]
NO_RETRAIN = RetrainOptions(enabled=False)
LIMITS = Limits(cell_seconds=60, notebook_seconds=300, memory_mb=3072, max_processes=48)
ADA, GRACE, BOB, MALLORY = "ada@uni.edu", "grace@uni.edu", "bob@uni.edu", "mallory@uni.edu"


def _index(identity: str) -> int:
    return variants.variant_index("cnn_mnist", identity, CONFIG.pool_size, CONFIG.salt)


@pytest.fixture(scope="module")
def built_variants(tmp_path_factory):
    from autograder import build

    (b,) = build.build_all(tmp_path_factory.mktemp("dist-variants"), ["cnn_mnist"], gradescope=True, variants=CONFIG)
    return b


def _solution(built, student_id: str) -> nbformat.NotebookNode:
    nb = nbformat.read(built.solution_notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and f"STUDENT_ID = {variants.SAMPLE_ID!r}" in cell.source:
            cell.source = cell.source.replace(repr(variants.SAMPLE_ID), repr(student_id))
    return nb


def _paste(nb, givens: variants.Givens) -> None:
    """Overwrite every by-hand answer with another variant's right answer (literals, as copied)."""
    lines = ["import numpy as np"]
    for key, answer in checks.answers_for(givens).items():
        value = answer.expected
        lines.append(f"{key} = np.array({np.asarray(value).tolist()!r})" if answer.kind == "array" else f"{key} = {value!r}")
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "Part 5" in c.source)
    nb.cells.insert(at, nbformat.v4.new_code_cell("\n".join(lines)))


def test_build_records_the_pool_and_off_builds_record_nothing(built_variants, built):
    import zipfile

    with zipfile.ZipFile(built_variants.autograder_zip) as z:
        assert json.loads(z.read("variants.json")) == {"enabled": True, "pool_size": 64, "salt": ""}
    with zipfile.ZipFile(built.autograder_zip) as z:
        assert "variants.json" not in z.namelist()
    student = nbformat.read(built_variants.student_notebook, as_version=4)
    first = next(c for c in student.cells if c.cell_type == "code" and "STUDENT_ID" in c.source)
    assert "STUDENT_ID = ..." in first.source and "use_student(STUDENT_ID)" in first.source
    text = "\n".join(c.source for c in student.cells)
    assert "[[3, 1, 2]" not in text and "28x28 image is convolved" not in text  # no lesson numbers left


def test_two_students_notebooks_show_different_numbers(built_variants):
    """The student's first cell, run as the student runs it (cnn_checks.py beside the notebook)."""
    student = nbformat.read(built_variants.student_notebook, as_version=4)
    first = next(c for c in student.cells if c.cell_type == "code" and "STUDENT_ID" in c.source).source
    shown = {}
    for who in (ADA, GRACE):
        spec = importlib.util.spec_from_file_location("cnn_checks", built_variants.student_dir / "cnn_checks.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["cnn_checks"] = module
        try:
            out, ns = io.StringIO(), {}
            with contextlib.redirect_stdout(out):
                exec(first.replace("STUDENT_ID = ...", f"STUDENT_ID = {who!r}"), ns)
        finally:
            del sys.modules["cnn_checks"]
        g = POOL[_index(who)]
        assert ns["image_3x3"].tolist() == [list(r) for r in g.image_3x3]
        assert f"n = {g.size_n}, k = {g.size_k}" in out.getvalue()
        shown[who] = out.getvalue()
    assert shown[ADA] != shown[GRACE]


def test_without_lms_identity_the_kernel_checks_follow_the_notebooks_id():
    """``otter run`` in the student's kernel: no LMS identity, so the hidden checks use the variant
    the notebook's first cell chose (the only place the notebook's claim counts)."""
    spec = importlib.util.spec_from_loader("cnn_checks", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(checks.render_public_module(variants=CONFIG), "cnn_checks.py", "exec"), module.__dict__)
    sys.modules["cnn_checks"] = module
    try:
        module.use_student(GRACE)
        grace = checks.answers_for(POOL[_index(GRACE)])
        checks.check_answer("pooled", grace["pooled"].expected)
        with pytest.raises(AssertionError):
            checks.check_answer("pooled", checks.ANSWERS["pooled"].expected)
    finally:
        del sys.modules["cnn_checks"]
        checks._ACTIVE.update(givens=variants.LESSON, answers=checks.ANSWERS, explicit=False)
    checks.check_answer("pooled", checks.ANSWERS["pooled"].expected)  # lesson again


def test_gradescope_identity_is_the_submitters_email(tmp_path):
    from autograder.lms import gradescope

    (tmp_path / "submission_metadata.json").write_text(json.dumps(
        {"users": [{"email": "Ada@Uni.edu", "sid": "123", "name": "Ada"}]}))
    assert gradescope.submitter(tmp_path) == ("Ada@Uni.edu", "Gradescope e-mail")
    (tmp_path / "submission_metadata.json").write_text(json.dumps({"users": [{"sid": "123"}]}))
    assert gradescope.submitter(tmp_path) == ("123", "Gradescope SID")
    assert gradescope.submitter(tmp_path / "missing")[0] is None


def test_lms_identity_per_input():
    assert lms_identity({"id": "123", "email": "a@b.c", "extra": {"sis_user_id": "123"}}) == ("a@b.c", "LMS e-mail")
    assert lms_identity({"id": "77", "extra": {"canvas_user_id": "77"}}) == ("77", "Canvas user id")
    assert lms_identity({"id": "jdoe", "extra": {"nbgrader_student": "jdoe"}}) == ("jdoe", "nbgrader student")
    assert lms_identity({"id": "anon_x", "extra": {"canvas_anonymous_id": "x"}})[0] is None


@pytest.fixture(scope="module")
def batch_results(built_variants, tmp_path_factory):
    """A class of four: two honest solutions, one with a classmate's answers pasted under its own id,
    one that is a classmate's notebook (declared id not the submitter's)."""
    from autograder import batch

    folder = tmp_path_factory.mktemp("class")
    for who in (ADA, GRACE):
        nbformat.write(_solution(built_variants, who), folder / f"{who}.ipynb")
    pasted = _solution(built_variants, BOB)
    _paste(pasted, POOL[_index(GRACE)])
    nbformat.write(pasted, folder / f"{BOB}.ipynb")
    nbformat.write(_solution(built_variants, GRACE), folder / f"{MALLORY}.ipynb")
    out = tmp_path_factory.mktemp("graded")
    options = batch.BatchOptions(jobs=1, limits=LIMITS, retrain=NO_RETRAIN, progress=False)
    results = batch.run_batch([folder], built_variants.autograder_zip, out, options)
    return {r["student"]["id"]: r for r in results}, out


def _scores(r: dict) -> dict:
    return {q["name"]: (q["score"], q["max_score"]) for q in r["questions"]}


def test_each_students_solution_gets_full_marks_on_their_own_variant(batch_results):
    results, _ = batch_results
    assert len({_index(w) for w in (ADA, GRACE, BOB, MALLORY)}) == 4
    for who in (ADA, GRACE):
        r = results[who]
        assert r["status"] == "graded" and r["variant"]["index"] == _index(who)
        assert not r["variant"]["declared_differs"] and r["variant"]["matches"] == {}
        scores = _scores(r)
        for q, (score, max_score) in scores.items():
            if q != "training":  # retraining is off here: that question is the verifier's
                assert score == max_score > 0, (who, q, r["questions"])


def test_a_classmates_answers_get_no_marks_and_a_flag_in_the_instructor_report_only(batch_results):
    from autograder.lms import reports

    results, out = batch_results
    bob, mallory = results[BOB], results[MALLORY]
    for r in (bob, mallory):
        scores = _scores(r)
        assert all(scores[q][0] == 0 for q in BY_HAND), scores
    assert bob["variant"]["index"] == _index(BOB) and str(_index(GRACE)) in bob["variant"]["matches"]
    assert mallory["variant"]["index"] == _index(MALLORY)  # the submitter's, not the notebook's grace
    assert mallory["variant"]["declared_id"] == GRACE and mallory["variant"]["declared_differs"]
    peers = reports.variant_peers(list(results.values()))
    bob_flags = " | ".join(reports.flags(bob, peers))
    mallory_flags = " | ".join(reports.flags(mallory, peers))
    assert f"matches variant of {GRACE}" in bob_flags
    assert f"STUDENT_ID '{GRACE}'" in mallory_flags and "not the submitter's" in mallory_flags
    assert f"matches variant of {GRACE}" in mallory_flags
    report = (out / "report.html").read_text()
    assert f"matches variant of {GRACE}" in report
    assert f"matches variant of {GRACE}" in (out / "needs_review.csv").read_text()
    for who in (BOB, MALLORY):  # the student's own page names no classmate and no variant match
        page = (out / "feedback" / f"{who}.html").read_text()
        assert GRACE not in page and "matches variant" not in page and "STUDENT_ID" not in page
    for who in (ADA, GRACE):  # their own notebooks: nothing to look at but the retraining that was off here
        assert reports.flags(results[who], peers) == [reports.provisional_note(results[who])]


def test_gradescope_takes_the_variant_from_the_submitters_email(built_variants, tmp_path):
    """run_autograder's entry point: Ada's own notebook gets full marks on the by-hand questions; Grace's
    notebook uploaded by Ada gets none, and only the instructor's stdout says why."""
    import subprocess
    import zipfile

    for who, notebook_of in ((ADA, ADA), (ADA, GRACE)):
        root = tmp_path / f"{who}-{notebook_of}" / "autograder"
        (root / "submission").mkdir(parents=True)
        with zipfile.ZipFile(built_variants.gradescope_zip) as z:
            z.extractall(root / "source")
        nbformat.write(_solution(built_variants, notebook_of), root / "submission" / "cnn_mnist.ipynb")
        (root / "submission_metadata.json").write_text(json.dumps({"users": [{"email": who.upper(), "sid": "1"}]}))
        proc = subprocess.run([sys.executable, "-I", str(root / "source" / "run_otter.py"), "--root", str(root),
                               "--no-retrain"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results = json.loads((root / "results" / "results.json").read_text())
        by_hand = [t for t in results["tests"] if t["name"].split(" ")[0] in BY_HAND]
        assert by_hand, proc.stdout[-4000:]
        if notebook_of == who:
            assert all(t["score"] == t["max_score"] for t in by_hand), by_hand
        else:
            assert all(t["score"] == 0 for t in by_hand), by_hand
            assert "not the submitter's" in proc.stdout and f"STUDENT_ID '{GRACE}'" in proc.stdout
            text = json.dumps(results)
            assert GRACE not in text and "matches variant" not in text and "submitter" not in text
