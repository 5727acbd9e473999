"""The review page (``python -m autograder review OUT``): its saves to ``manual_scores.csv`` (locked, read again,
conflicts said, nothing lost), its guard (token, host, CSRF, Content-Security-Policy), rubric and groups, and the
page itself in a real Chromium as a TA uses it."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from autograder import manual_scores as sheets
from autograder.manual import ManualAnswer
from autograder.review import app as review_app, groups, rubric

Q = "written_pooling"
HOST = "http://127.0.0.1:5000"
ATTACK = ("<script>window.pwned = 1; alert(1)</script>\n\n<img src=x onerror=\"window.pwned = 2; alert(2)\">\n\n"
          "[click me](javascript:window.pwned=3)\n\n<iframe src=\"javascript:alert(4)\"></iframe>")
ANSWERS = {"1001": "Weights are **shared** across positions.", "1002": "weights are shared, across positions",
           "1003": ATTACK, "1004": "", "1005": "Pooling divides the inputs of Dense by 16."}


def _graded_folder(tmp_path: Path, answers: dict[str, str] = ANSWERS) -> Path:
    """An output folder as ``grade`` leaves it: one result per student with its hand-graded answer."""
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    for sid, text in answers.items():
        parts = [{"kind": "markdown", "text": text}] if text else []
        if text == ATTACK:  # the same in a code cell, its output, and the student's name from the LMS
            parts += [{"kind": "code", "text": ATTACK}, {"kind": "output", "text": ATTACK}]
        m = ManualAnswer(Q, 3.0, found=True, blank=not text, parts=parts)
        name = "<script>window.pwned = 5</script>" if text == ATTACK else f"Student {sid}"
        result = {"student": {"id": sid, "name": name, "source": "", "email": "", "extra": {}},
                  "assignment": "cnn_mnist", "status": "graded", "score": 20.0, "max_score": 36.0, "questions": [],
                  "manual": [asdict(m)]}
        (out / "results" / f"{sid}.json").write_text(json.dumps(result))
    return out


def _roster(out: Path) -> sheets.Roster:
    return review_app.Review.load(out)[0].roster


def _scores(out: Path) -> dict[str, tuple[float | None, str]]:
    sheet = sheets.parse(out / sheets.SCORES_FILE)
    roster = _roster(out)
    return {roster.student(r.cell(0)): sheets.cell_state(r) for r in sheet.rows}


# --- the save logic -----------------------------------------------------------------------------

def _save_many(out: str, sids: list[str], points: float) -> None:
    roster = _roster(Path(out))
    for sid in sids:
        done = sheets.save(Path(out) / sheets.SCORES_FILE, roster, False,
                           [sheets.Change(sid, Q, points, f"by {points}", (None, ""))])
        assert done.written == [sid]


def test_two_graders_saving_at_once_lose_nothing(tmp_path):
    """Two processes (two review servers, or a grade run) and two threads (one server's requests) save at once."""
    answers = {f"{i:04d}": "text" for i in range(48)}
    out = _graded_folder(tmp_path, answers)
    review_app.Review.load(out)  # the sheet, one pending row per answer
    ids = sorted(answers)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_save_many, args=(str(out), ids[0::4], 1.0)),
               ctx.Process(target=_save_many, args=(str(out), ids[1::4], 2.0))]
    threads = [threading.Thread(target=_save_many, args=(str(out), ids[2::4], 3.0)),
               threading.Thread(target=_save_many, args=(str(out), ids[3::4], 0.5))]
    for w in [*workers, *threads]:
        w.start()
    for t in threads:
        t.join(120)
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    expected = {sid: [1.0, 2.0, 3.0, 0.5][i % 4] for i, sid in enumerate(ids)}
    assert _scores(out) == {sid: (p, f"by {p}") for sid, p in expected.items()}
    assert len(sheets.parse(out / sheets.SCORES_FILE).rows) == 48


def test_a_cell_changed_meanwhile_is_reported_not_overwritten_and_other_edits_are_kept(tmp_path):
    out = _graded_folder(tmp_path)
    roster = _roster(out)
    path = out / sheets.SCORES_FILE
    # both graders opened the page while 1001 was pending; the first saves 3, the second then tries 1
    assert sheets.save(path, roster, False, [sheets.Change("1001", Q, 3.0, "full", (None, ""))]).written == ["1001"]
    late = sheets.save(path, roster, False, [sheets.Change("1001", Q, 1.0, "one", (None, "")),
                                             sheets.Change("1002", Q, 2.0, "two", (None, ""))])
    assert late.conflicts == [("1001", 3.0, "full")] and late.written == ["1002"]
    # a spreadsheet edit of another row meanwhile is read again before the write, so it stays
    text = path.read_text().replace("1005,written_pooling,,", '1005,written_pooling,"1,5",typed in a spreadsheet')
    path.write_text(text)
    assert sheets.save(path, roster, False, [sheets.Change("1004", Q, 0.0, "", (None, ""))]).written == ["1004"]
    assert _scores(out) == {"1001": (3.0, "full"), "1002": (2.0, "two"), "1003": (None, ""), "1004": (0.0, ""),
                            "1005": (1.5, "typed in a spreadsheet")}
    # the same change again is no conflict; a value saved as what the grader saw is
    again = sheets.save(path, roster, False, [sheets.Change("1001", Q, 3.0, "full", (None, ""))])
    assert again.unchanged == ["1001"] and not again.conflicts


def test_saves_keep_a_spreadsheets_bom_and_semicolons_and_refuse_a_broken_sheet(tmp_path):
    out = _graded_folder(tmp_path)
    roster = _roster(out)
    path = out / sheets.SCORES_FILE
    path.write_bytes("\ufeffid;question;points;comment\r\n1001;written_pooling;2,5;ok\r\n".encode())
    sheets.save(path, roster, False, [sheets.Change("1002", Q, 1.5, "a; b", (None, ""))])
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbfid;question;points;comment\r\n1001;written_pooling;2,5;ok\r\n")
    assert b'1002;written_pooling;1,5;"a; b"\r\n' in data  # the sheet's decimal commas, too
    path.write_bytes(data + b"1003;written_pooling;1;5;too many\r\n")  # a spreadsheet edit that broke a row
    broken = path.read_bytes()
    with pytest.raises(sheets.ManualScoresError, match="line 4: 5 cells"):
        sheets.save(path, roster, False, [sheets.Change("1004", Q, 1.0, "", (None, ""))])
    assert path.read_bytes() == broken
    # the review page starts all the same, lists the problems and saves nothing
    review, said = review_app.Review.load(out)
    assert "line 4: 5 cells" in said[0] and path.read_bytes() == broken
    c = review_app.create_app(review, "secret-token").test_client()
    page = _login(c)
    assert 'id="problems"' in page and "line 4: 5 cells" in page
    answer = c.post("/q/0/save", data={**_form(page, "1004"), "points": "1"}, base_url=HOST,
                    headers={"X-Requested-With": "fetch"}).get_json()
    assert not answer["ok"] and "line 4: 5 cells" in answer["message"] and path.read_bytes() == broken


def test_an_anonymous_save_names_the_code_and_finds_rows_typed_either_way(tmp_path):
    out = _graded_folder(tmp_path)
    review, _ = review_app.Review.load(out, anonymous=True)
    path, roster = review.sheet_path, review.roster
    assert "1001" not in path.read_text()
    sheets.save(path, roster, True, [sheets.Change("1001", Q, 2.0, "", (None, ""))])
    assert f"{roster.codes['1001']},written_pooling,2," in path.read_text() and "1001," not in path.read_text()


def test_rubric_items_set_points_and_comment_and_groups_gather_near_identical_answers(tmp_path):
    items = [rubric.RubricItem("m1", 1.0, "Sharing", "master"), rubric.RubricItem("m2", 2.0, "Pooling; by 4", "master"),
             rubric.RubricItem("g1", -1.0, "Wrong unit", "grader")]
    points, comment = rubric.toggle("m2", "my words", items, 3.0)
    assert (points, comment) == (2.0, "Pooling; by 4\nmy words")
    points, comment = rubric.toggle("m1", comment, items, 3.0)
    assert (points, comment) == (3.0, "Sharing\nPooling; by 4\nmy words") and rubric.applied(comment, items) == {"m1", "m2"}
    assert rubric.toggle("m2", comment, items, 3.0) == (1.0, "Sharing\nmy words")
    assert rubric.toggle("g1", "", items, 3.0) == (0.0, "Wrong unit")  # never below 0
    answers = [{"who": sid, "m": {"found": True, "blank": not text, "parts": [{"kind": "markdown", "text": text}]}}
               for sid, text in ANSWERS.items()]
    answers.append({"who": "1006", "m": {"found": True, "blank": False,
                                         "parts": [{"kind": "markdown", "text": "Pooling divides the input of Dense by 16"}]}})
    found = [[a["who"] for a in g.members] for g in groups.group(answers)]
    assert found == [["1001", "1002"], ["1003"], ["1004"], ["1005", "1006"]]
    # 1001 and 1002 differ as written (bold, case, a comma): grouped, but each shown
    assert [g.exact for g in groups.group(answers)] == [False, True, True, False]
    numbers = [{"who": w, "m": {"found": True, "blank": False, "parts": [{"kind": "markdown", "text": t}]}}
               for w, t in [("a", "The third Conv2D has 36928 parameters."), ("b", "The third Conv2D has 36982 parameters.")]]
    assert len(groups.group(numbers)) == 2  # alike but for a number: a right and a wrong answer, never one group


# --- the application: guard, pages, forms -------------------------------------------------------

@pytest.fixture
def client(tmp_path):
    out = _graded_folder(tmp_path)
    review, _ = review_app.Review.load(out)
    app = review_app.create_app(review, "secret-token")
    c = app.test_client()
    return out, c


def _login(c):
    assert c.get("/?token=secret-token", base_url=HOST).status_code == 303
    page = c.get("/q/0", base_url=HOST)
    assert page.status_code == 200
    return page.get_data(as_text=True)


def _form(page: str, member: str) -> dict:
    """The fields of the group form that holds ``member``, as the browser would post them."""
    for form in re.findall(r'<form method="post" action="/q/0/save" class="grade">(.*?)</form>', page, re.S):
        members = re.findall(r'name="member" value="([^"]+)"', form)
        if member in members:
            import html

            return {"csrf": re.search(r'name="csrf" value="([^"]+)"', form).group(1),
                    "group": re.search(r'name="group" value="([^"]+)"', form).group(1), "member": members,
                    "seen": [html.unescape(s) for s in re.findall(r'name="seen" value="([^"]*)"', form)],
                    "points": "", "comment": ""}
    raise AssertionError(f"no form for {member}")


def test_the_page_needs_its_token_its_host_and_csrf_and_forbids_script(client):
    out, c = client
    assert c.get("/q/0", base_url=HOST).status_code == 403
    assert c.get("/?token=wrong", base_url=HOST).status_code == 403
    page = _login(c)
    assert c.get("/q/0", base_url="http://evil.example:5000").status_code == 403  # DNS rebinding
    response = c.get("/q/0", base_url=HOST)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    form = _form(page, "1004")
    before = (out / sheets.SCORES_FILE).read_bytes()
    assert c.post("/q/0/save", data={**form, "csrf": "x", "points": "1"}, base_url=HOST).status_code == 403
    assert c.post("/q/0/save", data={**form, "points": "1"}, base_url=HOST,
                  headers={"Origin": "http://evil.example"}).status_code == 403
    assert (out / sheets.SCORES_FILE).read_bytes() == before
    # student markdown is rendered, its HTML is text
    assert "<strong>shared</strong>" in page and "&lt;script&gt;window.pwned" in page
    assert "<script>window" not in page and "<img src=x" not in page and "&lt;img src=x onerror" in page
    assert 'href="javascript' not in page.lower() and "<iframe" not in page
    assert 'id="reference"' in page and "36,928" in page  # the question and the master's reference answer
    assert "Conv2D: one small filter is shared" in page  # the master's rubric


def test_one_save_grades_a_group_and_a_rubric_click_sets_points_and_comment(client):
    out, c = client
    page = _login(c)
    form = _form(page, "1001")
    assert form["member"] == ["1001", "1002"]
    response = c.post("/q/0/save", data={**form, "points": "2,5", "comment": "Good, clear"}, base_url=HOST)
    assert response.status_code == 303
    scores = _scores(out)
    assert scores["1001"] == scores["1002"] == (2.5, "Good, clear")
    page = c.get("/q/0", base_url=HOST).get_data(as_text=True)
    assert "Saved 2 answer(s)." in page and '<strong id="left">3</strong> of <span id="n">5</span>' in page
    form = _form(page, "1005")
    first = rubric.items(out, "cnn_mnist", Q)[0]
    answer = c.post("/q/0/save", data={**form, "toggle": first.id}, base_url=HOST,
                    headers={"X-Requested-With": "fetch"}).get_json()
    assert answer["ok"] and answer["left"] == 2 and 'aria-pressed="true"' in answer["html"]
    assert _scores(out)["1005"] == (1.0, first.text)
    # a grader adds an item; it is kept in the output folder and applies like the master's
    page = c.get("/q/0", base_url=HOST).get_data(as_text=True)
    assert c.post("/q/0/rubric", data={"csrf": form["csrf"], "points": "-1", "text": "Confuses   pooling"},
                  base_url=HOST).status_code == 303
    assert json.loads((out / rubric.RUBRIC_FILE).read_text())[f"cnn_mnist/{Q}"][0]["text"] == "Confuses pooling"
    page = c.get("/q/0", base_url=HOST).get_data(as_text=True)
    assert "Confuses pooling" in page
    # a stale form (the page was open while someone else saved) is refused for that answer
    stale = {**form, "points": "3"}
    answer = c.post("/q/0/save", data=stale, base_url=HOST, headers={"X-Requested-With": "fetch"}).get_json()
    assert not answer["ok"] and "Changed meanwhile by someone else" in answer["message"]
    assert _scores(out)["1005"] == (1.0, first.text)
    # points that are not a plain number or out of range are not saved
    form = _form(page, "1004")
    for bad in ("0_3", "4"):
        answer = c.post("/q/0/save", data={**form, "points": bad}, base_url=HOST,
                        headers={"X-Requested-With": "fetch"}).get_json()
        assert not answer["ok"] and answer["message"].startswith("Not saved")
    assert _scores(out)["1004"] == (None, "")


def test_an_anonymous_page_shows_codes_only(tmp_path):
    out = _graded_folder(tmp_path)
    review, _ = review_app.Review.load(out, anonymous=True)
    c = review_app.create_app(review, "secret-token").test_client()
    page = _login(c)
    codes = review.roster.codes
    assert all(code in page for code in codes.values())
    assert not re.search(r"100[1-5]|Student 10|pwned = 5", page)
    form = _form(page, codes["1003"])
    answer = c.post("/q/0/save", data={**form, "points": "1"}, base_url=HOST,
                    headers={"X-Requested-With": "fetch"}).get_json()
    assert answer["ok"] and not re.search(r"100[1-5]|Student 10|pwned = 5", json.dumps(answer))
    assert _scores(out)["1003"] == (1.0, "") and "1003" not in (out / sheets.SCORES_FILE).read_text()


# --- in a real browser --------------------------------------------------------------------------

@pytest.fixture
def served(tmp_path):
    """The review page of a graded folder, served on 127.0.0.1 by the real server, at a random port."""
    from werkzeug.serving import make_server

    out = _graded_folder(tmp_path)
    review, _ = review_app.Review.load(out)
    server = make_server("127.0.0.1", 0, review_app.create_app(review, "browser-token"), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield out, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by scripts/test.sh (Debian package chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def _wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_ta_grades_with_keys_in_chromium_and_no_student_script_runs(served, browser):
    out, url = served
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{url}/?token=browser-token")
    page.wait_for_selector("section.group.focus")
    assert page.evaluate("window.pwned") is None and not dialogs
    assert page.locator("section.group").count() == 4  # 1001 and 1002 are one group
    first = page.locator("section.group").first
    assert "1001" in first.inner_text() and "1002" in first.inner_text()
    page.keyboard.press("1")  # the master's first rubric item, for the focused group: 1001 and 1002
    _wait_for(lambda: _scores(out).get("1001", (None,))[0] == 1.0)
    assert _scores(out)["1002"][0] == 1.0
    page.wait_for_selector("#left:text('3')")
    page.keyboard.press("j")  # the next group (the attack), then full points
    page.keyboard.press("f")
    _wait_for(lambda: _scores(out).get("1003", (None,))[0] == 3.0)
    page.locator("section.group.focus .points:text-is('3 / 3')").wait_for()  # the page has the answer too
    page.keyboard.press("j")
    page.keyboard.press("p")  # the points field: type a score and a comment, Enter saves
    page.keyboard.type("0")
    page.keyboard.press("Tab")
    page.keyboard.type("No answer, so no points.")
    page.locator("section.group.focus input[name=points]").press("Enter")
    _wait_for(lambda: _scores(out).get("1004") == (0.0, "No answer, so no points."))
    page.locator("section.group.focus .points:text-is('0 / 3')").wait_for()  # the card, saved, as the server sees it
    assert "bad" in page.locator("section.group.focus .points").get_attribute("class")  # 0 / 3 is not green
    # a spreadsheet edit of the sheet: the page picks it up by itself
    path = out / sheets.SCORES_FILE
    path.write_text(path.read_text().replace("1005,written_pooling,,", "1005,written_pooling,2,from the sheet"))
    page.locator("section.group", has_text="1005").locator(".points:text-is('2 / 3')").wait_for(timeout=60_000)
    assert page.locator("section.group", has_text="1005").locator("textarea").input_value() == "from the sheet"
    assert page.evaluate("window.pwned") is None and not dialogs
    # without JavaScript, the forms still save
    plain = browser.new_context(java_script_enabled=False).new_page()
    plain.goto(f"{url}/?token=browser-token")
    form = plain.locator("section.group", has_text="1005").locator("form.grade")
    form.locator("input[name=points]").fill("2.5")
    form.locator("button.save").click()
    plain.wait_for_selector("text=Saved 1 answer(s).")
    assert _scores(out)["1005"] == (2.5, "from the sheet")


def test_the_graders_static_page_runs_no_student_script_in_chromium(tmp_path, browser):
    from autograder.lms import reports

    out = _graded_folder(tmp_path)
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    (page_info,) = reports.write_manual_pages(results, out)
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto((out / page_info["file"]).as_uri())
    page.wait_for_selector("#answers")
    page.get_by_text("[click me](javascript:window.pwned=3)", exact=True).click()  # text, not a link
    assert page.evaluate("window.pwned") is None and not dialogs
    assert page.locator("#answers .card").count() == 5


def test_the_review_command_serves_on_localhost_only_and_refuses_a_folder_with_nothing_to_grade(tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from werkzeug import serving

    from autograder import cli

    (tmp_path / "empty").mkdir()
    run = CliRunner().invoke(cli.app, ["review", str(tmp_path / "empty")])
    assert run.exit_code == 2 and "run grade first" in run.output
    seen = {}

    class Server:
        server_port = 43210

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            seen["closed"] = True

    monkeypatch.setattr(serving, "make_server", lambda host, port, app, threaded: seen.update(host=host, port=port) or Server())
    out = _graded_folder(tmp_path)
    run = CliRunner().invoke(cli.app, ["review", str(out), "--anonymous"])
    assert run.exit_code == 0, run.output
    assert seen == {"host": "127.0.0.1", "port": 0, "closed": True}  # a random free port on the loopback
    url = re.search(r"http://127\.0\.0\.1:43210/\?token=([\w-]{40,})", run.output)
    assert url and "anonymous codes" in run.output
