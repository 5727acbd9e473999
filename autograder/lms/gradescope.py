"""Gradescope: grade ``/autograder/submission`` with our engine and always write ``results.json``.

What Gradescope does, per its autograder specification
(https://gradescope-autograders.readthedocs.io/en/latest/specs/): the uploaded zip is unpacked
in ``/autograder/source``, ``setup.sh`` runs once as root while the image is built (with
internet), then for every submission ``/autograder/run_autograder`` runs as root with the
student's files in ``/autograder/submission``.  It must leave ``/autograder/results/results.json``
(``score``, ``execution_time``, ``output``, ``visibility``, ``stdout_visibility``, ``extra_data``,
``tests`` with ``name``, ``score``, ``max_score``, ``status``, ``output``, ``visibility``).
The run's stdout is kept in ``results/stdout`` and shown to the instructor only; students see
only what ``results.json`` says.  The container has the memory, CPUs and timeout chosen in the
assignment's settings; the timeout is not visible from inside, so it is an option here.

``python -m autograder.lms.gradescope --root DIR`` does exactly that (the root is an option so a
test can emulate the layout).  Each question becomes up to two Gradescope tests, its public
checks (visible at once) and its hidden checks (``after_published`` when Otter's config says
``show_hidden: true``, else ``hidden``), as Otter's own Gradescope runner does.

Whatever happens, a ``results.json`` is written: before grading (so a run that Gradescope
stops still leaves an explanation), when the engine reports results before retraining, and
at the end.  A fault of the grader (engine status ``grader_error``, any exception here) reads
as a grader error for the student and the instructor, never as the student's 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from autograder.engine import Autograder, RetrainOptions, grade_notebook
from autograder.probe.sandbox import Limits
from autograder.faults import Fault, FaultError, of_result
from autograder.result import STUDENT_PROVISIONAL, GradeResult, provisional
from autograder.submission_files import SubmissionFileError, read_notebook

#: The Gradescope timeout the docs recommend (docs/instructors/gradescope.md) (minutes); Gradescope allows 40 at most.
DEFAULT_TIMEOUT_MINUTES = 40
#: Kept out of the submission's memory budget: this process, the judge and the kernel's page cache.
MEMORY_HEADROOM_MB = 768
#: Kept out of the time budget: container start-up, the judge, writing results.
TIME_HEADROOM_SECONDS = 120
GRADER_ERROR_MESSAGE = (
    "GRADER ERROR: the autograder could not grade this submission. This is not a problem with "
    "your work and this score does not count; your instructor has the details and will regrade it."
)


def _json_default(obj):
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else str(obj)


# --- the container's resources ----------------------------------------------------------------

@dataclass(frozen=True)
class ContainerResources:
    """What the container's cgroup allows (``None``: no limit found)."""

    memory_mb: int | None
    cpus: float | None
    source: str


_UNLIMITED = 1 << 60


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(base: Path, rel: str) -> list[Path]:
    """``base/rel`` and each of its parents up to ``base``: a limit anywhere above applies too."""
    parts = [p for p in rel.strip("/").split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def container_resources(proc_cgroup: Path = Path("/proc/self/cgroup"),
                        cgroup_root: Path = Path("/sys/fs/cgroup")) -> ContainerResources:
    """Memory and CPU limits of this process's cgroup: v2 ``memory.max``/``cpu.max``, else v1
    ``memory.limit_in_bytes``/``cpu.cfs_quota_us``; the smallest limit on the way up counts."""
    text = _read(proc_cgroup) or ""
    v1, v2 = {}, None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2 = path
        for c in controllers.split(","):
            if c:
                v1[c] = path
    memory, cpus, source = [], [], []
    if v2 is not None and (cgroup_root / "cgroup.controllers").exists():
        for d in _ancestors(cgroup_root, v2):
            raw = _read(d / "memory.max")
            if raw and raw != "max":
                memory.append(int(raw))
            raw = _read(d / "cpu.max")
            if raw and not raw.startswith("max"):
                quota, period = raw.split()[:2]
                cpus.append(int(quota) / int(period))
        source.append("cgroup v2")
    if "memory" in v1 or "cpu" in v1:
        for key, fname, cgdir in (("memory", "memory.limit_in_bytes", "memory"), ("cpu", "cpu.cfs_quota_us", "cpu")):
            base = next((cgroup_root / n for n in (cgdir, "cpu,cpuacct", "cpuacct,cpu") if (cgroup_root / n).is_dir()), None)
            if key not in v1 or base is None:
                continue
            for d in _ancestors(base, v1[key]):
                raw = _read(d / fname)
                if not raw or raw.startswith("-"):
                    continue
                if key == "memory":
                    memory.append(int(raw))
                else:
                    period = _read(d / "cpu.cfs_period_us")
                    if period:
                        cpus.append(int(raw) / int(period))
        source.append("cgroup v1")
    memory = [m for m in memory if m < _UNLIMITED]
    try:
        cpus.append(float(len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        pass
    return ContainerResources(min(memory) // (1 << 20) if memory else None, min(cpus) if cpus else None,
                              " + ".join(source) or "no cgroup found")


def plan_limits(resources: ContainerResources, timeout_minutes: float, *, retrain: bool = True,
                cell_seconds: float | None = None, spec=None) -> tuple[Limits, RetrainOptions]:
    """The engine's limits, kept inside the container's so that Gradescope never kills the run first.

    Memory: the submission's processes get the container's memory less :data:`MEMORY_HEADROOM_MB`
    (never more than the engine's default).  Time: of the timeout less
    :data:`TIME_HEADROOM_SECONDS`, the notebook gets a third (at most the engine's default) and
    retraining the rest, shared by the seeds it may train."""
    from autograder.spec import TrainingPolicy

    defaults, retrain_defaults = Limits(), RetrainOptions()
    policy = spec.training if spec is not None else TrainingPolicy()  # the assignment's seeds and safety net
    memory_mb = defaults.memory_mb
    if resources.memory_mb is not None:
        memory_mb = max(256, min(memory_mb, resources.memory_mb - MEMORY_HEADROOM_MB))
    budget = max(60.0, timeout_minutes * 60 - TIME_HEADROOM_SECONDS)
    notebook_seconds = min(defaults.notebook_seconds, budget / 3)
    cell = min(cell_seconds or defaults.cell_seconds, notebook_seconds)
    limits = dataclasses.replace(defaults, memory_mb=int(memory_mb), notebook_seconds=notebook_seconds, cell_seconds=cell)
    per_run = (budget - notebook_seconds) / max(policy.max_seeds, 1)  # a recipe may be trained per seed
    options = dataclasses.replace(retrain_defaults, enabled=retrain, max_seconds=min(policy.max_seconds, per_run),
                                  seeds=policy.max_seeds)  # the seeds the time was shared among
    return limits, options


# --- Otter's autograder as unpacked by Gradescope ---------------------------------------------

def autograder_from_source(source: Path) -> Autograder:
    tests = {p.name: p.read_text() for p in sorted((source / "tests").glob("*.py"))}
    config = json.loads((source / "otter_config.json").read_text())
    from autograder import registry

    name = config.get("assignment_name", "assignment")
    public = (source / "files" / registry.get(name).public_module_name).read_text()
    digest = hashlib.sha256("".join(tests.values()).encode() + public.encode()).hexdigest()
    variants_file = source / "variants.json"
    variants = json.loads(variants_file.read_text()) if variants_file.is_file() else None
    from autograder.verifier import preverified

    verdicts = preverified.load(lambda n: (source / n).read_bytes() if (source / n).is_file() else None,
                                preverified.autograder_digest(name, tests, public, variants), str(source))
    return Autograder(name, tests, public, digest, variants, verdicts)


def submitter(root: Path) -> tuple[str | None, str]:
    """The submitter's identity from Gradescope's ``submission_metadata.json``: the first user's
    e-mail (what students type as their id), else their SID.  A group submission is graded on its
    first member's variant."""
    try:
        meta = json.loads((root / "submission_metadata.json").read_text())
        user = (meta.get("users") or [{}])[0]
    except (OSError, ValueError, AttributeError):
        return None, "no submission_metadata.json"
    if user.get("email"):
        return str(user["email"]), "Gradescope e-mail"
    if user.get("sid"):
        return str(user["sid"]), "Gradescope SID"
    return None, "no e-mail or SID in submission_metadata.json"


def find_notebook(submission: Path, assignment: str) -> tuple[Path | None, Fault | None]:
    """The submitted notebook, ignoring editor copies (``.ipynb_checkpoints``), hidden folders
    and macOS metadata; when several remain, the one named after the assignment.

    Nothing is followed: a symlinked folder is not entered, and a symlinked notebook (or one that
    is not a regular file) is refused by name, never read (see :mod:`autograder.submission_files`)."""
    found = []
    for folder, dirs, files in os.walk(submission):  # never enters a symlinked folder
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        found += [Path(folder) / f for f in sorted(files) if f.endswith(".ipynb") and not f.startswith(".")]
    found.sort()
    named = [p for p in found if p.name == f"{assignment}.ipynb"]
    chosen = found[0] if len(found) == 1 else named[0] if len(named) == 1 else None
    if chosen is None:
        names = ", ".join(str(p.relative_to(submission)) for p in found) or "none"
        return None, Fault("input_refused", f"expected one .ipynb file in the submission (ideally {assignment}.ipynb), "
                                            f"found {len(found)}: {names}")
    try:  # read here as every submitted file is: the grading reads it again the same way
        read_notebook(chosen, root=submission)
    except SubmissionFileError as exc:
        return None, Fault("unreadable", f"the notebook could not be read: {exc}")
    return chosen, None


# --- results.json -----------------------------------------------------------------------------

def _share(q: dict, case: dict) -> float:
    return case["points"] if case["points"] is not None else q["max_score"] / max(len(q["cases"]), 1)


def to_gradescope(result: dict, seconds: float, *, show_hidden: bool = False) -> dict:
    """One engine result as Gradescope's ``results.json``."""
    if result.get("status") == "grader_error":
        return grader_error_payload(of_result(result) or Fault("unknown", "unknown cause"), seconds)
    hidden_visibility = "after_published" if show_hidden else "hidden"
    tests = []
    for q in result.get("questions", []):
        for hidden, visibility, label in ((False, "visible", "public checks"), (True, hidden_visibility, "hidden checks")):
            cases = [c for c in q["cases"] if c["hidden"] == hidden]
            if not cases:
                continue
            points = sum(_share(q, c) for c in cases)
            score = sum(_share(q, c) for c in cases if c["passed"])
            test = {"name": f"{q['name']} ({label})", "score": round(score, 4), "max_score": round(points, 4),
                    "output": "\n\n".join(c["message"] for c in cases), "visibility": visibility}
            if not (any(c.get("undecided") for c in cases) and all(c["passed"] or c.get("undecided") for c in cases)):
                test["status"] = "passed" if all(c["passed"] for c in cases) else "failed"  # undecided: no status
            tests.append(test)
    from autograder.manual import answer_text

    for m in result.get("manual") or []:  # staff only, not scored: graded by hand in Gradescope (README)
        tests.append({"name": f"{m['name']} (graded by hand: pending, {m['max_score']:g} points)",
                      "score": 0.0, "max_score": 0.0, "visibility": "hidden",
                      "output": f"To be graded by hand ({m['max_score']:g} points); not counted in this score. "
                                f"The student's answer:\n\n{answer_text(m)}"})  # no status: neither passed nor failed
    lines = []
    if result.get("error"):
        lines.append(f"Problem with the submission: {result['error']}")
    for cell in (result.get("execution") or {}).get("cells") or []:
        if cell.get("error"):
            lines.append(f"Error in code cell {cell.get('index')}: {cell['error']}")
    for hit in result.get("limits_hit", []):
        lines.append(f"Limit reached: {hit}")
    if result.get("manual"):
        waiting = ", ".join(m["name"] for m in result["manual"])
        lines.append(f"Question(s) {waiting} ({sum(m['max_score'] for m in result['manual']):g} points) will be "
                     "graded by hand; this score is the autograded part only.")
    if provisional(result):
        lines.append(STUDENT_PROVISIONAL)
    rt = result.get("retrain")
    if rt and rt.get("pending"):
        lines.append("Your model is being retrained from scratch; its accuracy is not counted yet.")
    elif rt and rt.get("error"):
        lines.append(f"Retraining: {rt['error']}")
    elif rt and rt.get("accuracy") is not None and rt.get("preverified"):
        pre, accuracies = rt["preverified"], rt.get("accuracies") or []
        seeds = (f", median of {len(accuracies)} seeds: " + ", ".join(f"{a:.4f}" for a in accuracies)
                 if len(accuracies) > 1 else "")
        lines.append(f"Your model's recipe was pre-verified: the grader retrained this exact recipe from scratch when "
                     f"the assignment was built ({str(pre.get('built'))[:10]}, on {rt.get('device')}), so it was not "
                     f"retrained again: test accuracy {rt['accuracy']:.4f} ({rt.get('epochs')} epochs, batch size "
                     f"{rt.get('batch_size')}{seeds}).")
    elif rt and rt.get("accuracy") is not None:
        lines.append(f"Your model was retrained from scratch: test accuracy {rt['accuracy']:.4f} "
                     f"({rt.get('epochs')} epochs, batch size {rt.get('batch_size')}, {rt.get('device')}).")
    return {
        "score": round(float(result.get("score") or 0.0), 4),
        "execution_time": int(round(seconds)),
        "output": "\n".join(lines) or "Graded.",
        "visibility": "visible",
        "stdout_visibility": "hidden",  # the instructor's diagnostics (see _diagnostics)
        "extra_data": {"status": result.get("status", "graded"),
                       **({"fault": result["fault"]} if result.get("fault") else {})},
        "tests": tests,
    }


def grader_error_payload(fault: Fault, seconds: float) -> dict:
    """A fault of the host's or the grader's: nothing scored, a clear message for the student; for the instructor,
    the fault (``extra_data``: ``cause`` its message, ``cause_class`` its cause, ``owner`` and ``fault``)."""
    return {
        "score": 0.0,
        "execution_time": int(round(seconds)),
        "output": GRADER_ERROR_MESSAGE,
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "extra_data": {"status": "grader_error", "cause": fault.message[-4000:], "cause_class": fault.cause,
                       "owner": fault.owner, "fault": fault.with_message(fault.message[-4000:]).to_dict()},
        "tests": [{"name": "Autograder error (not your fault)", "score": 0.0, "max_score": 0.0, "status": "failed",
                   "output": GRADER_ERROR_MESSAGE, "visibility": "visible"}],
    }


def write_results(path: Path, payload: dict) -> None:
    """Atomically, so Gradescope never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _diagnostics(title: str, data: dict) -> None:
    """For the instructor: stdout lands in Gradescope's ``results/stdout`` (never shown to students)."""
    print(f"=== {title} ===")
    print(json.dumps(data, indent=1, default=_json_default), flush=True)


# --- one run ----------------------------------------------------------------------------------

def run(root: Path, *, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES, retrain: bool = True,
        cell_seconds: float | None = None) -> dict:
    started = time.monotonic()
    results_path = root / "results" / "results.json"

    def elapsed() -> float:
        return time.monotonic() - started

    results_path.parent.mkdir(parents=True, exist_ok=True)
    private = [root / "source", root / "submission", results_path.parent]
    if os.geteuid() == 0:  # the submission's user reads none of these (setup.sh does source/ too)
        for folder in private:
            if folder.is_dir():
                os.chmod(folder, 0o700)
    from autograder.probe import jail

    jail.add_private_paths(private)  # the jail masks these and its self-test proves them unreadable
    write_results(results_path, grader_error_payload(Fault(
        "timeout_infrastructure", "the autograder was stopped before it finished (Gradescope's timeout or memory limit?)"),
        0))
    try:
        resources = container_resources()
        config = json.loads((root / "source" / "otter_config.json").read_text())
        show_hidden = bool(config.get("show_hidden", False))
        ag = autograder_from_source(root / "source")  # the assignment named in Otter's config: its spec
        limits, options = plan_limits(resources, timeout_minutes, retrain=retrain, cell_seconds=cell_seconds,
                                      spec=ag.spec)
        _diagnostics("container and limits", {"resources": resources, "limits": limits, "retrain": options,
                                              "timeout_minutes": timeout_minutes, "python": sys.executable})
        if ag.spec.dataset.probe_file is not None:
            try:  # provisioned by setup.sh; grading never fetches it
                ag.spec.dataset.probe_file(allow_network=False)
            except Exception as exc:
                raise FaultError.of("dataset_missing", f"{ag.spec.dataset.name} is not provisioned in the image "
                                                       f"(setup.sh runs `python -m autograder data`): {exc}") from None
        notebook, problem = find_notebook(root / "submission", ag.name)
        if notebook is None:
            result = GradeResult.error_row(problem, assignment=ag.name).to_dict()
        else:
            kwargs = {}
            if "on_partial" in inspect.signature(grade_notebook).parameters:
                def on_partial(partial: dict) -> None:  # never lets a display problem stop grading
                    try:
                        payload = to_gradescope(partial, elapsed(), show_hidden=show_hidden)
                        payload["output"] = ("Partial results: your model is being retrained; if this message "
                                             "stays, retraining was stopped by the time limit.\n" + payload["output"])
                        write_results(results_path, payload)
                    except Exception:  # noqa: BLE001
                        _diagnostics("partial results not written", {"cause": traceback.format_exc()})

                kwargs["on_partial"] = on_partial
            if ag.variants_on:
                kwargs["identity"], kwargs["identity_source"] = submitter(root)
            result = grade_notebook(notebook, ag, limits=limits, retrain=options, **kwargs)
            from autograder import manual

            manual.enrich(result, notebook, manual.questions_from_file(root / "source" / manual.ZIP_FILE))  # the hand-graded answers (staff only)
        payload = to_gradescope(result, elapsed(), show_hidden=show_hidden)
        diag = {k: result.get(k) for k in ("status", "error", "score", "max_score", "limits_hit", "isolation",
                                           "versions", "retrain", "seconds")}
        if result.get("variant"):  # instructor only (stdout): flags that may name another variant
            from autograder.lms.reports import variant_flags

            diag["variant"] = {**result["variant"], "flags": variant_flags(result)}
        diag["cells"] = (result.get("execution") or {}).get("cells")
        diag["output_tail"] = ((result.get("execution") or {}).get("output_tail") or "")[-3000:]
        _diagnostics("result", diag)
    except BaseException as exc:  # noqa: BLE001 - whatever breaks, results.json says so
        cause = "".join(traceback.format_exception(exc))
        _diagnostics("grader error", {"cause": cause})
        payload = grader_error_payload(exc.fault if isinstance(exc, FaultError) else
                                       Fault("grader_crash", f"{type(exc).__name__}: {exc}"), elapsed())
    write_results(results_path, payload)
    return payload


#: The most of the grader's own log the runner's output ends with (its last characters).
LOG_TAIL_CHARS = 20_000


def main(argv: list[str] | None = None) -> None:
    """The runner's process is as quiet as a batch's (:mod:`autograder.logs`): TensorFlow, absl and gRPC log
    errors only, here and in every subprocess, and what still reaches descriptor 2 (absl's lines before its
    logging is set up, warnings) goes to a log that ends the output as its own section, after the
    instructor's diagnostics instead of between them."""
    import tempfile

    from autograder import logs

    logs.quiet_children()  # before anything imports TensorFlow
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/autograder"))
    parser.add_argument("--timeout-minutes", type=float, default=DEFAULT_TIMEOUT_MINUTES,
                        help="the timeout set in Gradescope's autograder settings")
    parser.add_argument("--cell-seconds", type=float, default=None, help="seconds one cell may run")
    parser.add_argument("--no-retrain", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cnn-grader-log-") as folder, logs.to_file(Path(folder)) as log:
        try:
            run(args.root, timeout_minutes=args.timeout_minutes, retrain=not args.no_retrain,
                cell_seconds=args.cell_seconds)
        finally:
            sys.stderr.flush()
            text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
            if text.strip():
                print("=== grader log (the grader's own stderr: library start-up lines, warnings) ===")
                print(text[-LOG_TAIL_CHARS:].rstrip("\n"), flush=True)


if __name__ == "__main__":
    main()
