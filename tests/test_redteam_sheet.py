"""The hand-grading code attacked: a student whose answer is shown to graders, another user of the machine,
and a TA with real habits (spreadsheets, two browsers, runs with other flags).  Each test shows one finding;
those left open are ``xfail(strict=True)`` with the reason."""

from __future__ import annotations

import json
import stat
from dataclasses import asdict
from pathlib import Path

import pytest

from autograder import manual_scores as sheets
from autograder.manual import ManualAnswer
from autograder.review import app as review_app, groups, rubric

Q = "written_pooling"
HOST = "http://127.0.0.1:5000"
HEADER = "id,question,points,comment\n"


def _answer(who: str, *parts: tuple[str, str]) -> dict:
    """An answer as the review page groups it: ``parts`` are (kind, text)."""
    return {"who": who, "m": {"found": True, "blank": False,
                              "parts": [{"kind": kind, "text": text} for kind, text in parts]}}


def _on_page(g: groups.Group) -> set[str]:
    """The answers (as written) the page shows for a group: the first member's only when the group is exact,
    else each variant's (see _group.html.j2)."""
    return {groups.verbatim(v[0]["m"]) for v in (g.variants if not g.exact else [g.members])}


def _everyone_shown(g: groups.Group) -> bool:
    return all(groups.verbatim(a["m"]) in _on_page(g) for a in g.members)


def _graded_folder(tmp_path: Path, answers: dict[str, str]) -> Path:
    """An output folder as ``grade`` leaves it: one result per student with its hand-graded answer."""
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True, exist_ok=True)
    for sid, text in answers.items():
        m = ManualAnswer(Q, 3.0, found=True, blank=not text, parts=[{"kind": "markdown", "text": text}] if text else [])
        result = {"student": {"id": sid, "name": f"Student {sid}", "source": "", "email": "", "extra": {}},
                  "assignment": "cnn_mnist", "status": "graded", "score": 20.0, "max_score": 36.0, "questions": [],
                  "manual": [asdict(m)]}
        (out / "results" / f"{sid}.json").write_text(json.dumps(result))
    return out


def _roster(*ids: str, points: float = 3.0) -> sheets.Roster:
    return sheets.Roster({(sid, Q): points for sid in ids}, {sid: sheets.anonymous_code(b"k" * 32, sid) for sid in ids})


# --- a student's answer, grouped with another ----------------------------------------------------

@pytest.mark.parametrize("mine, theirs", [
    (("markdown", "The bias of each filter is b = -1."), ("markdown", "The bias of each filter is b = 1.")),
    (("markdown", "Output size: (28 - 3) / 1 + 1"), ("markdown", "Output size: (28 - 3) * 1 + 1")),
    (("markdown", "**Not** shared: each position has its own weights"),
     ("markdown", "Not shared: each position has its own weights")),
])
def test_answers_that_differ_in_a_sign_or_an_operator_are_never_shown_as_one_identical_answer(mine, theirs):
    """Grouping ignores punctuation; an "identical" group showed the first member's text only, so the TA graded
    ``b = 1`` and the same points went to ``b = -1`` unseen."""
    found = groups.group([_answer("1001", theirs), _answer("1002", mine)])
    assert all(_everyone_shown(g) for g in found)
    assert not any(g.exact and len(g.members) > 1 for g in found)


def test_a_sign_is_part_of_a_number_so_minus_one_and_one_are_not_grouped():
    found = groups.group([_answer("1001", ("markdown", "The bias is b = 1")),
                          _answer("1002", ("markdown", "The bias is b = -1"))])
    assert [[a["who"] for a in g.members] for g in found] == [["1001"], ["1002"]]


def test_the_same_code_with_a_different_output_or_indentation_is_shown_for_each_member():
    code = "def f(x):\n    return x + 1\nprint(f(2))"
    found = groups.group([_answer("1001", ("code", code), ("output", "3")),
                          _answer("1002", ("code", code), ("output", "NameError: name 'f' is not defined")),
                          _answer("1003", ("code", code.replace("    return", "  return")), ("output", "3"))])
    assert all(_everyone_shown(g) for g in found)  # every member's own output and code on the page
    assert sum(len(_on_page(g)) for g in found) == 3


def test_answers_that_differ_only_in_spacing_stay_one_identical_group():
    found = groups.group([_answer("1001", ("markdown", "Weights are  shared\nacross positions. ")),
                          _answer("1002", ("markdown", "Weights are shared across positions."))])
    assert len(found) == 1 and found[0].exact and len(_on_page(found[0])) == 1


# --- points the grader writes are points it reads -------------------------------------------------

@pytest.mark.parametrize("typed", ["0.00001", "0,0000001", "2.3333333333333"])
def test_points_saved_from_the_page_are_written_as_plain_numbers_the_sheet_reader_accepts(tmp_path, typed):
    """``f"{x:.10g}"`` wrote 1e-05: the grader's own sheet was then refused by every grade run and the page."""
    path, roster = tmp_path / sheets.SCORES_FILE, _roster("1001")
    sheets.save(path, roster, False, [sheets.Change("1001", Q, sheets.parse_points(typed), "", (None, ""))])
    ((points, _),) = sheets.read_scores(path, roster).values()
    assert points == pytest.approx(sheets.parse_points(typed), abs=1e-6)


def test_rubric_items_in_tenths_sum_to_points_the_sheet_reader_accepts(tmp_path):
    """+0.1, +0.2 and -0.3 sum to 5.55e-17 in floating point, which was written as 5.551115123e-17."""
    items = [rubric.RubricItem("a", 0.1, "Names the filter", "master"),
             rubric.RubricItem("b", 0.2, "Names the positions", "master"),
             rubric.RubricItem("c", -0.3, "Confuses pooling", "master")]
    comment, points = "", None
    for item in items:
        points, comment = rubric.toggle(item.id, comment, items, 3.0)
    assert points == 0.0
    points, comment = rubric.toggle("c", comment, items, 3.0)
    assert f"{points}" == "0.3"  # not 0.30000000000000004
    path, roster = tmp_path / sheets.SCORES_FILE, _roster("1001")
    for p in (0.1 + 0.2 - 0.3, 0.1 + 0.2):
        sheets.save(path, roster, False, [sheets.Change("1001", Q, p, comment, sheets.cell_state(
            sheets.find(sheets.parse(path), roster, "1001", Q)) if path.exists() else (None, ""))])
        assert sheets.read_scores(path, roster)["1001", Q][0] == pytest.approx(p)
    assert "1001,written_pooling,0.3," in path.read_text()


@pytest.mark.parametrize("body, written", [
    # a spreadsheet set to German saves semicolons and decimal commas, and reads 1.5 as a date (1 May)
    ("id;question;points;comment\r\n1001;written_pooling;2,5;gut\r\n", b"1002;written_pooling;1,5;"),
    ("id;question;points;comment\r\n", b"1002;written_pooling;1,5;"),
    # a comma-separated sheet that already writes decimal commas (in quotes) keeps doing so
    ('id,question,points,comment\n1001,written_pooling,"2,5",ok\n', b'1002,written_pooling,"1,5",'),
    # and one with decimal points keeps points
    ("id,question,points,comment\n1001,written_pooling,2.5,ok\n", b"1002,written_pooling,1.5,"),
    ("id;question;points;comment\n1001;written_pooling;2.5;ok\n", b"1002;written_pooling;1.5;"),
])
def test_saved_points_use_the_decimal_separator_the_sheet_already_uses(tmp_path, body, written):
    path, roster = tmp_path / sheets.SCORES_FILE, _roster("1001", "1002")
    path.write_bytes(body.encode())
    sheets.save(path, roster, False, [sheets.Change("1002", Q, 1.5, "", (None, ""))])
    assert written in path.read_bytes()
    assert sheets.read_scores(path, roster)["1002", Q] == (1.5, "")


# --- what a save writes, the sheet reads --------------------------------------------------------

def _client(out: Path, anonymous: bool | None = None, token: str = "secret-token"):
    """A logged-in client of the review page of ``out``, and the CSRF token its forms carry."""
    import hashlib
    import hmac

    review, _ = review_app.Review.load(out, anonymous)
    c = review_app.create_app(review, token).test_client()
    assert c.get(f"/?token={token}", base_url=HOST).status_code == 303
    return c, hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()


def _post_save(c, csrf: str, member: str, **fields):
    data = {"csrf": csrf, "member": member, "seen": json.dumps([None, ""]), "group": "g", **fields}
    return c.post("/q/0/save", data=data, base_url=HOST, headers={"X-Requested-With": "fetch"}).get_json()


@pytest.mark.parametrize("comment", ["Good\0 but short", "x" * 200_000])
def test_a_comment_the_sheet_could_not_hold_is_refused_and_the_sheet_stays_readable(tmp_path, comment):
    """A NUL, or a cell over the csv module's field limit (131072), made the grader write a sheet its own reader
    refuses ("holds NUL characters", "field larger than field limit"): every grade run and every save stopped."""
    out = _graded_folder(tmp_path, {"1001": "Weights are shared", "1002": "Pooling"})
    c, csrf = _client(out)
    answer = _post_save(c, csrf, "1001", points="2", comment=comment)
    assert not answer["ok"] and answer["message"].startswith("Not saved")
    roster = review_app.Review.load(out)[0].roster
    assert sheets.read_scores(out / sheets.SCORES_FILE, roster) == {}  # readable, nothing saved
    with pytest.raises(ValueError):
        sheets.save(out / sheets.SCORES_FILE, roster, False, [sheets.Change("1002", Q, 1.0, comment, (None, ""))])
    assert sheets.read_scores(out / sheets.SCORES_FILE, roster) == {}


def test_a_cell_too_long_for_the_reader_is_named_as_such_not_as_a_quoting_problem(tmp_path):
    path = tmp_path / sheets.SCORES_FILE
    path.write_text(f'{HEADER}1001,{Q},2,"{"x" * 200_000}"\n')
    with pytest.raises(sheets.ManualScoresError) as err:
        sheets.read_scores(path, _roster("1001"))
    (problem,) = err.value.problems
    assert problem.startswith("line 2:") and "longer than" in problem and "double quote" not in problem


# --- a huge sheet -------------------------------------------------------------------------------

def test_a_sheet_full_of_unknown_ids_is_refused_without_a_suggestion_search_per_row(tmp_path, monkeypatch):
    """A "did you mean" was looked for on every row: 5000 rows of another course's ids against a class of 300
    took 84 s (under load), for each grade run and for each view and save of the review page."""
    import difflib

    calls = []
    search = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches", lambda *a, **k: calls.append(a[0]) or search(*a, **k))
    roster = _roster(*(f"{1000 + i}" for i in range(300)))
    path = tmp_path / sheets.SCORES_FILE
    path.write_text(HEADER + "".join(f"{1100 + i}0,{Q},1,\n" for i in range(2000)) + "1001,written_polling,1,\n")
    with pytest.raises(sheets.ManualScoresError) as err:
        sheets.read_scores(path, roster)
    assert len(err.value.problems) == 2001 and "... and 1951 more" in str(err.value)
    assert "did you mean '1100'" in err.value.problems[0]  # what is shown still has its suggestion
    assert len(calls) <= sheets.MAX_PROBLEMS


# --- the anonymous key --------------------------------------------------------------------------

def _make_key_slowly(out: str, started, keys) -> None:
    import secrets
    import time

    real = secrets.token_hex

    def slow(n):  # a loaded machine: the key takes a moment to make
        started.set()
        time.sleep(1.5)
        return real(n)

    secrets.token_hex = slow
    keys.put(sheets.anonymous_key(Path(out)))


def test_a_second_process_never_reads_a_key_that_is_not_written_yet(tmp_path):
    """The key file was created empty, then written: a grade run and a review page started together could read
    an empty key, whose codes anyone computes from the ids, and which differ from the other process's codes."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    started, keys = ctx.Event(), ctx.Queue()
    maker = ctx.Process(target=_make_key_slowly, args=(str(tmp_path), started, keys))
    maker.start()
    try:
        assert started.wait(60)
        mine = sheets.anonymous_key(tmp_path)
        theirs = keys.get(timeout=60)
    finally:
        maker.join(60)
    assert len(mine) >= 32 and mine == theirs


def test_an_empty_key_left_by_a_crash_is_replaced_not_used(tmp_path):
    key = tmp_path / ".private" / "anonymous-key"
    key.parent.mkdir(mode=0o700)
    key.write_bytes(b"")
    made = sheets.anonymous_key(tmp_path)
    assert len(made) >= 32 and key.read_bytes().strip() == made and sheets.anonymous_key(tmp_path) == made
    assert sheets.anonymous_code(made, "1001") != sheets.anonymous_code(b"", "1001")
    assert oct(key.stat().st_mode & 0o777) == "0o600"


# --- a sheet that is not a plain file -----------------------------------------------------------

def test_a_sheet_that_is_a_fifo_is_refused_instead_of_hanging_the_run(tmp_path):
    """``grade --manual-scores`` given a named pipe (or the sheet replaced by one) waited forever in open()."""
    import os
    import threading

    fifo = tmp_path / "scores.csv"
    os.mkfifo(fifo)
    found = []
    reader = threading.Thread(target=lambda: found.append(_problems_of(fifo)), daemon=True)
    reader.start()
    reader.join(20)
    if reader.is_alive():  # let the stuck reader go before failing
        with open(fifo, "w"):
            pass
        reader.join(20)
        pytest.fail("reading a FIFO hung")
    (problems,) = found
    assert len(problems) == 1 and "not a regular file" in problems[0]


def _problems_of(path: Path) -> list[str]:
    try:
        sheets.parse(path)
    except sheets.ManualScoresError as exc:
        return exc.problems
    return []


def test_a_sheet_that_is_a_symbolic_link_is_refused_saying_so(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text(f"{HEADER}1001,{Q},2,\n")
    link = tmp_path / sheets.SCORES_FILE
    link.symlink_to(real)
    (problem,) = _problems_of(link)
    assert "symbolic link" in problem and "the file itself" in problem


# --- the formula guard --------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["'-1 for units'", "'=B2' is a formula, not a value", "''=x", "'", "''", "'@home",
                                  "=HYPERLINK(\"http://x\")", "-1 for units", "+1", "-0.5", "@SUM(A1)", "'quoted'"])
def test_the_formula_guard_gives_back_exactly_what_was_written(tmp_path, text):
    """A comment that itself began with an apostrophe and a formula character lost the apostrophe: the guard
    was not added, and reading took the comment's own apostrophe for the guard."""
    from autograder.lms import sheets as people_sheets

    assert people_sheets.uncsv_cell(people_sheets.csv_cell(text)) == text
    assert not people_sheets.csv_cell(text).startswith(("=", "+", "@")) or text in ("+1",)
    path, roster = tmp_path / sheets.SCORES_FILE, _roster("1001")
    sheets.save(path, roster, False, [sheets.Change("1001", Q, 1.0, text, (None, ""))])
    assert sheets.read_scores(path, roster)["1001", Q] == (1.0, text)
    written = sheets.parse(path).rows[0].cells[3]
    for more in (_roster("1001", "1002"), _roster("1001", "1002", "1003")):  # later runs rewrite the sheet
        assert sheets.update(path, more, anonymous=False, out=tmp_path).added == 1
    assert sheets.parse(path).rows[0].cells[3] == written  # no guard added on a guard
    assert sheets.read_scores(path, more)["1001", Q] == (1.0, text)


# --- the review server: who reaches it ------------------------------------------------------------

def test_a_token_or_cookie_that_is_not_ascii_is_refused_not_a_server_error(tmp_path):
    """hmac.compare_digest raises TypeError for non-ASCII str: anyone on the machine got a 500 (and a traceback
    in the TA's console) instead of a 403."""
    out = _graded_folder(tmp_path, {"1001": "Weights are shared"})
    c, csrf = _client(out)
    assert c.get("/?token=%C3%A9t%C3%A9", base_url=HOST).status_code == 403
    login = review_app.create_app(review_app.Review.load(out)[0], "secret-token").test_client()
    response = login.get("/?token=secret-token", base_url=HOST)
    name = response.headers["Set-Cookie"].split("=", 1)[0]
    stranger = review_app.create_app(review_app.Review.load(out)[0], "secret-token").test_client()
    assert stranger.get("/q/0", base_url=HOST, headers={"Cookie": f"{name}=\u00e9t\u00e9"}).status_code == 403
    answer = c.post("/q/0/save", base_url=HOST, data={"csrf": "\u00e9t\u00e9", "member": "1001",
                                                      "seen": json.dumps([None, ""]), "points": "1"})
    assert answer.status_code == 403


def _serve(out: Path, token: str):
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, review_app.create_app(review_app.Review.load(out)[0], token), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_two_review_pages_open_in_one_browser_do_not_log_each_other_out(tmp_path):
    """Cookies do not keep ports apart (RFC 6265, section 8.5): the second review page (another folder, another
    course) replaced the first one's cookie, and every save of the first page was then refused with 403."""
    import http.cookiejar
    import urllib.error
    import urllib.request

    first = _serve(_graded_folder(tmp_path / "a", {"1001": "Weights are shared"}), "token-a")
    second = _serve(_graded_folder(tmp_path / "b", {"2001": "Pooling"}), "token-b")
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    try:
        a, b = (f"http://127.0.0.1:{s.server_port}" for s in (first, second))
        assert browser.open(f"{a}/?token=token-a", timeout=60).status == 200
        assert browser.open(f"{b}/?token=token-b", timeout=60).status == 200
        try:
            page = browser.open(f"{a}/q/0", timeout=60)
        except urllib.error.HTTPError as exc:
            pytest.fail(f"the first page answered {exc.code} once the second was opened")
        assert "1001" in page.read().decode() and browser.open(f"{b}/q/0", timeout=60).status == 200
    finally:
        for s in (first, second):
            s.shutdown()
            s.server_close()


def test_answers_graded_after_the_page_started_are_picked_up_not_shown_as_problems_of_the_sheet(tmp_path):
    """A grade run of late submissions while the page was open added their rows to the sheet; the page, which
    knew only the students of its start, then listed those rows as "unknown student id" problems to fix in the
    file (a TA would delete them) and refused every save."""
    out = _graded_folder(tmp_path, {"1001": "Weights are shared", "1002": "Pooling"})
    c, csrf = _client(out)
    _graded_folder(tmp_path, {"1003": "A late answer"})  # the grade run: its result, and its row in the sheet
    with (out / sheets.SCORES_FILE).open("a") as f:
        f.write(f"1003,{Q},,\r\n")
    page = c.get("/q/0", base_url=HOST).get_data(as_text=True)
    assert 'id="problems"' not in page and "A late answer" in page
    assert _post_save(c, csrf, "1003", points="2", comment="late")["ok"]
    assert _post_save(c, csrf, "1001", points="3", comment="")["ok"]
    assert sheets.read_scores(out / sheets.SCORES_FILE, review_app.Review.load(out)[0].roster) == {
        ("1003", Q): (2.0, "late"), ("1001", Q): (3.0, "")}


def test_the_servers_surface_has_no_traversal_no_open_redirect_and_every_answer_carries_its_headers(tmp_path):
    """Checked and found sound (kept as a guard): paths outside the routes, a login URL that names another host,
    error pages and oversized posts all get the page's policy, no caching and no framing."""
    out = _graded_folder(tmp_path, {"1001": "Weights are shared"})
    c, csrf = _client(out)
    for path in ("/assets/../app.py", "/assets/%2e%2e/app.py", "/q/-1", "/q/99", "/static/review.js",
                 "/q/0/rubric/..%2f..%2fresults/delete", "/../../etc/passwd"):
        response = c.get(path, base_url=HOST)
        assert response.status_code in (404, 405), path
        assert b"manual_scores" not in response.data and b"import" not in response.data
    login = c.get("/x", base_url=HOST, query_string={"token": "secret-token"},
                  environ_overrides={"PATH_INFO": "//evil.example/"})
    assert login.status_code == 303 and login.headers["Location"].startswith("/") \
        and not login.headers["Location"].startswith("//")
    big = c.post("/q/0/save", base_url=HOST, data={"csrf": csrf, "comment": "x" * 300_000})
    assert big.status_code == 413
    for response in (big, c.get("/q/99", base_url=HOST), c.get("/q/0", base_url="http://evil.example:5000"),
                     c.get("/q/0", base_url=HOST)):
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store" and response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"


# --- the graders' rubric file -------------------------------------------------------------------

def test_a_rubric_file_that_cannot_be_read_is_not_overwritten_by_the_next_item(tmp_path):
    """An unreadable manual_rubric.json read as empty, and the next item added on the page wrote a file holding
    that item alone: every other grader's item was gone."""
    first = rubric.add(tmp_path, "cnn_mnist", Q, 1.0, "Names weight sharing")
    path = tmp_path / rubric.RUBRIC_FILE
    path.write_text(path.read_text(encoding="utf-8").rstrip().rstrip("}") + ",}", encoding="utf-8")  # a hand edit
    damaged = path.read_bytes()
    with pytest.raises(ValueError, match="manual_rubric.json"):
        rubric.add(tmp_path, "cnn_mnist", Q, -1.0, "Confuses pooling with sharing")
    with pytest.raises(ValueError, match="manual_rubric.json"):
        rubric.remove(tmp_path, "cnn_mnist", Q, first.id)
    assert path.read_bytes() == damaged


def test_the_page_says_a_broken_rubric_file_is_not_changed_instead_of_failing(tmp_path):
    out = _graded_folder(tmp_path, {"1001": "Weights are shared"})
    c, csrf = _client(out)
    item = rubric.add(out, "cnn_mnist", Q, 1.0, "Names weight sharing")
    (out / rubric.RUBRIC_FILE).write_text("{not json", encoding="utf-8")
    for url, data in ((f"/q/0/rubric/{item.id}/delete", {}), ("/q/0/rubric", {"points": "1", "text": "New"})):
        assert c.post(url, data={"csrf": csrf, **data}, base_url=HOST).status_code == 303
        page = c.get("/q/0", base_url=HOST).get_data(as_text=True)
        assert "manual_rubric.json cannot be read" in page and "nothing was changed" in page
    assert (out / rubric.RUBRIC_FILE).read_text(encoding="utf-8") == "{not json"


def test_a_rubric_file_saved_with_a_byte_order_mark_keeps_its_items(tmp_path):
    """Saved from Notepad, the file starts with a BOM, which json refuses: its items vanished from the page."""
    first = rubric.add(tmp_path, "cnn_mnist", Q, 1.0, "Names weight sharing")
    path = tmp_path / rubric.RUBRIC_FILE
    path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert first in rubric.items(tmp_path, "cnn_mnist", Q)
    rubric.add(tmp_path, "cnn_mnist", Q, -1.0, "Confuses pooling with sharing")
    assert [i.text for i in rubric.items(tmp_path, "cnn_mnist", Q) if i.source == "grader"] == [
        "Names weight sharing", "Confuses pooling with sharing"]


def test_a_rubric_item_whose_points_are_not_a_finite_number_is_left_out(tmp_path):
    """JSON allows NaN: such an item made the points of every answer it was applied to "nan" in the sheet."""
    (tmp_path / rubric.RUBRIC_FILE).write_text(json.dumps({f"cnn_mnist/{Q}": [
        {"id": "g1", "points": float("nan"), "text": "broken"}, {"id": "g2", "points": 1e309, "text": "huge"},
        {"id": "g3", "points": 1, "text": "fine"}]}))
    assert [i.id for i in rubric.items(tmp_path, "cnn_mnist", Q) if i.source == "grader"] == ["g3"]


# --- a student's image ----------------------------------------------------------------------------

def _png(width: int, height: int) -> bytes:
    """A real PNG, black, 1 bit a pixel: 20000 x 20000 is 50 MB of pixels in about 50 kB."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" + b"\0" * ((width + 7) // 8)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b""))


def test_an_image_that_decodes_to_gigabytes_is_left_out_of_the_graders_pages():
    """An image was checked for its first bytes and its size in bytes only: 50 kB of PNG that a browser decodes
    to 400 million pixels (1.6 GB) took down the graders' page, and the review page, of the whole class."""
    import base64

    from autograder import manual

    bomb, plot = _png(20_000, 20_000), _png(640, 480)
    assert len(bomb) < manual.MAX_IMAGE_BYTES
    nb = {"cells": [{"cell_type": "markdown", "source": manual.BEGIN},
                    {"cell_type": "code", "source": "plt.show()", "outputs": [
                        {"output_type": "display_data", "data": {"image/png": base64.b64encode(bomb).decode()}},
                        {"output_type": "display_data", "data": {"image/png": base64.b64encode(plot).decode()}}]},
                    {"cell_type": "markdown", "source": manual.END}]}
    question = manual.ManualQuestion("cnn_mnist", Q, 3.0, "", 0)
    (answer,) = manual.extract_answers(nb, [question])
    images = [base64.b64decode(p["data"]) for p in answer.parts if p["kind"] == "image"]
    assert images == [plot]
    assert any("left out" in p.get("text", "") for p in answer.parts if p["kind"] == "output")


def test_an_inline_markdown_image_that_decodes_to_gigabytes_is_shown_as_text():
    """Markdown may hold ``![](data:image/png;base64,...)``: within the 20,000 characters of an answer, a PNG of
    100 million pixels (400 MB in the browser)."""
    import base64

    from autograder import manual
    from autograder.lms import safe_markdown

    bomb = base64.b64encode(_png(10_000, 10_000)).decode()
    assert len(bomb) < manual.MAX_TEXT_CHARS
    html = str(safe_markdown.render(f"My plot: ![plot](data:image/png;base64,{bomb})"))
    assert "<img" not in html and "not loaded" in html
    small = base64.b64encode(_png(64, 64)).decode()
    assert "<img" in str(safe_markdown.render(f"![plot](data:image/png;base64,{small})"))


# --- left open (design) -------------------------------------------------------------------------

def _results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]


def test_a_spreadsheet_saving_its_stale_copy_over_the_pages_saves_is_noticed(tmp_path):
    """A TA leaves the sheet open in a spreadsheet while another grades in the page, then saves the old copy:
    the page's save is put back on the next load (and said), while a row changed on purpose stays."""
    from autograder import batch

    out = _graded_folder(tmp_path, {"1001": "Weights are shared", "1002": "Pooling"})
    review, _ = review_app.Review.load(out)
    stale = review.sheet_path.read_bytes()  # a TA opens the sheet in LibreOffice and leaves it open
    assert sheets.save(review.sheet_path, review.roster, False,
                       [sheets.Change("1001", Q, 3.0, "Full marks", (None, "")),
                        sheets.Change("1002", Q, 1.0, "Thin", (None, ""))]).written == ["1001", "1002"]  # the page
    journal = out / ".private" / sheets.SAVES_FILE
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    # then LibreOffice's copy is saved: it never had 1001's points, and the other TA typed 2 for 1002 there
    review.sheet_path.write_bytes(stale.replace(f"1002,{Q},,".encode(), f"1002,{Q},2,Better".encode()))
    again, said = review_app.Review.load(out)
    assert [line for line in said if "1001" in line and "put back" in line] and not [l for l in said if "1002" in l]
    scores = sheets.read_scores(review.sheet_path, again.roster)
    assert scores[("1001", Q)] == (3.0, "Full marks") and scores[("1002", Q)] == (2.0, "Better")
    # said once: a later load, or grade run, has nothing more to put back; the run's totals count the points
    assert not [line for line in review_app.Review.load(out)[1] if "put back" in line]
    merged, _ = batch.merge_manual_scores(_results(out), out, batch.BatchOptions())
    by_id = {r["student"]["id"]: r for r in merged}
    assert by_id["1001"]["manual"][0]["score"] == 3.0


def test_a_stale_copy_seen_first_by_a_grade_run_is_put_back_there(tmp_path):
    from autograder import batch

    out = _graded_folder(tmp_path, {"1001": "Weights are shared", "1002": "Pooling"})
    review, _ = review_app.Review.load(out)
    stale = review.sheet_path.read_bytes()
    sheets.save(review.sheet_path, review.roster, False, [sheets.Change("1001", Q, 2.5, "Most of it", (None, ""))])
    review.sheet_path.write_bytes(stale)
    merged, _ = batch.merge_manual_scores(_results(out), out, batch.BatchOptions())
    assert {r["student"]["id"]: r for r in merged}["1001"]["manual"][0]["score"] == 2.5
    (out / ".private" / sheets.SAVES_FILE).write_text('{"sid": "1001", "question": "x", "before": 1}\nnot json\n')
    assert sheets.update(review.sheet_path, review.roster, False, out).restored == []  # a damaged journal: nothing


def test_review_anonymous_after_a_plain_run_leaves_no_graders_page_naming_students(tmp_path):
    from autograder.lms import reports

    out = _graded_folder(tmp_path, {"1001": "Weights are shared", "1002": "Pooling"})
    (page,) = reports.write_manual_pages(_results(out), out, anonymous=False)
    review, _ = review_app.Review.load(out, anonymous=True)
    text = (out / page["file"]).read_text()
    assert "Student 1001" not in text and review.roster.codes["1001"] in text


def test_a_student_whose_id_is_another_students_code_cannot_take_that_students_row(tmp_path):
    key = sheets.anonymous_key(tmp_path)
    victim = sheets.anonymous_code(key, "1001")  # a file named so: Roster ids come from LMS file names
    results = [{"student": {"id": sid}, "manual": [{"name": Q, "max_score": 3.0}]} for sid in ("1001", victim)]
    roster = sheets.Roster.of(results, key)
    path = tmp_path / sheets.SCORES_FILE
    sheets.update(path, roster, anonymous=True, out=tmp_path)
    assert sheets.read_scores(path, roster, anonymous=True) == {}  # the sheet the grader just wrote is accepted
    path.write_text(path.read_text().replace(f"{victim},{Q},,", f"{victim},{Q},3,Excellent"))  # grading 1001's card
    scores = sheets.read_scores(path, roster, anonymous=True)
    assert scores.get(("1001", Q)) == (3.0, "Excellent") and (victim, Q) not in scores


@pytest.mark.parametrize("then", ["sheet deleted", "sheet with ids given"])
def test_a_folder_graded_anonymously_stays_anonymous_on_a_plain_rerun(tmp_path, then):
    from autograder import batch

    out = _graded_folder(tmp_path, {"1001": "Weights are shared", "1002": "Pooling"})
    assert batch.merge_manual_scores(_results(out), out, batch.BatchOptions(anonymous=True))[1]
    options = batch.BatchOptions()
    if then == "sheet deleted":  # a TA deletes it to start over; the next run writes a fresh one
        (out / sheets.SCORES_FILE).unlink()
    else:
        typed = tmp_path / "typed.csv"
        typed.write_text(f"{HEADER}1001,{Q},2,\n1002,{Q},,\n")
        options = batch.BatchOptions(manual_scores=typed)
    assert batch.merge_manual_scores(_results(out), out, options)[1]  # the graders' pages keep codes


# --- Unicode in what the LMS says about a student -------------------------------------------------

def test_a_students_name_with_a_bidi_override_cannot_reverse_the_ids_shown_after_it(tmp_path):
    """A name from the LMS (Gradescope's metadata) ending in U+202E RIGHT-TO-LEFT OVERRIDE reversed the rest of
    the group's header on the review page: the next member's id 1002 read as 2001."""
    import re

    out = _graded_folder(tmp_path, {"1001": "Weights are shared", "1002": "Weights are shared"})
    result = json.loads((out / "results" / "1001.json").read_text())
    result["student"]["name"] = "Eve \u202e"
    (out / "results" / "1001.json").write_text(json.dumps(result))
    c, _ = _client(out)
    page = c.get("/q/0", base_url=HOST).get_data(as_text=True)
    assert "\u202e" in page
    # every run of text that holds the override is isolated: it ends inside the <bdi> that holds it
    assert re.search(r"<bdi>[^<]*\u202e[^<]*</bdi>", page)
    assert not re.search(r"\u202e(?:(?!</bdi>).)*1002", page, re.S)


# --- a sheet from another output folder -------------------------------------------------------------

def test_codes_of_another_output_folder_are_refused_saying_where_their_key_is(tmp_path):
    """Grading again into a fresh --out and merging the old folder's sheet (--manual-scores old/manual_scores.csv)
    refused every row as an unknown id, with no hint that the codes come from the old folder's key, and at times
    a "did you mean" naming another student's code (codes are random: alike by chance)."""
    old, new = tmp_path / "old", tmp_path / "new"
    results = [{"student": {"id": sid}, "manual": [{"name": Q, "max_score": 3.0}]} for sid in ("1001", "1002")]
    old_roster = sheets.Roster.of(results, sheets.anonymous_key(old))
    sheets.update(old / sheets.SCORES_FILE, old_roster, anonymous=True, out=old)
    with pytest.raises(sheets.ManualScoresError) as err:
        sheets.read_scores(old / sheets.SCORES_FILE, sheets.Roster.of(results, sheets.anonymous_key(new)), True)
    assert len(err.value.problems) == 2
    assert all("not a code of this output folder" in p and ".private/anonymous-key" in p and "did you mean" not in p
               for p in err.value.problems)
    code = old_roster.codes["1001"]  # a code with one character typed wrong still gets its suggestion
    (old / sheets.SCORES_FILE).write_text(f"{HEADER}{code[:-1]}{'0' if code[-1] != '0' else '1'},{Q},1,\n")
    with pytest.raises(sheets.ManualScoresError, match=f"did you mean '{code}'"):
        sheets.read_scores(old / sheets.SCORES_FILE, old_roster, True)


def test_no_lms_file_name_makes_an_id_in_the_form_of_a_code_and_codes_written_before_still_merge(tmp_path):
    """Codes hold ':', which the ids made from LMS file names never do; a sheet from before (codes with '-')
    is read and rewritten with the codes of today, keeping its points."""
    from autograder.lms import submissions

    key = sheets.anonymous_key(tmp_path)
    code = sheets.anonymous_code(key, "1001")
    assert sheets.CODE.fullmatch(code) and submissions._safe(code) != code
    assert submissions.canvas_owner(f"{code}_10001_900001_cnn_mnist.ipynb") is None or \
        submissions.canvas_owner(f"{code}_10001_900001_cnn_mnist.ipynb").id != code
    legacy = sheets.LEGACY_CODE_PREFIX + code[len(sheets.CODE_PREFIX):]
    results = [{"student": {"id": sid}, "manual": [{"name": Q, "max_score": 3.0}]} for sid in ("1001", "1002")]
    roster = sheets.Roster.of(results, key)
    path = tmp_path / sheets.SCORES_FILE
    path.write_text(f"{HEADER}{legacy},{Q},2,Good\n")
    assert sheets.read_scores(path, roster, anonymous=True) == {("1001", Q): (2.0, "Good")}
    change = sheets.update(path, roster, anonymous=True, out=tmp_path)
    assert change.renamed == 1 and f"{code},{Q},2,Good" in path.read_text() and legacy not in path.read_text()
