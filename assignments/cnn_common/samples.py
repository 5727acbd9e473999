"""Writing sample submissions: a unit's student notebook filled in the ways real students fill it.

Each unit's ``sample_answers.py`` lists its :class:`Sample` s (answers, function bodies, model and
training code, and which tests each is designed to fail with what feedback) and calls
:func:`write_samples`; the samples are generated from the built student notebook (so they follow
the assignment when it changes) and committed.  The tests derive each sample's expected score
from the assignment's own point values and the metadata written here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat


@dataclass
class Sample:
    name: str
    description: str
    answers: dict[str, str] = field(default_factory=dict)  # variable -> source of its value
    functions: dict[str, str] = field(default_factory=dict)  # function name -> body
    model: str | None = None
    training: str | None = None
    expected_failures: dict[str, list[str]] = field(default_factory=dict)  # question -> test names
    expected_feedback: dict[str, str] = field(default_factory=dict)  # question -> message fragment
    # question -> the misconception ids its cases must record (the designed mistakes, as the checks name them)
    expected_misconceptions: dict[str, list[str]] = field(default_factory=dict)


def _replace_line(source: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, lambda m: replacement, source, count=1, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"pattern {pattern!r} not found in cell:\n{source}")
    return new


def fill(student_nb: nbformat.NotebookNode, sample: Sample, metadata_key: str) -> nbformat.NotebookNode:
    """Fill the student notebook's ``...`` placeholders as this sample's student did."""
    nb = nbformat.from_dict(student_nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src = cell.source
        for var, value in sample.answers.items():
            if re.search(rf"^{var} = \.\.\.$", src, flags=re.MULTILINE):
                src = _replace_line(src, rf"^{var} = \.\.\.$", f"{var} = {value}")
        for name, body in sample.functions.items():
            if src.startswith(f"def {name}("):
                src = _replace_line(src, r"^    \.\.\.$", body)
        if src.startswith("model = models.Sequential()") and sample.model:
            src = _replace_line(src, r"^\.\.\.$", sample.model)
        elif src.strip() == "..." and sample.training:
            src = sample.training
        cell.source = src
    nb.metadata[metadata_key] = {
        "description": sample.description,
        "expected_failures": sample.expected_failures,
        "expected_feedback": sample.expected_feedback,
        "expected_misconceptions": sample.expected_misconceptions,
    }
    return nb


def write_samples(student_notebook: Path, solution_notebook: Path, out_dir: Path, samples: list[Sample],
                  metadata_key: str) -> list[Path]:
    """Write the solution, the untouched notebook and every mistaken sample into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student = nbformat.read(student_notebook, as_version=4)
    written = []

    def save(nb, name):
        path = out_dir / f"{name}.ipynb"
        nbformat.write(nb, path)
        written.append(path)

    solution = nbformat.read(solution_notebook, as_version=4)
    solution.metadata[metadata_key] = {"description": "The instructor's solution: full marks.",
                                       "expected_failures": {}, "expected_feedback": {},
                                       "expected_misconceptions": {}}
    save(solution, "solution")
    untouched = nbformat.from_dict(student)
    untouched.metadata[metadata_key] = {"description": "The notebook as handed out: every answer is ...",
                                        "expected_failures": "all", "expected_feedback": {},
                                        "expected_misconceptions": {}}  # nothing answered: no mistake named
    save(untouched, "untouched")
    for sample in samples:
        save(fill(student, sample, metadata_key), sample.name)
    return written


def write_filled(student_notebook: Path, out_dir: Path, samples: list[Sample], metadata_key: str) -> list[Path]:
    """Write each of ``samples`` as the student notebook filled in (``out_dir/<name>.ipynb``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student = nbformat.read(student_notebook, as_version=4)
    written = []
    for sample in samples:
        path = out_dir / f"{sample.name}.ipynb"
        nbformat.write(fill(student, sample, metadata_key), path)
        written.append(path)
    return written
