"""Judge (trusted): run the assignment's Otter tests against extracted data, in a clean process.

Started as ``python -I -m autograder.judge.judge`` by :mod:`autograder.engine` after the submission's
processes are gone.  It reads one JSON request on stdin: the Otter test files and the
student-side check module (both read from the autograder zip before the submission ran), and
the values the probe extracted.  It never imports or executes student code: values are plain
data, functions are replays of recorded outputs, and the model is a description that the
retraining verifier trains from scratch.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from typing import Any

import numpy as np

from autograder import protocol
from autograder.faults import Fault
from autograder.jail_messages import MAX_ERROR_CHARS, clean_text, decode_npy


MAX_MESSAGE_CHARS = 5_000  # a failed check's message (it may quote student values)
MAX_REASONS = 8  # the mistake ids one failed case may record
_REASON_ID = re.compile(r"[a-z][a-z0-9_]{0,47}")


def failure_reasons(exc: BaseException) -> list[str]:
    """The mistake ids a failed check named, as data (``CheckFailed.reasons`` of the assignment's
    check modules): plain identifiers only, at most :data:`MAX_REASONS`; never read from the message."""
    reasons = getattr(exc, "reasons", ())
    if not isinstance(reasons, (list, tuple)):
        return []
    return list(dict.fromkeys(r for r in reasons if isinstance(r, str) and _REASON_ID.fullmatch(r)))[:MAX_REASONS]


def answered(exc: BaseException | None, params: list[str], env: dict[str, Any]) -> bool:
    """Whether the case judged an answer: not when a value it reads is still ``...`` or not defined, nor
    when the check said there is nothing to judge yet (``NotAnswered``: a stub, an untrained model)."""
    if any(p not in env or env[p] is Ellipsis for p in params if p != "env"):
        return False
    return exc is None or getattr(exc, "answered", True) is not False


class ExtractionFailed:
    """Stands for a variable the probe could not turn into data; tests using it fail with why."""

    def __init__(self, name: str, message: str):
        self.name, self.message = name, clean_text(message, MAX_ERROR_CHARS)  # untrusted: bounded again here


def case_key(args, kwargs) -> str:
    payload = json.dumps([[np.asarray(a, dtype=np.float64).tolist() for a in args], sorted(kwargs.items())])
    return hashlib.sha256(payload.encode()).hexdigest()


class Replay:
    """A student's function, replayed: returns what it returned in the sandbox for these inputs."""

    def __init__(self, name: str, cases: list[dict], outputs: list[dict]):
        self.__name__ = name
        self._outputs = {}
        for case, out in zip(cases, outputs or []):
            self._outputs[case_key(case["args"], case["kwargs"])] = out

    def __call__(self, *args, **kwargs):
        out = self._outputs.get(case_key(args, kwargs))
        if out is None:
            raise AssertionError(f"{self.__name__} was not run on this input while grading")
        if out.get("status") != protocol.OK:
            raise RuntimeError(clean_text(out.get("message", "failed"), MAX_ERROR_CHARS))
        return decode_npy(out["npy"])


class NotDecided(AssertionError):
    """A check this run cannot decide (neither passed nor failed): the accuracy check when no retrain measured
    the model.  ``reason``: one of :data:`autograder.result.UNDECIDED`; the case is recorded as ``undecided``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _Iterations(int):
    def numpy(self):
        return int(self)


class ExtractedModel:
    """What the submission's Keras model *is* (config, compile and fit settings), not the object.

    The judge never rebuilds it: the engine had the verifier retrain the recipe in its own
    process, and ``retrain`` carries that report (plain numbers and notes) and the policy.
    """

    def __init__(self, config_json: str, fits: list[dict], retrain: dict | None, name: str = "model"):
        self._config_json = config_json
        self.config = json.loads(config_json)
        self.fits = [f for f in fits if isinstance(f, dict)]
        self.retrain = retrain
        self.require_lesson_model = bool((retrain or {}).get("require_lesson_model", False))
        self.optimizer = types.SimpleNamespace(iterations=_Iterations(len(self.fits)))
        self.last_report: dict | None = ((retrain or {}).get("reports") or {}).get(name)

    def to_json(self) -> str:
        return self._config_json

    def retrain_refusal(self) -> str | None:
        """Why the verifier refused to retrain this recipe (the submission's doing: a rule it breaks, or a
        recipe Keras cannot build or that is too slow as measured); None when it was retrained, when this
        run does not retrain (or has not yet), or when the grader failed for reasons of its own."""
        report = self.last_report
        if not isinstance(report, dict) or not report.get("fault") or report.get("accuracy") is not None:
            return None
        if Fault.from_dict(report["fault"]).graders:  # the host's or the grader's: never the recipe's refusal
            return None
        error = report.get("error")
        return error if isinstance(error, str) and error else None

    def measured_accuracy(self) -> tuple[float, str]:
        if self.retrain is None:
            raise NotDecided("retraining_off", "Not decided (provisional): the model was not retrained in this "
                                               "run, so its accuracy was not measured.")
        if self.retrain.get("pending"):
            raise NotDecided("retraining_pending", "Not decided yet (provisional): the model is being retrained; "
                                                   "its accuracy counts once that has finished.")
        from autograder.verifier.retrain import RetrainReport

        report = self.last_report
        if not isinstance(report, dict):
            raise AssertionError("The model was not retrained.")
        notes = "; ".join(report.get("notes") or [])
        if report.get("fault") and Fault.from_dict(report["fault"]).graders:  # "the grader could not retrain ..."
            raise AssertionError(report.get("error") or Fault.from_dict(report["fault"]).message)
        if report.get("error"):
            raise AssertionError(report["error"] + (f" Notes: {notes}." if notes else ""))
        if not isinstance(report.get("accuracy"), (int, float)) or isinstance(report.get("accuracy"), bool):
            raise AssertionError("The grader could not retrain the model (not your fault): its report holds no accuracy.")
        summary = RetrainReport.from_dict(report).summary()
        return float(report["accuracy"]), summary + (f"; notes: {notes}" if notes else "")


def build_env(values: dict, functions: dict, retrain: dict | None) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for name, data in values.items():
        status = (data or {}).get("status")
        try:
            if status == protocol.JSON:
                env[name] = data["value"]
            elif status == protocol.ARRAY:
                env[name] = decode_npy(data["npy"])
            elif status == protocol.FUNCTION:
                env[name] = Replay(name, functions.get(name, []), data.get("outputs"))
            elif status == protocol.MODEL:
                env[name] = ExtractedModel(data["config"], data.get("fits") or [], retrain, name)
            elif status == protocol.UNANSWERED:
                env[name] = ...
            elif status == protocol.ERROR:
                env[name] = ExtractionFailed(name, str(data.get("message")))
            # "missing": left out, so Otter's convention (None) applies
        except Exception as exc:
            env[name] = ExtractionFailed(name, f"{type(exc).__name__}: {exc}")
    return env


def run_tests(test_sources: dict[str, str], env: dict[str, Any]) -> list[dict]:
    """Run each Otter test file case by case; points are resolved by Otter itself."""
    from otter.test_files.abstract_test import TestCaseResult
    from otter.test_files.exception_test import ExceptionTestFile

    questions = []
    for path, source in sorted(test_sources.items()):
        test_file = ExceptionTestFile.from_string(source, path=path)
        results, undecided = [], {}
        recorded = []  # per case: the mistakes it named and whether it judged an answer
        for tc in test_file.test_cases:
            params = tc.body._get_func_params()
            failed = [env[p] for p in params if isinstance(env.get(p), ExtractionFailed)]
            error = None
            try:
                if failed:
                    raise AssertionError(f"`{failed[0].name}` could not be read from the notebook: {failed[0].message}")
                tc.body.call_func(env)
                passed, message = True, "✅ Test case passed"
            except NotDecided as exc:  # no points, and not a failure either: the result is provisional
                passed, message = False, clean_text(str(exc), MAX_MESSAGE_CHARS)
                undecided[tc.body.test_func.__name__] = exc.reason
            except Exception as exc:  # noqa: BLE001 - a failing check is a message, never a crash
                error = exc
                detail = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
                passed, message = False, f"❌ Test case failed\n{clean_text(detail, MAX_MESSAGE_CHARS)}"
            results.append(TestCaseResult(test_case=tc, message=message, passed=passed))
            recorded.append((failure_reasons(error) if error is not None else [], answered(error, params, env)))
        test_file.test_case_results = results
        questions.append({
            "name": test_file.name,
            "score": float(test_file.score),
            "max_score": float(test_file.possible),
            "cases": [{"name": r.test_case.body.test_func.__name__, "hidden": bool(r.test_case.hidden),
                       "points": r.test_case.points, "passed": r.passed, "message": r.message,
                       "misconceptions": reasons if is_answer and not r.passed else [], "answered": is_answer,
                       **({"undecided": undecided[name]} if (name := r.test_case.body.test_func.__name__) in undecided
                          else {})}
                      for r, (reasons, is_answer) in zip(results, recorded)],
        })
    return questions


def select_variant(request: dict, env: dict, public) -> dict | None:
    """With variants on: the assignment's checks judge with the submitter's variant (from the LMS
    identity; the notebook's ``STUDENT_ID`` only when there is none) and say what the instructor
    should know (returned as the result's ``variant``)."""
    spec = request.get("variant")
    if not spec:
        return None
    from autograder import registry

    declared = env.get("STUDENT_ID")
    declared = clean_text(declared, 200) if isinstance(declared, (str, int)) and not isinstance(declared, bool) else None
    answers = {k: v for k, v in env.items() if not isinstance(v, ExtractionFailed)}
    return registry.get(spec["assignment"]).checks_module().select_variant(
        spec["config"], spec.get("identity"), spec.get("identity_source"), declared, answers, public)


def judge(request: dict) -> dict:
    name = request["public_module_name"]  # the student-side check module the public tests import
    public = types.ModuleType(name)
    exec(compile(request["public_module"], f"{name}.py", "exec"), public.__dict__)
    sys.modules[name] = public
    env = build_env(request["values"], request["functions"], request.get("retrain"))
    variant = select_variant(request, env, public)
    questions = run_tests(request["tests"], env)
    retrain_reports = [v.last_report for v in env.values() if isinstance(v, ExtractedModel) and v.last_report]
    out = {"questions": questions, "retrain": retrain_reports[0] if retrain_reports else None}
    if variant is not None:
        out["variant"] = variant
    return out


def warm_up() -> None:
    """Import what judging needs before the request comes (a warm judge waits on stdin after this)."""
    from otter.test_files.abstract_test import TestCaseResult  # noqa: F401
    from otter.test_files.exception_test import ExceptionTestFile  # noqa: F401

    sys.stdout.write("@@WARM@@\n")
    sys.stdout.flush()


def main() -> None:
    request = json.load(sys.stdin)
    out = judge(request)
    sys.stdout.write(protocol.JUDGE_REPLY + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
