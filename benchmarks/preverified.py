"""A pre-verified recipe served against the same recipe retrained, in one run, each with an empty retraining cache.

    python benchmarks/preverified.py [--assignment cnn_mnist] [--dist DIR] [--notebook NB] [--gradescope] [--served-only]

``--dist DIR``: a build made with ``python -m autograder build --out DIR`` (pre-verifying by default); without it
the assignment is built here into a temporary folder, pre-verifying the solution's recipe only (the build's time
is printed; it trains through the shared retraining cache).  The notebook (default: the built solution) is then
graded twice with the same zip, each time with a fresh, empty retraining cache, as every Gradescope container
starts: once with the zip's verdicts (served), once with them left out (retrained).

Default: through the engine, as the batch grades (``engine.grade_notebook``).  ``--gradescope``: through the
Gradescope zip's own ``run_autograder``, as in "Try it before you upload" (docs/instructors/gradescope.md), the
second time with ``preverified.json`` removed from its unpacked ``source/``.  Prints wall and CPU seconds, peak
memory, the engine's timings (probe, retrain, judge), the load average before and after, and the ratio
(``--served-only``: the served run alone, where a retrain would take too long to wait for).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _measure import measured, report  # noqa: E402


def _fresh_cache(base: Path, label: str, assignment: str) -> Path:
    """An empty grader cache (0700) holding only the verified dataset file, if the assignment has one."""
    from autograder import registry

    cache = base / f"cache-{label}"
    cache.mkdir(mode=0o700)
    spec = registry.get(assignment)
    if spec.dataset.probe_file is not None:
        data = spec.dataset.probe_file(allow_network=False)
        shutil.copy(data, cache / Path(data).name)
    return cache


def _built(args, work: Path) -> tuple[Path, Path, Path]:
    """(autograder.zip, gradescope_autograder.zip, solution notebook) of a build that pre-verified its solution."""
    if args.dist:
        target = Path(args.dist) / args.assignment
    else:
        from autograder import build
        from autograder.preverify import Preverify

        started = time.monotonic()
        (b,) = build.build_all(work / "dist", [args.assignment], preverify=Preverify(common_recipes=False))
        print(f"build with the solution pre-verified: {time.monotonic() - started:.0f} s "
              f"(verdicts: {[(v['name'], v['accuracies']) for v in b.preverified.verdicts]}, "
              f"skipped: {b.preverified.skipped})", flush=True)
        target = b.student_dir
    return target / "autograder.zip", target / "gradescope_autograder.zip", target / "solution" / f"{args.assignment}.ipynb"


def _engine(args, work: Path, zip_path: Path, notebook: Path, results: dict) -> None:
    from autograder.engine import Autograder, RetrainOptions, grade_notebook

    ag = Autograder.from_zip(zip_path)
    if ag.verdicts is None or ag.verdicts.problem:
        sys.exit(f"{zip_path} ships no usable verdicts: {ag.verdicts and ag.verdicts.problem}")
    runs = [("served", ag), ("retrained", dataclasses.replace(ag, verdicts=None))][:1 if args.served_only else 2]
    for label, graded_with in runs:
        cache = _fresh_cache(work, label, args.assignment)
        with measured(label, results):
            result = grade_notebook(notebook, graded_with, retrain=RetrainOptions(cache_dir=str(cache / "retrain")))
        rt = result.get("retrain") or {}
        results[label]["detail"] = {"score": result.get("score"), "status": result.get("status"),
                                    "accuracy": rt.get("accuracy"), "preverified": bool(rt.get("preverified")),
                                    "timings": result.get("execution", {}).get("timings")}
        print(label, results[label], flush=True)


def _gradescope(args, work: Path, gs_zip: Path, notebook: Path, results: dict) -> None:
    for label in ("served", "retrained")[:1 if args.served_only else 2]:
        root = work / f"gs-{label}"
        (root / "submission").mkdir(parents=True)
        (root / "results").mkdir()
        with zipfile.ZipFile(gs_zip) as z:
            z.extractall(root / "source")
        if label == "retrained":
            (root / "source" / "preverified.json").unlink()
        shutil.copy(notebook, root / "submission" / notebook.name)
        env = {**os.environ, "CNN_GRADER_GRADESCOPE_ROOT": str(root), "CNN_GRADER_PYTHON": sys.executable,
               "CNN_GRADER_CACHE": str(_fresh_cache(work, f"gs-{label}", args.assignment))}
        with measured(label, results):
            proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True,
                                  text=True)
        out = json.loads((root / "results" / "results.json").read_text())
        results[label]["detail"] = {"rc": proc.returncode, "score": out.get("score"),
                                    "status": out.get("extra_data", {}).get("status"),
                                    "output": out.get("output", "")[-400:]}
        print(label, results[label], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignment", default="cnn_mnist")
    parser.add_argument("--dist", help="a build's output folder (python -m autograder build --out DIR)")
    parser.add_argument("--notebook", help="the notebook to grade (default: the built solution)")
    parser.add_argument("--gradescope", action="store_true", help="through the Gradescope zip's run_autograder")
    parser.add_argument("--served-only", action="store_true", help="only the served run")
    args = parser.parse_args()
    from autograder import logs

    logs.quiet_children()
    print(f"load average before: {os.getloadavg()}", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-preverified-") as tmp:
        work = Path(tmp)
        zip_path, gs_zip, solution = _built(args, work)
        notebook = Path(args.notebook) if args.notebook else solution
        (_gradescope if args.gradescope else _engine)(args, work, gs_zip if args.gradescope else zip_path,
                                                       notebook, results)
    print(f"load average after: {os.getloadavg()}")
    if "retrained" in results:
        report(results, "retrained", "served")
    else:
        print(f"served: {results['served']['seconds']:.2f} s   CPU {results['served']['cpu_seconds']:.1f} s   "
              f"peak {results['served']['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
