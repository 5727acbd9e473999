"""Build assignments: master notebooks in ``solutions/`` -> student folders and autograder zips.

Otter Assign does the work.  We add one step before it: rendering the student-side check
module ``cnn_checks.py`` (answer digests, never answers) from :mod:`autograder.checks`, so
expected values always come from the reference implementation.  And two after it:

* Otter's ``autograder.zip`` gets a pinned ``environment.yml`` (TensorFlow included) and a
  ``setup.sh`` that installs this package and provisions MNIST, so ``otter grade`` (Docker) can
  run its ``autograder.otter_plugin``;
* ``gradescope_autograder.zip`` is the same with our engine bundled under ``lib/`` and our
  ``run_autograder`` (templates in ``autograder/templates/``; see :mod:`autograder.gradescope`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import zipfile
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


def build_assignment(master: Path, out_dir: Path, *, gradescope: bool = True, variants=None) -> BuiltAssignment:
    """Run Otter Assign on one master notebook; leave ``out_dir/<name>/`` and its autograder.zip.

    ``variants`` (a :class:`autograder.variants.VariantConfig`, default the assignment's:
    :data:`autograder.checks.VARIANTS`) on: the notebook's first cell asks for the student's id and
    shows their numbers, ``cnn_checks.py`` holds every variant's digests, and the zip records the
    pool in ``variants.json`` for the grader."""
    import nbformat
    import otter.assign
    from autograder import checks
    from autograder.checks import render_public_module

    name = master.stem
    target = Path(out_dir) / name
    variants = checks.VARIANTS if variants is None else variants
    with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as tmp:
        work = Path(tmp) / name
        shutil.copytree(master.parent, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        (work / PUBLIC_MODULE_NAME).write_text(render_public_module(name, variants))
        if variants.enabled:
            from autograder.variants import variant_master

            nb = nbformat.read(work / master.name, as_version=4)
            variant_master(nb)
            nbformat.write(nb, work / master.name)
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
    if variants.enabled:  # the solution notebook is one student's: the sample id's
        from autograder.variants import SAMPLE_ID, set_student_id

        solution = nbformat.read(target / "solution" / master.name, as_version=4)
        set_student_id(solution, SAMPLE_ID)
        nbformat.write(solution, target / "solution" / master.name)
    for notebook in (target / master.name, target / "solution" / master.name):
        _stable_cell_ids(notebook)
    extra = {"variants.json": json.dumps(dataclasses.asdict(variants))} if variants.enabled else {}
    built = BuiltAssignment(name, target, finish_otter_zip(target / "autograder.zip", extra),
                            target / "solution" / master.name)
    if gradescope:
        built.gradescope_zip = make_gradescope_zip(built.autograder_zip, target / "gradescope_autograder.zip")
    return built


#: Where the image keeps the verified MNIST and the retraining cache (root only).
IMAGE_CACHE_DIR = "/root/.cache/cnn-grader"
OTTER_ENV_NAME = "otter-env"


def pinned_requirements() -> list[str]:
    """This package's dependencies, each pinned to the version installed here (the one the tests
    use): TensorFlow, Keras, numpy and Otter above all, where 0.99 accuracy is the cut-off."""
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    pins = []
    for spec in requires("cnn-autograder") or []:
        req = Requirement(spec)
        if req.marker is not None:  # extras (test, ray): not for grading
            continue
        extras = "[grading,plugins]" if req.name == "otter-grader" else ""
        pins.append(f"{req.name}{extras}=={version(req.name)}")
    return pins


def environment_yml() -> str:
    """Otter's conda environment with the Python minor version and the packages the tests use."""
    import yaml

    env = {"name": OTTER_ENV_NAME, "channels": ["conda-forge"],
           "dependencies": [f"python={sys.version_info.major}.{sys.version_info.minor}", "pip", "jupyter_server",
                            {"pip": pinned_requirements()}]}
    return yaml.safe_dump(env, sort_keys=False)


def _package_files() -> list[Path]:
    return sorted(Path(__file__).resolve().parent.glob("*.py"))


def _package_b64() -> str:
    """The grader package as a gzipped tar in base64 (76-column lines), for a here-document."""
    import base64
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in _package_files():
            info = tar.gettarinfo(str(path), f"autograder/{path.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return base64.encodebytes(buf.getvalue()).decode().strip()


def _template(name: str):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                      keep_trailing_newline=True, undefined=StrictUndefined)
    return env.get_template(name)


def setup_sh(otter_setup: str, *, embed_package: bool) -> str:
    """Otter's ``setup.sh`` plus our block: the package, MNIST, permissions (``templates/setup_cnn.sh.j2``)."""
    block = _template("setup_cnn.sh.j2").render(
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}", cache_dir=IMAGE_CACHE_DIR,
        embed_package=embed_package, package_b64=_package_b64() if embed_package else "")
    return otter_setup.rstrip("\n") + "\n" + block


def run_autograder_script() -> str:
    from autograder import gradescope

    fallback = gradescope.grader_error_payload("Python could not start in the Gradescope image", 0)
    return _template("run_autograder.j2").render(cache_dir=IMAGE_CACHE_DIR, fallback_json=json.dumps(fallback),
                                                 timeout_minutes=gradescope.DEFAULT_TIMEOUT_MINUTES)


def _rewrite_zip(src_zip: Path, dest: Path, replace: dict[str, str], add: dict[str, Path | str]) -> None:
    tmp = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(src_zip) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename in replace:
                data = replace[item.filename].encode()
            out.writestr(item, data)
        for arcname, path in add.items():
            if isinstance(path, str):  # the file's text
                out.writestr(arcname, path)
            else:
                out.write(path, arcname)
    os.replace(tmp, dest)


def finish_otter_zip(otter_zip: Path, extra: dict[str, str] | None = None) -> Path:
    """Make Otter's own zip work under ``otter grade`` (Docker): pinned environment with TensorFlow,
    and the grader package installed by ``setup.sh`` so ``autograder.otter_plugin`` imports."""
    with zipfile.ZipFile(otter_zip) as z:
        otter_setup = z.read("setup.sh").decode()
    _rewrite_zip(otter_zip, otter_zip, {"environment.yml": environment_yml(),
                                        "setup.sh": setup_sh(otter_setup, embed_package=True)}, dict(extra or {}))
    return otter_zip


def make_gradescope_zip(otter_zip: Path, dest: Path) -> Path:
    """Otter's autograder zip, set up to run our engine (bundled under ``lib/``) instead of Otter's runner.

    ``setup.sh`` is Otter's (Python in /root/miniforge3) plus our block; ``run_autograder`` calls
    :mod:`autograder.gradescope`, which always writes ``results.json``."""
    with zipfile.ZipFile(otter_zip) as z:
        otter_setup = z.read("setup.sh").decode().split("\n# ---- cnn-autograder")[0]
    replace = {"run_otter.py": _template("run_otter.py.j2").render(), "run_autograder": run_autograder_script(),
               "environment.yml": environment_yml(), "setup.sh": setup_sh(otter_setup, embed_package=False)}
    _rewrite_zip(otter_zip, dest, replace, {f"lib/autograder/{p.name}": p for p in _package_files()})
    return dest


def _stable_cell_ids(path: Path) -> None:
    """Otter Assign draws random cell ids; number them so rebuilding changes nothing in git."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    nbformat.write(nb, path)


def build_all(out_dir: Path, solutions_dir: Path = SOLUTIONS_DIR, *, gradescope: bool = True,
              variants=None) -> list[BuiltAssignment]:
    masters = master_notebooks(solutions_dir)
    if not masters:
        raise FileNotFoundError(f"no master notebooks (solutions/<name>/<name>.ipynb) in {solutions_dir}")
    return [build_assignment(m, out_dir, gradescope=gradescope, variants=variants) for m in masters]


def sync_student_folders(built: list[BuiltAssignment], assignments_dir: Path = ASSIGNMENTS_DIR) -> None:
    """Copy the student side of each build into ``assignments/`` (committed; no hidden tests)."""
    for b in built:
        dest = assignments_dir / b.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(b.student_dir, dest, ignore=shutil.ignore_patterns("*.zip", "solution"))
