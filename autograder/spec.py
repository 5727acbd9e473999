"""The assignment interface: everything the generic engine needs to know about one unit.

An assignment is a Python package under ``assignments/`` whose ``spec.py`` defines
``ASSIGNMENT = AssignmentSpec(...)`` and is listed in ``pyproject.toml`` under the entry-point
group ``autograder.assignments`` (see :mod:`autograder.registry`).  The engine (probe, judge,
verifier), the build, the batch, the Gradescope runner and the CLI find the spec by the
assignment's name, which Otter writes into the autograder zip (``otter_config.json``:
``assignment_name``) and which the build writes into every notebook's metadata
(``metadata.autograder.assignment``).

What is specific to one unit, and where it lives:

* the questions' expected values, typical mistakes and hidden checks: the ``checks`` module (the
  answer key: never importable inside the sandbox), which must provide

  - ``render_public_module() -> str``: the student-side check module's source (digests only),
    shipped as ``public_module_name`` beside the student notebook;
  - ``probe_plan() -> dict[str, list[dict]]``: for each function students implement, every call
    the probe makes on it in the sandbox (``{"args": [...], "kwargs": {...}}``, grader-chosen
    inputs, plain JSON);
  - ``expected_layers() -> list[dict]``: the expected model structure (``[]`` when there is none);
  - only with per-student variants on (``variants=VariantConfig(enabled=True)``, see
    :mod:`autograder.variants`): ``render_public_module(variants=...)`` and ``probe_plan(variants=...)``
    for the whole pool, ``variant_master(nb)`` and ``variant_solution(nb)`` (rewrite the master and the
    built solution notebook, in place), and ``select_variant(config, identity, identity_source,
    declared_id, values, public_module) -> dict`` (the judge: judge with the submitter's variant and
    return the result's ``variant`` record);
* the dataset (:class:`Dataset`): a loader verified by content hash, the input shape, the number
  of classes, the sizes of the two splits and the preprocessing (pixel scale) the verifier applies;
* the training policy (:class:`TrainingPolicy`): accuracy threshold, the seed rule, the compute
  budget, whether training credit needs the lesson's architecture;
* the master notebook (Otter Assign format) and, optionally, a ``samples`` module that writes the
  sample submissions, and a ``common_recipes`` module that writes notebooks of the recipes many students
  submit as written, which ``build`` pre-verifies;
* the course-content packages it shares with other units (``shared``, e.g. ``assignments.cnn_common``),
  which the build bundles with it.

Defaults are written once, here (and in :class:`autograder.verifier.budget.Budget`); the CLI
reads its option defaults from these dataclasses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping

from autograder.variants import VariantConfig
from autograder.verifier.budget import Budget

#: Where the build records the assignment's name in a notebook's metadata.
NOTEBOOK_METADATA_KEY = "autograder"


@dataclass(frozen=True)
class Dataset:
    """The data the verifier retrains on (and, optionally, that each probe may read offline)."""

    name: str  # "mnist": shown in messages
    load: Callable[[], tuple]  # -> ((x_train, y_train), (x_test, y_test)), verified by content hash
    sha256: Mapping[str, str]  # content hash of each array (part of the retraining cache key)
    input_shape: tuple[int, ...]  # one example as the model takes it, e.g. (28, 28, 1)
    num_classes: int  # the model's last layer gives this many values
    train_size: int  # images the verifier trains on
    test_size: int  # images it measures on
    pixel_scale: float = 255.0  # preprocessing: x / pixel_scale (raw pixels when the notebook trained on raw)
    # ``probe_file(allow_network=True) -> Path``: a verified file copied read-only into every probe, so the
    # notebook's own loading call works offline (for MNIST: Keras' ``mnist.npz``, which its ``probe_setup`` points
    # keras.datasets.mnist at); None when the data ships inside a package the sandbox can import
    probe_file: Callable[..., Path] | None = None
    # Python source the probe runs at start-up, before the student's first cell, with ``data_file`` bound to
    # the path of its copy of ``probe_file`` (e.g. pointing ``keras.datasets.mnist.load_data`` at it); the
    # grader's own code, never the student's; None: nothing to run
    probe_setup: str | None = None
    # ``provision(allow_network=True)``: fetch and verify the data ahead of grading (``python -m autograder
    # data``, Gradescope's image build), raising with every source tried when it cannot; None: nothing to fetch
    provision: Callable[..., object] | None = None
    # ``install_offline()``: make the notebook's own loading call read the verified copy in the student's kernel
    # (``otter run``, ``otter grade``: the Otter plugin calls it before the first cell); None: nothing to do
    install_offline: Callable[[], object] | None = None

    def describe(self) -> dict:
        """The plain, JSON-able facts (for the verifier's job and cache key)."""
        return {"name": self.name, "sha256": dict(self.sha256), "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "train_size": self.train_size, "test_size": self.test_size,
                "pixel_scale": self.pixel_scale}


@dataclass(frozen=True)
class TrainingPolicy:
    """How the submitted model is verified: threshold, seed rule, budget (all in the cache key)."""

    threshold: float = 0.99  # retrained test accuracy must be above this
    seed_margin: float = 0.003  # a first accuracy this close to the threshold gets more seeds...
    max_seeds: int = 3  # ... up to this many in all; the median is scored
    require_lesson_model: bool = False  # True: training credit only for the expected architecture
    budget: Budget = field(default_factory=Budget)  # limits checked before any training
    max_seconds: float = 1800.0  # safety net per training run: hitting it is a grader error


@dataclass(frozen=True)
class AssignmentSpec:
    """One assignment: its name, its course content (modules and files) and its policy."""

    name: str  # the notebook's stem and Otter's assignment_name, e.g. "cnn_mnist"
    title: str  # for people: "CNN on MNIST"
    package: str  # the assignment's Python package, e.g. "assignments.cnn_mnist"
    checks: str  # module with the answer key and hidden checks (see the module docstring)
    public_module_name: str  # the student-side check module's file name, e.g. "cnn_checks.py"
    dataset: Dataset  # the data the verifier retrains on
    training: TrainingPolicy = field(default_factory=TrainingPolicy)  # how the submitted model is verified
    master: str = ""  # master notebook, relative to the package folder (default "master/<name>.ipynb")
    samples: str | None = None  # module with write_samples(student_nb, solution_nb, out_dir)
    variants: VariantConfig = field(default_factory=VariantConfig)  # per-student numbers (off by default)
    # course-content packages the assignment's modules import besides its own (e.g. content shared by
    # several units, "assignments.cnn_common"): bundled with it in the zips, masked in the jail like it
    shared: tuple[str, ...] = ()
    # module with ``write_common_recipes(student_notebook, out_dir) -> list[Path]``: notebooks of the recipes many
    # students submit exactly as written (e.g. the lesson's own), which ``build`` pre-verifies besides the
    # solution's (autograder.preverify), each named by its file's stem; None: the solution's recipe only
    common_recipes: str | None = None
    # module naming the unit's misconceptions (the likely mistakes its checks name, as the ids they raise):
    # ``CATALOGUE`` ({id: title}); None: the checks name no misconception
    misconceptions: str | None = None
    # the questions (Otter names, as in ``grader.check("name")``) whose answers are code students write
    # themselves: compared pair by pair for copied code (:mod:`autograder.lms.similarity`); (): none
    code_answers: tuple[str, ...] = ()

    # --- derived ---------------------------------------------------------------------------

    @property
    def package_dir(self) -> Path:
        module = importlib.import_module(self.package)
        return Path(module.__file__).resolve().parent

    @property
    def shared_dirs(self) -> list[Path]:
        """The folders of the :attr:`shared` packages."""
        return [Path(importlib.import_module(p).__file__).resolve().parent for p in self.shared]

    @property
    def master_notebook(self) -> Path:
        return self.package_dir / (self.master or f"master/{self.name}.ipynb")

    @property
    def student_dir(self) -> Path:
        """The generated student folder, committed (``build --update-assignments``)."""
        return self.package_dir / "student"

    @property
    def samples_dir(self) -> Path:
        """The generated sample submissions, committed."""
        return self.package_dir / "samples"

    @property
    def public_module_stem(self) -> str:
        return Path(self.public_module_name).stem

    def checks_module(self) -> ModuleType:
        """The answer key (trusted side only)."""
        return importlib.import_module(self.checks)

    def probe_plan(self, variables: list[str] | None = None, variants: VariantConfig | None = None) -> dict[str, list[dict]]:
        """The calls the probe makes on each student function the tests use (grader-chosen inputs);
        with ``variants`` on (as built: the zip's ``variants.json``), every variant's public examples too."""
        checks = self.checks_module()
        plan = checks.probe_plan(variants=variants) if variants is not None and variants.enabled else checks.probe_plan()
        return {k: v for k, v in plan.items() if variables is None or k in variables}

    def render_public_module(self, variants: VariantConfig | None = None) -> str:
        variants = self.variants if variants is None else variants
        if variants.enabled:
            return self.checks_module().render_public_module(variants=variants)
        return self.checks_module().render_public_module()

    def expected_layers(self) -> list[dict]:
        return list(self.checks_module().expected_layers())

    def write_common_recipes(self, student_notebook: Path, out_dir: Path) -> list[Path]:
        """Notebooks of the recipes students commonly submit as written (:attr:`common_recipes`), into ``out_dir``."""
        if not self.common_recipes:
            return []
        return importlib.import_module(self.common_recipes).write_common_recipes(student_notebook, Path(out_dir))

    def write_samples(self, student_notebook: Path, solution_notebook: Path, out_dir: Path | None = None) -> list[Path]:
        if not self.samples:
            return []
        module = importlib.import_module(self.samples)
        return module.write_samples(student_notebook, solution_notebook, out_dir or self.samples_dir)
