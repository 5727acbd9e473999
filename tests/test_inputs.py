"""Inputs: whose each submission is (Canvas, Otter's export zip, nbgrader, Gradescope), untrusted
archives under limits, the Canvas import and the review list, private output files.

No grading here (cheap): the batch's reports are tested on real grades in ``test_batch.py``.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import batch
from autograder.faults import Fault
from autograder.lms import reports
from assignments.cnn_mnist import sample_answers as samples
from autograder.lms.submissions import ArchiveLimits, canvas_owner, collect


def _sample(name: str) -> Path:
    return samples.SAMPLES_DIR / f"{name}.ipynb"


def _otter_export(path: Path, notebook: Path, inner_name: str = "cnn_mnist.ipynb") -> Path:
    """What the notebook's last cell (``grader.export``) makes: the notebook and Otter's log."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(notebook, inner_name)
        z.writestr(".OTTER_LOG", b"\x80\x04binary log")
    return path


@pytest.fixture
def canvas_download(tmp_path: Path) -> Path:
    """A Canvas "Download Submissions" zip as Canvas names it: ``<course>-<assignment> submissions.zip``,
    one file per attachment named ``[name_][LATE_]userid_attachmentid_filename``."""
    staging = tmp_path / "staging"
    staging.mkdir()
    files = {
        "lovelaceada_1001_5001_cnn_mnist.ipynb": _sample("shape_mistakes"),
        "turingalan_LATE_1002_5002_cnn_mnist.ipynb": _sample("untouched"),
    }
    for name, src in files.items():
        shutil.copy(src, staging / name)
    # Otter's export zip uploaded by a student whose sortable name is not ASCII
    _otter_export(staging / "garcíajosé_1007_5007_cnn_mnist_2026_11_20T10_15_00_123456.zip", _sample("solution"))
    # student 1003 uploads a zip holding a notebook named for 1002 (and 1002's own file is above)
    _otter_export(staging / "hoppergrace_1003_5003_cnn_mnist_2026_11_21T09_00_00_000001.zip", _sample("solution"),
                  inner_name="turingalan_LATE_1002_5002_cnn_mnist.ipynb")
    archive = tmp_path / "ml101-cnn-on-mnist submissions.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(staging.iterdir()):
            z.write(p, p.name)
    return archive


def test_canvas_download_identity_comes_from_the_outer_file_name(canvas_download, tmp_path):
    subs = {s.id: s for s in collect([canvas_download], tmp_path / "out")}
    assert set(subs) == {"1001", "1002", "1003", "1007"}  # no "cnn_mnist", no "cnn_mnist~2", no duplicates
    assert all(s.error is None for s in subs.values()), {k: s.error for k, s in subs.items()}
    # Otter's export zip: the notebook inside is called cnn_mnist.ipynb; the owner is the zip's (finding 6)
    assert subs["1007"].name == "garcíajosé" and subs["1007"].extra["canvas_user_id"] == "1007"
    assert subs["1007"].notebook.read_bytes() == _sample("solution").read_bytes()
    # a zip named for 1003 holding a notebook named for 1002 is 1003's; 1002 keeps their own (finding 8)
    assert "hoppergrace_1003" in subs["1003"].source
    assert subs["1003"].notebook.read_bytes() == _sample("solution").read_bytes()
    assert subs["1002"].notebook.read_bytes() == _sample("untouched").read_bytes()
    assert subs["1002"].extra["late"] is True and subs["1001"].extra["late"] is False
    assert subs["1001"].extra["canvas_attachment_id"] == "5001"  # the second number is the attachment id


@pytest.mark.parametrize("file_name, who", [
    ("garcíajosé_1007_5007_cnn_mnist.ipynb", ("1007", "garcíajosé", False)),
    ("garci\u0301ajose\u0301_1007_5007_cnn_mnist.ipynb", ("1007", "garcíajosé", False)),  # unpacked on macOS (NFD)
    ("łukasiewiczjan_LATE_42_77_cnn_mnist-1.ipynb", ("42", "łukasiewiczjan", True)),
    ("o_brienpat_1008_5008_cnn_mnist_2026_11_20T10_15_00_1.zip", ("1008", "o_brienpat", False)),
    ("_1009_5009_cnn_mnist.ipynb", ("1009", "", False)),  # a name with no word characters at all
    ("anon_Xk3pQ_5010_cnn_mnist.ipynb", ("anon_Xk3pQ", "", False)),  # anonymous grading: anon_<anonymous id>
    ("LATE_anon_Zz9aB_5011_cnn_mnist.ipynb", ("anon_Zz9aB", "", True)),
])
def test_canvas_file_names_parse(file_name, who):
    owner = canvas_owner(file_name)
    assert owner is not None and (owner.id, owner.name, owner.extra["late"]) == who


@pytest.mark.parametrize("file_name", ["cnn_mnist.ipynb", "cnn_mnist_2026_11_20T10_15_00_123456.zip", "ada.ipynb"])
def test_other_file_names_are_not_read_as_canvas(file_name):
    assert canvas_owner(file_name) is None  # Otter's own export name holds numbers that are not ids


def test_a_class_download_with_one_file_is_still_read_by_file_name(tmp_path):
    archive = tmp_path / "ml101-cnn-on-mnist submissions.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(_sample("solution"), "lovelaceada_1001_5001_cnn_mnist.ipynb")
    (sub,) = collect([archive], tmp_path / "out")
    assert sub.id == "1001" and sub.error is None


def test_an_otter_export_zip_in_a_plain_folder_belongs_to_the_zip(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    _otter_export(folder / "ada.zip", _sample("solution"))
    _otter_export(folder / "alan.zip", _sample("untouched"))
    subs = {s.id: s for s in collect([folder], tmp_path / "out")}
    assert set(subs) == {"ada", "alan"} and all(s.error is None for s in subs.values())


def test_nbgrader_submitted_layout_skips_checkpoints(tmp_path):
    course = tmp_path / "course"
    for student, sample in (("alice", "solution"), ("bob", "shape_mistakes")):
        folder = course / "submitted" / student / "cnn_mnist"
        (folder / ".ipynb_checkpoints").mkdir(parents=True)
        shutil.copy(_sample(sample), folder / "cnn_mnist.ipynb")
        shutil.copy(_sample("untouched"), folder / ".ipynb_checkpoints" / "cnn_mnist-checkpoint.ipynb")
        (folder / "timestamp.txt").write_text("2026-11-20 10:15:00.000000 UTC")
    for given in (course, course / "submitted"):
        subs = {s.id: s for s in collect([given], tmp_path / "out")}
        assert set(subs) == {"alice", "bob"}, set(subs)
        assert all(s.error is None and "checkpoint" not in str(s.notebook) for s in subs.values())
        assert subs["bob"].notebook.read_bytes() == _sample("shape_mistakes").read_bytes()


def test_hidden_folders_are_skipped_everywhere(tmp_path):
    folder = tmp_path / "class"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    shutil.copy(_sample("solution"), folder / "ada.ipynb")
    shutil.copy(_sample("untouched"), folder / ".ipynb_checkpoints" / "ada-checkpoint.ipynb")
    with zipfile.ZipFile(folder / "alan.zip", "w") as z:
        z.write(_sample("solution"), "cnn_mnist.ipynb")
        z.write(_sample("untouched"), ".ipynb_checkpoints/cnn_mnist-checkpoint.ipynb")
        z.write(_sample("untouched"), "__MACOSX/._cnn_mnist.ipynb")
    subs = {s.id: s for s in collect([folder], tmp_path / "out")}
    assert set(subs) == {"ada", "alan"} and all(s.error is None for s in subs.values())


def test_gradescope_sid_goes_to_the_sis_user_id_column(tmp_path):
    export = tmp_path / "export"
    for folder in ("submission_111", "submission_222"):
        (export / folder).mkdir(parents=True)
        shutil.copy(_sample("untouched"), export / folder / "cnn_mnist.ipynb")
    (export / "submission_metadata.yml").write_text(
        "submission_111:\n  :submitters:\n  - :name: Ada\n    :sid: '00123'\n    :email: ada@example.edu\n"
        "submission_222:\n  :submitters:\n  - :name: Alan\n    :email: alan@example.edu\n")
    subs = {s.id: s for s in collect([export], tmp_path / "out")}
    rows = {k: reports.canvas_row(_graded(s, 10.0))[0] for k, s in subs.items()}
    # Student, ID, SIS User ID, SIS Login ID, Section, score: a Gradescope SID is not a Canvas user id
    assert rows["00123"] == ["Ada", "", "00123", "", "", "10"]
    assert rows["alan@example.edu"] == ["Alan", "", "", "alan@example.edu", "", "10"]


def _graded(sub, score: float, **changes) -> dict:
    """A result as the engine writes it, for report tests that need no grading."""
    result = {"student": batch._identity(sub), "status": "graded", "error": None, "score": score,
              "max_score": 33.0, "questions": [{"name": "conv_small", "score": min(score, 2.0), "max_score": 2.0,
                                                 "cases": []}],
              "retrain": None, "limits_hit": [], "execution": {}}
    result.update(changes)
    return result


def test_canvas_import_has_only_matchable_rows_and_the_rest_go_to_review(canvas_download, tmp_path):
    out = tmp_path / "out"
    subs = collect([canvas_download], out)
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(_sample("solution"), extra / "lovelaceada_1001_5009_cnn_mnist-1.ipynb")  # a second file of 1001
    shutil.copy(_sample("solution"), extra / "anon_Xk3pQ_5010_cnn_mnist.ipynb")
    subs = collect([canvas_download, extra], out)
    by_id = {s.id: s for s in subs}
    assert by_id["1001~2"].extra["duplicate_of"] == "1001" and "duplicate" in by_id["1001~2"].error
    assert by_id["1001"].extra["canvas_attachment_id"] == "5009"  # the latest upload is the one graded
    results = [_graded(s, 30.0) if not s.error else batch._error_result(s, Fault("input_refused", s.error)) for s in subs]
    crash = next(r for r in results if r["student"]["id"] == "1003")
    crash.update(status="grader_error", error="the sandbox could not start Python", score=0.0)
    column = reports.canvas_column("CNN on MNIST", 4242)
    left_out = reports.write_canvas_csv(results, out / "canvas_grades.csv", column)
    import csv

    rows = list(csv.reader(open(out / "canvas_grades.csv", encoding="utf-8")))
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "CNN on MNIST (4242)"]
    ids = [r[1] for r in rows[2:]]
    assert sorted(ids) == ["1001", "1002", "1007"]  # each once, digits only: no 1001~2, no anon, no grader error
    assert dict((r[1], r[5]) for r in rows[2:])["1001"] == "30"
    assert {r["student"]["id"] for r, _ in left_out} == {"1001~2", "1003", "anon_Xk3pQ"}
    n = reports.write_review_csv(results, out / "needs_review.csv")
    review = {r["id"]: r for r in csv.DictReader(open(out / "needs_review.csv", encoding="utf-8"))}
    assert n == len(review) and set(review) >= {"1001~2", "1003", "anon_Xk3pQ"}
    assert "grader error" in review["1003"]["reason"] and "SpeedGrader" in review["anon_Xk3pQ"]["reason"]


@pytest.mark.parametrize("late", [False, True])
def test_a_canvas_name_that_reads_as_another_students_never_takes_their_place(tmp_path, late):
    """User 111 takes the display name ``x_222_999999`` (Canvas keeps it as typed once a ``-`` is
    dropped); their upload is named ``x_222_999999_111_7_...``, which also reads as user 222's latest
    upload.  222's real file is still the one graded as 222; the other is listed for review with
    both readings and never imported as anyone's grade."""
    import csv

    folder = tmp_path / "class"
    folder.mkdir()
    shutil.copy(_sample("solution"), folder / "realstudent_222_5222_cnn_mnist.ipynb")
    ambiguous = f"x_222_999999_{'LATE_' if late else ''}111_7_cnn_mnist.ipynb"
    shutil.copy(_sample("untouched"), folder / ambiguous)
    shutil.copy(_sample("shape_mistakes"), folder / "plain_333_5333_cnn_mnist.ipynb")
    subs = {s.id: s for s in collect([folder], tmp_path / "out")}
    assert set(subs) == {"222", "222~2", "333"}
    assert subs["222"].source == "realstudent_222_5222_cnn_mnist.ipynb" and subs["222"].error is None
    assert subs["222"].notebook.read_bytes() == _sample("solution").read_bytes()
    assert subs["222~2"].source == ambiguous and "duplicate" in subs["222~2"].error
    assert "canvas_ambiguous" not in subs["222"].extra and "canvas_ambiguous" not in subs["333"].extra
    results = [_graded(s, 30.0) if not s.error else batch._error_result(s, Fault("input_refused", s.error)) for s in subs.values()]
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    left_out = reports.write_canvas_csv(results, out / "canvas_grades.csv", "CNN on MNIST (4242)")
    rows = list(csv.reader(open(out / "canvas_grades.csv", encoding="utf-8")))
    assert sorted(r[1] for r in rows[2:]) == ["222", "333"]
    assert {r["student"]["id"] for r, _ in left_out} == {"222~2"}
    reports.write_review_csv(results, out / "needs_review.csv")
    review = {r["id"]: r for r in csv.DictReader(open(out / "needs_review.csv", encoding="utf-8"))}
    reason = review["222~2"]["reason"]
    assert review["222~2"]["in_canvas_import"] == "no" and review["222~2"]["source"] == ambiguous
    assert "ambiguous Canvas file name" in reason and "user 111 (attachment 7" in reason, reason
    assert "222" not in review  # the real file is not in question


def test_an_ambiguous_canvas_name_alone_is_graded_but_never_imported(tmp_path):
    """With no other file of 222, the ambiguous file is graded under its first reading (so a person
    sees a score), never imported into Canvas, and listed for review."""
    folder = tmp_path / "class"
    folder.mkdir()
    shutil.copy(_sample("solution"), folder / "x_222_9_111_7_cnn_mnist.ipynb")
    (sub,) = collect([folder], tmp_path / "out")
    assert sub.id == "222" and sub.error is None and "user 111" in sub.extra["canvas_ambiguous"]
    row, why = reports.canvas_row(_graded(sub, 30.0))
    assert row is None and why.startswith("ambiguous Canvas file name")


@pytest.mark.parametrize("file_name, readings", [
    ("x_222_9_111_7_cnn_mnist.ipynb", [("222", "9"), ("9", "111"), ("111", "7")]),
    ("ada_1001_5001_lab_3_1_cnn.ipynb", [("1001", "5001"), ("3", "1")]),  # a file name with numbers: flagged too
    ("garcíajosé_1007_5007_cnn_mnist_2026_11_20T10_15_00_123456.zip", [("1007", "5007")]),  # Otter's stamp
    ("turingalan_LATE_1002_5002_cnn_mnist.ipynb", [("1002", "5002")]),  # LATE_ is part of one reading
])
def test_every_reading_of_a_canvas_name_is_found(file_name, readings):
    from autograder.lms.submissions import canvas_readings

    assert [(r["user"], r["attachment"]) for r in canvas_readings(file_name)] == readings
    assert ("canvas_ambiguous" in canvas_owner(file_name).extra) == (len(readings) > 1)


@pytest.mark.parametrize("text, column", [
    ("CNN on MNIST (123456)", "CNN on MNIST (123456)"),
    ("  Lab 3: CNN (7) ", "Lab 3: CNN (7)"),
])
def test_canvas_column_carries_the_assignment_id(text, column):
    assert reports.canvas_column(text) == column


@pytest.mark.parametrize("text", ["cnn_mnist", "CNN (abc)", "", "(123)"])
def test_canvas_column_without_an_id_is_refused(text):
    with pytest.raises(ValueError, match="Title \\(assignment id\\)"):
        reports.canvas_column(text)


# --- archives ----------------------------------------------------------------------------------

def _deflated_zip(path: Path, names: list[str], size: int) -> None:
    """A valid zip whose members are ``size`` zero bytes each, written by hand so the (identical)
    compressed data is made once: the zip format as in PKWARE's APPNOTE (local headers, central
    directory, end record)."""
    import struct
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip stores it
    block, crc, data = bytes(1 << 20), 0, []
    for _ in range(size // len(block)):
        data.append(packer.compress(block))
        crc = zlib.crc32(block, crc)
    data = b"".join(data) + packer.flush()
    central = []
    with open(path, "wb") as f:
        for name in names:
            raw, offset = name.encode(), f.tell()
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(raw), 0))
            f.write(raw + data)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                                       len(raw), 0, 0, 0, 0, 0, offset) + raw)
        start = f.tell()
        f.write(b"".join(central))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(names), len(names), f.tell() - start, start, 0))


def _nested_zip_bomb(path: Path) -> Path:
    """About 1 MB on disk, 1 GB unpacked: ten 100 MB 'notebooks' of zeros in a zip inside a zip."""
    inner = path.with_name("inner.zip")
    _deflated_zip(inner, [f"part{i}.ipynb" for i in range(10)], 100 * 2**20)
    with zipfile.ZipFile(inner) as z:  # a real zip, as the grader's zipfile reads it
        assert sum(i.file_size for i in z.infolist()) == 1000 * 2**20
        with z.open("part3.ipynb") as f:
            assert f.read(1 << 20) == bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.write(inner, "cnn_mnist_submission.zip")
    inner.unlink()
    return path


def _disk_use(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    return _nested_zip_bomb(tmp_path_factory.mktemp("bomb") / "lovelaceada_1001_5001_cnn_mnist.zip")


@pytest.mark.parametrize("where", ["student upload", "inside a class download"])
def test_a_nested_zip_bomb_is_refused_quickly_without_large_writes(zip_bomb, tmp_path, where):
    assert zip_bomb.stat().st_size < 2 * 2**20
    given = zip_bomb
    if where != "student upload":
        given = tmp_path / "class submissions.zip"
        with zipfile.ZipFile(given, "w") as z:
            z.write(zip_bomb, zip_bomb.name)
            z.write(_sample("solution"), "turingalan_1002_5002_cnn_mnist.ipynb")
    out = tmp_path / "out"
    started = time.monotonic()
    subs = {s.id: s for s in collect([given], out)}
    seconds = time.monotonic() - started
    assert "zip refused" in subs["1001"].error and "MB" in subs["1001"].error
    if where != "student upload":
        assert subs["1002"].error is None  # the rest of the class is still graded
    assert _disk_use(out) < 16 * 2**20, _disk_use(out)  # unpacked naively: 1 GB
    assert seconds < 60  # refused from the zip's directory: well under a second when idle


def _files_written(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if p.is_file()) if out.exists() else 0


def _zip_of_copies(path: Path, inner: bytes, inner_name: str, copies: int, method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        for i in range(copies):
            z.writestr(f"{i}-{inner_name}", inner)
    return path


def _bytes_of(build, path: Path) -> bytes:
    build(path)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize("where", ["student upload", "inside a class download"])
@pytest.mark.parametrize("leaf", ["empty notebooks", "empty zips"])
def test_nested_zips_of_empty_members_are_refused_quickly_with_few_files_written(tmp_path, where, leaf):
    """The attack: a small zip of zips of zero-byte members (notebooks, or valid empty zips one level
    deeper) unpacked naively writes one file per member, over 100,000 of them.  Members are counted
    over every nesting level of one student's upload, so it is refused at the first inner zip."""
    empty_zip = _bytes_of(lambda p: zipfile.ZipFile(p, "w").close(), tmp_path / "e.zip")
    leaf_name, leaf_bytes = ("cnn_mnist.ipynb", b"") if leaf == "empty notebooks" else ("x.zip", empty_zip)
    middle = _bytes_of(lambda p: _zip_of_copies(p, leaf_bytes, leaf_name, 1999), tmp_path / "m.zip")
    given = _zip_of_copies(tmp_path / "lovelaceada_1001_5001_cnn_mnist.zip", middle, "part.zip", 12)
    if where != "student upload":
        given = tmp_path / "class submissions.zip"
        with zipfile.ZipFile(given, "w") as z:
            z.write(tmp_path / "lovelaceada_1001_5001_cnn_mnist.zip", "lovelaceada_1001_5001_cnn_mnist.zip")
            z.write(_sample("solution"), "turingalan_1002_5002_cnn_mnist.ipynb")
    out = tmp_path / "out"
    started = time.monotonic()
    subs = {s.id: s for s in collect([given], out)}
    seconds = time.monotonic() - started
    assert "zip refused" in subs["1001"].error and "more than 2000 members" in subs["1001"].error, subs["1001"].error
    if where != "student upload":
        assert subs["1002"].error is None  # the rest of the class is still graded
    assert _files_written(out) < 50, _files_written(out)
    assert seconds < 10, seconds


def test_zero_byte_members_cost_bytes_too(tmp_path):
    """Each member costs at least ``min_member_bytes`` of the byte budget, written or not."""
    archive = _zip_with(tmp_path / "ada_1_2_cnn.zip", [("cnn_mnist.ipynb", _sample("solution").read_bytes()),
                                                      *[(f"f{i}.txt", b"") for i in range(300)]])
    limits = ArchiveLimits(max_submission_bytes=2**20, min_member_bytes=4096)  # 300 x 4 KiB: over 1 MB
    (sub,) = collect([archive], tmp_path / "out", limits)
    assert sub.notebook is None and "zip refused" in sub.error and "more than 1 MB" in sub.error, sub.error


def test_a_second_notebook_stops_reading_the_zip(tmp_path):
    """Two notebooks already make a student's zip ambiguous: what follows is never unpacked (here a
    corrupt nested zip, which would otherwise refuse the zip as corrupt)."""
    notebook = _sample("solution").read_bytes()
    archive = _zip_with(tmp_path / "ada_1_2_cnn.zip", [("cnn_mnist.ipynb", notebook), ("copy.ipynb", notebook),
                                                      ("more.zip", b"not a zip at all"), ("last.ipynb", notebook)])
    out = tmp_path / "out"
    (sub,) = collect([archive], out)
    assert sub.notebook is None and "more than one notebook" in sub.error, sub.error
    assert "'cnn_mnist.ipynb', 'copy.ipynb'" in sub.error and "last.ipynb" not in sub.error
    assert _files_written(out) == 0  # neither notebook is kept, the nested zip never written


def test_a_member_that_unpacks_past_the_limit_is_cut_off(tmp_path):
    archive = tmp_path / "ada_1_2_big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("cnn_mnist.ipynb", "w") as f:
            f.write(bytes(3 * 2**20))
    limits = ArchiveLimits(max_notebook_bytes=2**20)
    (sub,) = collect([archive], tmp_path / "out", limits)
    assert "zip refused" in sub.error and "larger than 1 MB" in sub.error
    assert _disk_use(tmp_path / "out") == 0


def _zip_with(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            z.writestr(info, data)
    return path


def _symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("members, why", [
    ([(_symlink_member("link.ipynb", "/etc/shadow"), b"/etc/shadow")], "symbolic link"),
    ([("../../evil.ipynb", b"{}")], "leaves the archive"),
    ([("/tmp/evil.ipynb", b"{}")], "leaves the archive"),
    ([(f"f{i}.txt", b"") for i in range(30)], "members, over the limit"),
])
def test_unsafe_zips_are_refused_whole(tmp_path, members, why):
    notebook = _sample("solution").read_bytes()
    archive = _zip_with(tmp_path / "ada_1_2_cnn.zip", [("cnn_mnist.ipynb", notebook), *members])
    (sub,) = collect([archive], tmp_path / "out", ArchiveLimits(max_members=20))
    assert sub.notebook is None and "zip refused" in sub.error and why in sub.error
    assert not (tmp_path / "evil.ipynb").exists() and not Path("/tmp/evil.ipynb").exists()


def test_zips_nested_too_deep_are_refused(tmp_path):
    level = tmp_path / "l0.zip"
    _zip_with(level, [("cnn_mnist.ipynb", _sample("solution").read_bytes())])
    for i in range(1, 5):
        outer = tmp_path / f"l{i}.zip"
        _zip_with(outer, [(level.name, level.read_bytes())])
        level = outer
    shutil.copy(level, tmp_path / "ada_1_2_cnn.zip")
    (sub,) = collect([tmp_path / "ada_1_2_cnn.zip"], tmp_path / "out")
    assert "nested more than 3 deep" in sub.error


def test_an_oversized_notebook_is_an_error_row(tmp_path):
    big = tmp_path / "ada.ipynb"
    big.write_bytes(_sample("solution").read_bytes() + b" " * 2**20)
    (sub,) = collect([big], tmp_path / "out", ArchiveLimits(max_notebook_bytes=2**20))
    assert "over the 1 MB limit" in sub.error


# --- private outputs ----------------------------------------------------------------------------

def test_outputs_are_readable_by_their_owner_only(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "knuth_1004_5004_report.pdf").write_bytes(b"%PDF-1.4 not a notebook")
    nbformat.write(nbformat.v4.new_notebook(), folder / "empty_1005_5005_cnn_mnist.ipynb")
    _otter_export(folder / "ada_1006_5006_cnn_mnist.zip", tmp_path / "class" / "empty_1005_5005_cnn_mnist.ipynb")
    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    old = os.umask(0o022)  # the usual umask: without care, everything would be world-readable
    try:
        batch.run_batch([folder], Path("unused.zip"), out,
                        batch.BatchOptions(jobs=1, progress=False, canvas="CNN on MNIST (4242)"))
    finally:
        os.umask(old)
    paths = [out, *out.rglob("*")]
    names = {p.relative_to(out).as_posix() for p in paths}
    assert {"grades.csv", "canvas_grades.csv", "needs_review.csv", "report.html", "batch.json",
            "feedback/1004.html", "results/1004.json"} <= names and any(n.startswith("_unpacked/") for n in names)
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def test_the_cli_refuses_a_canvas_column_without_an_id(tmp_path):
    from typer.testing import CliRunner

    from autograder.cli import app

    result = CliRunner().invoke(app, ["grade", str(tmp_path), "--out", str(tmp_path / "out"),
                                      "--canvas-assignment", "cnn_mnist"])
    assert result.exit_code == 2 and "Title (assignment id)" in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was built or graded


def test_a_symlink_in_a_class_folder_is_an_error_row_and_never_read(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    secret = tmp_path / "grader_secret.ipynb"
    shutil.copy(_sample("solution"), secret)
    (folder / "ada_1001_5001_cnn_mnist.ipynb").symlink_to(secret)
    (folder / "alan_1002_5002_cnn_mnist.ipynb").write_bytes(_sample("untouched").read_bytes())
    subs = {s.id: s for s in collect([folder], tmp_path / "out")}
    assert subs["1001"].notebook is None and "symbolic link" in subs["1001"].error
    assert subs["1002"].error is None


# --- every reader of a submitted file: no link followed, no content quoted -----------------------

SECRET = "GRADER-ONLY-SECRET-9c1e"


def _secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "secret" / "cnn_mnist.ipynb"
    secret.parent.mkdir()
    secret.write_text(SECRET + " {not a notebook")
    os.chmod(secret, 0o600)
    return secret


def test_a_symlinked_notebook_in_a_gradescope_export_is_never_read(tmp_path):
    secret = _secret_file(tmp_path)
    export = tmp_path / "export"
    (export / "submission_111").mkdir(parents=True)
    (export / "submission_222").mkdir(parents=True)
    (export / "submission_111" / "cnn_mnist.ipynb").symlink_to(secret)
    (export / "submission_222" / "work").symlink_to(secret.parent)  # a linked folder is never entered
    (export / "submission_metadata.yml").write_text(
        "submission_111:\n  :submitters:\n  - :name: Ada\n    :sid: '111'\n"
        "submission_222:\n  :submitters:\n  - :name: Alan\n    :sid: '222'\n")
    subs = {s.id: s for s in collect([export], tmp_path / "out")}
    assert subs["111"].notebook is None and "is a symbolic link; not read" in subs["111"].error
    assert subs["222"].notebook is None and subs["222"].error == "no notebook in the submission"
    assert not any(SECRET[:6] in (s.error or "") for s in subs.values())


def test_a_notebook_that_is_not_json_is_named_never_quoted(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    shutil.copy(_secret_file(tmp_path), folder / "ada_1001_5001_cnn_mnist.ipynb")
    (folder / "alan_1002_5002_cnn_mnist.ipynb").write_bytes(b'{"nbformat": 4, "cells": "' + SECRET.encode() + b'"}')
    subs = {s.id: s for s in collect([folder], tmp_path / "out")}
    assert subs["1001"].error == ("ada_1001_5001_cnn_mnist.ipynb is not a readable notebook: not JSON "
                                  "(Expecting value at line 1, column 1)")
    assert "not a readable notebook" in subs["1002"].error
    assert not any(SECRET[:6] in s.error for s in subs.values())


def test_the_assignment_picker_and_the_probe_refuse_a_link(tmp_path):
    from autograder.probe.sandbox import probe

    secret = _secret_file(tmp_path)
    link = tmp_path / "cnn_mnist.ipynb"
    link.symlink_to(secret)
    name, problem = batch.pick_assignment(link, {"cnn_mnist": "unused.zip"})
    assert problem.cause == "unreadable" and "is a symbolic link; not read" in problem.message
    probed = probe(link, [], {})
    assert probed.fault.cause == "unreadable" and probed.fault.owner == "submission" and probed.runs == 0
    assert "is a symbolic link; not read" in probed.fault.message
    shutil.copy(secret, tmp_path / "copy.ipynb")  # a file of its own: read, and its fault named, never quoted
    probed = probe(tmp_path / "copy.ipynb", [], {})
    assert probed.fault.cause == "unreadable" and "not JSON" in probed.fault.message
    assert SECRET[:6] not in probed.fault.message


def test_a_symlinked_folder_below_the_root_is_refused(tmp_path):
    from autograder.submission_files import SubmissionFileError, read_notebook

    secret = _secret_file(tmp_path)
    root = tmp_path / "submission"
    root.mkdir()
    (root / "work").symlink_to(secret.parent)
    with pytest.raises(SubmissionFileError, match=r"a folder on its path \(work\) is a symbolic link"):
        read_notebook(root / "work" / "cnn_mnist.ipynb", root=root)
    (root / "fifo.ipynb").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "fifo.ipynb")  # never blocks the grader
    with pytest.raises(SubmissionFileError, match="not a regular file"):
        read_notebook(root / "fifo.ipynb", root=root)


def test_a_broken_gradescope_metadata_file_is_named_never_quoted(tmp_path):
    export = tmp_path / "export"
    (export / "submission_111").mkdir(parents=True)
    shutil.copy(_sample("untouched"), export / "submission_111" / "cnn_mnist.ipynb")
    (export / "submission_metadata.yml").write_text(f"submission_111:\n  :submitters: [\n  {SECRET}: : :\n")
    (sub,) = collect([export], tmp_path / "out")
    assert sub.notebook is None and "submission_metadata.yml is not readable" in sub.error
    assert SECRET[:6] not in sub.error


def test_library_errors_lose_what_they_quote():
    from autograder.submission_files import describe_error

    assert describe_error(ValueError(f"Notebook does not appear to be JSON: {SECRET!r}")) == \
        "ValueError: Notebook does not appear to be JSON: …"
    assert SECRET not in describe_error(ValueError(f"bad header 'abc' then '{SECRET}"))  # an unmatched quote
    assert SECRET not in describe_error(ValueError(f"bytes b'{SECRET}'"))


def test_a_students_zips_share_one_budget_that_a_misleading_name_cannot_spend(tmp_path):
    """Members are counted per student over all of their zips; a zip whose name also reads as 222's
    draws on a budget of its own, so 222's real zip is still read."""
    folder = tmp_path / "class"
    folder.mkdir()
    filler = [(f"f{i}.txt", b"") for i in range(15)]
    notebook = _sample("solution").read_bytes()
    for n in (1, 2):  # 111's two uploads: 2 x 16 members, over 111's 20 in all
        _zip_with(folder / f"ada_111_{n}_cnn_mnist.zip", [("cnn_mnist.ipynb", notebook), *filler])
    # reads as 222's, and is read before 222's real zip (file names in order: "a" < "r")
    _zip_with(folder / "a_222_99_111_3_cnn_mnist.zip", [("cnn_mnist.ipynb", notebook), *filler])
    _zip_with(folder / "real_222_5_cnn_mnist.zip", [("cnn_mnist.ipynb", notebook), *filler])
    subs = {s.id: s for s in collect([folder], tmp_path / "out", ArchiveLimits(max_submission_members=20))}
    errors = sorted(s.error or "" for k, s in subs.items() if k.startswith("111"))
    assert errors[0] == "" and "more than 20 members" in subs["111~2"].error
    assert subs["222"].source.startswith("real_222_5_cnn_mnist.zip") and subs["222"].error is None


def test_a_class_download_counts_the_members_of_every_zip_in_it(tmp_path):
    notebook = _sample("solution").read_bytes()
    staging = tmp_path / "staging"
    staging.mkdir()
    for n in (1, 2, 3):  # 10 members each, with the class zip's own 3: 13, 23, then 33 > 30
        _zip_with(staging / f"s{n}_10{n}_50{n}_cnn_mnist.zip",
                  [("cnn_mnist.ipynb", notebook), *[(f"f{i}.txt", b"") for i in range(9)]])
    archive = tmp_path / "class submissions.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(staging.iterdir()):
            z.write(p, p.name)
    subs = {s.id: s for s in collect([archive], tmp_path / "out", ArchiveLimits(max_class_members=30))}
    assert subs["101"].error is None and subs["102"].error is None
    assert "zip refused" in subs["103"].error and "more than 30 members" in subs["103"].error


# --- names in a Canvas download zip, as Canvas writes them ---------------------------------------

UTF8_FLAG = 0x800  # general purpose bit 11: the name is UTF-8


def _clear_utf8_flag(path: Path) -> Path:
    """The zip as rubyzip (Canvas) and Info-ZIP write it: the name's UTF-8 bytes, bit 11 not set, in the
    local header and the central directory alike (the members are stored, so no signature hides in data)."""
    data = bytearray(path.read_bytes())
    for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.find(signature)
        while i >= 0:
            flags = int.from_bytes(data[i + at:i + at + 2], "little")
            data[i + at:i + at + 2] = (flags & ~UTF8_FLAG).to_bytes(2, "little")
            i = data.find(signature, i + 4)
    path.write_bytes(bytes(data))
    return path


def _canvas_zip(tmp_path: Path, names: list[str], how: str) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in names:
        shutil.copy(_sample("solution"), staging / name)
    archive = tmp_path / "ml101-cnn submissions.zip"
    if how == "Info-ZIP zip":
        if not shutil.which("zip"):
            pytest.skip("Info-ZIP's zip is not installed (the hand-written zips cover the same bytes)")
        import subprocess

        subprocess.run(["zip", "-q", "-X", str(archive), *names], cwd=staging, check=True,
                       env={**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
        return archive
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:  # zipfile sets bit 11 for a non-ASCII name
        for name in names:
            z.write(staging / name, name)
    return _clear_utf8_flag(archive) if how == "UTF-8 without the flag" else archive


@pytest.mark.parametrize("how", ["UTF-8 with the flag", "UTF-8 without the flag", "Info-ZIP zip"])
def test_non_ascii_names_of_a_canvas_zip_keep_their_owner(tmp_path, how):
    """Canvas's download zip (rubyzip) and Info-ZIP write a name's UTF-8 bytes without bit 11; read as CP437,
    ``garcíajosé_10001_...`` became ``garc├¡ajos├⌐_...``, which no Canvas reading matches: that student lost
    their Canvas id and dropped out of the import.  Read as written, every student keeps theirs."""
    names = ["garcíajosé_10001_900001_cnn_mnist.ipynb", "lovelaceada_10002_900002_cnn_mnist.ipynb",
             "øyvindsæther_10004_900004_cnn_mnist.ipynb"]
    archive = _canvas_zip(tmp_path, names, how)
    with zipfile.ZipFile(archive) as z:
        flagged = {bool(i.flag_bits & UTF8_FLAG) for i in z.infolist() if not i.filename.isascii()}
    assert flagged == {how == "UTF-8 with the flag"}, "the zip is not written the way this case says"
    subs = {s.id: s for s in collect([archive], tmp_path / "out")}
    assert set(subs) == {"10001", "10002", "10004"}, sorted(subs)
    assert subs["10001"].name == "garcíajosé" and subs["10001"].extra["canvas_user_id"] == "10001"
    assert subs["10004"].name == "øyvindsæther" and subs["10004"].error is None
    results = [_graded(s, 20.0) for s in subs.values()]
    reports.write_canvas_csv(results, tmp_path / "canvas.csv", reports.canvas_column("CNN", 1))
    import csv

    assert sorted(r[1] for r in list(csv.reader(open(tmp_path / "canvas.csv", encoding="utf-8")))[2:]) == \
        ["10001", "10002", "10004"]
    assert reports.unowned(results) == []


def test_a_name_without_the_flag_that_is_not_utf8_is_read_as_cp437(tmp_path):
    """An old tool's CP437 name (``ñ`` is the byte 0xA4 there, which is not UTF-8) still reads as CP437."""
    archive = tmp_path / "old.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.write(_sample("solution"), "muXoz_10003_900003_cnn_mnist.ipynb")  # ASCII: no flag; X stands for 0xA4
    archive.write_bytes(archive.read_bytes().replace(b"muXoz_", b"mu\xa4oz_"))
    with zipfile.ZipFile(archive) as z:
        assert not z.infolist()[0].flag_bits & UTF8_FLAG
    subs = {s.id: s for s in collect([archive], tmp_path / "out")}
    assert subs["10003"].name == "mu\u00f1oz" and subs["10003"].error is None


def test_a_file_whose_owner_is_unknown_heads_the_report_the_review_list_and_the_console(canvas_download, tmp_path,
                                                                                        monkeypatch):
    """A Canvas download holding a file Canvas did not name (a student's own name for it): it is graded,
    listed first in report.html, needs_review.csv and the console, with what to do, never silently
    left out of the import."""
    import csv
    import io

    from rich.console import Console

    from autograder import cli

    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(_sample("solution"), extra / "my notebook (final).ipynb")
    out = tmp_path / "out"
    out.mkdir()
    results = [_graded(s, 30.0) if not s.error else batch._error_result(s, s.error)
               for s in collect([canvas_download, extra], out)]
    stray = next(r for r in results if r["student"]["source"].startswith("my notebook"))
    assert [r for r, _ in reports.unowned(results)] == [stray]
    reports.write_all(results, out, canvas="CNN on MNIST (4242)")
    report = (out / "report.html").read_text()
    assert report.index('id="unowned"') < report.index('id="count"') < report.index('id="submissions"')
    assert "my notebook (final).ipynb" in report[:report.index('id="count"')]
    assert report.count("owner unknown (see the top of this page)") == 1  # and flagged on its own row
    review = list(csv.DictReader(open(out / "needs_review.csv", encoding="utf-8")))
    assert review[0]["id"] == stray["student"]["id"] and review[0]["in_canvas_import"] == "no"
    assert "owner unknown" in review[0]["reason"] and "rename the file as Canvas names it" in review[0]["reason"]
    canvas = list(csv.reader(open(out / "canvas_grades.csv", encoding="utf-8")))
    assert stray["student"]["id"] not in [r[1] for r in canvas[2:]]
    shown = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=shown, width=120))
    cli._print_unowned(results, out)
    cli._print_results(results)
    text = shown.getvalue()
    assert text.index("without a known owner") < text.index("my notebook (final).ipynb") < text.index("submissions")
