"""Batch grading: a whole class in one command, in parallel, resumable after any kill.

Each submission is graded by :func:`autograder.engine.grade_notebook` in a worker process and
its result written atomically to ``OUT/results/<id>.json`` the moment it finishes.  Rerunning
the same command skips every submission whose result exists (``force=True`` regrades), so a
batch killed with SIGKILL loses at most the submissions that were in flight.  Retraining
shares a small number of slots across workers (see :mod:`autograder.retrain`), so many
workers do not fight over the CPU or GPU, and identical recipes retrain once thanks to the
content-addressed cache.

Reports (grade sheet, Canvas import, per-student feedback, summary) are rebuilt from the
result files at the end of every run, so they never disagree with them.  Everything under the
output folder (results, reports, unpacked submissions) is private: folders 0700, files 0600.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autograder.engine import RetrainOptions
from autograder.sandbox import Limits
from autograder.submissions import ArchiveLimits, Submission, collect, private_dir


@dataclass
class BatchOptions:
    jobs: int = max(os.cpu_count() or 1, 1)
    force: bool = False
    limits: Limits = field(default_factory=Limits)
    retrain: RetrainOptions = field(default_factory=RetrainOptions)
    real_fit: bool = False
    progress: bool = True
    ray: bool = False  # spread the batch over a Ray cluster instead of the local process pool
    ray_address: str | None = None  # None: start a local Ray instance
    canvas: str | None = None  # the Canvas gradebook column, "Title (assignment id)"; None: no import file
    archives: ArchiveLimits = field(default_factory=ArchiveLimits)


def write_json_atomically(path: Path, data: dict) -> None:
    """Write ``data`` whole or not at all, as a file its owner alone can read (mkstemp: 0600)."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def result_path(out: Path, sub_id: str) -> Path:
    return out / "results" / f"{sub_id}.json"


def _identity(sub: Submission) -> dict:
    return {"id": sub.id, "source": sub.source, "name": sub.name, "email": sub.email, "extra": sub.extra}


def _error_result(sub: Submission, message: str, status: str = "error") -> dict:
    return {"student": _identity(sub), "status": status, "error": message, "score": 0.0, "max_score": None,
            "questions": [], "retrain": None, "limits_hit": [], "execution": {}}


def grade_one(sub: Submission, autograder_zip: str, out: str, options: BatchOptions) -> dict:
    """Grade one submission and write its result file (runs in a worker process)."""
    from autograder import engine

    if sub.error:
        result = _error_result(sub, sub.error)
    else:
        try:
            from autograder.variants import lms_identity

            identity, source = lms_identity(_identity(sub))  # chooses the variant, when the assignment has them
            result = engine.grade_notebook(sub.notebook, autograder_zip, limits=options.limits,
                                           retrain=options.retrain, real_fit=options.real_fit,
                                           identity=identity, identity_source=source)
            result["student"] = _identity(sub)
        except Exception as exc:  # the engine should not raise; if it does, the batch still goes on
            result = _error_result(sub, f"grader error: {type(exc).__name__}: {exc}", "grader_error")
    write_json_atomically(result_path(Path(out), sub.id), result)
    return {"id": sub.id, "status": result["status"], "score": result["score"]}


def _needs_grading(path: Path) -> bool:
    try:
        previous = json.loads(path.read_text())
        return bool(previous.get("retry")) or previous.get("status") == "grader_error"  # not the student's fault
    except (OSError, ValueError):
        return True  # missing, or unreadable: grade it


def run_batch(paths: list[Path], autograder_zip: Path, out: Path, options: BatchOptions = BatchOptions()) -> list[dict]:
    """Grade everything under ``paths`` into ``out``; returns every result (done before or now)."""
    private_dir(out)
    from autograder import jail

    jail.add_private_paths([out, autograder_zip.parent, *paths])  # no submission may see these
    subs = collect(paths, out, options.archives)
    todo = [s for s in subs if options.force or _needs_grading(result_path(out, s.id))]
    started = time.monotonic()
    if todo:
        _run_parallel(todo, autograder_zip, out, options)
    results = [json.loads(result_path(out, s.id).read_text()) for s in subs if result_path(out, s.id).is_file()]
    from autograder import reports

    for problem in reports.write_all(results, out, autograder_zip, canvas=options.canvas):
        print(f"warning: feedback page not written: {problem}", file=sys.stderr)
    write_json_atomically(out / "batch.json", {"submissions": len(subs), "graded_now": len(todo),
                                               "seconds": round(time.monotonic() - started, 2),
                                               "options": asdict(options)})
    return results


def _run_parallel(todo: list[Submission], autograder_zip: Path, out: Path, options: BatchOptions) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}")]
    with Progress(*columns, disable=not options.progress, transient=False) as progress:
        task = progress.add_task("", total=len(todo))
        if options.ray:
            for done in _run_ray(todo, autograder_zip, out, options):
                progress.update(task, advance=1, description=f"{done['id']}: {done['status']}")
            return
        if options.jobs <= 1:
            for sub in todo:
                done = grade_one(sub, str(autograder_zip), str(out), options)
                progress.update(task, advance=1, description=f"{done['id']}: {done['status']}")
            return
        with cf.ProcessPoolExecutor(max_workers=options.jobs) as pool:
            futures = {pool.submit(grade_one, s, str(autograder_zip), str(out), options): s for s in todo}
            for fut in cf.as_completed(futures):
                sub = futures[fut]
                try:
                    done = fut.result()
                except Exception as exc:  # a worker died (e.g. killed): record it, keep going
                    done = {"id": sub.id, "status": "error"}
                    failed = _error_result(sub, f"grader error: worker failed: {exc}", "grader_error")
                    failed["retry"] = True  # not the submission's fault: the next run grades it again
                    write_json_atomically(result_path(out, sub.id), failed)
                progress.update(task, advance=1, description=f"{done['id']}: {done['status']}")


def _run_ray(todo: list[Submission], autograder_zip: Path, out: Path, options: BatchOptions):
    """Grade on Ray (the ``ray`` extra): one task per submission; where the cluster has GPUs each
    task asks for a quarter of one, so several retrains share a GPU.  ``out`` and the zip must be
    on storage every node sees.  Yields each submission's summary as it finishes."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.ray_address, num_cpus=None if options.ray_address else options.jobs,
                 include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        gpu_share = 0.25 if ray.cluster_resources().get("GPU") else 0
        task = ray.remote(num_cpus=1, num_gpus=gpu_share, max_retries=1)(grade_one)
        pending = {task.remote(s, str(autograder_zip), str(out), options): s for s in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            sub = pending.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except Exception as exc:  # the task's worker died: keep going, grade it next run
                failed = _error_result(sub, f"grader error: worker failed: {exc}", "grader_error")
                failed["retry"] = True
                write_json_atomically(result_path(out, sub.id), failed)
                yield {"id": sub.id, "status": "error"}
    finally:
        if started_here:
            ray.shutdown()
