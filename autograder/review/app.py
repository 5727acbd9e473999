"""The review page: hand grading of a graded output folder in a browser, one question at a time.

``python -m autograder review OUT`` serves it on 127.0.0.1 (a random free port unless ``--port``)
and prints its URL with a secret token, as Jupyter does: the first request with ``?token=`` sets
a cookie (HttpOnly, SameSite=Strict) and every later request needs it, so other users of the
machine cannot reach the page.  Cookies do not keep the ports of a host apart, so the cookies'
names carry the port: a second review page open in the same browser leaves the first one's alone.  Requests for any other host name are refused (DNS rebinding), and
every POST carries a CSRF token derived from the secret.

Each question's page shows its text, points, reference answer and rubric, then every answer,
identical or near-identical ones grouped (:mod:`.groups`), rendered by
:mod:`autograder.lms.safe_markdown` (no raw HTML), code and images as the student left them.  A
group's form (a plain POST) sets points and a comment for all its members, or toggles a rubric
item (:mod:`.rubric`); JavaScript adds keys (next, previous, rubric items, scores), saves without
reloading and reloads when the sheet changes on disk.  The Content-Security-Policy allows the
page's own script and nothing else, so student content never runs script.

Every save goes to ``OUT/manual_scores.csv`` by :func:`autograder.manual_scores.save` (locked,
read again, checked against what the grader saw, written atomically): a spreadsheet's save or a
second grader's is never lost, and a cell someone else changed meanwhile is reported, not
overwritten.  Totals, feedback pages, the report and the Canvas import follow on the next
``grade`` run (nothing is graded again).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

import flask
from flask.sessions import SecureCookieSessionInterface

from autograder import manual_scores as sheets
from autograder.lms import safe_markdown
from autograder.review import groups as grouping, rubric as rubrics

HERE = Path(__file__).resolve().parent
COOKIE = "autograder_review"
#: the page's own script and stylesheet; images only inline; nothing else, anywhere
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@dataclass
class Review:
    """What the server grades: the output folder's results (read at start), the roster, the way of naming."""

    out: Path
    results: list[dict]
    roster: sheets.Roster
    anonymous: bool
    questions: list[tuple[str, str]] = field(default_factory=list)  # (assignment, question) in order
    stamp: tuple = ()  # the results folder as last read (see refresh)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def sheet_path(self) -> Path:
        return self.out / sheets.SCORES_FILE

    @staticmethod
    def _stamp(out: Path) -> tuple:
        try:
            st = (Path(out) / "results").stat()
            return st.st_mtime_ns, st.st_ino
        except OSError:
            return ()

    @staticmethod
    def _read(out: Path) -> tuple[list[dict], sheets.Roster, list[tuple[str, str]]]:
        """The folder's results that have a hand-graded answer, their roster and their questions."""
        from autograder import manual

        results = []
        for path in sorted((out / "results").glob("*.json")):
            try:
                r = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if "manual" not in r:
                r = manual.enrich(r, r.get("submission"))
            if r.get("manual") and not (r["student"].get("extra") or {}).get("duplicate_of"):
                results.append(r)
        roster = sheets.Roster.of(results, sheets.anonymous_key(out)) if results else sheets.Roster({}, {})
        questions = sorted({(r.get("assignment") or "", m["name"]) for r in results for m in r["manual"]})
        return results, roster, questions

    def refresh(self) -> None:
        """Read the results again when a grade run changed them since (late submissions graded while the page
        is open): their answers join the page, and their rows in the sheet are no longer unknown ids."""
        stamp = self._stamp(self.out)
        if stamp == self.stamp:
            return
        with self._lock:
            if stamp == self.stamp:
                return
            results, roster, questions = self._read(self.out)
            if results:
                self.results, self.roster, self.questions = results, roster, questions
            self.stamp = stamp

    @classmethod
    def load(cls, out: Path, anonymous: bool | None = None) -> tuple["Review", list[str]]:
        """The folder's results, and the sheet brought in line with them (rows added, ids or codes as the
        pages name students); returns what was done, for the console."""
        out = Path(out)
        stamp = cls._stamp(out)
        results, roster, questions = cls._read(out)
        if not results:
            raise LookupError(f"{out} holds no graded answer to a hand-graded question (run grade first)")
        target = out / sheets.SCORES_FILE
        said = []
        before = sheets.recorded_anonymity(out)
        anonymous = sheets.choose_anonymity(out, anonymous,
                                            sheets.parse(target, strict=False) if target.is_file() else None, roster)
        if before != anonymous:  # the graders' static pages follow at once
            from autograder.lms import reports

            reports.write_manual_pages(results, out, anonymous=anonymous)
            said.append(f"The graders' pages in {out / 'manual'} now name students by "
                        f"{'anonymous code' if anonymous else 'id'}, as this page does")
        try:
            change = sheets.update(target, roster, anonymous, out)
        except sheets.ManualScoresError as exc:  # the page lists the problems and saves nothing until they are fixed
            said.append(f"{exc}\nThe page shows these problems and saves nothing until the sheet is fixed.")
        else:
            if change.renamed:
                said.append(f"{target.name}: {change.renamed} row(s) now name the student by "
                            f"{'anonymous code' if anonymous else 'id'}; the file as it was is kept as {change.backup}")
            said += [f"{target.name}: {line}" for line in change.restored]
        return cls(out, results, roster, anonymous, questions, stamp), said

    def answers(self, sheet: sheets.Sheet, assignment: str, question: str) -> list[dict]:
        """Every answer to one question with its state in the sheet now."""
        found, rows = [], sheets.rows_by_answer(sheet, self.roster)
        for r in self.results:
            if (r.get("assignment") or "") != assignment:
                continue
            for m in r["manual"]:
                if m["name"] != question:
                    continue
                sid = r["student"]["id"]
                points, comment = _state(rows.get((sid, question)))
                found.append({"who": self.roster.shown(sid, self.anonymous), "sid": sid, "m": m,
                              "name": "" if self.anonymous else (r["student"].get("name") or ""),
                              "points": points, "comment": comment})
        return sorted(found, key=lambda a: a["who"])

    def left(self, sheet: sheets.Sheet) -> tuple[int, int]:
        """(answers still pending, answers) over every question."""
        rows = sheets.rows_by_answer(sheet, self.roster)
        states = [_state(rows.get((r["student"]["id"], m["name"])))[0] for r in self.results for m in r["manual"]]
        return sum(p is None for p in states), len(states)


def _state(row: sheets.SheetRow | None) -> tuple[float | None, str]:
    try:
        return sheets.cell_state(row)
    except ValueError:  # points that are not a number: the sheet's problems are shown above
        return None, row.cell(3) if row else ""


def _seen(a: dict) -> str:
    return json.dumps([a["points"], a["comment"]])


def _port() -> str:
    """The port of the request's host (after the host check): part of every cookie's name."""
    host = flask.request.host
    return host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else "80"


def _cookie() -> str:
    return f"{COOKIE}-{_port()}"


class _SessionPerPort(SecureCookieSessionInterface):
    """Flask's signed session cookie (the page's messages after a save), named per port like the token's."""

    def get_cookie_name(self, app: flask.Flask) -> str:
        return f"{COOKIE}-session-{_port()}"


def _same(given: str, secret: str) -> bool:
    """A constant-time comparison that also takes text that is not ASCII (compare_digest refuses such str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), secret.encode())


def create_app(review: Review, token: str | None = None) -> flask.Flask:
    """The Flask application for ``review``; ``token`` is the secret of the printed URL (random if None)."""
    token = token or secrets.token_urlsafe(32)
    csrf = hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()
    app = flask.Flask(__name__, template_folder=str(HERE / "templates"), static_folder=None)
    app.config.update(SECRET_KEY=secrets.token_bytes(32), SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_HTTPONLY=True, MAX_CONTENT_LENGTH=256 * 1024, TOKEN=token)
    app.session_interface = _SessionPerPort()
    app.jinja_env.autoescape = True  # every template, whatever its name (Flask escapes only *.html by default)
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True

    def fmt(x) -> str:
        return "" if x is None else f"{x:g}"

    def score_class(points, top) -> str:
        from autograder.lms.reports import score_class as lms_score_class

        return lms_score_class(points, top)

    @app.before_request
    def guard():
        host = (flask.request.host or "").rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            flask.abort(403, "this page answers on 127.0.0.1 only")
        given = flask.request.args.get("token")
        if given is not None:
            if not _same(given, token):
                flask.abort(403, "wrong token: open the URL the review command printed")
            response = flask.redirect(flask.request.path, 303)
            response.set_cookie(_cookie(), token, httponly=True, samesite="Strict")
            return response
        if not _same(flask.request.cookies.get(_cookie(), ""), token):
            flask.abort(403, "open the URL the review command printed (it holds the page's secret token)")
        if flask.request.method == "POST":
            origin = flask.request.headers.get("Origin")
            if origin not in (None, "null") and origin != f"{flask.request.scheme}://{flask.request.host}":
                flask.abort(403, "a request from another site")
            if not _same(flask.request.form.get("csrf", ""), csrf):
                flask.abort(403, "the form's CSRF token is missing or wrong: reload the page")
        review.refresh()
        return None

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    def question_at(index: int) -> tuple[str, str]:
        if not 0 <= index < len(review.questions):
            flask.abort(404)
        return review.questions[index]

    def context(index: int, sheet: sheets.Sheet) -> dict:
        from autograder import manual

        assignment, name = question_at(index)
        question = next((q for q in manual.questions_for(assignment) if q.name == name), None)
        answers = review.answers(sheet, assignment, name)
        top = question.points if question else max(a["m"]["max_score"] for a in answers)
        items = rubrics.items(review.out, assignment, name)
        problems = []
        try:
            sheets.check(sheet, review.sheet_path, review.roster, review.anonymous)
        except sheets.ManualScoresError as exc:
            problems = exc.problems
        left, total = review.left(sheet)
        return dict(index=index, questions=review.questions, assignment=assignment, name=name, points=top,
                    prompt=question.prompt if question else "", reference=manual.reference_answer(assignment, name),
                    groups=grouping.group(answers), rubric=items, applied=rubrics.applied, own=rubrics.own_words,
                    left=sum(a["points"] is None for a in answers), n=len(answers), total_left=left, total=total,
                    problems=problems, anonymous=review.anonymous, version=sheets.version(review.sheet_path),
                    csrf=csrf, md=safe_markdown.render, fmt=fmt, seen=_seen, score_class=score_class,
                    sheet_name=review.sheet_path.name)

    def read_sheet() -> sheets.Sheet:
        try:
            return sheets.parse(review.sheet_path, strict=False)
        except sheets.ManualScoresError as exc:  # unreadable whole: show why, save nothing
            flask.abort(409, str(exc))

    @app.get("/")
    def home():
        return flask.redirect(flask.url_for("question_page", index=0), 303)

    @app.get("/q/<int:index>")
    def question_page(index: int):
        return flask.render_template("review.html.j2", **context(index, read_sheet()),
                                     messages=flask.get_flashed_messages())

    @app.get("/q/<int:index>/version")
    def version(index: int):
        question_at(index)
        return {"version": sheets.version(review.sheet_path)}

    @app.post("/q/<int:index>/save")
    def save(index: int):
        assignment, name = question_at(index)
        form = flask.request.form
        members, seen = form.getlist("member"), form.getlist("seen")
        if not members or len(members) != len(seen):
            flask.abort(400, "the form names no answer")
        items = rubrics.items(review.out, assignment, name)
        top = max(review.roster.expected.get((review.roster.student(w) or "", name), 0) for w in members)
        comment = form.get("comment", "").replace("\r\n", "\n")
        message, ok = "", True
        try:
            if form.get("toggle"):
                points, comment = rubrics.toggle(form["toggle"], comment, items, top)
            elif form.get("action") == "pending":
                points, comment = None, ""
            else:
                text = form.get("points", "").strip()
                points = sheets.parse_points(text) if text else None
            changes = []
            for who, before in zip(members, seen):
                sid = review.roster.student(who)
                if sid is None:
                    flask.abort(400, "an unknown answer")
                was = json.loads(before)
                changes.append(sheets.Change(sid, name, points, comment, (was[0], str(was[1]))))
            done = sheets.save(review.sheet_path, review.roster, review.anonymous, changes)
        except sheets.ManualScoresError as exc:
            message, ok = f"Not saved: {exc}", False
        except (ValueError, TypeError, IndexError) as exc:
            message, ok = f"Not saved: {exc or 'points are a plain number, e.g. 2.5'}", False
        else:
            if done.conflicts:
                ok = False
                shown = ", ".join(f"{review.roster.shown(sid, review.anonymous)} (now {fmt(p) or 'pending'})"
                                  for sid, p, _ in done.conflicts)
                message = (f"Changed meanwhile by someone else, so left as they are: {shown}. Look at them again. "
                           f"{len(done.written)} other answer(s) saved.")
            else:
                message = f"Saved {len(done.written) + len(done.unchanged)} answer(s)."
        if flask.request.headers.get("X-Requested-With") == "fetch":
            ctx = context(index, read_sheet())
            group = next((g for g in ctx["groups"] if g.id == form.get("group")), None)
            html = flask.render_template("_group.html.j2", g=group, **ctx) if group else ""
            return {"ok": ok, "message": message, "html": html, "left": ctx["left"], "n": ctx["n"],
                    "total_left": ctx["total_left"], "total": ctx["total"], "version": ctx["version"]}
        flask.flash(message)
        return flask.redirect(flask.url_for("question_page", index=index) + f"#{form.get('group', '')}", 303)

    @app.post("/q/<int:index>/rubric")
    def add_item(index: int):
        assignment, name = question_at(index)
        try:
            rubrics.add(review.out, assignment, name, sheets.parse_points(flask.request.form.get("points", "")),
                        flask.request.form.get("text", ""))
            flask.flash("Rubric item added.")
        except ValueError as exc:
            flask.flash(f"Not added: {exc or 'points are a plain number'}")
        return flask.redirect(flask.url_for("question_page", index=index) + "#rubric", 303)

    @app.post("/q/<int:index>/rubric/<item_id>/delete")
    def remove_item(index: int, item_id: str):
        assignment, name = question_at(index)
        try:
            rubrics.remove(review.out, assignment, name, item_id)
            flask.flash("Rubric item removed.")
        except ValueError as exc:
            flask.flash(f"Not removed: {exc}")
        return flask.redirect(flask.url_for("question_page", index=index) + "#rubric", 303)

    @app.get("/assets/review.css")
    def css():
        from autograder.lms.reports import ENV

        text = ENV.get_template("style.css.j2").render() + "\n" + (HERE / "static" / "review.css").read_text()
        return flask.Response(text, mimetype="text/css")

    @app.get("/assets/review.js")
    def js():
        return flask.Response((HERE / "static" / "review.js").read_text(), mimetype="text/javascript")

    return app


def serve(out: Path, port: int = 0, anonymous: bool | None = None, say=print) -> None:
    """Serve the review page of ``out`` on 127.0.0.1 until interrupted; ``say`` prints its URL."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request (the page polls)
    review, said = Review.load(out, anonymous)
    for line in said:
        say(line)
    token = secrets.token_urlsafe(32)
    server = make_server("127.0.0.1", port, create_app(review, token), threaded=True)
    say(f"Hand grading of {out}: {len(review.questions)} question(s), "
        f"{'anonymous codes' if review.anonymous else 'student ids'}; saves go to {review.sheet_path}")
    say(f"Open http://127.0.0.1:{server.server_port}/?token={token}")
    say("Press Ctrl-C to stop.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
