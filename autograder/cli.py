"""Command line: ``cnn-grader`` or ``python -m autograder``.

Each subcommand is a thin shell over one module, so the same work is scriptable from Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

# Help texts are Rich markup (Typer's default): a literal "[" is written "\\[" or it vanishes with what follows.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Autograder for notebook assignments (CNN on MNIST, ...): build assignments, provision data, grade notebooks.",
)
console = Console()

# Option defaults come from the dataclasses that define them (written once): the sandbox's limits, and
# each assignment's training policy (autograder.spec.TrainingPolicy), which an option overrides for the run.
from autograder.probe.sandbox import Limits as _Limits  # noqa: E402
from autograder.spec import TrainingPolicy as _TrainingPolicy  # noqa: E402

_LIMITS, _POLICY = _Limits(), _TrainingPolicy()


def _policy(value) -> str:
    return f" (default: the assignment's policy; {value} unless its spec says otherwise)"


@app.callback()
def _root() -> None:
    """Autograder for notebook assignments, one package per assignment (see `assignments/`)."""


@app.command()
def data(
    mnist: Optional[Path] = typer.Option(
        None, "--mnist", help="A Keras-format mnist.npz to verify and use (for the MNIST assignment; sets $CNN_GRADER_MNIST)."),
    offline: bool = typer.Option(False, "--offline", help="Do not try the network."),
) -> None:
    """Provision every installed assignment's dataset (offline-capable), verify it by content hash through
    the assignment's own loader, and say where it is."""
    from autograder import data as datasets, registry, settings

    if mnist is not None:
        settings.MNIST.set(mnist)
    for name, cause in registry.broken().items():  # a stale or shadowed plug-in: said, not fatal here
        console.print(f"[yellow]{name}: skipped, {cause}[/yellow]")
    for spec in registry.all_assignments():  # each assignment's dataset provisions and verifies itself
        try:
            where = datasets.provision(spec, allow_network=not offline)
            (x_train, y_train), (x_test, _) = spec.dataset.load()
        except Exception as exc:  # noqa: BLE001 - say which assignment cannot grade, and why
            console.print(f"[red]{spec.name}: {spec.dataset.name} could not be provisioned: {exc}[/red]")
            raise typer.Exit(1)
        console.print(f"{spec.name}: {spec.dataset.name} verified (SHA-256 of every array)"
                      + (f": [bold]{where}[/bold]" if where else ""))
        console.print(f"  train {x_train.shape} {x_train.dtype}, first labels {y_train[:5].tolist()}; test {x_test.shape}")


@app.command()
def build(
    out: Path = typer.Option(Path("dist"), "--out", help="Where to leave <assignment>/autograder.zip and the student files."),
    update_assignments: bool = typer.Option(
        False, "--update-assignments",
        help="Also refresh what is committed from the build: each assignment's student/ and samples/ folders and solutions/<name>.ipynb.",
    ),
    only: Optional[list[str]] = typer.Option(None, "--assignment", "-a", help="Build only this assignment (repeatable)."),
    preverify: bool = typer.Option(
        True, "--preverify/--no-preverify",
        help="Grade the solution's recipe (and the recipes below) once, retraining it, and ship the signed verdicts "
             "in both zips: grading then serves a submission with the same recipe without retraining it. Costs "
             "one retrain per recipe, trained through the retraining cache."),
    common_recipes: bool = typer.Option(
        True, "--common-recipes/--no-common-recipes",
        help="With --preverify: also the recipes the assignment lists as commonly submitted as written (cnn_mnist: "
             "the lesson's own recipe: three seeds, minutes each on a CPU)."),
    preverify_notebooks: Optional[list[Path]] = typer.Option(
        None, "--preverify-notebook",
        help="With --preverify: also this notebook's recipe, for the assignment its metadata names (repeatable)."),
) -> None:
    """Run Otter Assign on every installed assignment's master notebook (and pre-verify the solution's recipe)."""
    from autograder import build as builder, logs

    options = None
    if preverify:
        from autograder import preverify as pre, registry

        for nb in preverify_notebooks or []:
            name = pre.notebook_assignment(nb)
            if name is None or name not in (only or registry.names()):
                console.print(f"[red]--preverify-notebook {nb}: " + (
                    "not a notebook of a built assignment (its metadata names none)" if name is None else
                    f"its metadata names {name}, which is not built here") + "[/red]")
                raise typer.Exit(2)
        options = pre.Preverify(notebooks=tuple(preverify_notebooks or ()), common_recipes=common_recipes)
    elif preverify_notebooks:
        console.print("[red]--preverify-notebook needs --preverify[/red]")
        raise typer.Exit(2)
    if options is None:
        built, log = builder.build_all(out, only or None), None
    else:
        out.mkdir(parents=True, exist_ok=True)
        with logs.to_file(out) as log:  # the jails' and the retraining's start-up chatter while pre-verifying
            built = builder.build_all(out, only or None, preverify=options)
    for b in built:
        console.print(f"[bold]{b.name}[/bold]: student notebook {b.student_notebook}, autograder {b.autograder_zip}")
        if b.preverified is not None:
            for v in b.preverified.verdicts:
                accuracies = ", ".join(f"{a:.4f}" for a in v["accuracies"])
                console.print(f"  pre-verified {v['name']}: accuracy {accuracies} on {v['device']}")
            for name, why in b.preverified.skipped:
                console.print(f"  [yellow]not pre-verified {name}: {why}[/yellow]")
            console.print(f"  pre-verifying took {b.preverified.seconds:.0f} s (log: {log})")
    if update_assignments:
        builder.sync_student_folders(built)
        for b in built:
            console.print(f"{b.name}: student folder refreshed in {b.spec.student_dir}")
        for b in built:
            written = b.spec.write_samples(b.student_notebook, b.solution_notebook)
            console.print(f"{b.name}: {len(written)} sample submissions written to {b.spec.samples_dir}")
        for path in builder.sync_solutions(built):
            console.print(f"solution notebook refreshed: {path}")


@app.command()
def grade(
    paths: list[Path] = typer.Argument(
        ..., help="Notebooks, folders, zips, a Gradescope export, a Canvas download or nbgrader's submitted/ folder "
                  "(submitted/<student>/<assignment>/ in the course folder, after nbgrader collect)."),
    out: Path = typer.Option(Path("grading-out"), "--out", help="Results, grades.csv, feedback/ and report.html."),
    autograder_zips: Optional[list[Path]] = typer.Option(
        None, "--autograder",
        help="Autograder zip from `build`, repeatable (default: build every installed assignment). Each notebook "
             "is graded by the zip of the assignment named in its metadata."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Submissions graded in parallel (0: one per core)."),
    warm: int = typer.Option(1, "--warm", help="Jails and judges each worker starts ahead of its next submission "
                             "(0: start each one when needed; each waiting jail holds about 0.8 GB)."),
    force: bool = typer.Option(False, "--force", help="Regrade submissions that already have a result."),
    retrain: bool = typer.Option(True, "--retrain/--no-retrain", help="Retrain the model from scratch to verify accuracy."),
    seeds: Optional[int] = typer.Option(
        None, "--seeds", help=f"Near the threshold, retrain up to k seeds and score the median{_policy(_POLICY.max_seeds)}."),
    max_epochs: Optional[int] = typer.Option(
        None, "--max-epochs", help=f"Cap on the epochs a recipe may train{_policy(_POLICY.budget.max_epochs)}."),
    max_steps: Optional[int] = typer.Option(
        None, "--max-steps", help=f"Training budget: optimizer steps per training run{_policy(_POLICY.budget.max_steps)}."),
    require_lesson_model: Optional[bool] = typer.Option(
        None, "--require-lesson-model/--any-model", show_default=False,
        help="Give training credit only to the lesson's exact architecture (default: the assignment's policy)."),
    retrain_seconds: Optional[float] = typer.Option(
        None, "--retrain-seconds",
        help=f"Seconds per training run: a recipe whose timed projection exceeds 75% of it is refused; the safety "
             f"net, a grader error when hit{_policy(_POLICY.max_seconds)}."),
    real_fit: bool = typer.Option(False, "--real-fit", help="Run the notebook's model.fit for real instead of recording it."),
    cell_seconds: float = typer.Option(_LIMITS.cell_seconds, "--cell-timeout", help="Seconds one cell may run."),
    notebook_seconds: float = typer.Option(_LIMITS.notebook_seconds, "--notebook-timeout",
                                           help="Seconds a whole notebook may run."),
    memory_mb: int = typer.Option(_LIMITS.memory_mb, "--memory-mb", help="Memory limit for a submission's processes."),
    disk_mb: int = typer.Option(_LIMITS.disk_mb, "--disk-mb",
                                help="MB a submission may write in all (its folder and /tmp: in RAM, within --memory-mb)."),
    disk_files: int = typer.Option(_LIMITS.disk_files, "--disk-files",
                                   help="Files (and folders) a submission may create in all."),
    ray: bool = typer.Option(False, "--ray", help="Spread the batch over Ray (pip install 'cnn-autograder\\[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="An existing Ray cluster to grade on (implies --ray; without it --ray starts a local one)."),
    isolation: Optional[str] = typer.Option(
        None, "--isolation",
        help="How submissions are jailed: auto (bubblewrap where namespaces work, else a permission jail as root), "
             "bwrap or permissions. Default: $CNN_GRADER_ISOLATION, else auto."),
    unsafe_no_isolation: bool = typer.Option(
        False, "--unsafe-no-isolation",
        help="Grade even where no jail is possible (non-root without user namespaces): submissions then run as "
             "this user and every result says 'not isolated'."),
    canvas_assignment: Optional[list[str]] = typer.Option(
        None, "--canvas-assignment",
        help="Canvas gradebook column, 'Title (assignment id)' as in Canvas's gradebook export, or the title "
             "with --canvas-assignment-id. A batch of several assignments takes one per assignment: "
             "--canvas-assignment 'cnn_mnist=CNN on MNIST (123)' (repeatable). Without it no Canvas import is written."),
    canvas_assignment_id: Optional[str] = typer.Option(
        None, "--canvas-assignment-id", help="Canvas assignment id (the number in the assignment's URL)."),
    canvas_provisional: bool = typer.Option(
        False, "--canvas-provisional",
        help="Write the Canvas import even when results are provisional (their training question was not "
             "verified by retraining, e.g. with --no-retrain): their totals leave out those points. Without it, "
             "an assignment with a provisional result gets no import, and the console and the report say why."),
    manual_scores: Optional[Path] = typer.Option(
        None, "--manual-scores",
        help="A filled manual_scores.csv (id, question, points, comment) of the hand-graded questions: merged into "
             "the results without grading anything again, and kept as OUT/manual_scores.csv (a later run reads that "
             "by itself). A bad file is refused, naming the line."),
    anonymous: Optional[bool] = typer.Option(
        None, "--anonymous/--no-anonymous",
        help="The graders' pages of the hand-graded questions (OUT/manual/) and OUT/manual_scores.csv name each "
             "student by a code, not by name or id (--anonymous), or by id (--no-anonymous); a sheet that names "
             "them the other way is rewritten, its earlier copy kept in OUT/.private/. Default: as the output "
             "folder's sheet already does (by id for a new one)."),
    wait: bool = typer.Option(
        False, "--wait",
        help="If another run is grading into the same --out folder, wait until it is done, then grade what it "
             "left (default: refuse at once, naming the run that holds the folder)."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v",
        help="Show the grader's log (its subprocesses' stderr, TensorFlow's start-up lines) on the console "
             "instead of only in <out>/logs/grader.log."),
) -> None:
    """Grade submissions: isolated execution, clean-process judging, verified retraining."""
    import dataclasses
    import os

    from autograder import batch, build as builder, settings
    from autograder.probe import jail

    if isolation is not None:  # not given: the environment's CNN_GRADER_ISOLATION (or auto) stays
        if isolation not in ("auto", "bwrap", "permissions"):
            raise typer.BadParameter("--isolation must be auto, bwrap or permissions")
        settings.ISOLATION.set(isolation)  # inherited by worker processes
    if unsafe_no_isolation:
        settings.UNSAFE_NO_ISOLATION.set("1")
    if ray or ray_address:  # before anything is graded: a sandbox must not reach the cluster or its credentials
        from autograder.probe import ray_access

        try:
            ray_access.prepare_local_token(ray_address)
            refusal = ray_access.ray_refusal(ray_address)
        except (jail.JailError, OSError) as exc:
            refusal = f"--ray cannot be checked: {exc}"
        if refusal:
            console.print(f"[red]{refusal}[/red]")
            raise typer.Exit(2)
    from autograder.engine import RetrainOptions
    from autograder.probe.sandbox import Limits

    from autograder.lms import reports

    canvas = None
    if canvas_assignment or canvas_assignment_id:
        try:
            canvas = reports.canvas_columns(canvas_assignment or [""], canvas_assignment_id)
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2)
    from contextlib import ExitStack

    from rich.markup import escape

    from autograder import output_lock

    options = batch.BatchOptions(
        jobs=jobs or max(os.cpu_count() or 1, 1), warm=warm, force=force, real_fit=real_fit, ray=ray or bool(ray_address), ray_address=ray_address,
        canvas=canvas, canvas_provisional=canvas_provisional, manual_scores=manual_scores, anonymous=anonymous,
        wait=wait,
        limits=dataclasses.replace(Limits(), cell_seconds=cell_seconds, notebook_seconds=notebook_seconds,
                                   memory_mb=memory_mb, disk_mb=disk_mb, disk_files=disk_files),
        retrain=RetrainOptions(enabled=retrain, max_epochs=max_epochs, max_steps=max_steps, max_seconds=retrain_seconds,
                               seeds=seeds, require_lesson_model=require_lesson_model),
    )
    with ExitStack() as held:
        try:  # nothing is written into the folder (autograders, log, results) while another run holds it
            held.enter_context(output_lock.hold(
                out, wait=wait, on_wait=lambda holder: console.print(escape(output_lock.wait_message(out, holder)))))
        except output_lock.OutputFolderBusy as exc:  # (the holder's command is printed as text, not markup)
            console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(2)
        if not autograder_zips:
            autograder_zips = [b.autograder_zip for b in builder.build_all(out / "_autograder", gradescope=False)]
        from autograder import logs
        from autograder.manual_scores import ManualScoresError

        try:
            with logs.to_file(out, verbose) as log:
                results = batch.run_batch(paths, autograder_zips, out, options)
        except ManualScoresError as exc:  # every result is kept; the reports are left as they were
            console.print(f"Hand-grading sheet refused: {exc}", style="red", markup=False, highlight=False)
            console.print(f"Nothing was merged and nothing was lost: the sheet is left as it is, the results in "
                          f"{out / 'results'} are kept and the reports are not rewritten. Fix the sheet and run grade "
                          "again (nothing is graded again).", markup=False, highlight=False)
            raise typer.Exit(2)
    _print_unowned(results, out)
    _print_results(results)
    _print_provisional(results)
    plan = reports.canvas_plan(results, canvas, canvas_provisional)
    imports = [f"{out / file} (column {column})" for file, _, column in plan.imports]
    console.print(f"\nGrade sheet: {out / 'grades.csv'}   To review: {out / 'needs_review.csv'}   Canvas import: "
                  + (", ".join(imports) or ("none" if plan.withheld else "none (--canvas-assignment)")))
    for file, name, _, why in plan.withheld:
        console.print(f"[yellow]No Canvas import written for {name or 'the batch'} ({out / file}): {why}.[/yellow]",
                      markup=True, highlight=False)
    console.print(f"Feedback: {out / 'feedback'}/<id>.html   Summary: {out / 'report.html'}"
                  + ("" if verbose else f"   Grader's log: {log}"))
    waiting = sum(m.get("score") is None for r in results for m in r.get("manual") or [])
    if any(r.get("manual") for r in results):
        console.print(f"Hand-graded questions: {reports.plural(waiting, 'answer')} left; pages in {out / 'manual'}, scores in "
                      f"{out / 'manual_scores.csv'} (fill it in, or grade in the browser with: python -m autograder "
                      f"review {out}; then run grade again)", markup=False)


@app.command()
def review(
    out: Path = typer.Argument(..., help="The output folder of a grade run (holds results/ and manual_scores.csv)."),
    port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 to serve on (0: a free one chosen at random)."),
    anonymous: Optional[bool] = typer.Option(
        None, "--anonymous/--no-anonymous",
        help="Show each student by anonymous code (--anonymous) or by id and name (--no-anonymous), and name them "
             "so in manual_scores.csv. Default: as the sheet already does."),
) -> None:
    """Grade the hand-graded questions in a browser: one question at a time, rubric, grouped answers. Every save
    goes to OUT/manual_scores.csv; the next grade run merges it (nothing is graded again)."""
    from autograder.manual_scores import ManualScoresError
    from autograder.review import app as review_app

    try:
        review_app.serve(out, port, anonymous, say=lambda line: console.print(line, markup=False, highlight=False))
    except (LookupError, ManualScoresError) as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2)
    except OSError as exc:  # the port is taken, the folder cannot be read
        console.print(f"cannot serve: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2)


def _print_unowned(results: list[dict], out: Path) -> None:
    """First of all: the files of an LMS download whose owner is unknown (they are in no Canvas import)."""
    from rich.markup import escape

    from autograder.lms import reports

    files = reports.unowned(results)
    if not files:
        return
    console.print(f"[bold red]{reports.plural(len(files), 'file')} without a known owner[/bold red] (in no Canvas "
                  f"import; what to do: {out / 'needs_review.csv'}, at the top):")
    for r, why in files:
        console.print(f"  {escape(str(r['student'].get('source') or r['student']['id']))}: "
                      f"{escape(reports.first_sentences(why, 200))}", highlight=False)
    console.print()


def _print_provisional(results: list[dict]) -> None:
    from autograder.lms import reports
    from autograder.result import PROVISIONAL_WHY, provisional

    rows = [r for r in results if provisional(r)]
    if rows:
        why = "; ".join(sorted({PROVISIONAL_WHY[provisional(r)] for r in rows}))
        console.print(f"[yellow]{reports.plural(len(rows), 'result')} {'is' if len(rows) == 1 else 'are'} "
                      f"provisional[/yellow] ({why}): their totals leave out the training question's hidden points. "
                      "Run grade again with retraining on (the default) to decide them; only these are graded again.",
                      highlight=False)


#: The longest message a console table cell shows, cut at a sentence's end (the feedback page has it all).
CONSOLE_MESSAGE_CHARS = 300


def _case_message(case: dict) -> str:
    return case["message"].replace("❌ Test case failed\n", "").strip()


def _print_results(results: list[dict]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from autograder.lms import reports
    from autograder.result import provisional

    def cut(text: str, limit: int = CONSOLE_MESSAGE_CHARS) -> str:  # untrusted text: never read as markup
        return escape(reports.first_sentences(text, limit))

    if len(results) == 1 and results[0].get("questions"):
        r = results[0]
        table = Table(title=f"{r['student']['id']}: {r['score']:g} / {r['max_score']:g}"
                            + (" (provisional)" if provisional(r) else ""))
        table.add_column("question"), table.add_column("score", justify="right"), table.add_column("feedback")
        for row in reports.feedback_rows(r):
            if "question" in row:
                q = row["question"]
                msgs = " ".join(reports.first_sentences(_case_message(c), CONSOLE_MESSAGE_CHARS)
                                for c in q["cases"] if not c["passed"])
                table.add_row(escape(row["label"]), f"{q['score']:g} / {q['max_score']:g}",
                              cut(msgs) or "all checks passed")
            else:
                m = row["manual"]
                table.add_row(escape(row["label"]), (f"{m['score']:g}" if m.get("score") is not None else "pending")
                              + f" / {m['max_score']:g}",
                              cut(m.get("comment") or "graded by hand") if m.get("score") is not None
                              else "to be graded by hand")
        console.print(table)
        if r.get("retrain") and r["retrain"].get("accuracy") is not None:
            rt = r["retrain"]
            console.print(f"Retrained: accuracy {rt['accuracy']:.4f}, {reports.plural(rt['epochs'], 'epoch')}, "
                          f"batch {rt['batch_size']}, {rt['device']}, " + ("pre-verified at build" if rt.get("preverified") else
                                                                           "cache hit" if rt["cache_hit"] else f"{rt['seconds']} s"))
        return
    table = Table(title=reports.plural(len(results), "submission"))
    for col in ("student", "score", "status", "retrained accuracy"):
        table.add_column(col)
    for r in sorted(results, key=lambda r: r["student"]["id"]):
        acc = (r.get("retrain") or {}).get("accuracy")
        table.add_row(escape(r["student"]["id"]), f"{r['score']:g} / {r['max_score'] or 0:g}"
                      + (" (provisional)" if provisional(r) else ""),
                      r["status"] + (f": {cut(r['error'], 160)}" if r.get("error") else ""),
                      f"{acc:.4f}" if acc is not None else ("not retrained" if provisional(r) else "-"))
    console.print(table)


def main() -> None:
    from autograder import logs

    logs.quiet_children()  # TensorFlow's, absl's and gRPC's start-up chatter, here and in every subprocess
    app()
