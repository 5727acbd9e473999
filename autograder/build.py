"""Build assignments: master notebooks in ``solutions/`` -> student folders and autograder zips.

Otter Assign does the work.  We add one step before it: rendering the student-side check
module ``cnn_checks.py`` (answer digests, never answers) from :mod:`autograder.checks`, so
expected values always come from the reference implementation.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS_DIR = REPO_ROOT / "solutions"
ASSIGNMENTS_DIR = REPO_ROOT / "assignments"
PUBLIC_MODULE_NAME = "cnn_checks.py"


@dataclass
class BuiltAssignment:
    name: str
    student_dir: Path  # notebook, cnn_checks.py, public tests: what students get
    autograder_zip: Path  # hidden tests included: instructors and the LMS only
    solution_notebook: Path  # Otter's solution notebook (answers filled, tests stripped)
    gradescope_zip: Path | None = None  # Otter's zip, set up to grade with our engine

    @property
    def student_notebook(self) -> Path:
        return self.student_dir / f"{self.name}.ipynb"


def master_notebooks(solutions_dir: Path = SOLUTIONS_DIR) -> list[Path]:
    """One master notebook per assignment folder: ``solutions/<name>/<name>.ipynb``."""
    return sorted(p for p in solutions_dir.glob("*/*.ipynb") if p.stem == p.parent.name)


def build_assignment(master: Path, out_dir: Path, *, gradescope: bool = True) -> BuiltAssignment:
    """Run Otter Assign on one master notebook; leave ``out_dir/<name>/`` and its autograder.zip."""
    import otter.assign
    from autograder.checks import render_public_module

    name = master.stem
    target = Path(out_dir) / name
    with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as tmp:
        work = Path(tmp) / name
        shutil.copytree(master.parent, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        (work / PUBLIC_MODULE_NAME).write_text(render_public_module())
        result = Path(tmp) / "dist"
        otter.assign.main(str(work / master.name), str(result), no_pdfs=True, no_run_tests=True)
        zips = list((result / "autograder").glob("*-autograder_*.zip"))
        if len(zips) != 1:
            raise RuntimeError(f"Otter Assign left {len(zips)} autograder zips for {name}")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(result / "student", target)
        shutil.copy(zips[0], target / "autograder.zip")
        (target / "solution").mkdir()
        shutil.copy(result / "autograder" / master.name, target / "solution" / master.name)
    for notebook in (target / master.name, target / "solution" / master.name):
        _stable_cell_ids(notebook)
    built = BuiltAssignment(name, target, target / "autograder.zip", target / "solution" / master.name)
    if gradescope:
        built.gradescope_zip = make_gradescope_zip(built.autograder_zip, target / "gradescope_autograder.zip")
    return built


GRADESCOPE_RUNNER = """\
\"\"\"Gradescope entry point: grade with the cnn-autograder engine (isolated run, clean judge, retraining).\"\"\"
import sys

sys.path.insert(0, "/autograder/source/lib")  # the bundled autograder package
from autograder.gradescope import main

if __name__ == "__main__":
    main()
"""
GRADESCOPE_REQUIREMENTS = ["tensorflow>=2.16", "psutil", "matplotlib", "pyyaml", "jinja2", "typer", "rich"]


def make_gradescope_zip(otter_zip: Path, dest: Path) -> Path:
    """Otter's autograder zip, set up to run our engine (bundled under ``lib/``) instead of Otter's runner."""
    import zipfile

    package = Path(__file__).resolve().parent
    extra = "".join(f"      - {req}\n" for req in GRADESCOPE_REQUIREMENTS)
    with zipfile.ZipFile(otter_zip) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "run_otter.py":
                data = GRADESCOPE_RUNNER.encode()
            elif item.filename == "environment.yml":
                data = data.decode().replace("      - otter-grader", extra + "      - otter-grader").encode()
            out.writestr(item, data)
        for path in sorted(package.glob("*.py")):
            out.write(path, f"lib/autograder/{path.name}")
    return dest


def _stable_cell_ids(path: Path) -> None:
    """Otter Assign draws random cell ids; number them so rebuilding changes nothing in git."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    nbformat.write(nb, path)


def build_all(out_dir: Path, solutions_dir: Path = SOLUTIONS_DIR, *, gradescope: bool = True) -> list[BuiltAssignment]:
    masters = master_notebooks(solutions_dir)
    if not masters:
        raise FileNotFoundError(f"no master notebooks (solutions/<name>/<name>.ipynb) in {solutions_dir}")
    return [build_assignment(m, out_dir, gradescope=gradescope) for m in masters]


def sync_student_folders(built: list[BuiltAssignment], assignments_dir: Path = ASSIGNMENTS_DIR) -> None:
    """Copy the student side of each build into ``assignments/`` (committed; no hidden tests)."""
    for b in built:
        dest = assignments_dir / b.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(b.student_dir, dest, ignore=shutil.ignore_patterns("*.zip", "solution"))
