"""The warm pool: jails and judges started ahead of their submission, each serving exactly one.

Each test fails if a guarantee of the pool goes: a warm jail holds nothing of any submission
before it is handed one; a submission never lands in a jail another one used; a submission
running while the next jail warms up cannot see or touch it; the wait is never charged to the
student; a warm jail that does not hide a newly private folder is not used; grades are the same
warm or cold.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest

from autograder import warm
from autograder.probe import jail
from autograder.probe.sandbox import Limits

sys.path.insert(0, str(Path(__file__).parent))
from test_jail import FAST, NO_RETRAIN, ROOT, conv_small, grade, needs_bwrap, tiny  # noqa: E402

from autograder import engine  # noqa: E402


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.delenv(jail.ENV_MODE, raising=False)
    monkeypatch.delenv(jail.ENV_PRIVATE, raising=False)
    warm.configure(1)
    yield warm
    warm.configure(0)  # nothing keeps waiting after the test
    monkeypatch.delenv(warm.ENV_WARM, raising=False)


def _only_waiting_probe():
    with warm.PROBES._lock:
        items = [item for _, item in warm.PROBES._items]
    assert len(items) == 1, items
    return items[0]


@needs_bwrap
def test_a_waiting_jail_holds_nothing_of_any_submission(pool, autograder, tmp_path):
    nb = tiny(tmp_path / "first.ipynb", "SECRET_OF_FIRST = 'zebra-violet-42'")
    grade(nb, autograder)  # cold, and starts the next jail
    assert warm.wait_ready(300)
    waiting = _only_waiting_probe()
    assert waiting.alive() and waiting.ready()
    # what the grader put in, plus what the start-up itself writes (IPython's and Keras's dot-folders, bytecode)
    from autograder import protocol

    assert sorted(n for n in os.listdir(waiting.jail.work) if not n.startswith(".") and n != "__pycache__") == \
        sorted(["mnist.npz", protocol.RUNTIME_FILE, protocol.PROTOCOL_FILE, "setup.json", "tmp"])
    for folder, _, files in os.walk(waiting.jail.work):
        for name in files:
            if name != "mnist.npz":
                assert b"zebra" not in (Path(folder) / name).read_bytes(), name
    setup = json.loads((waiting.jail.work / "setup.json").read_text())
    assert set(setup) == {"real_fit", "data_file", "data_setup"}  # start-up settings only
    for pid in waiting.pids():  # no notebook, cell or answer on any command line of the jail
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert b"zebra" not in cmdline and b"first.ipynb" not in cmdline and b"conv_small" not in cmdline


@needs_bwrap
def test_each_submission_gets_a_fresh_jail_and_the_next_one_is_out_of_reach(pool, autograder, tmp_path):
    """The attacker runs while the victim's jail is already warm: it looks for other runtimes, signals
    what it finds, plants files where the next jail might look, and leaves a process behind."""
    attacker = tiny(tmp_path / "a" / "attacker.ipynb", """
        import os, subprocess, time
        found = 0
        for pid in os.listdir('/proc'):
            try:
                if pid.isdigit() and int(pid) != os.getpid() and b'runtime' in open(f'/proc/{pid}/cmdline', 'rb').read():
                    os.kill(int(pid), 0)  # same permission check as SIGKILL, harmless if the jail failed
                    found += 1
            except OSError:
                pass
        for folder in ('/tmp', '/sandbox', os.getcwd()):
            try:
                open(os.path.join(folder, 'planted-by-attacker'), 'w').write('x')
            except OSError:
                pass
        subprocess.Popen(['sleep', '300'], start_new_session=True)
        print('ATTACKER', os.getuid(), os.getcwd(), 'FOUND', found)
        """)
    victim = tiny(tmp_path / "v" / "victim.ipynb", """
        import os, glob
        print('VICTIM', os.getuid(), 'PLANTED', sorted(glob.glob('/tmp/planted*') + glob.glob('/sandbox/planted*')
                                                        + glob.glob(os.getcwd() + '/planted*')))
        """)
    grade(tiny(tmp_path / "w" / "warmup.ipynb"), autograder)  # the pool now holds the attacker's jail
    assert warm.wait_ready(300)
    first = grade(attacker, autograder)
    assert warm.wait_ready(300)  # ... and the victim's jail warmed up while the attacker ran
    second = grade(victim, autograder)
    assert first["execution"]["warm_starts"] == [True] and second["execution"]["warm_starts"] == [True]
    out_a, out_v = first["execution"]["output_tail"], second["execution"]["output_tail"]
    assert "FOUND 0" in out_a, out_a[-2000:]
    assert "PLANTED []" in out_v, out_v[-2000:]
    assert conv_small(second) == 2 and second["status"] == "graded"
    if ROOT:
        assert first["isolation"]["uid"] != second["isolation"]["uid"]


@needs_bwrap
def test_the_wait_in_the_pool_is_never_charged_to_the_student(pool, autograder, tmp_path):
    limits = Limits(cell_seconds=3, notebook_seconds=6, memory_mb=3072)
    grade(tiny(tmp_path / "w" / "warmup.ipynb"), autograder, limits)
    assert warm.wait_ready(300)
    time.sleep(8)  # longer than the notebook limit: the jail waits, its clocks have not started
    result = grade(tiny(tmp_path / "s" / "student.ipynb", "x = 1"), autograder, limits)
    assert result["execution"]["warm_starts"] == [True]
    assert result["limits_hit"] == [] and conv_small(result) == 2


@needs_bwrap
def test_a_warm_jail_that_does_not_hide_a_new_private_folder_is_not_used(pool, autograder, tmp_path):
    trees = jail.python_trees(jail.probe_python(), [])
    secret = Path(trees[-1]) / f"cnn-grader-test-private-{uuid.uuid4().hex}"  # inside a mounted tree
    try:
        grade(tiny(tmp_path / "w" / "warmup.ipynb"), autograder)
        assert warm.wait_ready(300)
        waiting = _only_waiting_probe()
        secret.mkdir()
        (secret / "answers.txt").write_text("the answer key")
        assert waiting.jail.hides_as_much_as([])
        assert not waiting.jail.hides_as_much_as([secret])
        nb = tiny(secret / "sub.ipynb", "import os\nprint('SEES', os.path.exists(%r))" % str(secret / "answers.txt"))
        result = grade(nb, autograder)  # the notebook's own folder is private to its jail
        assert result["execution"]["warm_starts"] == [False]
        assert "SEES False" in result["execution"]["output_tail"]
    finally:
        shutil.rmtree(secret, ignore_errors=True)


@needs_bwrap
def test_grades_are_the_same_warm_or_cold(autograder, tmp_path, monkeypatch):
    from assignments.cnn_mnist import sample_answers

    nb = sample_answers.SAMPLES_DIR / "by_hand_mistakes.ipynb"
    warm.configure(0)
    cold = engine.grade_notebook(nb, autograder, limits=FAST, retrain=NO_RETRAIN)
    warm.configure(1)
    try:
        engine.grade_notebook(tiny(tmp_path / "warmup.ipynb"), autograder, limits=FAST, retrain=NO_RETRAIN)
        assert warm.wait_ready(300)
        hot = engine.grade_notebook(nb, autograder, limits=FAST, retrain=NO_RETRAIN)
    finally:
        warm.configure(0)
        monkeypatch.delenv(warm.ENV_WARM, raising=False)
    assert hot["execution"]["warm_starts"] == [True] and cold["execution"]["warm_starts"] == [False]
    assert warm.JUDGES.stats["taken_warm"] >= 1
    assert hot["status"] == cold["status"] == "graded"
    assert [(q["name"], q["score"]) for q in hot["questions"]] == [(q["name"], q["score"]) for q in cold["questions"]]
    assert hot["score"] == cold["score"] > 0


@needs_bwrap
def test_files_beside_the_notebook_reach_a_warm_jail_with_its_submission(pool, autograder, tmp_path):
    from autograder.probe import sandbox

    grade(tiny(tmp_path / "w" / "warmup.ipynb"), autograder)
    assert warm.wait_ready(300)
    nb = tiny(tmp_path / "s" / "student.ipynb", "import helper\nprint('HELPER', helper.VALUE, oct(os.stat('helper.py').st_mode & 0o777))",
              )
    nb.write_text(nb.read_text().replace("import helper", "import os, helper"))
    spec = engine.Autograder.from_zip(autograder).spec  # the same start-up as grade()'s: the warm jail fits
    probed = sandbox.probe(nb, ["conv_small"], {}, limits=FAST, data_file=spec.dataset.probe_file(),
                           data_setup=spec.dataset.probe_setup,
                           private=[Path(autograder).resolve().parent],
                           files={"helper.py": b"VALUE = 7\n", "../escape.py": b"x", ".hidden": b"x"})
    assert probed.warm_starts == [True] and probed.complete, (probed.fault, probed.output[-2000:])
    assert "HELPER 7 0o444" in probed.output
    assert not (tmp_path / "s" / "escape.py").exists()


def test_pool_hands_each_process_out_once_and_closes_what_waits():
    class Item:
        closed = 0

        def __init__(self):
            self.open = True

        def alive(self):
            return self.open

        def ready(self):
            return True

        def pids(self):
            return set()

        def close(self):
            self.open = False
            Item.closed += 1

    p = warm.Pool("test", size=1)
    assert p.take("k") is None  # nothing started yet: the caller starts one cold
    p.fill("k", Item)
    deadline = time.monotonic() + 10
    while p.waiting()[1] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    p.fill("k", Item)  # already one waiting: size 1 is respected
    time.sleep(0.2)
    assert p.waiting() == (1, 1)
    assert p.take("other") is None  # another key never gets it
    got = p.take("k")
    assert isinstance(got, Item) and p.take("k") is None  # once only
    p.fill("k", Item)
    while p.waiting()[1] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    p.close()
    assert Item.closed == 1 and p.waiting() == (0, 0)
    p.fill("k", Item)  # a closed pool starts nothing
    time.sleep(0.2)
    assert p.waiting() == (0, 0)


def test_a_verified_dataset_is_verified_again_once_it_changes(tmp_path):
    """The per-process memo of verified data files (part of the per-notebook floor) never hides a change."""
    from assignments.cnn_mnist import data

    copy = tmp_path / "mnist.npz"
    shutil.copyfile(data.ensure_mnist_npz(), copy)
    assert data.ensure_mnist_npz(copy) == copy
    assert data.ensure_mnist_npz(copy) == copy  # from the memo
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte of the images, same size
    copy.write_bytes(bytes(raw))
    assert data.ensure_mnist_npz(copy) != copy  # rejected; the verified cache copy is used instead


def test_a_clean_up_spares_what_the_grader_starts_meanwhile_and_kills_orphans():
    """The demo's lost jails: discarding one warm jail killed the jail just started for the next
    submission, because the clean-up listed it before its bwrap had forked its Python and then took
    that new grandchild for an orphan.  A clean-up kills its own tree and unregistered direct children
    (orphans), never a process the grader launched nor anything such a process starts."""
    import subprocess

    import psutil

    from autograder import children
    from autograder.metering.processes import kill_everything, my_children

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    preexisting = my_children() - {psutil.Process(victim.pid)}
    # like a jail: the launched process forks its real work a moment later
    own = children.popen([sys.executable, "-c", "import subprocess, sys, time; time.sleep(0.5); "
                          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                         start_new_session=True)
    orphan_like = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(psutil.Process(own.pid).children()) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = psutil.Process(own.pid).children()[0]
    try:
        kill_everything(victim, preexisting)
        assert victim.poll() is not None
        assert orphan_like.wait(timeout=10) is not None  # an unregistered child of ours: killed
        assert own.poll() is None and grandchild.is_running() and grandchild.status() != psutil.STATUS_ZOMBIE
    finally:
        for p in (own, orphan_like):
            p.kill()
            p.wait()
        children.forget(own)
        try:
            grandchild.kill()
        except psutil.Error:
            pass


@needs_bwrap
def test_a_batch_starts_no_jail_ahead_for_a_submission_that_is_not_coming(autograder, tmp_path, monkeypatch):
    """One worker, three submissions: the first starts its jail cold, the next two take a jail started ahead;
    each takes a judge started ahead (the first's beside its own jail), and nothing is started after the last
    one (it would only be thrown away)."""
    from autograder import batch

    monkeypatch.delenv(warm.ENV_WARM, raising=False)
    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(3):
        tiny(folder / f"s{i}.ipynb", f"x = {i}")
    before = {pool.name: dict(pool.stats) for pool in (warm.PROBES, warm.JUDGES)}
    results = batch.run_batch([folder], autograder, tmp_path / "out",
                              batch.BatchOptions(jobs=1, warm=1, progress=False, limits=FAST, retrain=NO_RETRAIN))
    assert sorted(r["execution"]["warm_starts"] for r in results) == [[False], [True], [True]]
    for pool, ahead in ((warm.PROBES, 2), (warm.JUDGES, 3)):
        grew = {k: v - before[pool.name][k] for k, v in pool.stats.items()}
        assert grew["started_warm"] == grew["taken_warm"] == ahead and grew["discarded"] == 0, (pool.name, grew)
    assert warm.PROBES.size == 0  # and nothing waits after the batch
