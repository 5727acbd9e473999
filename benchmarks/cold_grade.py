"""A single cold `grade` of one notebook against `otter run`, each a fresh process, in one run; and where
the grader's time goes before the student's first cell.

    python benchmarks/cold_grade.py [--notebook untouched] [--rounds 3]

Each round runs, one after the other and each in a new interpreter:

* ``otter run -a ZIP NOTEBOOK``;
* ``python -m autograder grade NOTEBOOK --autograder ZIP`` (its defaults), first with no kept self-test (as
  on a host's first grade: the jail's self-test runs), then with the self-test this run kept (every later
  grade on the host, until the grader, its environment or the host changes);
* the same grade by a script that times its stages (below), in one process (``--jobs 1``).

The breakdown of a grade with the self-test kept, from the interpreter's start: the grader's start-up
(interpreter and imports), reading the autograder zip, the self-test (served from the kept result, with its
light rerun for the batch's folders; the jail starts beside it), what is left of the jail's start-up after
it (its Python started and its imports done: "ready"), the hand-over up to the first student cell, the
student's cells, the extraction of the answers, the judge (a clean process that runs Otter's tests; started
beside the jail), the reports, and the interpreter's exit.

Printed: the median and the least of the rounds (on a shared machine the least is the round other work
disturbed least), the ratios of otter's time over the grader's, and CPU seconds of each command's whole
process tree, read from a control group of its own (every jail's included; far steadier than wall time
under load).  The kept self-tests live in ``/run/cnn-grader-self-test`` (root) or ``<cache>/self-test``:
the benchmark removes this grader's entry (no other's) before each "not kept" grade.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STAGES = ("start-up", "autograder zip", "self-test", "jail ready", "to first cell", "cells", "extract", "judge",
          "reports", "exit")

BREAKDOWN = r'''
import json, sys, time
import psutil
born = psutil.Process().create_time()
marks = {"start": born}
def mark(name):
    marks.setdefault(name, time.time())
from autograder import cli  # what `grade` imports before anything else
from autograder import batch, protocol
from autograder import engine as pipeline
from autograder.probe import jail, sandbox
mark("imported")
def timed(owner, name, before, after):
    original = getattr(owner, name)
    def wrapper(*a, **k):
        mark(before)
        try:
            return original(*a, **k)
        finally:
            mark(after)
    setattr(owner, name, wrapper)
timed(pipeline.Autograder, "from_zip", "zip start", "zip done")
timed(jail, "self_test", "self-test start", "self-test done")
timed(pipeline, "run_judge", "judge start", "judge done")
timed(batch.reports if hasattr(batch, "reports") else __import__("autograder.lms.reports", fromlist=["x"]),
      "write_all", "reports start", "reports done")
accept = sandbox._Run._accept
def watch(self, msg, kind, now):
    ok = accept(self, msg, kind, now)
    if ok and kind == protocol.READY:
        mark("ready")
    elif ok and kind == protocol.CELL:
        mark("first cell")
    elif ok and kind == protocol.STEP and msg.get("label") == "extract":
        mark("extract")
    elif ok and kind == protocol.DONE:
        mark("done")
    return ok
sandbox._Run._accept = watch
nb, zip_path, out = sys.argv[1:4]
from autograder.probe.sandbox import Limits
options = batch.BatchOptions(jobs=1, progress=False)  # as grade's defaults, in this process (no worker pool)
results = batch.run_batch([__import__("pathlib").Path(nb)], {"cnn_mnist": zip_path}, __import__("pathlib").Path(out), options)
mark("end")
print("@@MARKS@@" + json.dumps({"marks": marks, "score": results[0]["score"], "status": results[0]["status"]}), flush=True)
'''


def _stages(marks: dict, exited: float) -> dict[str, float]:
    m = {**marks, "exit": exited}
    spans = {
        "start-up": ("start", "imported"), "autograder zip": ("zip start", "zip done"),
        "self-test": ("self-test start", "self-test done"), "jail ready": ("self-test done", "ready"),
        "to first cell": ("ready", "first cell"), "cells": ("first cell", "extract"), "extract": ("extract", "done"),
        "judge": ("judge start", "judge done"), "reports": ("reports start", "reports done"), "exit": ("end", "exit"),
    }
    return {name: m[b] - m[a] for name, (a, b) in spans.items() if a in m and b in m}


def _forget_kept_self_test() -> None:
    """As on a host where this grader never ran: its kept self-test (and no other grader's) is removed."""
    from autograder.probe import jail, self_test_cache

    (self_test_cache.folder() / f"{jail.kept_self_test_key()}.json").unlink(missing_ok=True)


def _children_cpu() -> float:
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def _timed(cmd: list[str], cpu: list[float], **kw) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of ``cmd``, and into ``cpu`` the CPU seconds of its whole process tree: read from a control
    group of its own where one can be made (the jails' groups nest below it; a killed jail's processes count
    too), else from the children it reaped (which misses what was killed before its parent waited for it)."""
    from autograder.metering import cgroup

    group = cgroup.create("bench", cpu_cores=None, pids_max=None)
    started, cpu_started = time.perf_counter(), _children_cpu()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=group.joiner() if group else None,
                              **kw)
        cpu.append(group.cpu_seconds() if group else _children_cpu() - cpu_started)
    finally:
        if group is not None:
            group.remove()
    return time.perf_counter() - started, proc


def _self_test_said(out: str) -> str:
    (result,) = [json.loads(p.read_text()) for p in Path(out, "results").glob("*.json")]
    return result["isolation"].get("self_test", "?")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", default="untouched", help="a sample's name or a path to a notebook")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="an export of an earlier version of this repository (git archive COMMIT | tar -x -C DIR): its "
                         "`grade` is measured too, in the same rounds")
    args = ap.parse_args(argv)
    from assignments.cnn_mnist import sample_answers as samples
    from autograder import build

    nb = Path(args.notebook) if args.notebook.endswith(".ipynb") else samples.SAMPLES_DIR / f"{args.notebook}.ipynb"
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times: dict[str, list[float]] = {"otter run": [], "grade, self-test not kept": [], "grade, self-test kept": [],
                                     "grade with breakdown, kept": []}
    if args.baseline:
        times["grade, earlier version"] = []
    cpu: dict[str, list[float]] = {k: [] for k in times}
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        (built,) = build.build_all(Path(tmp) / "dist", ["cnn_mnist"], gradescope=False)
        zip_path = str(built.autograder_zip)
        for i in range(args.rounds):
            os.makedirs(f"{tmp}/otter{i}")
            seconds, proc = _timed([python, "-m", "otter", "run", "-a", zip_path, str(nb), "-o", f"{tmp}/otter{i}",
                                    "--no-logo"], cpu["otter run"], env=env, cwd=tmp)
            assert proc.returncode == 0, proc.stderr[-2000:]
            times["otter run"].append(seconds)
            grade = [python, "-m", "autograder", "grade", str(nb), "--autograder", zip_path]  # its defaults
            _forget_kept_self_test()
            seconds, proc = _timed([*grade, "--out", f"{tmp}/cold{i}"], cpu["grade, self-test not kept"], env=env, cwd=tmp)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            assert _self_test_said(f"{tmp}/cold{i}") == "passed"  # run, not kept
            times["grade, self-test not kept"].append(seconds)
            seconds, proc = _timed([*grade, "--out", f"{tmp}/kept{i}"], cpu["grade, self-test kept"], env=env, cwd=tmp)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            assert "kept" in _self_test_said(f"{tmp}/kept{i}")
            times["grade, self-test kept"].append(seconds)
            if args.baseline:
                seconds, proc = _timed([*grade, "--out", f"{tmp}/baseline{i}"], cpu["grade, earlier version"],
                                       env={**env, "PYTHONPATH": str(args.baseline.resolve())}, cwd=args.baseline)
                assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
                times["grade, earlier version"].append(seconds)
            seconds, proc = _timed([python, "-c", BREAKDOWN, str(nb), zip_path, f"{tmp}/breakdown{i}"],
                                   cpu["grade with breakdown, kept"], env=env, cwd=tmp)
            exited = time.time()
            mark = proc.stdout.rfind("@@MARKS@@")
            assert proc.returncode == 0 and mark >= 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            found = json.loads(proc.stdout[mark + len("@@MARKS@@"):])
            times["grade with breakdown, kept"].append(seconds)
            for name, value in _stages(found["marks"], exited).items():
                stages[name].append(value)
    med = {k: statistics.median(v) for k, v in times.items()}
    least = {k: min(v) for k, v in times.items()}  # the round other work disturbed least
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for k, v in med.items():
        print(f"{k:30s} median {v:6.2f} s, least {least[k]:6.2f} s of {args.rounds} "
              f"({', '.join(f'{x:.1f}' for x in times[k])});  CPU {med_cpu[k]:5.1f} s")
    print("\nwhere a grade's time goes (self-test kept; medians):")
    for name in STAGES:
        if stages[name]:
            print(f"  {name:16s} {statistics.median(stages[name]):7.2f} s")
    before_first_cell = sum(statistics.median(stages[s]) for s in STAGES[:5] if stages[s])
    print(f"  before the first cell: {before_first_cell:.2f} s")
    out = {"otter_over_not_kept": med["otter run"] / med["grade, self-test not kept"],
           "otter_over_kept": med["otter run"] / med["grade, self-test kept"], "medians": med, "least": least,
           "cpu": med_cpu,
           "stages": {k: statistics.median(v) for k, v in stages.items() if v}}
    print(f"\nratio otter run / grade (medians): {out['otter_over_not_kept']:.2f}x with the self-test run, "
          f"{out['otter_over_kept']:.2f}x with it kept (least: "
          f"{least['otter run'] / least['grade, self-test not kept']:.2f}x, "
          f"{least['otter run'] / least['grade, self-test kept']:.2f}x; CPU: "
          f"{med_cpu['otter run'] / med_cpu['grade, self-test not kept']:.2f}x, "
          f"{med_cpu['otter run'] / med_cpu['grade, self-test kept']:.2f}x)")
    print(f"notebook {nb.name}; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores)")
    return out


if __name__ == "__main__":
    main()
