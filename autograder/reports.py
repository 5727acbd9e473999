"""What a batch leaves for people: grade sheet, Canvas import, per-student feedback, summary.

All of it is derived from the per-submission result files, so rerunning a batch rebuilds it
identically.  HTML pages are self-contained (styles and plots inline) so they can be mailed
or uploaded as they are.
"""

from __future__ import annotations

import base64
import csv
import io
import statistics
from pathlib import Path

import jinja2

ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
h1{font-size:1.6rem} table{border-collapse:collapse;width:100%;margin:1rem 0}
th,td{border-bottom:1px solid #d0d7de;padding:.45rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa} .ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600}
.part{color:#9a6700;font-weight:600} pre{background:#f6f8fa;padding:.75rem;overflow-x:auto;white-space:pre-wrap}
.score{font-size:2rem;font-weight:700} .card{border:1px solid #d0d7de;border-radius:8px;padding:1rem;margin:1rem 0}
.muted{color:#57606a} img{max-width:100%}
"""

FEEDBACK = ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Feedback for {{ r.student.id }}: {{ r.assignment or "assignment" }}</title>
<style>{{ style }}</style></head><body>
<h1>Feedback: {{ r.assignment or "assignment" }}</h1>
<p class="muted">Student <strong id="student">{{ r.student.id }}</strong>{% if r.student.name %} ({{ r.student.name }}){% endif %}</p>
<div class="card"><div class="score" id="total">{{ fmt(r.score) }}{% if r.max_score %} / {{ fmt(r.max_score) }}{% endif %}</div>
{% if r.status != "graded" %}<p class="bad" id="status">Not fully graded: {{ r.error }}</p>{% endif %}
{% if r.student.extra.identical_to %}<p class="part">Flagged: this notebook is byte-identical to {{ r.student.extra.identical_to }}'s.</p>{% endif %}
</div>
{% if r.questions %}
<table id="questions"><thead><tr><th>Question</th><th>Score</th><th>Feedback</th></tr></thead><tbody>
{% for q in r.questions %}
<tr><td>{{ q.name }}</td>
<td class="{{ 'ok' if q.score == q.max_score else ('bad' if q.score == 0 else 'part') }}">{{ fmt(q.score) }} / {{ fmt(q.max_score) }}</td>
<td>{% for c in q.cases if not c.passed %}<p class="muted">{{ "hidden check" if c.hidden else "public check" }}</p><pre>{{ clean(c.message) }}</pre>{% else %}All checks passed.{% endfor %}</td></tr>
{% endfor %}</tbody></table>
{% endif %}
{% if r.retrain %}<div class="card" id="retrain"><h2>Model retrained by the grader</h2>
{% if r.retrain.error %}<p class="bad">{{ r.retrain.error }}</p>{% else %}
<p>Test accuracy <strong>{{ "%.4f"|format(r.retrain.accuracy) }}</strong> after {{ r.retrain.epochs }} epochs at batch size {{ r.retrain.batch_size }},
{{ r.retrain.optimizer }}, on {{ r.retrain.device }} ({{ r.retrain.backend }}){% if r.retrain.cache_hit %}, from the retraining cache{% else %}, {{ r.retrain.seconds }} s{% endif %}.</p>
{% for n in r.retrain.notes %}<p class="muted">{{ n }}</p>{% endfor %}{% endif %}</div>{% endif %}
{% if r.limits_hit %}<div class="card"><h2>Limits reached</h2><ul>{% for l in r.limits_hit %}<li>{{ l }}</li>{% endfor %}</ul></div>{% endif %}
{% if r.status != "graded" or failed_cells %}<div class="card" id="log"><h2>Execution log</h2>
{% for c in failed_cells %}<p>Cell {{ c.index }}: <code>{{ c.error }}</code></p>{% endfor %}
{% if r.execution and r.execution.output_tail %}<pre>{{ r.execution.output_tail[-6000:] }}</pre>{% endif %}</div>{% endif %}
</body></html>
""")

SUMMARY = ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Grading summary: {{ assignment }}</title><style>{{ style }}</style></head><body>
<h1>Grading summary: {{ assignment }}</h1>
<div class="card"><p><strong id="count">{{ n }}</strong> submissions, <strong>{{ n_errors }}</strong> with errors.
Mean score <strong>{{ fmt(mean) }}</strong> / {{ fmt(max_score) }}, median {{ fmt(median) }}.</p></div>
{% for title, png in plots %}<h2>{{ title }}</h2><img alt="{{ title }}" src="data:image/png;base64,{{ png }}">{% endfor %}
<h2>Submissions</h2><table><thead><tr><th>Student</th><th>Score</th><th>Status</th></tr></thead><tbody>
{% for r in results %}<tr><td><a href="feedback/{{ r.student.id }}.html">{{ r.student.id }}</a></td><td>{{ fmt(r.score) }}</td>
<td class="{{ 'ok' if r.status == 'graded' else 'bad' }}">{{ r.status }}{% if r.error %}: {{ r.error[:160] }}{% endif %}</td></tr>{% endfor %}
</tbody></table></body></html>
""")


def fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def question_names(results: list[dict]) -> list[str]:
    names: list[str] = []
    for r in results:
        for q in r.get("questions", []):
            if q["name"] not in names:
                names.append(q["name"])
    return names


def write_grades_csv(results: list[dict], path: Path) -> None:
    qs = question_names(results)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "email", *qs, "total", "max_score", "status", "error"])
        for r in sorted(results, key=lambda r: r["student"]["id"]):
            scores = {q["name"]: q["score"] for q in r.get("questions", [])}
            s = r["student"]
            w.writerow([s["id"], s.get("name", ""), s.get("email", ""), *[scores.get(q, 0) for q in qs],
                        r["score"], r.get("max_score") or "", r["status"], r.get("error") or ""])


def write_canvas_csv(results: list[dict], path: Path, assignment: str) -> None:
    """Canvas gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then the assignment."""
    max_score = max((r.get("max_score") or 0 for r in results), default=0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", assignment])
        w.writerow(["Points Possible", "", "", "", "", fmt(max_score)])
        for r in sorted(results, key=lambda r: r["student"]["id"]):
            s = r["student"]
            w.writerow([s.get("name") or s["id"], s["id"], "", s.get("email", ""), "", fmt(r["score"])])


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
    scores = [r["score"] for r in results]
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
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(qs) + 1))
        ax.barh(qs[::-1], means[::-1], color="#1a7f37")
        ax.set_xlim(0, 100), ax.set_xlabel("average score (% of the question's points)")
        plots.append(("Per-question average", _png(fig)))
    accs = [r["retrain"]["accuracy"] for r in results if r.get("retrain") and r["retrain"].get("accuracy") is not None]
    if accs:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(accs, bins=20, color="#8250df", edgecolor="white")
        ax.axvline(0.99, color="#cf222e", linestyle="--", label="threshold 0.99")
        ax.set_xlabel("test accuracy after retraining"), ax.legend()
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        plots.append(("Retrained test accuracy", _png(fig)))
    return plots


def render_feedback(result: dict) -> str:
    failed = [c for c in (result.get("execution") or {}).get("cells", []) if c.get("error")]
    return FEEDBACK.render(r=result, style=STYLE, fmt=fmt, failed_cells=failed, clean=_clean)


def _clean(message: str) -> str:
    """Otter's "❌ Test case failed" header says nothing the table does not say already."""
    return message.replace("❌ Test case failed\n", "").strip()


def write_all(results: list[dict], out: Path, autograder_zip: Path | None = None) -> None:
    assignment = next((r.get("assignment") for r in results if r.get("assignment")), "assignment")
    write_grades_csv(results, out / "grades.csv")
    write_canvas_csv(results, out / "canvas_grades.csv", assignment)
    (out / "feedback").mkdir(exist_ok=True)
    for r in results:
        (out / "feedback" / f"{r['student']['id']}.html").write_text(render_feedback(r))
    scores = [r["score"] for r in results] or [0]
    max_score = max((r.get("max_score") or 0 for r in results), default=0)
    page = SUMMARY.render(style=STYLE, fmt=fmt, assignment=assignment, n=len(results),
                          n_errors=sum(r["status"] != "graded" for r in results), mean=round(statistics.mean(scores), 2),
                          median=statistics.median(scores), max_score=max_score, plots=_plots(results) if results else [],
                          results=sorted(results, key=lambda r: r["student"]["id"]))
    (out / "report.html").write_text(page)


__all__ = ["write_all", "render_feedback", "write_grades_csv", "write_canvas_csv"]
