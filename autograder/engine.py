"""Grading engine: probe the submission in a sandbox, then judge the extracted data elsewhere.

Otter 7 runs tests inside the student's kernel, after the student's code, with the hidden
tests on the same disk; a submission can patch ``numpy``, return objects whose ``__eq__``
lies, or write the results itself.  Here the same Otter test files run in a fresh process
that never loaded student code (:mod:`autograder.judge.judge`), on values that came out of the
sandbox (:mod:`autograder.probe.sandbox`) as plain data.

:func:`grade_notebook` returns one JSON-able result per submission (schema: docs/reference/result-schema.md).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import platform
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from autograder.spec import AssignmentSpec, TrainingPolicy

from autograder import __version__, protocol
from autograder.variants import VariantConfig
from autograder.verifier import preverified
from autograder.probe.sandbox import Limits, probe
from autograder.judge.runner import run_judge
from autograder.faults import Fault, FaultError
from autograder.result import GRADER_ERROR, RESULT_SCHEMA_VERSION, GradeResult  # noqa: F401 (re-exported)

PACKAGE_DIR = Path(__file__).resolve().parent  # the grader package (autograder/)


@dataclass(frozen=True)
class Autograder:
    """The parts of an Otter autograder zip the engine needs, read once into memory.

    ``name`` is the assignment's name as Otter recorded it (``otter_config.json``:
    ``assignment_name``); everything else the engine needs comes from that assignment's spec."""

    name: str
    tests: dict[str, str]  # file name -> exception-format Otter test source
    public_module: str  # files/<spec.public_module_name>: the student-side check module
    sha256: str
    variants: dict | None = None  # variants.json (VariantConfig as a dict): per-student variants on
    # the build's signed verdicts (autograder.verifier.preverified): recipes served without retraining; None: none
    verdicts: preverified.Verdicts | None = None

    @property
    def variants_on(self) -> bool:
        return bool(self.variants and self.variants.get("enabled"))

    @classmethod
    def from_zip(cls, path: str | os.PathLike) -> "Autograder":
        """Read a zip built by ``autograder build``; :class:`~autograder.registry.UnknownAssignment`
        when it names an assignment this grader does not have installed."""
        from autograder import registry

        raw = Path(path).read_bytes()
        with zipfile.ZipFile(path) as z:
            tests = {n.split("/", 1)[1]: z.read(n).decode() for n in z.namelist()
                     if n.startswith("tests/") and n.endswith(".py")}
            config = json.loads(z.read("otter_config.json"))
            name = config.get("assignment_name") or Path(path).stem
            public = z.read(f"files/{registry.get(name).public_module_name}").decode()
            variants = json.loads(z.read("variants.json")) if "variants.json" in z.namelist() else None
            verdicts = preverified.load(lambda n: z.read(n) if n in z.namelist() else None,
                                        preverified.autograder_digest(name, tests, public, variants), str(path))
        return cls(name, tests, public, hashlib.sha256(raw).hexdigest(), variants, verdicts)

    @property
    def spec(self) -> "AssignmentSpec":
        from autograder import registry

        return registry.get(self.name)

    def variables(self) -> list[str]:
        """Every name a test function takes: the values to extract from the notebook."""
        names: list[str] = []
        for source in self.tests.values():
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef):
                    names += [a.arg for a in node.args.args if a.arg != "env" and a.arg not in names]
        return names


@dataclass
class RetrainOptions:
    """How the verifier retrains the submitted model (see :mod:`autograder.verifier.retrain`).

    A field left at ``None`` takes the assignment's value from its spec
    (:class:`autograder.spec.TrainingPolicy`, whose budget is :class:`autograder.verifier.budget.Budget`);
    a value given here (``grade --seeds 1``) overrides it for every assignment of the run."""

    enabled: bool = True  # False: no retraining (grade --no-retrain); the training question is not verified
    max_epochs: int | None = None  # Budget.max_epochs
    max_steps: int | None = None  # Budget.max_steps
    max_seconds: float | None = None  # safety net per training run: hitting it is a grader error
    seeds: int | None = None  # TrainingPolicy.max_seeds: the most seeds trained near the threshold
    seed_margin: float | None = None  # TrainingPolicy.seed_margin
    require_lesson_model: bool | None = None  # TrainingPolicy.require_lesson_model
    cache_dir: str | None = "default"  # None: no cache
    data_subset: tuple[int, int] | None = None  # (training, test) images: quick checks only

    def policy(self, spec: "AssignmentSpec") -> "TrainingPolicy":
        """The assignment's training policy with this run's overrides."""
        p = spec.training
        budget = dataclasses.replace(p.budget, **{k: v for k, v in (("max_epochs", self.max_epochs),
                                                                    ("max_steps", self.max_steps)) if v is not None})
        given = {k: getattr(self, k) for k in ("max_seconds", "seed_margin", "require_lesson_model")
                 if getattr(self, k) is not None}
        if self.seeds is not None:
            given["max_seeds"] = self.seeds
        return dataclasses.replace(p, budget=budget, **given)

    def settings(self, spec: "AssignmentSpec"):
        from autograder.verifier import retrain

        policy = self.policy(spec)
        return retrain.Settings(budget=policy.budget, max_seconds=policy.max_seconds, seeds=policy.max_seeds,
                                seed_margin=policy.seed_margin, threshold=policy.threshold,
                                assignment=spec.name,
                                data_subset=tuple(self.data_subset) if self.data_subset else None)

    def for_judge(self, spec: "AssignmentSpec", reports: dict | None = None, pending: bool = False) -> dict | None:
        if not self.enabled:
            return None
        policy = self.policy(spec)
        return {"reports": reports or {}, "pending": pending, "require_lesson_model": policy.require_lesson_model,
                "threshold": policy.threshold}


def _retrain_models(values: dict, options: RetrainOptions, spec: "AssignmentSpec", verdicts=None) -> dict[str, dict]:
    """Retrain every extracted model in its own process (unless the zip's ``verdicts`` pre-verified its recipe);
    the reports hold numbers and notes only."""
    from autograder.verifier import retrain

    reports = {}
    for name, data in values.items():
        if (data or {}).get("status") != protocol.MODEL:
            continue
        try:
            report = retrain.verify(data.get("config"), data.get("fits") or [], options.settings(spec),
                                    cache_dir=options.cache_dir, verdicts=verdicts)
        except Exception as exc:  # noqa: BLE001 - the grader's fault, reported as such
            report = retrain.RetrainReport.failed(Fault("grader_crash", f"{type(exc).__name__}: {exc}"))
        if report.fault is None and not isinstance(report.accuracy, (int, float)):  # neither a figure nor a cause
            report = retrain.RetrainReport.failed(Fault("grader_crash", "the retraining report holds no accuracy"))
        reports[name] = report.as_dict()
    return reports


def _grader_fingerprint(extra: list[Path]) -> str:
    """Hash of the grader's own code and inputs: a submission must not be able to change them."""
    h = hashlib.sha256()
    from autograder.probe.jail import assignment_dirs

    code = [p for d in [PACKAGE_DIR, *assignment_dirs()] for p in sorted(Path(d).rglob("*.py"))]
    for path in code + extra:
        if path.is_file():
            h.update(str(path).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"cnn-autograder": __version__, "python": platform.python_version()}
    for pkg in ("otter-grader", "numpy", "keras", "tensorflow", "jax"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def grade_notebook(
    notebook: str | os.PathLike,
    autograder: Autograder | str | os.PathLike,
    *,
    limits: Limits = Limits(),
    retrain: RetrainOptions = RetrainOptions(),
    real_fit: bool = False,
    on_partial: Callable[[dict], None] | None = None,
    identity: str | None = None,
    identity_source: str = "LMS",
) -> dict:
    """Grade one notebook; never raises for anything the submission does.

    ``identity`` is the submitter's LMS identity (e-mail or id, see :func:`variants.lms_identity`):
    with variants on, it alone chooses the numbers the answers are judged with; the notebook's own
    ``STUDENT_ID`` is used only when there is none, and a different one is flagged (``variant``).

    ``on_partial`` receives the result judged without the retrained accuracy (``retrain_pending``
    is true, the training check says the score is provisional) before retraining starts."""
    started = time.monotonic()
    ag = autograder if isinstance(autograder, Autograder) else Autograder.from_zip(autograder)
    spec = ag.spec
    zip_path = [] if isinstance(autograder, Autograder) else [Path(autograder)]
    variables = ag.variables()
    if ag.variants_on and "STUDENT_ID" not in variables:
        variables.append("STUDENT_ID")  # the notebook's claim: compared, never trusted
    variant_config = VariantConfig(**ag.variants) if ag.variants_on else None
    functions = spec.probe_plan(variables, variant_config)
    before = _grader_fingerprint(zip_path)
    result = GradeResult(assignment=ag.name, submission=str(notebook), versions=_versions())
    private = [Path(autograder).resolve().parent] if zip_path else []
    data_file = spec.dataset.probe_file() if spec.dataset.probe_file else None
    # with variants the notebook's first cell imports the student-side checks, as students have them
    files = {spec.public_module_name: ag.public_module.encode()} if ag.variants_on else None
    try:
        probed = probe(notebook, variables, functions, limits=limits, real_fit=real_fit, data_file=data_file,
                       data_setup=spec.dataset.probe_setup, private=private, files=files)
    except FaultError as exc:  # a jail that could not be opened (no uid left, ...): never the submission's
        return result.fail(exc.fault).finish(started).to_dict()
    result.limits_hit = probed.limits_hit
    result.isolation = probed.isolation
    from autograder.probe.output import host_paths, neutral_paths, student_output

    hosts = host_paths()  # the student's own output: no grader start-up lines, no host paths
    cells = [{**c, "error": neutral_paths(c["error"], hosts)} if c.get("error") else c for c in probed.cells]
    result.execution = {"seconds": probed.seconds, "cells": cells, "skipped_cells": probed.skipped,
                        "runs": probed.runs, "warm_starts": probed.warm_starts,
                        "output_tail": student_output(probed.output, hosts)[-20000:]}
    if probed.fault is not None and probed.fault.graders:  # the jail, the host or the grader's start-up
        return result.fail(probed.fault).finish(started).to_dict()
    if _grader_fingerprint(zip_path) != before:
        return result.fail(Fault("tampering", "the grader's files changed while the submission ran; not graded")
                           ).finish(started).to_dict()
    values = probed.values  # plain data, even when the run ended early
    if probed.fault is not None:
        result.fail(probed.fault)
    request = protocol.judge_request(tests=ag.tests, public_module=ag.public_module,
                                     public_module_name=spec.public_module_stem, values=values, functions=functions,
                                     retrain=retrain.for_judge(spec))
    timings = result.execution["timings"] = {"probe": probed.seconds, "retrain": 0.0, "judge": 0.0}
    if ag.variants_on:
        request["variant"] = {"assignment": ag.name, "config": ag.variants, "identity": identity,
                              "identity_source": identity_source if identity else None}
    try:
        if retrain.enabled and any((d or {}).get("status") == protocol.MODEL for d in values.values()):
            if on_partial is not None:
                judged = run_judge({**request, "retrain": retrain.for_judge(spec, pending=True)})
                partial = dataclasses.replace(result, retrain_pending=True).judged(judged["questions"], None)
                on_partial(partial.to_dict())
            clock = time.monotonic()
            reports = _retrain_models(values, retrain, spec, ag.verdicts)
            timings["retrain"] = round(time.monotonic() - clock, 3)  # waiting for a training slot included
            request["retrain"] = retrain.for_judge(spec, reports)
            failed = [f for f in (Fault.from_dict(r["fault"]) for r in reports.values() if r.get("fault")) if f.graders]
            if failed:
                result.fail(failed[0].with_message(f"retraining failed: {failed[0].message}"))
        clock = time.monotonic()
        judged = run_judge(request)
        timings["judge"] = round(time.monotonic() - clock, 3)
    except Exception as exc:  # the trusted side failed: not the submission's fault
        fault = exc.fault if isinstance(exc, FaultError) else Fault("grader_crash", f"{type(exc).__name__}: {exc}")
        if result.fault is not None and Fault.from_dict(result.fault).graders:  # retraining failed first: its cause
            fault = Fault.from_dict(result.fault)
        result.fail(fault.with_message(f"{result.error + '; ' if result.error else ''}grader error: {exc}"))
        return result.finish(started).to_dict()
    result.variant = judged.get("variant")
    return result.judged(judged["questions"], judged["retrain"]).finish(started).to_dict()


def start_judge_ahead() -> None:
    """Start a judge for this process's next submission now, in the background (the warm pool's, when it is
    on and none waits already), so that its start-up (Otter's imports) overlaps with the submission's jail."""
    from autograder.judge import runner

    runner.start_ahead()
