"""Build assignments: each installed assignment's master notebook -> student folder and autograder zips.

Otter Assign does the work.  We add one step before it: rendering the student-side check module
(``spec.public_module_name``: answer digests, never answers) from the assignment's answer key, so
expected values always come from its reference implementation.  And some after it:

* every notebook records the assignment's name in its metadata (``autograder.assignment``), which
  is how ``grade`` picks the autograder for each submission;
* Otter's ``autograder.zip`` gets a pinned ``environment.yml`` (TensorFlow included) and a
  ``setup.sh`` that installs this package and the assignment's package and provisions MNIST, so
  ``otter grade`` (Docker) can run its ``autograder.otter_plugin``;
* ``gradescope_autograder.zip`` is the same with our engine and the assignment bundled under ``lib/``
  and our ``run_autograder`` (templates in ``autograder/lms/templates/``; see :mod:`autograder.lms.gradescope`);
* with ``preverify`` (on by default on the command line, off in a library call), the solution's recipe and the
  others listed are graded and retrained once, and both zips ship their signed verdicts
  (:mod:`autograder.preverify`), so grading serves those recipes without retraining.

``build --update-assignments`` refreshes what is committed from a build: each assignment's ``student/``
and ``samples/`` (:func:`sync_student_folders`) and its solution notebook in the repository's top-level
``solutions/`` (:func:`sync_solutions`; the master stays the one source, tests keep both in sync).
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

from autograder import settings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autograder.preverify import Outcome, Preverify
    from autograder.spec import AssignmentSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Each assignment's instructor solution notebook, ``<name>.ipynb``: the built solution (Otter's, answers
#: filled, tests stripped), generated from the master by ``build --update-assignments`` and committed at the
#: top of the repository (a test keeps it in sync).  The master stays the one source; neither is shipped
#: to students.
SOLUTIONS_DIR = REPO_ROOT / "solutions"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class BuiltAssignment:
    name: str
    student_dir: Path  # notebook, the public check module, public tests: what students get
    autograder_zip: Path  # hidden tests included: instructors and the LMS only
    solution_notebook: Path  # Otter's solution notebook (answers filled, tests stripped)
    gradescope_zip: Path | None = None  # Otter's zip, set up to grade with our engine
    preverified: "Outcome | None" = None  # what the build pre-verified (autograder.preverify); None: not asked

    @property
    def student_notebook(self) -> Path:
        return self.student_dir / f"{self.name}.ipynb"

    @property
    def spec(self) -> "AssignmentSpec":
        from autograder import registry

        return registry.get(self.name)


def build_assignment(spec: "AssignmentSpec", out_dir: Path, *, gradescope: bool = True, variants=None,
                     preverify: "Preverify | None" = None) -> BuiltAssignment:
    """Run Otter Assign on one assignment's master notebook; leave ``out_dir/<name>/`` and its zips.

    ``preverify`` (:class:`autograder.preverify.Preverify`): also grade the solution's recipe (and the others it
    lists) once and ship the signed verdicts in both zips; None (the default here, so a library call never
    trains; ``build`` on the command line turns it on): nothing is retrained.

    ``variants`` (a :class:`autograder.variants.VariantConfig`; default the spec's) on: the assignment's
    checks rewrite the master notebook (the first cell asks for the student's id and shows their
    numbers), the student-side module holds every variant's digests, and the zips record the pool in
    ``variants.json`` for the grader."""
    import nbformat
    import otter.assign

    name, master = spec.name, spec.master_notebook
    if master.stem != name:
        raise ValueError(f"the master notebook of {name!r} must be called {name}.ipynb, not {master.name}")
    target = Path(out_dir) / name
    variants = spec.variants if variants is None else variants
    with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as tmp:
        work = Path(tmp) / name
        shutil.copytree(master.parent, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        (work / spec.public_module_name).write_text(spec.render_public_module(variants))
        if variants.enabled:
            nb = nbformat.read(work / master.name, as_version=4)
            spec.checks_module().variant_master(nb)
            nbformat.write(nb, work / master.name)
        result = Path(tmp) / "dist"
        otter.assign.main(str(work / master.name), str(result), no_pdfs=True, no_run_tests=True)
        zips = list((result / "autograder").glob("*-autograder_*.zip"))
        if len(zips) != 1:
            raise RuntimeError(f"Otter Assign left {len(zips)} autograder zips for {name}")
        with zipfile.ZipFile(zips[0]) as z:
            recorded = json.loads(z.read("otter_config.json")).get("assignment_name")
        if recorded != name:
            raise ValueError(f"the master notebook's ASSIGNMENT CONFIG names {recorded!r}; set `name: {name}`")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(result / "student", target)
        shutil.copy(zips[0], target / "autograder.zip")
        (target / "solution").mkdir()
        shutil.copy(result / "autograder" / master.name, target / "solution" / master.name)
    if variants.enabled:  # the solution notebook is one student's (the checks' sample id)
        solution = nbformat.read(target / "solution" / master.name, as_version=4)
        spec.checks_module().variant_solution(solution)
        nbformat.write(solution, target / "solution" / master.name)
    for notebook in (target / master.name, target / "solution" / master.name):
        _finish_notebook(notebook, name)
    extra = {"variants.json": json.dumps(dataclasses.asdict(variants))} if variants.enabled else {}
    from autograder import manual

    questions = manual.questions_from_master(json.loads(master.read_text(encoding="utf-8")), name)
    if questions:  # the hand-graded questions (name, points, text: no answer), for the Gradescope runner
        extra[manual.ZIP_FILE] = json.dumps([dataclasses.asdict(q) for q in questions], indent=1)
    built = BuiltAssignment(name, target, finish_otter_zip(target / "autograder.zip", spec, extra),
                            target / "solution" / master.name)
    if preverify is not None:  # into Otter's zip, before the Gradescope zip is made from it
        from autograder.preverify import preverify_built

        built.preverified = preverify_built(built, preverify)
        if built.preverified.files:
            add_to_zip(built.autograder_zip, built.preverified.files)
    if gradescope:
        built.gradescope_zip = make_gradescope_zip(built.autograder_zip, target / "gradescope_autograder.zip", spec)
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


def _package_files(spec: "AssignmentSpec | None" = None) -> dict[str, Path]:
    """The grader package (Python files and its templates), the assignment's package and the shared
    course content it imports (``spec.shared``; Python files), by their path in a bundle."""
    files = {f"autograder/{p.relative_to(PACKAGE_DIR).as_posix()}": p
             for p in sorted([*PACKAGE_DIR.rglob("*.py"), *PACKAGE_DIR.rglob("*.j2")]) if "__pycache__" not in p.parts}
    if spec is not None:
        top = spec.package_dir.parent  # assignments/
        files["assignments/__init__.py"] = top / "__init__.py"
        for folder in [spec.package_dir, *spec.shared_dirs]:  # its own package and the shared content it imports
            if folder.parent != top:
                raise ValueError(f"{folder} is not a package directly under {top}")
            for p in sorted(folder.rglob("*.py")):
                if "__pycache__" not in p.parts and not {"student", "samples", "master"} & set(p.relative_to(folder).parts):
                    files[f"assignments/{p.relative_to(top).as_posix()}"] = p
    return files


def _package_b64(spec: "AssignmentSpec | None" = None) -> str:
    """The grader package as a gzipped tar in base64 (76-column lines), for a here-document."""
    import base64
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for arcname, path in _package_files(spec).items():
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return base64.encodebytes(buf.getvalue()).decode().strip()


def _setting_names() -> dict[str, str]:
    """The environment variables' names the shell scripts use, by their name in :mod:`autograder.settings`."""
    return {name: value.name for name, value in vars(settings).items() if isinstance(value, settings.Setting)}


def _template(name: str):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(PACKAGE_DIR / "lms" / "templates"),
                      keep_trailing_newline=True, undefined=StrictUndefined)
    return env.get_template(name)


def setup_sh(otter_setup: str, *, embed_package: bool, spec: "AssignmentSpec | None" = None) -> str:
    """Otter's ``setup.sh`` plus our block: the package, MNIST, permissions (``templates/setup_cnn.sh.j2``)."""
    block = _template("setup_cnn.sh.j2").render(names=_setting_names(),
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}", cache_dir=IMAGE_CACHE_DIR,
        embed_package=embed_package, package_b64=_package_b64(spec) if embed_package else "")
    return otter_setup.rstrip("\n") + "\n" + block


def run_autograder_script() -> str:
    from autograder.lms import gradescope

    from autograder.faults import Fault

    fallback = gradescope.grader_error_payload(Fault("interpreter", "Python could not start in the Gradescope image"), 0)
    names, defaults = _setting_names(), {s: getattr(settings, s).default for s in ("GRADESCOPE_ROOT", "PYTHON")}
    return _template("run_autograder.j2").render(names=names, defaults=defaults, cache_dir=IMAGE_CACHE_DIR,
                                                 fallback_json=json.dumps(fallback),
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


def finish_otter_zip(otter_zip: Path, spec: "AssignmentSpec | None" = None, extra: dict[str, str] | None = None) -> Path:
    """Make Otter's own zip work under ``otter grade`` (Docker): pinned environment with TensorFlow,
    and the grader package installed by ``setup.sh`` so ``autograder.otter_plugin`` imports."""
    with zipfile.ZipFile(otter_zip) as z:
        otter_setup = z.read("setup.sh").decode()
    _rewrite_zip(otter_zip, otter_zip, {"environment.yml": environment_yml(),
                                        "setup.sh": setup_sh(otter_setup, embed_package=True, spec=spec)}, dict(extra or {}))
    return otter_zip


def add_to_zip(zip_path: Path, files: dict[str, str]) -> Path:
    """Add text files to a zip, or replace those it has, atomically."""
    with zipfile.ZipFile(zip_path) as z:
        present = set(z.namelist())
    _rewrite_zip(zip_path, zip_path, {n: t for n, t in files.items() if n in present},
                 {n: t for n, t in files.items() if n not in present})
    return zip_path


def make_gradescope_zip(otter_zip: Path, dest: Path, spec: "AssignmentSpec | None" = None) -> Path:
    """Otter's autograder zip, set up to run our engine (bundled under ``lib/``) instead of Otter's runner.

    ``setup.sh`` is Otter's (Python in /root/miniforge3) plus our block; ``run_autograder`` calls
    :mod:`autograder.lms.gradescope`, which always writes ``results.json``."""
    with zipfile.ZipFile(otter_zip) as z:
        otter_setup = z.read("setup.sh").decode().split("\n# ---- cnn-autograder")[0]
    replace = {"run_otter.py": _template("run_otter.py.j2").render(), "run_autograder": run_autograder_script(),
               "environment.yml": environment_yml(), "setup.sh": setup_sh(otter_setup, embed_package=False)}
    _rewrite_zip(otter_zip, dest, replace, {f"lib/{arc}": p for arc, p in _package_files(spec).items()})
    return dest


def _finish_notebook(path: Path, name: str) -> None:
    """Number the cells (Otter Assign draws random ids; rebuilding then changes nothing in git) and
    record the assignment's name in the notebook's metadata (``grade`` picks the spec from it)."""
    import nbformat

    from autograder.spec import NOTEBOOK_METADATA_KEY

    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    nb.metadata[NOTEBOOK_METADATA_KEY] = {"assignment": name}
    nbformat.write(nb, path)


def build_all(out_dir: Path, names: list[str] | None = None, *, gradescope: bool = True,
              variants=None, preverify: "Preverify | None" = None) -> list[BuiltAssignment]:
    """Build every installed assignment (or those named), in name order (``preverify``: see :func:`build_assignment`;
    its notebooks go to the assignment their metadata names)."""
    from autograder import registry

    specs = registry.all_assignments() if names is None else [registry.get(n) for n in names]
    if not specs:
        raise FileNotFoundError("no assignments are installed (entry points 'autograder.assignments')")
    return [build_assignment(spec, out_dir, gradescope=gradescope, variants=variants, preverify=preverify)
            for spec in specs]


def sync_student_folders(built: list[BuiltAssignment]) -> None:
    """Copy the student side of each build into its package's ``student/`` (committed; no hidden tests)."""
    for b in built:
        dest = b.spec.student_dir
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(b.student_dir, dest, ignore=shutil.ignore_patterns("*.zip", "solution"))


def solution_path(name: str, solutions_dir: Path | None = None) -> Path:
    """Where the committed solution notebook of assignment ``name`` lives (``solutions/<name>.ipynb``)."""
    return Path(solutions_dir or SOLUTIONS_DIR) / f"{name}.ipynb"


def sync_solutions(built: list[BuiltAssignment], solutions_dir: Path | None = None) -> list[Path]:
    """Copy each build's solution notebook to the repository's ``solutions/`` (committed, instructors only).
    Only in a checkout (a ``pyproject.toml`` beside the package): an installed package has no ``solutions/``."""
    folder = Path(solutions_dir or SOLUTIONS_DIR)
    if solutions_dir is None and not (REPO_ROOT / "pyproject.toml").is_file():
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for b in built:
        dest = solution_path(b.name, folder)
        shutil.copy(b.solution_notebook, dest)
        written.append(dest)
    return written
