"""Grading engine: probe the submission in a sandbox, then judge the extracted data elsewhere.

Otter 7 runs tests inside the student's kernel, after the student's code, with the hidden
tests on the same disk; a submission can patch ``numpy``, return objects whose ``__eq__``
lies, or write the results itself.  Here the same Otter test files run in a fresh process
that never loaded student code (:mod:`autograder.judge`), on values that came out of the
sandbox (:mod:`autograder.sandbox`) as plain data.

:func:`grade_notebook` returns one JSON-able result per submission (schema in the README).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autograder import __version__, checks
from autograder.budget import Budget
from autograder.sandbox import Limits, probe

RESULT_SCHEMA_VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent
JUDGE_MEMORY_MB = 8192  # the trusted judge's own limits: a fault there is a grader error
JUDGE_SECONDS = 600.0


class GraderError(RuntimeError):
    """The grader failed (not the submission): the result is a ``grader_error``, graded again next run."""


@dataclass(frozen=True)
class Autograder:
    """The parts of an Otter autograder zip the engine needs, read once into memory."""

    name: str
    tests: dict[str, str]  # file name -> exception-format Otter test source
    public_module: str  # files/cnn_checks.py
    sha256: str
    variants: dict | None = None  # variants.json (VariantConfig as a dict): per-student variants on

    @property
    def variants_on(self) -> bool:
        return bool(self.variants and self.variants.get("enabled"))

    @classmethod
    def from_zip(cls, path: str | os.PathLike) -> "Autograder":
        raw = Path(path).read_bytes()
        with zipfile.ZipFile(path) as z:
            tests = {n.split("/", 1)[1]: z.read(n).decode() for n in z.namelist()
                     if n.startswith("tests/") and n.endswith(".py")}
            config = json.loads(z.read("otter_config.json"))
            public = z.read("files/cnn_checks.py").decode()
            variants = json.loads(z.read("variants.json")) if "variants.json" in z.namelist() else None
        return cls(config.get("assignment_name", Path(path).stem), tests, public, hashlib.sha256(raw).hexdigest(),
                   variants)

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
    """How the verifier retrains the submitted model (see :mod:`autograder.retrain`); the defaults
    are the assignment's policy in :mod:`autograder.checks` and limits in :mod:`autograder.budget`."""

    enabled: bool = True
    max_epochs: int = Budget.max_epochs
    max_steps: int = Budget.max_steps
    max_seconds: float = 1800.0  # safety net per training run: hitting it is a grader error
    seeds: int = checks.MAX_SEEDS
    seed_margin: float = checks.SEED_MARGIN
    require_lesson_model: bool = checks.REQUIRE_LESSON_MODEL
    cache_dir: str | None = "default"  # None: no cache
    data_subset: tuple[int, int] | None = None  # (training, test) images: quick checks only

    def settings(self):
        from autograder import retrain

        return retrain.Settings(budget=Budget(max_epochs=self.max_epochs, max_steps=self.max_steps),
                                max_seconds=self.max_seconds, seeds=self.seeds, seed_margin=self.seed_margin,
                                threshold=checks.ACCURACY_THRESHOLD,
                                data_subset=tuple(self.data_subset) if self.data_subset else None)

    def for_judge(self, reports: dict | None = None, pending: bool = False) -> dict | None:
        if not self.enabled:
            return None
        return {"reports": reports or {}, "pending": pending, "require_lesson_model": self.require_lesson_model}


def _retrain_models(values: dict, options: RetrainOptions) -> dict[str, dict]:
    """Retrain every extracted model in its own process; the reports hold numbers and notes only."""
    from autograder import retrain

    reports = {}
    for name, data in values.items():
        if (data or {}).get("status") != "model":
            continue
        try:
            report = retrain.verify(data.get("config"), data.get("fits") or [], options.settings(),
                                    cache_dir=options.cache_dir)
        except Exception as exc:  # noqa: BLE001 - the grader's fault, reported as such
            report = retrain.RetrainReport(grader_error=f"{type(exc).__name__}: {exc}")
        reports[name] = report.as_dict()
    return reports


def _function_plan(variables: list[str], ag: "Autograder | None" = None) -> dict[str, list[dict]]:
    """The calls to record per function; with variants, every variant's public examples (the
    variant is settled by the judge, and the examples are small)."""
    from autograder import checks

    plan = {name: checks.probe_plan(name) for name in checks.REFERENCE_FUNCTIONS if name in variables}
    if ag is not None and ag.variants_on:
        from autograder import variants

        pool = variants.pool(ag.name, int(ag.variants["pool_size"]), str(ag.variants.get("salt", "")))
        for name in plan:
            seen = {json.dumps(c, sort_keys=True) for c in plan[name]}
            for givens in pool:
                for case in checks.probe_plan(name, givens)[:len(checks.public_cases(name, givens))]:
                    if json.dumps(case, sort_keys=True) not in seen:
                        seen.add(json.dumps(case, sort_keys=True))
                        plan[name].append(case)
    return plan


def _grader_fingerprint(extra: list[Path]) -> str:
    """Hash of the grader's own code and inputs: a submission must not be able to change them."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")) + extra:
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


def _run_judge(request: dict, timeout: float = JUDGE_SECONDS, memory_mb: int = JUDGE_MEMORY_MB) -> dict:
    """Run the judge in a fresh process under a wall-time and a memory limit (its whole process tree)."""
    # -I: no environment variables, no user site; the package is found where this one was loaded from
    bootstrap = f"import sys; sys.path.insert(0, {str(PACKAGE_DIR.parent)!r}); from autograder.judge import main; main()"

    def no_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    proc = subprocess.Popen([sys.executable, "-I", "-c", bootstrap], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=no_core)
    over: list[str] = []

    def watchdog() -> None:
        import psutil

        started = time.monotonic()
        while proc.poll() is None:
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree)
            except psutil.Error:
                rss = 0
            if rss > memory_mb * 1024 * 1024:
                over.append(f"memory limit ({memory_mb} MiB)")
            elif time.monotonic() - started > timeout:
                over.append(f"time limit ({timeout:.0f} s)")
            if over:
                try:
                    os.killpg(proc.pid, 9)
                except OSError:
                    pass
                return
            time.sleep(0.2)

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    stdout, stderr = proc.communicate(json.dumps(request))
    guard.join(timeout=5)
    if over:
        raise GraderError(f"the judge exceeded its {over[0]}")
    marker = stdout.rfind("\n@@JUDGE@@")
    if proc.returncode != 0 or marker < 0:
        raise GraderError(f"judge failed (exit {proc.returncode}): {stderr[-2000:]}")
    return json.loads(stdout[marker + len("\n@@JUDGE@@"):])


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
    from autograder.data import ensure_mnist_npz

    started = time.monotonic()
    ag = autograder if isinstance(autograder, Autograder) else Autograder.from_zip(autograder)
    zip_path = [] if isinstance(autograder, Autograder) else [Path(autograder)]
    variables = ag.variables()
    if ag.variants_on and "STUDENT_ID" not in variables:
        variables.append("STUDENT_ID")  # the notebook's claim: compared, never trusted
    functions = _function_plan(variables, ag)
    before = _grader_fingerprint(zip_path)
    result: dict = {
        "schema": RESULT_SCHEMA_VERSION, "assignment": ag.name, "submission": str(notebook),
        "status": "graded", "error": None, "score": 0.0, "max_score": 0.0, "questions": [],
        "retrain": None, "limits_hit": [], "execution": {}, "isolation": {}, "versions": _versions(),
    }
    private = [Path(autograder).resolve().parent] if zip_path else []
    # with variants the notebook's first cell imports the student-side checks, as students have them
    files = {"cnn_checks.py": ag.public_module.encode()} if ag.variants_on else None
    probed = probe(notebook, variables, functions, limits=limits, real_fit=real_fit, mnist_npz=ensure_mnist_npz(),
                   private=private, files=files)
    result["limits_hit"] = probed.limits_hit
    result["isolation"] = probed.isolation
    result["execution"] = {"seconds": probed.seconds, "cells": probed.cells, "skipped_cells": probed.skipped,
                           "runs": probed.runs, "output_tail": probed.output[-20000:]}
    if probed.grader_error:
        result.update(status="grader_error", error=probed.grader_error)
        return _finish(result, started)
    if _grader_fingerprint(zip_path) != before:
        result.update(status="error", error="the grader's files changed while the submission ran; not graded")
        return _finish(result, started)
    values = probed.values  # plain data, even when the run ended early
    if not probed.complete:
        result.update(status="error", error=probed.crashed)
    request = {"tests": ag.tests, "public_module": ag.public_module, "values": values,
               "functions": functions, "retrain": retrain.for_judge()}
    if ag.variants_on:
        request["variant"] = {"assignment": ag.name, "config": ag.variants, "identity": identity,
                              "identity_source": identity_source if identity else None}
    try:
        if retrain.enabled and any((d or {}).get("status") == "model" for d in values.values()):
            if on_partial is not None:
                partial = _judged(dict(result), _run_judge({**request, "retrain": retrain.for_judge(pending=True)}))
                on_partial({**partial, "retrain": None, "retrain_pending": True})
            reports = _retrain_models(values, retrain)
            request["retrain"] = retrain.for_judge(reports)
            failed = [r["grader_error"] for r in reports.values() if r.get("grader_error")]
            if failed:
                result.update(status="grader_error", error=f"retraining failed: {failed[0]}")
        judged = _run_judge(request)
    except Exception as exc:  # the trusted side failed: not the submission's fault
        result.update(status="grader_error",
                      error=f"{result['error'] + '; ' if result['error'] else ''}grader error: {exc}")
        return _finish(result, started)
    return _finish(_judged(result, judged), started)


def _judged(result: dict, judged: dict) -> dict:
    result["questions"] = judged["questions"]
    result["retrain"] = judged["retrain"]
    if judged.get("variant") is not None:
        result["variant"] = judged["variant"]
    result["score"] = round(sum(q["score"] for q in judged["questions"]), 6)
    result["max_score"] = round(sum(q["max_score"] for q in judged["questions"]), 6)
    return result


def _finish(result: dict, started: float) -> dict:
    result["seconds"] = round(time.monotonic() - started, 3)
    if not result["max_score"]:
        result["max_score"] = None
    return result
