"""Batch grading: a whole class in one command, in parallel, resumable after any kill.

Each submission is graded by :func:`autograder.engine.grade_notebook` in a worker process and
its result written atomically to ``OUT/results/<id>.json`` the moment it finishes.  Rerunning
the same command skips every submission whose result exists (``force=True`` regrades), so a
batch killed with SIGKILL loses at most the submissions that were in flight.  Retraining
shares a small number of slots across workers (see :mod:`autograder.verifier.retrain`), so many
workers do not fight over the CPU or GPU, and identical recipes retrain once thanks to the
content-addressed cache.

Reports (grade sheet, Canvas import, per-student feedback, summary) are rebuilt from the
result files at the end of every run, so they never disagree with them.  Everything under the
output folder (results, reports, unpacked submissions) is private: folders 0700, files 0600.
"""

from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import json
import multiprocessing
import os
import re
import tempfile
import time
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autograder import output_lock, settings
from autograder.engine import RetrainOptions
from autograder.faults import Fault, FaultError
from autograder.probe.sandbox import Limits
from autograder.lms.submissions import ArchiveLimits, Submission, collect, private_dir
from autograder.result import GradeResult
from autograder.settings import GraderConfig


@dataclass
class BatchOptions:
    """How :func:`run_batch` grades."""

    jobs: int = max(os.cpu_count() or 1, 1)  # submissions graded in parallel
    force: bool = False  # grade again what already has a result (else a rerun grades only what is missing)
    limits: Limits = field(default_factory=Limits)  # each submission's limits
    retrain: RetrainOptions = field(default_factory=RetrainOptions)  # how the verifier retrains
    real_fit: bool = False  # run the notebook's model.fit for real instead of recording it
    progress: bool = True  # show a progress bar on the console
    ray: bool = False  # spread the batch over a Ray cluster instead of the local process pool
    ray_address: str | None = None  # None: start a local Ray instance
    # the Canvas gradebook column, "Title (assignment id)", or one per assignment {name: column}; None: no import
    canvas: str | dict[str | None, str] | None = None
    # write the Canvas import even from provisional totals (training not verified by a retrain, e.g. with
    # retraining off); False: an assignment with a provisional result gets no import, and the report says why
    canvas_provisional: bool = False
    archives: ArchiveLimits = field(default_factory=ArchiveLimits)  # what an input archive may hold
    warm: int = 1  # jails and judges each worker starts ahead of its next submission (0: every start cold)
    probe_threads: int = 1  # CPU threads per probe (0: TensorFlow's default, every core); retraining keeps all
    # hand-graded questions: a filled scores file to merge (copied to OUT/manual_scores.csv, which a later
    # run reads by itself); None: OUT/manual_scores.csv if it is there
    manual_scores: Path | None = None
    # graders' pages and manual_scores.csv name students by anonymous code (True) or by id (False);
    # None: as the output folder's sheet already does (by id for a new one)
    anonymous: bool | None = None
    # the grader's configuration (CNN_GRADER_*, autograder.settings.GraderConfig) every worker grades with, a Ray
    # node's too: set by run_batch from this process's environment once its own settings are made
    config: GraderConfig | None = None
    # another run holds the output folder: wait until it is done (True), or refuse at once (False: OutputFolderBusy)
    wait: bool = False


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


def _error_result(sub: Submission, fault: Fault, assignment: str | None = None, retry: bool = False) -> dict:
    return GradeResult.error_row(fault, student=_identity(sub), assignment=assignment, retry=retry).to_dict()


def _with_earlier_causes(result: dict, path: Path) -> dict:
    """A grader error that follows grader errors of earlier runs keeps their causes (``earlier_causes``), so a
    fault that repeats on rerun is listed for the instructor as such."""
    if result.get("status") != "grader_error":
        return result
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return result
    if previous.get("status") == "grader_error":
        earlier = [str(c) for c in previous.get("earlier_causes") or []][-20:]
        result["earlier_causes"] = [*earlier, str(previous.get("cause") or "unknown")]
    return result


def zip_assignment(autograder_zip: str | os.PathLike) -> str:
    """The assignment an autograder zip grades (Otter's ``otter_config.json``: ``assignment_name``)."""
    import zipfile

    try:
        with zipfile.ZipFile(autograder_zip) as z:
            return json.loads(z.read("otter_config.json")).get("assignment_name") or Path(autograder_zip).stem
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # grading with it then fails as a grader error
        return Path(autograder_zip).stem


def autograders_by_name(zips) -> dict[str, str]:
    """``{assignment: zip}`` from one zip, a list of zips or such a mapping."""
    if isinstance(zips, dict):
        return {name: str(z) for name, z in zips.items()}
    zips = [zips] if isinstance(zips, (str, os.PathLike)) else list(zips)
    return {zip_assignment(z): str(z) for z in zips}


def pick_assignment(notebook: Path, autograders: dict[str, str]) -> tuple[str | None, Fault | None]:
    """(assignment, None) for the notebook's recorded assignment, or (name or None, why it cannot be graded).

    The build records the name in the notebook's metadata (``autograder.assignment``; Otter's
    ``otter.assignment_name`` too); a notebook that names none is graded by the only autograder given."""
    from autograder import registry

    from autograder.submission_files import SubmissionFileError, read_submission_file

    try:  # never through a link, and never quoted (see autograder.submission_files)
        nb = json.loads(read_submission_file(notebook, ArchiveLimits().max_notebook_bytes, what="the notebook"))
    except SubmissionFileError as exc:
        return None, Fault("unreadable", f"the notebook could not be read: {exc}")
    except (ValueError, RecursionError) as exc:
        return None, Fault("unreadable", f"the notebook could not be read ({type(exc).__name__})")
    meta = nb.get("metadata") if isinstance(nb, dict) and isinstance(nb.get("metadata"), dict) else {}
    name = registry.notebook_assignment(nb)
    if name is None and isinstance(meta.get("otter"), dict) and isinstance(meta["otter"].get("assignment_name"), str):
        name = meta["otter"]["assignment_name"]
    if name is None:
        if len(autograders) == 1:
            return next(iter(autograders)), None
        return None, Fault("unknown_assignment", "the notebook does not say which assignment it is for (its metadata "
                           f"has no assignment name); grade it with --autograder naming one of {', '.join(sorted(autograders))}")
    if name not in autograders:
        known = sorted(set(autograders) | set(registry.names()))
        if name in known:
            return name, Fault("unknown_assignment", f"assignment {name!r} was not among the autograders of this run "
                                                     f"({', '.join(sorted(autograders))})")
        # the notebook's own text, so only a plain name of ordinary length is shown
        plain = re.fullmatch(r"[\w.-]{1,64}", name) is not None
        return (name if plain else None), Fault("unknown_assignment", str(registry.UnknownAssignment(
            name if plain else "(a name that is not an assignment's)", known)))
    return name, None


_UNSTARTED = None  # in a worker of the process pool: how many submissions of the batch no worker has taken yet


def _init_worker(unstarted) -> None:
    global _UNSTARTED
    _UNSTARTED = unstarted


def _init_pool_worker(unstarted) -> None:
    """A worker process of the pool: forked with the run's descriptors, of which it closes the output
    folder's lock (only the run itself holds it), then as :func:`_init_worker`."""
    output_lock.close_inherited()
    _init_worker(unstarted)


def _more_after_this(options: BatchOptions) -> bool:
    """Whether a warm jail started now would find a submission: only while at least one is left for
    each worker (a jail started for the last ones would be thrown away when the batch ends)."""
    if _UNSTARTED is None:
        return True
    with _UNSTARTED.get_lock():
        _UNSTARTED.value -= 1
        return _UNSTARTED.value >= max(options.jobs, 1)


def grade_one(sub: Submission, autograders: dict[str, str] | str, out: str, options: BatchOptions) -> dict:
    """Grade one submission with its assignment's autograder and write its result file (in a worker process)."""
    from autograder import warm
    from autograder import engine

    if options.config is not None:
        settings.install(options.config)  # before anything reads it: this worker may not share our environment
    warm.configure(options.warm)
    more = _more_after_this(options)
    warm.expect_more(more)
    autograders = autograders_by_name(autograders)
    if sub.error:
        result = _error_result(sub, Fault("input_refused", sub.error))
    else:
        name, problem = pick_assignment(Path(sub.notebook), autograders)
        if problem:
            result = _error_result(sub, problem, assignment=name)
        else:
            try:
                from autograder.variants import lms_identity

                identity, source = lms_identity(_identity(sub))  # chooses the variant, when the assignment has them
                warm.expect_more(True)
                engine.start_judge_ahead()  # this submission's own judge, beside its jail (a single grade's too)
                warm.expect_more(more)
                result = engine.grade_notebook(sub.notebook, autograders[name], limits=options.limits,
                                               retrain=options.retrain, real_fit=options.real_fit,
                                               identity=identity, identity_source=source)
                result["student"] = _identity(sub)
                from autograder import manual

                manual.enrich(result, sub.notebook)  # hand-graded answers, read as data
            except Exception as exc:  # the engine should not raise; if it does, the batch still goes on
                fault = exc.fault if isinstance(exc, FaultError) else Fault("grader_crash", f"{type(exc).__name__}: {exc}")
                result = _error_result(sub, fault.with_message(f"grader error: {fault.message}"), name)
    result = _with_earlier_causes(result, result_path(Path(out), sub.id))
    write_json_atomically(result_path(Path(out), sub.id), result)
    return {"id": sub.id, "status": result["status"], "score": result["score"]}


def _needs_grading(path: Path, retrain: bool = True) -> bool:
    """Whether a submission is graded (again) by this run: no result yet, a grader error or a lost worker (not
    the student's fault), or a provisional result (training not verified) when this run retrains."""
    from autograder.result import provisional

    try:
        previous = json.loads(path.read_text())
        return (bool(previous.get("retry")) or previous.get("status") == "grader_error"
                or (retrain and provisional(previous) is not None))
    except (OSError, ValueError, AttributeError):
        return True  # missing, or unreadable: grade it


def run_batch(paths: list[Path], autograder_zip, out: Path, options: BatchOptions = BatchOptions()) -> list[dict]:
    """Grade everything under ``paths`` into ``out``; returns every result (done before or now).

    ``autograder_zip``: one zip, several, or ``{assignment: zip}``; each notebook is graded by the zip of
    the assignment it names (a batch may mix assignments).  Another run working in ``out`` is refused
    (:class:`autograder.output_lock.OutputFolderBusy`, naming it) or, with ``options.wait``, waited for."""
    from autograder import logs

    with output_lock.hold(out, wait=options.wait, on_wait=lambda holder: logs.say(output_lock.wait_message(out, holder))):
        return _run_batch(paths, autograder_zip, out, options)


def _run_batch(paths: list[Path], autograder_zip, out: Path, options: BatchOptions) -> list[dict]:
    private_dir(out)
    from autograder.probe import jail

    autograders = autograders_by_name(autograder_zip)
    autograder_zip = autograders  # passed on to the workers
    jail.add_private_paths([out, *{Path(z).parent for z in autograders.values()}, *paths])  # no submission may see these
    settings.PROBE_THREADS.set(options.probe_threads)
    options = dataclasses.replace(options, config=settings.current())  # what every worker grades with
    subs = collect(paths, out, options.archives)
    todo = [s for s in subs if options.force or _needs_grading(result_path(out, s.id), options.retrain.enabled)]
    started = time.monotonic()
    if todo:
        _run_parallel(todo, autograder_zip, out, options)
    results = [json.loads(result_path(out, s.id).read_text()) for s in subs if result_path(out, s.id).is_file()]
    results, anonymous = merge_manual_scores(results, out, options)  # ManualScoresError: nothing below is rewritten
    from autograder import logs
    from autograder.lms import reports

    for problem in reports.write_all(results, out, canvas=options.canvas, anonymous=anonymous,
                                     canvas_provisional=options.canvas_provisional):
        logs.say(f"warning: not written: {problem}")
    write_json_atomically(out / "batch.json", {"submissions": len(subs), "graded_now": len(todo),
                                               "seconds": round(time.monotonic() - started, 2),
                                               "options": asdict(options)})
    return results


def merge_manual_scores(results: list[dict], out: Path, options: BatchOptions) -> tuple[list[dict], bool]:
    """The results with the hand-graded scores merged (in memory: the result files stay as graded), and
    whether the graders' pages name students by anonymous code.

    Reads ``options.manual_scores`` (then kept as ``OUT/manual_scores.csv``, the copy that was there
    kept in ``OUT/.private/``) or else ``OUT/manual_scores.csv`` (see :mod:`autograder.manual_scores`);
    writes that file ready to fill in when it is not there, adds rows for new submissions, and names
    every student the way the pages do: by code when ``options.anonymous``, by id when it is False,
    and when it is None as the sheet already does.  A bad file raises
    :class:`autograder.manual_scores.ManualScoresError` with all its problems, before anything is
    written."""
    from autograder import logs, manual, manual_scores as sheets

    results = [manual.enrich(r, r.get("submission")) if "manual" not in r else r
               for r in results]  # results written before hand-graded questions were read
    if not any(r.get("manual") for r in results):
        return manual.merge(results, {}), bool(options.anonymous)
    roster = sheets.Roster.of(results, sheets.anonymous_key(out))
    target = out / sheets.SCORES_FILE
    given = Path(options.manual_scores) if options.manual_scores else None
    if given is not None and target.exists() and given.resolve() == target.resolve():
        given = None
    source = given or target
    sheet = sheets.parse(source, strict=False) if given is not None or target.is_file() else None
    anonymous = sheets.choose_anonymity(out, options.anonymous, sheet, roster)
    if anonymous and options.anonymous is None:
        logs.say(f"{out} names students by anonymous code, so the graders' pages and {target.name} do too "
                 "(--no-anonymous shows ids, and rewrites the sheet with ids)")
    scores = sheets.check(sheet, source, roster, anonymous) if sheet else {}
    if given is not None:
        kept = sheets.install(given, target, out)
        if kept:
            logs.say(f"{target} was replaced by {given}; the file it was is kept as {kept}")
    change = sheets.update(target, roster, anonymous, out)
    if change.renamed:
        logs.say(f"{target.name}: {change.renamed} row(s) now name the student by "
                 f"{'anonymous code' if anonymous else 'id'}, as the graders' pages do; the file as it was is kept "
                 f"as {change.backup}")
    for line in change.restored:  # the page's saves a stale copy dropped count again (and the scores say so)
        logs.say(f"{target.name}: {line}")
    if change.restored:
        scores = sheets.read_scores(target, roster, anonymous)
    return manual.merge(results, scores), anonymous


def _run_parallel(todo: list[Submission], autograder_zip: dict[str, str], out: Path, options: BatchOptions) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}")]
    # stderr stays where it is (the grader's log while `grade` runs: autograder.logs), also in the workers forked meanwhile
    with Progress(*columns, disable=not options.progress, transient=False, redirect_stderr=False) as progress:
        task = progress.add_task("", total=len(todo))
        if options.ray:
            for done in _run_ray(todo, autograder_zip, out, options):
                progress.update(task, advance=1, description=f"{done['id']}: {done['status']}")
            return
        if options.jobs <= 1:
            from autograder import warm

            before = warm.PROBES.size
            _init_worker(multiprocessing.Value("i", len(todo)))
            try:
                for sub in todo:
                    done = grade_one(sub, autograder_zip, str(out), options)
                    progress.update(task, advance=1, description=f"{done['id']}: {done['status']}")
            finally:
                _init_worker(None)
                warm.expect_more(True)
                warm.configure(before)  # nothing keeps waiting in this process after the batch
            return
        def on_done(done: dict) -> None:
            progress.update(task, advance=1, description=f"{done['id']}: {done['status']}")

        pending, died = todo, {}
        for workers in (options.jobs, options.jobs, 0):  # a worker that died costs no result: its work runs again
            pending = _pool_round(pending, autograder_zip, out, options, workers, died, on_done) if pending else []
        for sub in pending:
            write_json_atomically(result_path(out, sub.id), _with_earlier_causes(_error_result(
                sub, Fault("worker_died", f"grader error: its worker process died on every try ({died[sub.id]})"),
                retry=True), result_path(out, sub.id)))
            on_done({"id": sub.id, "status": "grader_error"})


def _pool_round(todo: list[Submission], autograder_zip: dict[str, str], out: Path, options: BatchOptions,
                workers: int, died: dict[str, str], on_done) -> list[Submission]:
    """Grade ``todo`` in a pool of ``workers`` processes (0: a pool of one for each submission, ``jobs``
    such pools at a time, so one that kills its worker every time takes no other down); returns the
    submissions lost to a worker that died (a pool with a dead worker fails everything it had not
    finished), with how it ended in ``died``."""
    if workers == 0:
        with cf.ThreadPoolExecutor(max_workers=max(options.jobs, 1)) as threads:
            rounds = threads.map(lambda sub: _pool_round([sub], autograder_zip, out, options, 1, died, on_done), todo)
            return [lost for round_lost in rounds for lost in round_lost]
    lost: list[Submission] = []
    unstarted = multiprocessing.Value("i", len(todo))
    with cf.ProcessPoolExecutor(max_workers=workers, initializer=_init_pool_worker, initargs=(unstarted,)) as pool:
        futures = {pool.submit(grade_one, s, autograder_zip, str(out), options): s for s in todo}
        processes = list(getattr(pool, "_processes", {}).values())  # for the exit codes, should one die
        for fut in cf.as_completed(futures):
            sub = futures[fut]
            try:
                on_done(fut.result())
            except Exception as exc:  # its worker died (e.g. killed)
                ended = _how_workers_ended(processes) if isinstance(exc, BrokenProcessPool) else []
                died[sub.id] = "; ".join(ended) or f"{type(exc).__name__}: {exc}"
                lost.append(sub)
    return lost


def _how_workers_ended(processes, wait: float = 5.0) -> list[str]:
    """How the pool's dead workers ended.  The pool's own thread reaps a dead worker at about the time
    the failure reaches us, and while it does, a worker's exit code reads as unknown: so wait for it."""
    deadline = time.monotonic() + wait
    while True:
        ended = sorted({_exit_description(p.exitcode) for p in processes if p.exitcode not in (None, 0)})
        if ended or time.monotonic() > deadline:
            return ended
        time.sleep(0.05)


def _exit_description(code: int) -> str:
    import signal

    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _run_ray(todo: list[Submission], autograder_zip: dict[str, str], out: Path, options: BatchOptions):
    """Grade on Ray (the ``ray`` extra): one task per submission, asking for one CPU and the probe's
    memory cap; where the cluster has GPUs each task asks for a quarter of one, so several retrains
    share a GPU.  A task whose node dies runs once more elsewhere (``max_retries=1``); if that fails
    too its row is a grader error that the next run grades again.  ``out`` and the zip must be
    on storage every node sees.  Yields each submission's summary as it finishes."""
    from autograder.probe import jail, ray_access

    ray_access.prepare_local_token(options.ray_address)  # before Ray writes one everybody can read
    refusal = ray_access.ray_refusal(options.ray_address)
    if refusal:
        raise jail.JailError(refusal)
    import ray

    started_here = not ray.is_initialized()
    local = started_here and not options.ray_address and not os.environ.get("RAY_ADDRESS")
    temp = ray_access.private_temp_dir() if local else None  # Ray's session folders (0777) out of sandboxes' reach
    try:
        if started_here:
            ray.init(address=options.ray_address, num_cpus=None if options.ray_address else options.jobs,
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                     **({"_temp_dir": str(temp)} if temp else {}))
        gpu_share = 0.25 if ray.cluster_resources().get("GPU") else 0
        # what one submission may hold at once: its probe (or, later, its retrain) under the probe's memory cap
        memory = options.limits.memory_mb * 2**20
        task = ray.remote(num_cpus=1, num_gpus=gpu_share, memory=memory, max_retries=1)(grade_one)
        pending = {task.remote(s, autograder_zip, str(out), options): s for s in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            sub = pending.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except Exception as exc:  # the task's worker died: keep going, grade it next run
                failed = _with_earlier_causes(_error_result(sub, Fault("worker_died", f"grader error: worker failed: {exc}"),
                                                            retry=True), result_path(out, sub.id))
                write_json_atomically(result_path(out, sub.id), failed)
                yield {"id": sub.id, "status": "error"}
    finally:
        if started_here:
            ray.shutdown()
        if temp is not None:
            import shutil

            shutil.rmtree(temp, ignore_errors=True)
