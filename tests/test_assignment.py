"""Every assignment end to end with Otter itself: build, student folder in sync, samples graded.

``otter run`` (Otter's own non-container runner) grades every sample in each assignment's
``samples/`` folder; ``tests/test_assignment_engine.py`` grades them with our engine (a module of
its own, so that the two long runs go to different test workers).  Expected scores are not
written down: each sample's metadata names the test cases it is designed to fail, and the
expected score is derived from the point values in the built autograder's test files.  A new
assignment is covered as soon as it is installed (``autograder.registry``).
"""

from __future__ import annotations

import filecmp
import importlib
import re
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import registry
from assignments.cnn_mnist import checks

ASSIGNMENTS = registry.names()
SAMPLES = [(a, p.stem) for a in ASSIGNMENTS for p in sorted(registry.get(a).samples_dir.glob("*.ipynb"))]


def _samples_module(assignment: str):
    return importlib.import_module(registry.get(assignment).samples)


def _sample(assignment: str, name: str) -> Path:
    return registry.get(assignment).samples_dir / f"{name}.ipynb"


def _sources(path: Path) -> list[tuple[str, str]]:
    nb = nbformat.read(path, as_version=4)
    return [(c.cell_type, c.source) for c in nb.cells]


def test_every_assignment_has_the_designed_samples():
    for assignment in ASSIGNMENTS:
        names = {name for a, name in SAMPLES if a == assignment}
        assert {"solution", "untouched"} <= names and len(names) >= 3, (assignment, names)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_build_leaves_zip_and_student_notebook(assignment, builds):
    built, spec = builds[assignment], registry.get(assignment)
    assert built.autograder_zip.is_file() and built.student_notebook.is_file()
    with zipfile.ZipFile(built.autograder_zip) as z:
        names = set(z.namelist())
        config = __import__("json").loads(z.read("otter_config.json"))
    assert {"otter_config.json", f"files/{spec.public_module_name}"} <= names
    assert any(n.startswith("tests/") for n in names) and config["assignment_name"] == assignment
    for nb in (built.student_notebook, built.solution_notebook):
        assert registry.notebook_assignment(nbformat.read(nb, as_version=4)) == assignment


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_zips_carry_the_assignment_and_the_shared_content_it_imports(assignment, builds, tmp_path):
    """Gradescope's lib/ (and Otter's setup.sh tarball, built from the same file list) holds the
    assignment's package and every shared package its spec lists; its answer key imports from lib/ alone."""
    import subprocess
    import sys

    built, spec = builds[assignment], registry.get(assignment)
    with zipfile.ZipFile(built.gradescope_zip) as z:
        names = set(z.namelist())
        z.extractall(tmp_path, [n for n in names if n.startswith("lib/")])
    for package in (spec.package, *spec.shared):
        assert f"lib/{package.replace('.', '/')}/__init__.py" in names, package
    assert not [n for n in names if n.startswith("lib/assignments/") and ("/student/" in n or "/samples/" in n)]
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); m = importlib.import_module(sys.argv[2]); "
            "assert m.__file__.startswith(sys.argv[1]), m.__file__; "
            "assert all(importlib.import_module(p).__file__.startswith(sys.argv[1]) for p in sys.argv[3:]); "
            "m.render_public_module()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "lib"), spec.checks, *spec.shared], check=True)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_student_folder_is_in_sync_with_the_master(assignment, builds):
    built = builds[assignment]
    committed = built.spec.student_dir
    assert _sources(committed / f"{built.name}.ipynb") == _sources(built.student_notebook), (
        f"{committed} is stale: run `python -m autograder build --update-assignments`"
    )
    cmp = filecmp.dircmp(committed, built.student_dir, ignore=["autograder.zip", "gradescope_autograder.zip", "solution", "__pycache__", f"{built.name}.ipynb"])
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    assert not filecmp.dircmp(committed / "tests", built.student_dir / "tests").diff_files


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_solution_notebook_is_in_sync_with_the_master(assignment, builds):
    """``solutions/<name>.ipynb`` is the built solution (one source: the master), for instructors."""
    from autograder import build

    committed = build.solution_path(assignment)
    assert committed.is_file() and _sources(committed) == _sources(builds[assignment].solution_notebook), (
        f"{committed} is stale: run `python -m autograder build --update-assignments`"
    )


def test_solutions_hold_one_notebook_per_assignment_and_nothing_else():
    from autograder import build

    assert build.SOLUTIONS_DIR.parent == Path(__file__).resolve().parent.parent  # the repository's top level
    assert sorted(p.name for p in build.SOLUTIONS_DIR.iterdir()) == sorted(f"{a}.ipynb" for a in ASSIGNMENTS)


def _answer_lines(assignment: str) -> set[str]:
    """The solution's code lines a student's notebook lacks: the answers (long enough to be specific)."""
    from autograder import build

    student = {line.strip() for _, source in _sources(registry.get(assignment).student_dir / f"{assignment}.ipynb")
               for line in source.splitlines()}
    solution = {line.strip() for kind, source in _sources(build.solution_path(assignment)) if kind == "code"
                for line in source.splitlines()}
    return {line for line in solution - student if len(line) >= 25 and not line.startswith("#")}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_nothing_a_student_receives_holds_a_line_of_the_solution(assignment):
    """The committed student folder (notebook, check module with the grader's shipped rules, public tests)
    holds no answer line of the solution notebook."""
    answers = _answer_lines(assignment)
    assert len(answers) >= 10, answers  # the solution's answers are there to look for
    folder = registry.get(assignment).student_dir
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    assert {p.suffix for p in files} <= {".py", ".ipynb"}, files
    for path in files:
        text = "\n".join(s for _, s in _sources(path)) if path.suffix == ".ipynb" else path.read_text()
        leaked = sorted(line for line in answers if line in text)
        assert not leaked, (path, leaked)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_samples_are_in_sync(assignment, builds, tmp_path):
    built = builds[assignment]
    _samples_module(assignment).write_samples(built.student_notebook, built.solution_notebook, tmp_path)
    for a, name in SAMPLES:
        if a == assignment:
            assert _sources(_sample(a, name)) == _sources(tmp_path / f"{name}.ipynb"), name


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_files_hold_no_hidden_tests(assignment, builds):
    built = builds[assignment]
    test_text = "\n".join(p.read_text() for p in (built.student_dir / "tests").glob("*.py"))
    assert "hidden=True" not in test_text
    assert f"from assignments.{assignment}" not in test_text and "import assignments" not in test_text


def test_cnn_mnist_student_files_hold_no_plain_answers(built):
    student_text = "\n".join(p.read_text() for p in built.student_dir.rglob("*.py"))
    student_text = re.sub(r"\b[0-9a-f]{64}\b", "<digest>", student_text)
    for answer in ("93322", "18496", "36928", "93088", "448", "[[1.0, 4.0], [3.0, 3.0]]", "(30, 30, 16)"):
        assert answer not in student_text, answer


def _test_points(zip_path: Path, tmp_path: Path) -> dict[str, dict[str, float]]:
    """question -> {test case name: points}, as Otter resolves them from the built test files."""
    from otter.test_files import create_test_file
    from otter.nbmeta_config import NBMetadataConfig

    with zipfile.ZipFile(zip_path) as z:
        z.extractall(tmp_path)
    points = {}
    for path in sorted((tmp_path / "tests").glob("*.py")):
        tf = create_test_file(str(path), NBMetadataConfig())
        points[tf.name] = {tc.body.test_func.__name__: tc.points for tc in tf.test_cases}
    return points


class _Lazy(dict):
    """assignment -> {sample: result}, computed on first use (one assignment's samples at a time)."""

    def __init__(self, grade):
        super().__init__()
        self._grade = grade

    def __missing__(self, assignment):
        self[assignment] = {name: self._grade(assignment, name) for a, name in SAMPLES if a == assignment}
        return self[assignment]


@pytest.fixture(scope="module")
def otter_results(builds, tmp_path_factory):
    import otter.run

    def grade(assignment, name):
        dest = tmp_path_factory.mktemp(f"otter-{assignment}-{name}")
        return otter.run.main(str(_sample(assignment, name)), autograder=str(builds[assignment].autograder_zip),
                              output_dir=str(dest), no_logo=True)

    return _Lazy(grade)


def designed_scores(built, assignment: str, name: str, tmp_path: Path) -> tuple[dict[str, float], dict[str, str]]:
    """The sample's designed score per question (from the test cases its metadata says it fails and the
    points Otter resolves from the built test files), and the feedback it must get per question."""
    points = _test_points(built.autograder_zip, tmp_path)
    meta = nbformat.read(_sample(assignment, name), as_version=4).metadata[_samples_module(assignment).METADATA_KEY]
    failures = meta["expected_failures"]
    expected = {}
    for question, cases in points.items():
        lost = set(cases) if failures == "all" else set(failures.get(question, []))
        assert lost <= set(cases), f"sample names unknown test cases: {lost - set(cases)}"
        expected[question] = sum(p for case, p in cases.items() if case not in lost)
    return expected, meta["expected_feedback"]


@pytest.mark.parametrize("assignment,name", SAMPLES)
def test_otter_run_gives_each_sample_its_designed_score(assignment, name, builds, otter_results, tmp_path):
    expected, feedback = designed_scores(builds[assignment], assignment, name, tmp_path)
    results = otter_results[assignment][name]
    for question, score in expected.items():
        got = results.results[question].score
        assert got == pytest.approx(score), (name, question, results.results[question].test_case_results)
        if question in feedback:
            messages = "\n".join(r.message for r in results.results[question].test_case_results)
            assert feedback[question] in messages
    assert results.total == pytest.approx(sum(expected.values()))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_gets_full_marks_and_untouched_gets_zero(assignment, otter_results):
    results = otter_results[assignment]
    assert results["solution"].possible > 0
    assert results["solution"].total == results["solution"].possible
    assert results["untouched"].total == 0


def test_public_and_hidden_checks_agree_on_every_answer():
    """The student-side digests and the trusted tolerance check judge the same answers alike."""
    import importlib.util
    import sys

    src = checks.render_public_module()
    spec = importlib.util.spec_from_loader("cnn_checks_under_test", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(src, "cnn_checks.py", "exec"), mod.__dict__)
    for key, answer in checks.ANSWERS.items():
        checks.check_answer(key, answer.expected)
        mod.check_answer(key, answer.expected)
        for mistake in answer.mistakes:
            for judge in (checks.explain_answer, mod.check_answer):
                with pytest.raises(AssertionError, match="Likely mistake") as err:
                    judge(key, mistake.value)
                assert list(err.value.reasons) == mistake.reasons  # the mistake named as data too
    assert "cnn_checks_under_test" not in sys.modules
