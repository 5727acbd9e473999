"""Batch grading: inputs of every kind, resumable after SIGKILL, reports (Gradescope: tests/test_gradescope.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import batch
from assignments.cnn_mnist import sample_answers as samples
from autograder.engine import RetrainOptions
from autograder.lms.submissions import collect

REPO = Path(__file__).resolve().parent.parent
NO_RETRAIN = RetrainOptions(enabled=False)


def _sample(name: str) -> Path:
    return samples.SAMPLES_DIR / f"{name}.ipynb"


def _shape_mistakes_trained() -> nbformat.NotebookNode:
    """The shape_mistakes sample with its model compiled and trained as by_hand_mistakes trains it: a result
    whose training question retraining decides (the sample itself never trains, so nothing is left to decide)."""
    by_name = {s.name: s for s in samples.SAMPLES}
    sample = dataclasses.replace(by_name["shape_mistakes"], training=by_name["by_hand_mistakes"].training)
    student = nbformat.read(REPO / "assignments" / "cnn_mnist" / "student" / "cnn_mnist.ipynb", as_version=4)
    return samples.fill(student, sample)


def _make_class_folder(folder: Path) -> Path:
    """A messy class: Canvas names, a stray PDF, an empty notebook, a corrupt zip, a duplicate."""
    folder.mkdir()
    shutil.copy(_sample("shape_mistakes"), folder / "lovelaceada_1001_5001_cnn_mnist.ipynb")
    shutil.copy(_sample("untouched"), folder / "turingalan_LATE_1002_5002_cnn_mnist.ipynb")
    shutil.copy(_sample("untouched"), folder / "hopper_1003_5003_cnn_mnist.ipynb")  # identical bytes to 1002
    nbformat.write(_shape_mistakes_trained(), folder / "lovelaceada_1001_5009_cnn_mnist-1.ipynb")  # second try
    (folder / "knuth_1004_5004_report.pdf").write_bytes(b"%PDF-1.4 not a notebook")
    nbformat.write(nbformat.v4.new_notebook(), folder / "empty_1005_5005_cnn_mnist.ipynb")
    (folder / "broken_1006_5006_cnn_mnist.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    return folder


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return _make_class_folder(tmp_path / "canvas")


CANVAS_COLUMN = "CNN on MNIST (4242)"


@pytest.fixture(scope="module")
def class_run(built, tmp_path_factory):
    """The messy class graded once (no retraining, so every result with a model is provisional), with a
    Canvas import asked for in spite of that (``--canvas-provisional``): (folder, out, results)."""
    folder = _make_class_folder(tmp_path_factory.mktemp("class") / "canvas")
    out = tmp_path_factory.mktemp("graded") / "out"
    results = batch.run_batch([folder], built.autograder_zip, out, batch.BatchOptions(
        jobs=2, retrain=NO_RETRAIN, progress=False, canvas=CANVAS_COLUMN, canvas_provisional=True))
    return folder, out, results


def test_inputs_of_every_kind_become_rows(class_folder, tmp_path):
    subs = {s.id: s for s in collect([class_folder], tmp_path)}
    assert subs["1001"].error is None and subs["1002"].error is None
    assert "duplicate" in subs["1001~2"].error
    flagged = {s.id: s.extra.get("identical_to") for s in subs.values() if s.extra.get("identical_to")}
    assert flagged == {"1002": "1003"} and subs["1003"].error is None  # graded, flagged for a person
    assert "not a notebook" in subs["1004"].error
    assert "no code cells" in subs["1005"].error
    assert "corrupt zip" in subs["1006"].error


def test_gradescope_export_zip_uses_submission_metadata(tmp_path):
    export = tmp_path / "export"
    for folder, sid in (("submission_111", "s1"), ("submission_222", "s2")):
        (export / folder).mkdir(parents=True)
        shutil.copy(_sample("untouched"), export / folder / "cnn_mnist.ipynb")
    (export / "submission_metadata.yml").write_text(
        "submission_111:\n  :submitters:\n  - :name: Ada\n    :sid: s1\n    :email: ada@example.edu\n"
        "submission_222:\n  :submitters:\n  - :name: Alan\n    :sid: s2\n")
    archive = tmp_path / "gradescope_export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in export.rglob("*"):
            z.write(p, p.relative_to(export))
    subs = {s.id: s for s in collect([archive], tmp_path / "work")}
    assert set(subs) == {"s1", "s2"} and subs["s1"].name == "Ada" and subs["s1"].email == "ada@example.edu"


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autograder", "grade", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sigkill_midway_then_rerun_gives_the_same_grades(class_folder, built, tmp_path):
    common = ["--autograder", str(built.autograder_zip), "--no-retrain", "--jobs", "2"]
    clean = _run_cli([str(class_folder), "--out", str(tmp_path / "clean"), *common])
    assert clean.wait(timeout=600) == 0

    out = tmp_path / "killed"
    victim = _run_cli([str(class_folder), "--out", str(out), *common])
    deadline = time.monotonic() + 300
    while not list((out / "results").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)  # the whole batch dies at once, mid-run
    victim.wait()
    done_before = {p.name for p in (out / "results").glob("*.json")}
    assert done_before and not (out / "grades.csv").exists()
    for p in (out / "results").glob("*.json"):
        json.loads(p.read_text())  # every result on disk is whole (atomic writes)

    assert _run_cli([str(class_folder), "--out", str(out), *common]).wait(timeout=600) == 0
    assert _rows(out / "grades.csv") == _rows(tmp_path / "clean" / "grades.csv")
    statuses = {r["id"]: r["status"] for r in _rows(out / "grades.csv")}
    assert statuses["1001"] == "graded" and statuses["1004"] == "error"


def test_reports_and_feedback(class_run, built):
    folder, out, results = class_run
    by_id = {r["student"]["id"]: r for r in results}
    assert by_id["1001"]["score"] > 0 and by_id["1002"]["score"] == 0
    rows = {r["id"]: r for r in _rows(out / "grades.csv")}
    assert float(rows["1001"]["total"]) == by_id["1001"]["score"]
    assert float(rows["1001"]["conv_small"]) == 2.0 and rows["1004"]["status"] == "error"
    page = (out / "feedback" / "1001.html").read_text()
    assert "edge_output" in page and "rows and columns are swapped" in page
    assert "not a notebook" in (out / "feedback" / "1004.html").read_text()
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 2 and 'href="feedback/1001.html"' in report
    for column in ("Retrained accuracy", "Flags", "Limits hit"):
        assert f"<th>{column}</th>" in report
    # copied code: each student's notebook compared once (not the second file), nothing flagged (the
    # byte-identical pair is two untouched notebooks: no code of their own)
    assert "<strong>cnn_mnist</strong> (3 notebooks)" in report and "No pair of submissions above" in report
    # retraining was off: the training question's hidden points are not decided, and every page says so
    training = next(q for q in by_id["1001"]["questions"] if q["name"] == "training")
    assert [c.get("undecided") for c in training["cases"] if c["hidden"]] == ["retraining_off"]
    assert by_id["1001"]["provisional"] == "retraining_off" and rows["1001"]["provisional"] == "retraining_off"
    assert rows["1001"]["retrained_accuracy"] == "" and rows["1004"]["provisional"] == ""  # a PDF: not scored
    assert 'id="provisional"' in report and "It holds provisional totals" in report
    assert "not decided yet" in page and "has not retrained your model yet" in page
    order = [page.index(f'id="q-{name}"') for name in ("edge_output", "conv2d_impl", "training", "written_pooling")]
    assert order == sorted(order) and "Question 2: Edge detection" in page and "Question 10: Train above 99%" in page
    # each result's output is the student's own: no grader start-up lines, no path of this host
    from autograder.probe import jail
    from autograder.probe.output import SITE_PACKAGES

    hosts = [*jail.python_trees(jail.probe_python(), []), str(REPO)]
    for sid in ("1001", "1002", "1003"):
        tail = by_id[sid]["execution"]["output_tail"]
        assert tail.startswith("Out[") or tail.startswith("Model"), (sid, tail[:500])
        for noise in ("absl::InitializeLog", "cudart_stub", "Fontconfig error", "joblib will operate in serial mode",
                      *hosts, "cnn-probe-"):
            assert noise not in tail, (sid, noise, tail[:3000])
    assert f"File {SITE_PACKAGES}/keras/" in by_id["1002"]["execution"]["output_tail"]  # the untouched one's traceback

    # a second run grades nothing again (resumable)
    again = batch.run_batch([folder], built.autograder_zip, out, batch.BatchOptions(
        jobs=2, retrain=NO_RETRAIN, progress=False, canvas=CANVAS_COLUMN, canvas_provisional=True))
    assert json.loads((out / "batch.json").read_text())["graded_now"] == 0
    assert sorted(r["score"] for r in again) == sorted(r["score"] for r in results)


def test_canvas_import_holds_each_student_once_with_the_real_grade(class_run, built, tmp_path):
    folder, out, results = class_run
    by_id = {r["student"]["id"]: r for r in results}
    canvas = list(csv.reader(open(out / "canvas_grades.csv", encoding="utf-8")))
    assert canvas[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", CANVAS_COLUMN]
    assert canvas[1] == ["Points Possible", "", "", "", "", "36"]  # 33 autograded + question 11 by hand
    assert len(canvas) == 2  # the import waits for the hand-graded question (README: Hand-graded questions)
    review = {r["id"]: r for r in _rows(out / "needs_review.csv")}
    assert {"1001~2", "1004", "1005", "1006"} <= set(review)
    assert all(review[k]["in_canvas_import"] == "no" for k in ("1001~2", "1004", "1005", "1006"))
    assert review["1002"]["in_canvas_import"] == "no" and "byte-identical to 1003" in review["1002"]["reason"]
    assert "waits for 1 hand-graded question" in review["1002"]["reason"]
    # 1001's model waits for retraining (provisional); the untouched 1002 has none: retraining decides nothing there
    assert "provisional: graded with retraining off" in review["1001"]["reason"]
    assert "provisional" not in review["1002"]["reason"]
    # once question 11 has its points, each student is there once, with the real grade (nothing graded again)
    done = tmp_path / "out"
    shutil.copytree(out, done)
    template = _rows(done / "manual_scores.csv")
    with open(done / "manual_scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "points", "comment"])
        w.writerows([r["id"], r["question"], 3, ""] for r in template)
    batch.run_batch([folder], built.autograder_zip, done, batch.BatchOptions(
        jobs=2, retrain=NO_RETRAIN, progress=False, canvas=CANVAS_COLUMN, canvas_provisional=True))
    assert json.loads((done / "batch.json").read_text())["graded_now"] == 0
    canvas = list(csv.reader(open(done / "canvas_grades.csv", encoding="utf-8")))
    scores = {row[1]: row[5] for row in canvas[2:]}
    assert sorted(scores) == ["1001", "1002", "1003"]  # Canvas user ids, digits only, once each
    # 1001's second file is not a "1001~2" row worth 0 (Canvas would read it as 1001 and overwrite)
    assert float(scores["1001"]) == by_id["1001"]["score"] + 3 > 3
    review = {r["id"]: r for r in _rows(done / "needs_review.csv")}
    assert review["1002"]["in_canvas_import"] == "yes" and "byte-identical to 1003" in review["1002"]["reason"]


def test_a_students_page_names_no_classmate(class_run):
    _, out, _ = class_run
    flagged = (out / "feedback" / "1002.html").read_text()  # byte-identical to 1003's notebook
    assert "1003" not in flagged and "hopper" not in flagged and "identical" not in flagged
    report = (out / "report.html").read_text()
    assert "byte-identical to 1003" in report  # the instructor still sees the flag


def test_feedback_says_not_implemented_and_hidden_checks_stay_general(class_run):
    from assignments.cnn_mnist import checks

    _, out, _ = class_run
    untouched = (out / "feedback" / "1002.html").read_text()
    assert "`conv2d` is not implemented yet" in untouched and "NaN or infinity" not in untouched
    mistakes = (out / "feedback" / "1001.html").read_text()
    assert "hidden check:" in mistakes and "passed" in mistakes and "failed" in mistakes
    assert mistakes.count("rows and columns are swapped") == 1  # the public check's detail, not repeated
    for name in checks.REFERENCE_FUNCTIONS:
        for case in checks.hidden_cases(name):
            assert case.label not in mistakes and case.label not in untouched  # hidden inputs never shown


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]


def test_feedback_and_report_render_in_a_headless_browser(class_run, tmp_path):
    """Chromium renders a student's page and the instructor's report; the screenshots are kept."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by scripts/test.sh (Debian package chromium)"
    _, out, _ = class_run
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    pages = {"feedback": (out / "feedback" / "1001.html", ['id="questions"', "rows and columns are swapped"]),
             "report": (out / "report.html", ['id="submissions"', "byte-identical to 1003", 'id="n-pending"',
                                              "swapped_axes"]),
             "manual": (out / "manual" / "cnn_mnist-written_pooling.html", ['id="answers"', "Question 11"])}
    for name, (page, expected) in pages.items():
        dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                             timeout=120)
        assert all(text in dom.stdout for text in expected), (name, dom.stderr[-2000:])
        shot = tmp_path / f"{name}.png"
        subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1100,1500", page.as_uri()],
                       capture_output=True, timeout=120)
        assert shot.is_file() and shot.stat().st_size > 20_000, name
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ray_cluster_of_two_nodes_gives_the_same_grades_and_a_killed_node_loses_no_result(built, class_run, tmp_path):
    """``--ray-address``: a local two-node Ray cluster (a head and a worker node, each its own raylet
    on its own ports) grades the messy class.  The worker node is killed while it grades a
    submission in its jail; the task runs again on the head, and every grade equals the local
    process pool's (``class_run``)."""
    import threading

    import psutil
    from ray.cluster_utils import Cluster

    folder, local_out, local = class_run
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    raylet = psutil.Process(worker.all_processes["raylet"][0].process.pid)
    killed = threading.Event()

    def kill_worker_node_mid_task():  # once a jail runs under the worker node's raylet
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if any(p.name() == "bwrap" or "probe_runtime" in " ".join(p.cmdline())
                       for p in raylet.children(recursive=True)):
                    cluster.remove_node(worker, allow_graceful=False)
                    killed.set()
                    return
            except psutil.Error:
                pass
            time.sleep(0.1)

    killer = threading.Thread(target=kill_worker_node_mid_task, daemon=True)
    killer.start()
    try:
        on_ray = batch.run_batch([folder], built.autograder_zip, tmp_path / "ray",
                                 batch.BatchOptions(jobs=2, retrain=NO_RETRAIN, progress=False,
                                                    ray=True, ray_address=cluster.address))
    finally:
        killer.join(timeout=5)
        cluster.shutdown()
    assert killed.is_set(), "the worker node never ran a jail: nothing was tested"
    assert _rows(tmp_path / "ray" / "grades.csv") == _rows(local_out / "grades.csv")
    assert len(on_ray) == len(local) == 7
    assert not [r for r in on_ray if r["status"] == "grader_error"]


def test_one_batch_grades_every_assignments_samples_with_their_own_autograders(builds, tmp_path):
    """A folder holding every installed assignment's samples, graded in one call: each notebook goes to
    the autograder its metadata names, and gets its designed score on every question that does not
    need the retrained accuracy (retraining is off here; tests/test_assignment.py covers it)."""
    import importlib

    from autograder import registry

    folder = tmp_path / "class"
    folder.mkdir()
    expected = {}
    for name in registry.names():
        spec = registry.get(name)
        key = importlib.import_module(spec.samples).METADATA_KEY
        for nb in sorted(spec.samples_dir.glob("*.ipynb")):
            sid = f"{name}-{nb.stem}"
            shutil.copy(nb, folder / f"{sid}.ipynb")
            expected[sid] = (name, nbformat.read(nb, as_version=4).metadata[key]["expected_failures"])
    zips = [builds[name].autograder_zip for name in registry.names()]
    results = batch.run_batch([folder], zips, tmp_path / "out", batch.BatchOptions(jobs=2, retrain=NO_RETRAIN,
                                                                                     progress=False))
    assert {r["student"]["id"] for r in results} == set(expected)
    for r in results:
        assignment, failures = expected[r["student"]["id"]]
        assert r["assignment"] == assignment and r["status"] == "graded", (r["student"]["id"], r["error"])
        for q in r["questions"]:
            if any(c.get("undecided") == "retraining_off" for c in q["cases"]):
                continue  # the training question waits for the retrained accuracy
            lost = {c["name"] for c in q["cases"]} if failures == "all" else set(failures.get(q["name"], []))
            designed = sum(c["points"] for c in q["cases"] if c["name"] not in lost)
            assert q["score"] == pytest.approx(designed), (r["student"]["id"], q["name"], q["cases"])


def _tiny_class(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(f"x = {i}")]
        nbformat.write(nb, folder / f"s{i}.ipynb")
    return folder


def _die_in_worker(monkeypatch, victim: str, marker: Path | None) -> None:
    """Patch the engine (the pool's workers are forked, so they get the patch) to SIGKILL its own worker
    when it grades ``victim``: once if ``marker`` is given, else every time."""
    from autograder import engine

    real = engine.grade_notebook

    def dying(notebook, *args, **kwargs):
        if Path(notebook).stem == victim and (marker is None or not marker.exists()):
            if marker is not None:
                marker.write_text("died once")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(notebook, *args, **kwargs)

    monkeypatch.setattr(engine, "grade_notebook", dying)


def test_a_worker_killed_mid_batch_loses_no_result(autograder, tmp_path, monkeypatch):
    """A pool whose worker dies fails everything it had not finished; the batch grades those again in a
    fresh pool, in the same run."""
    marker = tmp_path / "died"
    _die_in_worker(monkeypatch, "s1", marker)
    results = batch.run_batch([_tiny_class(tmp_path / "class", 4)], autograder, tmp_path / "out",
                              batch.BatchOptions(jobs=2, retrain=NO_RETRAIN, progress=False))
    assert marker.exists(), "no worker died: nothing was tested"
    assert sorted(r["student"]["id"] for r in results) == ["s0", "s1", "s2", "s3"]
    assert {r["status"] for r in results} == {"graded"}, [(r["student"]["id"], r["error"]) for r in results]


def test_a_submission_whose_worker_dies_every_time_is_a_grader_error_that_names_how(autograder, tmp_path,
                                                                                    monkeypatch):
    _die_in_worker(monkeypatch, "s0", None)
    results = batch.run_batch([_tiny_class(tmp_path / "class", 3)], autograder, tmp_path / "out",
                              batch.BatchOptions(jobs=2, retrain=NO_RETRAIN, progress=False))
    rows = {r["student"]["id"]: r for r in results}
    assert rows["s0"]["status"] == "grader_error" and rows["s0"]["retry"] is True
    assert "killed by SIGKILL" in rows["s0"]["error"], rows["s0"]["error"]
    assert rows["s1"]["status"] == rows["s2"]["status"] == "graded"  # the pool of its own took no other down
