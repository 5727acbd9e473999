"""Pre-verifying recipes at build time: grade the solution (and the recipes the instructor lists) once, exactly as
grading does, and ship the signed verdicts in both autograder zips.

Which recipes: the built solution notebook's; the assignment's *common recipes* (``AssignmentSpec.common_recipes``:
for ``cnn_mnist`` the lesson's own model and training cell, which many students submit as written and which,
within the seed rule's margin of the threshold, costs three seeds); and any notebook the instructor names
(``build --preverify-notebook PATH``, for the assignment its metadata names).  Each is graded by
:func:`autograder.engine.grade_notebook` with the zip just built (the probe in its jail, the canonical recipe, the
verifier with the default retraining options and the retraining cache), with a
:class:`autograder.verifier.preverified.Recorder` in place of verdicts, which notes the recipe's digest and context
as the verifier computes them.  A recipe that is refused, fails, or is not the only model of its notebook gets no
verdict (the build says why); the zips are valid either way.  The verdicts are signed with the instructor's key
and written to ``autograder.zip`` before ``gradescope_autograder.zip`` is made from it, so both carry them.

``build`` does this by default (``--no-preverify`` turns it off, ``--no-common-recipes`` keeps only the solution
and the named notebooks); the library's :func:`autograder.build.build_assignment` does it only when given a
:class:`Preverify`, so the test suite's builds never train.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from autograder.faults import Fault, of_result

if TYPE_CHECKING:
    from autograder.spec import AssignmentSpec


class Built(Protocol):
    """What pre-verifying reads of a built assignment (:class:`autograder.build.BuiltAssignment`, which calls
    this module: this module does not import it back)."""

    name: str
    student_dir: Path
    autograder_zip: Path
    solution_notebook: Path

    @property
    def student_notebook(self) -> Path: ...

    @property
    def spec(self) -> AssignmentSpec: ...


@dataclass(frozen=True)
class Preverify:
    """What ``build`` pre-verifies besides the solution's recipe (see the module's docstring)."""

    notebooks: tuple[Path, ...] = ()  # the instructor's further notebooks, each of this assignment
    common_recipes: bool = True  # the recipes the assignment lists as commonly submitted (spec.common_recipes)
    key_dir: Path | None = None  # the signing key's folder (default: <cache>/preverify)
    cache_dir: str | None = "default"  # the retraining cache the build's training goes through (None: none)
    progress: bool = True  # a progress bar on the console


@dataclass
class Outcome:
    """What the build pre-verified for one assignment: the verdicts shipped and the recipes left out, with why."""

    verdicts: list[dict] = field(default_factory=list)  # the signed verdicts, one per recipe pre-verified
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (recipe's name, why it has no verdict)
    seconds: float = 0.0  # the time pre-verifying took
    # the files to add to the autograder zip ({name: text}: the signed verdicts and their public key); empty
    # when no recipe has a verdict.  The build adds them (autograder.build), before the Gradescope zip is made
    files: dict[str, str] = field(default_factory=dict)


def notebooks_to_verify(built: Built, options: Preverify, work: Path) -> list[tuple[str, Path]]:
    """(name, notebook) of every recipe to pre-verify: the solution, the common recipes, the instructor's."""
    found = [("solution", built.solution_notebook)]
    if options.common_recipes:
        found += [(p.stem, p) for p in built.spec.write_common_recipes(built.student_notebook, work)]
    found += [(Path(p).stem, Path(p)) for p in options.notebooks if notebook_assignment(Path(p)) == built.name]
    return found


def notebook_assignment(path: Path) -> str | None:
    """The assignment a notebook's metadata names (as the build writes it), or None."""
    from autograder import registry

    try:
        return registry.notebook_assignment(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _verdict(name: str, result: dict, seen: list[tuple[str, dict]]) -> tuple[dict | None, str | None]:
    from autograder.verifier import preverified

    report = result.get("retrain") or {}
    fault = of_result(result)
    if fault is not None and fault.graders:
        return None, f"grader error ({fault.cause}): {fault.message}"
    if not seen:
        return None, report.get("error") or result.get("error") or "no model was retrained (none was found)"
    if len({digest for digest, _ in seen}) > 1:
        return None, f"the notebook has {len(seen)} models; only a notebook with one model is pre-verified"
    refused = Fault.from_dict(report["fault"]) if report.get("fault") else None  # the recipe's, or the grader's
    if report.get("accuracy") is None or refused is not None:
        return None, report.get("error") or (refused.message if refused else "no accuracy was measured")
    digest, ctx = seen[0]
    return preverified.entry(name, digest, ctx, report), None


def preverify_built(built: Built, options: Preverify = Preverify()) -> Outcome:
    """Grade each recipe to pre-verify with ``built.autograder_zip`` and sign the verdicts: ``Outcome.files``, which
    the build adds to that zip (:func:`autograder.build.add_to_zip`, before the Gradescope zip is made from it)."""
    import time

    from autograder.engine import Autograder, RetrainOptions, grade_notebook
    from autograder.verifier import preverified

    started, outcome = time.monotonic(), Outcome()
    key = preverified.signing_key(options.key_dir)  # a key that is not private stops the build before any training
    from autograder.probe import jail

    # a named notebook may be a student's: its jail sees neither the build (hidden tests) nor the signing key
    jail.add_private_paths([built.student_dir.parent, *([options.key_dir] if options.key_dir else []),
                            *options.notebooks])
    ag = Autograder.from_zip(built.autograder_zip)
    retrain = RetrainOptions(cache_dir=options.cache_dir)  # grading's defaults: the context a batch and Gradescope match
    with tempfile.TemporaryDirectory(prefix=f"preverify-{built.name}-") as tmp:
        todo = notebooks_to_verify(built, options, Path(tmp))
        with _progress(options.progress, built.name, len(todo)) as step:
            for name, notebook in todo:
                step(name)
                recorder = preverified.Recorder()
                result = grade_notebook(notebook, dataclasses.replace(ag, verdicts=recorder), retrain=retrain)
                verdict, why = _verdict(name, result, recorder.seen)
                if verdict is not None:
                    outcome.verdicts.append(verdict)
                else:
                    outcome.skipped.append((name, str(why)))
            step(None)
    if outcome.verdicts:
        text, public = preverified.sign(outcome.verdicts, ag.name, preverified.autograder_digest(
            ag.name, ag.tests, ag.public_module, ag.variants), key)
        outcome.files = {preverified.VERDICTS_FILE: text, preverified.PUBLIC_KEY_FILE: public}
    outcome.seconds = round(time.monotonic() - started, 1)
    return outcome


@contextmanager
def _progress(on: bool, assignment: str, total: int):
    """A rich progress bar over the recipes (spinner, recipe, count, elapsed time); yields ``step(name)``, called
    as each recipe starts and with None at the end; nothing is shown when off."""
    if not on:
        yield lambda name: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as bar:
        task, begun = bar.add_task(f"{assignment}: pre-verifying", total=total), []

        def step(name: str | None) -> None:
            if begun:
                bar.advance(task)
            begun.append(name)
            bar.update(task, description=f"{assignment}: " + (f"pre-verifying {name} (grading and retraining it)"
                                                               if name else "pre-verified"))

        yield step
