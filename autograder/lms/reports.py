"""What a batch leaves for people: grade sheet, review list, Canvas import, feedback, summary.

All of it is derived from the per-submission result files, so rerunning a batch rebuilds it
identically.  HTML pages are self-contained (styles and plots inline) so they can be mailed
or uploaded as they are.  A student's page holds that student's own results only; flags that
name a classmate (identical notebooks) and second files go to the instructor's ``report.html``
and ``needs_review.csv``.  A grader error is shown as such, never as a score of 0, and never
reaches the Canvas import.  Every file is written readable by its owner only (0600).

A provisional result (:func:`autograder.result.provisional`: the training question's accuracy was
not decided by a retrain, e.g. ``grade --no-retrain``) is marked as such in ``grades.csv``,
``needs_review.csv``, the report and the student's page, and keeps its assignment's Canvas import
from being written unless the instructor asks for it (``grade --canvas-provisional``).  A file whose
owner the batch cannot tell in an LMS download (:func:`unowned`) heads the report and the review list.
Questions are listed in the notebook's order with its titles (:mod:`autograder.outline`).

Hand-graded questions (:mod:`autograder.manual`): their points count in ``max_score`` from the
start and show as ``pending`` until ``manual_scores.csv`` gives them; a student's row enters the
Canvas import only once all of them are graded (a partial total out of the full maximum would read
as a low grade), and the rows left waiting are listed in ``needs_review.csv``.  ``manual/`` holds
one graders' page per question; ``misconceptions.csv`` and ``report.html`` the class insight
(:mod:`autograder.lms.insight`).
"""

from __future__ import annotations

import base64
import functools
import io
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from autograder import outline
from autograder.faults import of_result
from autograder.lms import similarity
from autograder.lms.sheets import SafeCsvWriter, csv_cell, private_writer as _private_writer, write_private_text  # noqa: F401
from autograder.result import PROVISIONAL_WHY, STUDENT_PROVISIONAL, provisional

ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                         autoescape=True, trim_blocks=True, lstrip_blocks=True)


def plural(n, word: str, many: str | None = None) -> str:
    """``1 answer``, ``2 answers`` (``many``: an irregular plural)."""
    return f"{fmt(n)} {word if n == 1 else (many or word + 's')}"


ENV.globals["plural"] = plural
FEEDBACK = ENV.get_template("feedback.html.j2")  # a student's page
SUMMARY = ENV.get_template("summary.html.j2")  # the instructor's page of a batch


def fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def _in_notebook_order(pairs: list[tuple[str | None, str]]) -> list[str]:
    """Question names of (assignment, name) pairs, each once, in their notebooks' order."""
    keys: dict[str, tuple] = {}
    for assignment, name in pairs:
        keys.setdefault(name, outline.order_key(assignment, name))
    return sorted(keys, key=lambda name: keys[name])


def question_names(results: list[dict]) -> list[str]:
    """The autograded questions of the batch, in the notebook's order (see :mod:`autograder.outline`)."""
    return _in_notebook_order([(r.get("assignment"), q["name"]) for r in results for q in r.get("questions", [])])


def manual_names(results: list[dict]) -> list[str]:
    """The hand-graded questions of the batch, in the notebook's order (see :mod:`autograder.manual`)."""
    return _in_notebook_order([(r.get("assignment"), m["name"]) for r in results for m in r.get("manual") or []])


def retrained_accuracy(r: dict) -> float | None:
    """The accuracy the verifier measured by retraining the model (None: not retrained)."""
    accuracy = (r.get("retrain") or {}).get("accuracy")
    return accuracy if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) else None


def provisional_note(r: dict) -> str | None:
    """Why the row is provisional, for the instructor (None: it is not)."""
    why = provisional(r)
    return None if why is None else f"provisional: {PROVISIONAL_WHY[why]}"


def manual_cell(m: dict | None):
    """A hand-graded question in a sheet: its points, or ``pending`` until a grader gives them."""
    if m is None:
        return ""
    return "pending" if m.get("score") is None else m["score"]


def write_grades_csv(results: list[dict], path: Path) -> None:
    qs, ms = question_names(results), manual_names(results)
    with _private_writer(path) as f:
        w = SafeCsvWriter(f)
        w.writerow(["id", "name", "email", "assignment", *qs, *ms, "total", "max_score", "pending_by_hand",
                    "retrained_accuracy", "provisional", "status", "error"])
        for r in sorted(results, key=lambda r: r["student"]["id"]):
            scores = {q["name"]: q["score"] for q in r.get("questions", [])}
            by_hand = {m["name"]: m for m in r.get("manual") or []}
            s = r["student"]
            total = "" if r["status"] == "grader_error" else r["score"]  # not a 0: nothing was graded
            pending = sum(m.get("score") is None for m in by_hand.values())
            accuracy = retrained_accuracy(r)
            w.writerow([s["id"], s.get("name", ""), s.get("email", ""), r.get("assignment") or "",
                        *[scores.get(q, "") for q in qs], *[manual_cell(by_hand.get(m)) for m in ms],
                        total, r.get("max_score") or "", pending or "", "" if accuracy is None else accuracy,
                        provisional(r) or "", r["status"], r.get("error") or ""])


CANVAS_COLUMN = re.compile(r"^(?P<title>.*\S)\s*\((?P<id>\d+)\)$")
ASSIGNMENT_PREFIX = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*=\s*(?P<column>.+)$")  # "cnn_mnist=Title (id)"


def canvas_column(assignment: str | None = None, assignment_id: str | int | None = None) -> str:
    """The gradebook column Canvas matches on: ``Title (assignment id)``.

    Canvas's gradebook export names each assignment column ``Title (id)`` (e.g. ``Quiz 1
    (87568490)``) and its importer matches columns by that id; a bare title that matches no
    column creates a new assignment.  Accepts ``"Title (123)"`` alone, or a title and an id.
    """
    if assignment_id is not None:
        if not str(assignment_id).isdigit():
            raise ValueError(f"a Canvas assignment id is a number, got {assignment_id!r}")
        title = (assignment or "").strip()
        if not title:
            raise ValueError("give the assignment's title with its id")
        return f"{title} ({assignment_id})"
    m = CANVAS_COLUMN.match((assignment or "").strip())
    if not m:
        raise ValueError(f"expected the Canvas column as 'Title (assignment id)', e.g. 'CNN on MNIST (123456)', "
                         f"got {assignment!r}")
    return f"{m.group('title')} ({m.group('id')})"


def canvas_columns(values: list[str], assignment_id: str | int | None = None) -> dict[str | None, str]:
    """``--canvas-assignment`` values as {assignment name or None: column}.

    Each value is ``"Title (id)"`` (for a batch of one assignment) or ``"name=Title (id)"`` (one per
    assignment of a mixed batch: Canvas has one gradebook column per assignment).  With
    ``assignment_id`` there is one value, the bare title."""
    columns: dict[str | None, str] = {}
    if assignment_id is not None:
        if len(values) != 1 or "=" in values[0]:
            raise ValueError("--canvas-assignment-id goes with exactly one bare --canvas-assignment title")
        return {None: canvas_column(values[0], assignment_id)}
    for value in values:
        m = ASSIGNMENT_PREFIX.match(value)
        key, column = (m.group("name"), m.group("column")) if m else (None, value)
        if key in columns:
            raise ValueError(f"two Canvas columns given for {'assignment ' + repr(key) if key else 'the batch'}")
        columns[key] = canvas_column(column)
    return columns


def canvas_files(results: list[dict], canvas: str | dict[str | None, str] | None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Which Canvas import files a batch gets: [(file name, assignment, column)] and the problems.

    One assignment: ``canvas_grades.csv``.  A mixed batch: ``canvas_grades_<assignment>.csv`` for
    each assignment that has its own column (a single bare column cannot say which one it is)."""
    if not canvas:
        return [], []
    columns = {None: canvas} if isinstance(canvas, str) else dict(canvas)
    names = sorted({r["assignment"] for r in results if r.get("assignment")})  # a row of no known assignment: none
    problems = [f"--canvas-assignment names {name!r}, which has no submission in this batch"
                for name in columns if name is not None and name not in names]
    if len(names) <= 1:
        name = names[0] if names else ""
        column = columns.get(name) or columns.get(None)
        return ([("canvas_grades.csv", name, column)] if column else []), problems
    files = []
    for name in names:
        if name in columns:
            files.append((f"canvas_grades_{name}.csv", name, columns[name]))
        else:
            problems.append(f"no Canvas import for {name!r}: this batch holds {len(names)} assignments, so each "
                            f"needs its own column (--canvas-assignment '{name}=Title (assignment id)')")
    return files, problems


@dataclass
class CanvasPlan:
    """The Canvas imports of a batch: those written, those withheld and why, the problems of the request."""

    imports: list[tuple[str, str, str]] = field(default_factory=list)  # (file, assignment, column) written
    # (file, assignment, column, why): not written because totals in it would be provisional
    withheld: list[tuple[str, str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # an assignment without its column, a column for none


#: How to get an import when provisional totals withheld it (the console and the report say it).
CANVAS_PROVISIONAL_HELP = ("grade again with retraining on (the default; only these results are graded again), or "
                           "pass --canvas-provisional to import the provisional totals anyway")


def canvas_plan(results: list[dict], canvas: str | dict[str | None, str] | None,
                allow_provisional: bool = False) -> CanvasPlan:
    """Which Canvas imports :func:`write_all` writes: one per assignment with a column
    (:func:`canvas_files`), except where results of that assignment are provisional (their totals leave
    out points a retrain decides) and ``allow_provisional`` is off."""
    files, problems = canvas_files(results, canvas)
    plan = CanvasPlan(problems=problems)
    for file, name, column in files:
        waiting = [r for r in results if (r.get("assignment") or "") == name and provisional(r)]
        if waiting and not allow_provisional:
            reasons = sorted({PROVISIONAL_WHY[provisional(r)] for r in waiting})
            plan.withheld.append((file, name, column, f"{plural(len(waiting), 'result')} "
                                  f"{'is' if len(waiting) == 1 else 'are'} provisional ({'; '.join(reasons)}): "
                                  f"{CANVAS_PROVISIONAL_HELP}"))
        else:
            plan.imports.append((file, name, column))
    return plan


# --- whose file it is ----------------------------------------------------------------------------------

IDENTITY_KEYS = ("canvas_user_id", "canvas_anonymous_id", "sis_user_id", "sis_login_id", "nbgrader_student")
LMS_KEYS = ("canvas_user_id", "canvas_anonymous_id", "sis_user_id", "sis_login_id")
UNOWNED_HELP = ("rename the file as Canvas names it (<name>_<Canvas user id>_<attachment id>_<file name>, e.g. "
                "smithjane_12345_67890_cnn_mnist.ipynb) and run grade again (nothing else is graded again), or enter "
                "this student's grade in Canvas by hand")


def no_identity_why(r: dict) -> str:
    """Why a row without a Canvas identity is in no Canvas import, and what to do."""
    extra = r["student"].get("extra") or {}
    if extra.get("canvas_anonymous_id"):
        return "anonymous Canvas download: enter the grade in SpeedGrader"
    if extra.get("nbgrader_student"):
        return "no Canvas identity (an nbgrader submission): enter this grade in Canvas by hand"
    return f"owner unknown: its file name is not one Canvas gives a student's file, so it has no Canvas user id; " \
           f"{UNOWNED_HELP}"


def unowned(results: list[dict]) -> list[tuple[dict, str]]:
    """Files of an LMS download whose owner the batch cannot tell: a name that is not the LMS's (so no
    user id), or a Canvas name that reads as more than one student's.  Each with what to do."""
    lms = any((r["student"].get("extra") or {}).get(k) for r in results for k in LMS_KEYS)
    out = []
    for r in sorted(results, key=lambda r: r["student"]["id"]):
        extra = r["student"].get("extra") or {}
        if extra.get("duplicate_of"):
            continue  # the student's other file is the one that counts
        if extra.get("canvas_ambiguous"):
            out.append((r, extra["canvas_ambiguous"]))
        elif lms and not any(extra.get(k) for k in IDENTITY_KEYS):
            out.append((r, no_identity_why(r)))
    return out


def variant_peers(results: list[dict]) -> dict[int, list[str]]:
    """Variant index -> the ids of this batch's students who have it (per-student variants)."""
    peers: dict[int, list[str]] = {}
    for r in results:
        index = (r.get("variant") or {}).get("index")
        if index is not None and not (r["student"].get("extra") or {}).get("duplicate_of"):
            peers.setdefault(int(index), []).append(r["student"]["id"])
    return peers


def variant_flags(r: dict, peers: dict[int, list[str]] | None = None) -> list[str]:
    """Per-student variants: a notebook id that is not the submitter's, answers right only for
    another student's numbers (instructor only: they name classmates)."""
    v = r.get("variant")
    if not v:
        return []
    out = []
    own = v.get("index")
    if own is None:
        out.append("variant unknown: no LMS identity and no STUDENT_ID in the notebook")
    elif v.get("declared_differs"):
        declared = v.get("declared_id")
        which = ("" if v.get("declared_index") is None else
                 " (the same variant)" if v.get("declared_index") == own else f" (variant {v['declared_index'] + 1})")
        out.append(f"notebook's STUDENT_ID {declared!r}{which} is not the submitter's; graded on the submitter's "
                   f"variant {own + 1}" if declared is not None else
                   f"no STUDENT_ID in the notebook; graded on the submitter's variant {own + 1}")
    elif str(v.get("identity_source", "")).startswith("the notebook"):
        out.append(f"variant {own + 1} taken from the notebook's STUDENT_ID (no LMS identity)")
    for index, keys in sorted((v.get("matches") or {}).items(), key=lambda kv: int(kv[0])):
        names = [i for i in (peers or {}).get(int(index), []) if i != r["student"]["id"]]
        who = ", ".join(names) if names else f"variant {int(index) + 1} (no student of this batch)"
        out.append(f"matches variant of {who}: {', '.join(keys)}")
    return out


def flags(r: dict, peers: dict[int, list[str]] | None = None) -> list[str]:
    """What a person should look at for this row (instructor's report only, never a student's page)."""
    extra = r["student"].get("extra") or {}
    out = variant_flags(r, peers)
    if extra.get("identical_to"):
        out.append(f"byte-identical to {extra['identical_to']}")
    out += similarity.flags(r)  # similar code answers (autograder.lms.similarity)
    if extra.get("duplicate_of"):
        out.append(f"second file of {extra['duplicate_of']} (not graded)")
    if extra.get("late"):
        out.append("late (Canvas)")
    if extra.get("canvas_ambiguous"):  # whose it is is a person's call (see submissions.canvas_readings)
        out.append(extra["canvas_ambiguous"])
    if r.get("retry"):
        out.append("worker failed: graded again on the next run")
    note = provisional_note(r)
    if note:
        out.append(note)
    repeated = repeated_grader_error(r)
    if repeated:
        out.append(f"repeated grader error: {repeated} (the same cause on {repeated_runs(r)} runs in a row)")
    return out


def repeated_grader_error(r: dict) -> str | None:
    """The cause of a grader error that repeats the previous run's cause (a rerun did not help), else None."""
    if r.get("status") != "grader_error":
        return None
    cause, earlier = r.get("cause") or "unknown", r.get("earlier_causes") or []
    return cause if earlier and earlier[-1] == cause else None


def repeated_runs(r: dict) -> int:
    cause, n = r.get("cause") or "unknown", 1
    for earlier in reversed(r.get("earlier_causes") or []):
        if earlier != cause:
            break
        n += 1
    return n


def canvas_row(r: dict, allow_provisional: bool = False) -> tuple[list | None, str]:
    """This result's row of the Canvas import, or ``None`` and why it is left out (and what to do)."""
    s, extra = r["student"], r["student"].get("extra") or {}
    if r["status"] == "grader_error":
        return None, f"grader error, not graded: {r.get('error')}"
    if extra.get("duplicate_of"):
        return None, r.get("error") or "duplicate"
    if extra.get("canvas_ambiguous"):  # its file name may name another student: never imported as theirs
        return None, extra["canvas_ambiguous"]
    if r.get("retry") or not r.get("questions"):
        return None, f"not graded: {r.get('error') or 'no result'}"
    ids = [extra.get("canvas_user_id") or "", extra.get("sis_user_id") or "", extra.get("sis_login_id") or ""]
    blocking = []  # every reason that keeps it out, each with what to do
    if not any(ids):
        blocking.append(no_identity_why(r))
    if provisional(r) and not allow_provisional:
        blocking.append(f"{provisional_note(r)}; {CANVAS_PROVISIONAL_HELP}")
    waiting = [m["name"] for m in r.get("manual") or [] if m.get("score") is None]
    if waiting:  # the import waits: a partial total out of the full maximum would read as a low grade
        blocking.append(f"waits for {plural(len(waiting), 'hand-graded question')} ({', '.join(waiting)}): "
                        "fill in manual_scores.csv and run grade again")
    if blocking:
        return None, "; ".join(blocking)
    return [s.get("name") or "", *ids, "", fmt(r["score"])], ""


def write_canvas_csv(results: list[dict], path: Path, column: str,
                     allow_provisional: bool = False) -> list[tuple[dict, str]]:
    """Canvas gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then ``column``.

    Only rows Canvas can match to the right student are written: ``ID`` is the Canvas user id
    from the download's file names (never a grader-made id such as ``12345~2``, which Canvas
    would read as 12345), ``SIS User ID`` a Gradescope SID.  Returns the results left out,
    with the reason, for :func:`write_review_csv`.
    """
    max_score = max((r.get("max_score") or 0 for r in results), default=0)
    left_out = []
    with _private_writer(path) as f:
        w = SafeCsvWriter(f)
        w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", column])
        w.writerow(["Points Possible", "", "", "", "", fmt(max_score)])
        for r in sorted(results, key=lambda r: r["student"]["id"]):
            row, why = canvas_row(r, allow_provisional)
            if row is None:
                left_out.append((r, why))
            else:
                w.writerow(row)
    return left_out


def write_review_csv(results: list[dict], path: Path, allow_provisional: bool = False) -> int:
    """Everything a person should look at: files whose owner is unknown first, then every row left out of
    the Canvas import and every flagged row, each with why and what to do."""
    n = 0
    peers = variant_peers(results)
    first = [r for r, _ in unowned(results)]
    rest = sorted((r for r in results if not any(r is u for u in first)), key=lambda r: r["student"]["id"])
    with _private_writer(path) as f:
        w = SafeCsvWriter(f)
        w.writerow(["id", "source", "canvas_user_id", "status", "owner", "cause", "in_canvas_import", "reason"])
        for r in [*first, *rest]:
            row, why = canvas_row(r, allow_provisional)
            reasons = ([why] if row is None else []) + [f for f in flags(r, peers) if not why or f not in why]
            if row is None or reasons:
                n += 1
                s, fault = r["student"], of_result(r)  # whose fault and why, typed (autograder.faults)
                w.writerow([s["id"], s.get("source", ""), (s.get("extra") or {}).get("canvas_user_id", ""),
                            r["status"], fault.owner if fault else "", fault.cause if fault else "",
                            "no" if row is None else "yes", "; ".join(reasons)])
    return n


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(results: list[dict]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    scores = [r["score"] for r in results if scored(r)] or [0]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(scores, bins=min(20, max(len(set(scores)), 1)), color="#2f81f7", edgecolor="white")
    ax.set_xlabel("total score"), ax.set_ylabel("submissions")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    plots.append(("Score distribution", _png(fig)))
    qs = question_names(results)
    if qs:
        means = []
        for q in qs:
            fracs = [x["score"] / x["max_score"] for r in results for x in r.get("questions", [])
                     if x["name"] == q and x["max_score"]]
            means.append(100 * statistics.mean(fracs) if fracs else 0)
        assignment = next((r.get("assignment") for r in results if r.get("assignment")), None)
        labels = [outline.label(assignment, q) for q in qs]  # one assignment's rows: its notebook's titles
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(qs) + 1))
        ax.barh(labels[::-1], means[::-1], color="#1a7f37")
        ax.set_xlim(0, 100), ax.set_xlabel("average score (% of the question's points)")
        plots.append(("Per-question average", _png(fig)))
    accs = [r["retrain"]["accuracy"] for r in results if r.get("retrain") and r["retrain"].get("accuracy") is not None]
    if accs:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(accs, bins=20, color="#8250df", edgecolor="white")
        for name, threshold in sorted(_thresholds(results).items()):
            ax.axvline(threshold, color="#cf222e", linestyle="--", label=f"{name}: threshold {threshold:g}")
        ax.set_xlabel("test accuracy after retraining"), ax.legend()
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        plots.append(("Retrained test accuracy", _png(fig)))
    return plots


def _thresholds(results: list[dict]) -> dict[str, float]:
    """Each retrained assignment's accuracy threshold, from its spec (unknown names are left out)."""
    from autograder import registry

    out = {}
    for name in {r.get("assignment") for r in results if r.get("retrain")} - {None}:
        try:
            out[name] = registry.get(name).training.threshold
        except LookupError:
            pass
    return out


def feedback_rows(result: dict) -> list[dict]:
    """The student's questions, autograded and by hand, in the notebook's order with its labels:
    ``{"label", "name", "question"}`` (an autograded question) or ``{"label", "name", "manual"}``."""
    assignment = result.get("assignment")
    rows = [{"name": q["name"], "question": q} for q in result.get("questions") or []]
    rows += [{"name": m["name"], "manual": m} for m in result.get("manual") or []]
    for row in rows:
        row["label"] = outline.label(assignment, row["name"])
        q = row.get("question")
        if q is not None:  # the points of its checks this run did not decide (see autograder.result.provisional)
            cases = q.get("cases") or []
            row["undecided_points"] = sum(c["points"] if c.get("points") is not None else
                                          q["max_score"] / max(len(cases), 1) for c in cases if c.get("undecided"))
    return sorted(rows, key=lambda row: outline.order_key(assignment, row["name"]))


def render_feedback(result: dict) -> str:
    """The student's own page: their scores and messages, nothing about any classmate."""
    failed = [c for c in (result.get("execution") or {}).get("cells", []) if c.get("error")]
    from autograder.verifier.describe import describe_run

    return FEEDBACK.render(r=result, fmt=fmt, failed_cells=failed, clean=_clean, case_label=_case_label,
                           rows=feedback_rows(result), provisional=provisional(result),
                           student_provisional=STUDENT_PROVISIONAL, retrained=describe_run)


def _case_label(test_name: str) -> str:
    """``test_layer_params_hidden`` -> ``layer_params``: which answer a hidden check is about."""
    name = test_name.removeprefix("test_")
    return name.removesuffix("_hidden")


def scored(r: dict) -> bool:
    """Whether the row has a score of the submission's own: graded by the engine, not a grader
    error, not an input that could not be graded (a duplicate, a PDF, a refused zip)."""
    return r["status"] != "grader_error" and bool(r.get("questions"))


def _clean(message: str) -> str:
    """Otter's "❌ Test case failed" header says nothing the table does not say already."""
    return (message or "").replace("❌ Test case failed\n", "").replace("✅ Test case passed", "").strip()


def _accuracy(r: dict) -> str:
    rt = r.get("retrain") or {}
    if rt.get("accuracy") is not None:
        return f"{rt['accuracy']:.4f}" + (" (pre-verified)" if rt.get("preverified") else
                                          " (cached)" if rt.get("cache_hit") else "")
    if rt.get("error"):
        return f"- ({first_sentences(rt['error'], 160)})"
    return "not retrained (provisional)" if provisional(r) else "-"


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")


def first_sentences(text: str, limit: int) -> str:
    """``text`` cut to whole sentences of at most ``limit`` characters in all, never in the middle of one;
    the first sentence is kept whole even when longer (a table wraps it).  ``...`` marks a cut."""
    text = " ".join((text or "").split())
    if len(text) <= limit:
        return text
    kept = ""
    for sentence in SENTENCE_END.split(text):
        if kept and len(kept) + 1 + len(sentence) > limit:
            break
        kept = f"{kept} {sentence}" if kept else sentence
    return kept + (" ..." if len(kept) < len(text) else "")


def write_all(results: list[dict], out: Path, autograder_zip: Path | None = None,
              canvas: str | dict[str | None, str] | None = None, anonymous: bool = False,
              canvas_provisional: bool = False) -> list[str]:
    """Grade sheet, review list, Canvas imports (when ``canvas``, the column or the columns by
    assignment, is given; see :func:`canvas_plan`: an assignment with provisional results gets none
    unless ``canvas_provisional``), feedback pages, the graders' pages of the hand-graded questions
    (``anonymous``: codes instead of names), ``misconceptions.csv`` and the summary; every file readable
    by its owner only.  Returns what could not be written (and why): feedback pages, an assignment
    without its Canvas column; everything else is written regardless.  An import withheld for provisional
    totals is not among them: :func:`canvas_plan` says so, and the report and the console show it."""
    from autograder.lms import insight as class_insight

    assignment = ", ".join(sorted({r["assignment"] for r in results if r.get("assignment")})) or "assignment"
    os.chmod(out, 0o700)
    write_grades_csv(results, out / "grades.csv")
    plan = canvas_plan(results, canvas, canvas_provisional)
    failed = list(plan.problems)
    for file, name, column in plan.imports:
        write_canvas_csv([r for r in results if (r.get("assignment") or "") == name], out / file, column,
                         canvas_provisional)
    for file, _, _, _ in plan.withheld:
        (out / file).unlink(missing_ok=True)  # an earlier run's import must not pass for this run's
    copies = similarity.check_class(results)  # copied code: pairs of similar code answers, per assignment
    flagged = similarity.annotate(results, copies)
    n_review = write_review_csv(flagged, out / "needs_review.csv", canvas_provisional)
    (out / "feedback").mkdir(exist_ok=True)
    os.chmod(out / "feedback", 0o700)
    for r in results:  # one page that cannot be written must not stop the others or the summary
        try:
            write_private_text(out / "feedback" / f"{r['student']['id']}.html", render_feedback(r))
        except Exception as exc:  # noqa: BLE001
            failed.append(f"{r['student']['id']}: {type(exc).__name__}: {exc}")
    manual_pages = write_manual_pages(results, out, anonymous)
    insight = class_insight.sections(results)
    class_insight.write_misconceptions_csv(insight, out / "misconceptions.csv")
    scored_rows = [r for r in results if scored(r)]
    stats = []  # per assignment: a mixed batch's scores are out of different totals
    for name in sorted({r.get("assignment") or "" for r in results}) or [""]:
        rows = [r for r in results if (r.get("assignment") or "") == name]
        scores = [r["score"] for r in rows if scored(r)] or [0]
        stats.append({"assignment": name or "unknown assignment", "n_scored": sum(scored(r) for r in rows),
                      "mean": round(statistics.mean(scores), 2), "median": statistics.median(scores),
                      "max_score": max((r.get("max_score") or 0 for r in rows), default=0),
                      "plots": _plots(rows) if rows and any(scored(r) for r in rows) else [],
                      "insight": next((i for i in insight if i["assignment"] == name), None)})
    provisional_rows = [r for r in results if provisional(r)]
    page = SUMMARY.render(fmt=fmt, assignment=assignment, n=len(results), n_scored=len(scored_rows), scored=scored,
                          n_errors=sum(r["status"] == "error" for r in results),
                          n_grader_errors=sum(r["status"] == "grader_error" for r in results),
                          stats=stats, manual_pages=manual_pages,
                          n_pending=sum(m["pending"] for m in manual_pages),
                          canvas=[(file, column) for file, _, column in plan.imports],
                          canvas_withheld=plan.withheld,
                          canvas_provisional=canvas_provisional and any(
                              provisional(r) for r in results for _, name, _ in plan.imports
                              if (r.get("assignment") or "") == name),
                          provisional_rows=provisional_rows,
                          provisional_why=sorted({PROVISIONAL_WHY[provisional(r)] for r in provisional_rows}),
                          unowned=unowned(results), label=outline.label,
                          n_review=n_review, accuracy=_accuracy, provisional=provisional, similarity=copies,
                          flags=functools.partial(flags, peers=variant_peers(results)),
                          results=sorted(flagged, key=lambda r: r["student"]["id"]))
    write_private_text(out / "report.html", page)
    return failed


MANUAL = ENV.get_template("manual.html.j2")  # the graders' page of one hand-graded question


def score_class(score, max_score) -> str:
    """How a hand-graded score is coloured: full points ``ok``, none ``bad``, some ``part``, none yet ``pending``."""
    if score is None:
        return "pending"
    return "ok" if score >= max_score else "bad" if score <= 0 else "part"


def write_manual_pages(results: list[dict], out: Path, anonymous: bool = False) -> list[dict]:
    """``manual/<assignment>-<question>.html``: every student's answer to one hand-graded question
    side by side, with the question's text, its points and the master's reference answer.  Answers are
    rendered by :mod:`autograder.lms.safe_markdown` (no raw HTML, no script: the page's policy forbids
    it too).  ``anonymous``: each student is shown by the code ``manual_scores.csv`` uses.  Returns, per
    page, the counts the summary shows."""
    from autograder import manual, manual_scores
    from autograder.lms import safe_markdown

    pages = []
    names = sorted({(r.get("assignment") or "", m["name"]) for r in results for m in r.get("manual") or []})
    if not names:
        return pages
    folder = out / "manual"
    folder.mkdir(exist_ok=True)
    os.chmod(folder, 0o700)
    key = manual_scores.anonymous_key(out) if anonymous else b""
    for assignment, name in names:
        question = next((q for q in manual.questions_for(assignment) if q.name == name), None)
        answers = []
        for r in results:
            if (r.get("assignment") or "") != assignment or (r["student"].get("extra") or {}).get("duplicate_of"):
                continue
            for m in r.get("manual") or []:
                if m["name"] == name:
                    sid = r["student"]["id"]
                    who = manual_scores.anonymous_code(key, sid) if anonymous else sid
                    answers.append({"who": who, "name": "" if anonymous else (r["student"].get("name") or ""),
                                    "m": m})
        answers.sort(key=lambda a: a["who"])
        file = f"{assignment}-{name}.html"
        write_private_text(folder / file, MANUAL.render(
            assignment=assignment, name=name, fmt=fmt, anonymous=anonymous, answers=answers,
            md=safe_markdown.render, csp=safe_markdown.CSP, score_class=score_class,
            prompt=question.prompt if question else "", reference=manual.reference_answer(assignment, name),
            points=question.points if question else max((a["m"]["max_score"] for a in answers), default=0)))
        pages.append({"assignment": assignment, "name": name, "file": f"manual/{file}", "answers": len(answers),
                      "pending": sum(a["m"].get("score") is None for a in answers)})
    return pages


__all__ = ["write_all", "render_feedback", "write_grades_csv", "write_canvas_csv", "write_review_csv",
           "canvas_column", "canvas_columns", "canvas_files", "canvas_plan", "CanvasPlan", "canvas_row", "flags",
           "write_private_text", "write_manual_pages", "manual_names", "unowned", "first_sentences", "plural",
           "feedback_rows", "retrained_accuracy"]
