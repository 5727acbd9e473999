"""The jail against hostile submissions: each test is one class of attack, and fails if its defence goes.

Notebooks here are tiny (one answer, ``conv_small``, worth 2 points, plus the attack), so a test
costs one sandbox start, not a lesson's worth of cells.  Unless a test says otherwise it runs in
the isolation mode this machine gives (``bwrap`` as root in CI); the mode is asserted.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from autograder import engine
from autograder.faults import FaultError
from autograder.judge import runner
from autograder.probe import jail
from autograder.engine import RetrainOptions
from autograder.probe.sandbox import Limits

NO_RETRAIN = RetrainOptions(enabled=False)
FAST = Limits(cell_seconds=30, notebook_seconds=240, memory_mb=3072, max_processes=48)
ANSWER = "import numpy as np\nconv_small = np.array([[1, 4], [3, 3]])"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs a root grader (CI runs as root)")
needs_bwrap = pytest.mark.skipif(not jail.bwrap_works(), reason="needs bubblewrap with namespaces (scripts/test.sh installs it)")


@pytest.fixture(autouse=True)
def _isolation_from_environment(monkeypatch):
    monkeypatch.delenv(jail.ENV_MODE, raising=False)
    monkeypatch.delenv(jail.ENV_UNSAFE, raising=False)
    monkeypatch.delenv(jail.ENV_PRIVATE, raising=False)  # restored after run_batch has added its folders


def tiny(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(ANSWER)]
                                  + [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def conv_small(result: dict) -> float:
    return {q["name"]: q["score"] for q in result["questions"]}["conv_small"]


def grade(nb: Path, autograder, limits: Limits = FAST) -> dict:
    result = engine.grade_notebook(nb, autograder, limits=limits, retrain=NO_RETRAIN)
    assert result["status"] != "grader_error", result["error"]
    return result


# --- 1. the answer key ----------------------------------------------------------------------------

@needs_bwrap
def test_the_grader_and_its_reference_answers_cannot_be_imported(autograder, tmp_path):
    nb = tiny(tmp_path / "sub.ipynb", """
        try:
            from assignments.cnn_mnist.reference import conv2d, max_pool2d
            import assignments.cnn_mnist.checks
            print("IMPORTED", assignments.cnn_mnist.checks.__file__)
        except ImportError as exc:
            print("BLOCKED", exc)
        """)
    result = grade(nb, autograder)
    out = result["execution"]["output_tail"]
    assert result["isolation"]["mode"] in ("bwrap", "permissions") and result["isolation"]["self_test"] == "passed"
    assert "BLOCKED" in out and "IMPORTED" not in out
    assert {q["name"]: q["score"] for q in result["questions"]}["conv2d_impl"] == 0


# --- 2. the grader's and the class's files ---------------------------------------------------------

@needs_bwrap
def test_zip_build_folder_prior_grades_and_caches_are_unreadable(autograder, tmp_path, monkeypatch):
    from autograder import data

    prior = tmp_path / "last-week"  # an earlier batch's output folder
    (prior / "feedback").mkdir(parents=True)
    (prior / "grades.csv").write_text("id,name,email,total\nalice,Alice,alice@uni.edu,33\n")
    monkeypatch.setenv(jail.ENV_PRIVATE, str(prior))  # as run_batch registers its outputs
    secrets = [Path(autograder), Path(autograder).parent / "solution", prior / "grades.csv",
               data.cache_dir() / "mnist.npz", Path(jail.__file__)]
    assert all(p.exists() for p in secrets)
    forbidden = sorted({str(p) for s in secrets for p in (s, s.parent)} | {str(tmp_path), str(jail.PACKAGE_DIR)})
    nb = tiny(tmp_path / "subs" / "sub.ipynb", f"""
        import glob, os
        cmdlines = []
        for f in glob.glob('/proc/*/cmdline'):
            try:
                cmdlines.append(open(f, 'rb').read().decode(errors='replace'))
            except OSError:
                pass
        learnt = [w for c in cmdlines for w in c.split('\\0') if w.startswith('/')]
        forbidden = {forbidden!r}
        leaks = set()
        for p in {[str(p) for p in secrets]!r} + learnt:
            for d in (p, os.path.dirname(p)):
                try:
                    if os.path.isfile(d):
                        with open(d, 'rb') as f:
                            if f.read(1):
                                leaks.add(('READ', d))
                    elif os.path.isdir(d) and os.listdir(d):
                        leaks.add(('LISTED', d))
                except OSError:
                    pass
        secret_leaks = sorted(l for l in leaks if any(l[1] == f or l[1].startswith(f + '/') for f in forbidden))
        print('SEEN', len(cmdlines), 'processes; LEAKS', secret_leaks[:20])
        """)
    result = grade(nb, autograder)
    out = result["execution"]["output_tail"]
    assert "SEEN" in out and "LEAKS []" in out, out[-3000:]
    assert conv_small(result) == 2


# --- 3. concurrent submissions ------------------------------------------------------------------

@needs_bwrap
def test_concurrent_submissions_cannot_read_or_signal_each_other(autograder, tmp_path):
    from autograder import batch

    subs = tmp_path / "subs"
    tiny(subs / "victim.ipynb", "import time\ntime.sleep(25)\nprint('VICTIM ALIVE')")
    tiny(subs / "attacker.ipynb", """
        import glob, os, signal, time
        me, found, killed = os.getpid(), set(), 0
        deadline = time.time() + 30
        while time.time() < deadline:
            for path in glob.glob('/tmp/**/*.ipynb', recursive=True) + glob.glob('/tmp/*/submission.ipynb'):
                found.add(path)
            for pid in os.listdir('/proc'):  # other submissions' runtimes; signal 0 asks the kernel the same
                try:                            # permission question as SIGKILL, so a failing jail kills nothing
                    if pid.isdigit() and int(pid) not in (me, 1) and b'probe_runtime' in open(f'/proc/{pid}/cmdline', 'rb').read():
                        os.kill(int(pid), 0)
                        killed += 1
                except OSError:
                    pass
            time.sleep(0.2)
        print('FOUND', sorted(found), 'SIGNALLED', killed)
        """)
    results = batch.run_batch([subs], Path(autograder), tmp_path / "out",
                              batch.BatchOptions(jobs=2, limits=Limits(cell_seconds=60, notebook_seconds=240,
                                                                       memory_mb=3072), retrain=NO_RETRAIN, progress=False))
    by_id = {r["student"]["id"]: r for r in results}
    victim, attacker = by_id["victim"], by_id["attacker"]
    assert victim["status"] == "graded" and conv_small(victim) == 2, victim["error"]
    assert "VICTIM ALIVE" in victim["execution"]["output_tail"]
    assert "FOUND []" in attacker["execution"]["output_tail"], attacker["execution"]["output_tail"][-2000:]
    assert "SIGNALLED 0" in attacker["execution"]["output_tail"]
    assert victim["isolation"]["uid"] != attacker["isolation"]["uid"] or not ROOT


@needs_root
def test_slot_uids_are_never_shared_between_processes(tmp_path):
    code = ("import sys, time\nfrom autograder.probe.jail import SlotLease\nlease = SlotLease()\n"
            "print(lease.uid, flush=True)\ntime.sleep(3)\nlease.release()")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    uids = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert len(set(uids)) == 3 and min(uids) >= jail.SLOT_UID_BASE


@needs_root
def test_a_slot_uids_processes_are_all_killed_even_one_that_forks_to_a_new_pid_without_end():
    """A process of the slot uid that starts itself again and exits, in a loop, has a new pid every
    millisecond: a kill by listed pid misses it (the listing never catches it alive).  The lease's
    clean-up must leave none: every generation holds the write end of a pipe, which reads to its end
    only once the last of them is dead."""
    import select

    from autograder.metering.processes import become_subreaper

    become_subreaper()  # as the grader is: the dead generations come back to us and are reaped
    sh = shutil.which("sh", path="/usr/bin:/bin")  # not the test's interpreter: it may lie under a 0700 home
    uid = jail.SLOT_UID_BASE + jail.SLOT_COUNT - 1  # the last slot: no other test leases it at once
    hop = 'echo x; sh -c "$0" "$0" & exit'  # starts itself again and exits: a new pid each generation
    starter = subprocess.Popen([sh, "-c", hop, hop], user=uid, group=uid, extra_groups=[],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert starter.stdout.read(20) == b"x\n" * 10, "the hopping process did not start"
        jail._kill_uid(uid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and select.select([starter.stdout], [], [], 1)[0]:
            if not starter.stdout.read1(1 << 16):
                break  # every writer is gone
        else:
            pytest.fail("a process of the slot uid survived its clean-up")
    finally:
        jail._kill_uid(uid)
        starter.wait(timeout=30)


ATTACKER = """
import ctypes, os, platform, sys, threading, time

def kill_my_uid_forever():  # any clean-up helper that runs as this uid dies at once
    sys.stdout.write("x\\n" * 10)
    sys.stdout.flush()
    while True:
        try:
            os.kill(-1, 9)
        except OSError:
            pass

threading.Thread(target=kill_my_uid_forever).start()
time.sleep(0.5)
# the main thread alone exits: the process shows as a zombie while its other thread runs on
ctypes.CDLL(None).syscall({"x86_64": 60, "aarch64": 93}[platform.machine()], 0)
"""


@needs_root
def test_a_slot_uids_processes_are_all_killed_even_one_that_kills_its_uid_and_looks_like_a_zombie():
    """A process of the slot uid that SIGKILLs everything of its uid in a loop (so a clean-up helper
    running as that uid dies before it acts) and whose main thread has exited (so a listing shows it as
    a zombie) must not survive its lease's clean-up: it holds a pipe that reads to its end once it is dead."""
    import select

    from autograder.metering.processes import become_subreaper

    python = shutil.which("python3", path="/usr/bin:/bin")  # reachable by the slot uid (not under a 0700 home)
    if python is None:
        pytest.skip("no system python3 to run the attacker as the slot uid")
    become_subreaper()
    uid = jail.SLOT_UID_BASE + jail.SLOT_COUNT - 2  # a slot no other test leases at once
    attacker = subprocess.Popen([python, "-I", "-c", ATTACKER], user=uid, group=uid, extra_groups=[], cwd="/",
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert attacker.stdout.read(20) == b"x\n" * 10, "the attacker did not start"
        time.sleep(1)  # its main thread has exited by now
        jail._kill_uid(uid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and select.select([attacker.stdout], [], [], 1)[0]:
            if not attacker.stdout.read1(1 << 16):
                break
        else:
            pytest.fail("a process of the slot uid survived its clean-up")
    finally:
        try:
            jail._kill_uid(uid)
        finally:
            attacker.wait(timeout=30)


# --- 3b. what the kernel keeps per uid: keyrings ----------------------------------------------------

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")  # reachable by a slot uid in every mode


def run_jailed(code: str, mode: str, monkeypatch, before=None, **limits) -> tuple[int | None, str]:
    """``code`` run by a plain Python in a fresh jail of ``mode`` (no notebook, no self-test: the jail alone),
    after ``before(jail)``; returns the jail's uid and the output.  ``limits``: ``open_jail``'s."""
    from autograder import children

    monkeypatch.setenv(jail.ENV_MODE, mode)
    with jail.open_jail(python=SYSTEM_PYTHON, **limits) as j:
        script = j.put("attack.py", textwrap.dedent(code).encode())
        j.hand_over()
        if before is not None:
            before(j)
        proc = children.run(j.command([j.python, "-I", script]), cwd=j.work, env=j.env(), capture_output=True,
                            text=True, timeout=120, preexec_fn=j.preexec())
        return j.uid, proc.stdout + proc.stderr


KEY_ATTACK = """
    import ctypes, errno, platform
    add_key, request_key, keyctl = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    USER_KEYRING = ctypes.c_int(-4)
    def outcome(r):
        return "OK %d" % r if r >= 0 else "FAILED " + errno.errorcode.get(ctypes.get_errno(), "?")
    print("ADD", outcome(libc.syscall(add_key, b"user", b"left-for-the-next", b"secret 42", 9, USER_KEYRING)))
    print("SEARCH", outcome(libc.syscall(keyctl, 10, USER_KEYRING, b"user", b"planted-before", 0)))
    print("REQUEST", outcome(libc.syscall(request_key, b"user", b"planted-before", None, 0)))
    print("SESSION", outcome(libc.syscall(keyctl, 1, None)))  # KEYCTL_JOIN_SESSION_KEYRING: a fresh one
    """


def _as_uid(uid: int, action) -> None:
    """Run ``action`` in a forked helper as ``uid`` (the grader's own code: not under any jail's filter)."""
    from autograder import children

    def helper() -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        action()

    assert children.run_forked(helper) == 0


def _key_call(*args) -> None:
    import ctypes
    import platform

    numbers = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(numbers[args[0]], *args[1:]) < 0:
        raise OSError(ctypes.get_errno(), "key call failed")


@needs_root
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="needs a system python3 that a slot uid can run")
@pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=needs_bwrap), "permissions"])
def test_a_key_left_in_a_slot_uids_keyring_reaches_no_later_jail_of_that_uid(mode, monkeypatch):
    """A submission adds a key to its uid's user keyring for the next submission of that uid (the keyring is
    the uid's, not the jail's), and the next one looks for a key planted there before it: every key
    system call fails in every jail, so nothing is added and nothing planted is found."""
    import ctypes

    user_keyring = ctypes.c_int(-4)
    planted = []

    def plant(j) -> None:  # a key in the slot uid's keyring, as an earlier holder of the uid could have left it
        _as_uid(j.uid, lambda: _key_call(0, b"user", b"planted-before", b"secret 7", 8, user_keyring))
        planted.append(j.uid)

    try:
        uid, out = run_jailed(KEY_ATTACK, mode, monkeypatch, before=plant)
        assert uid is not None and uid >= jail.SLOT_UID_BASE
        for call in ("ADD", "SEARCH", "REQUEST", "SESSION"):
            assert f"{call} FAILED EPERM" in out, out
    finally:
        for uid in planted:  # KEYCTL_CLEAR: the planted key goes
            _as_uid(uid, lambda: _key_call(2, 7, user_keyring))


# --- 4. symlinks planted for the root grader ---------------------------------------------------------

@needs_root
def test_root_never_follows_links_planted_in_a_sandbox_folder(autograder, tmp_path):
    target = tmp_path / "root-only.txt"
    target.write_text("precious")
    target.chmod(0o600)
    with jail.open_jail() as j:  # the grader writes only new files, before the folder is handed over
        os.symlink(target, j.work / "mnist.npz")
        with pytest.raises(FileExistsError):
            j.copy_in("mnist.npz", Path(jail.__file__))
        with pytest.raises(FileExistsError):
            j.put("mnist.npz", b"x")
    nb = tiny(tmp_path / "sub.ipynb", f"""
        import os
        for name in ('mnist.npz', 'job.json', 'submission.ipynb', 'probe_runtime.py'):
            try:
                os.remove(name)
            except OSError:
                pass
            os.symlink({str(target)!r}, name)
        os.mkdir('tmp-link-farm')
        os._exit(1)  # the grader reruns the notebook: it must not reuse this folder
        """)
    result = grade(nb, autograder)
    assert target.read_text() == "precious" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert result["execution"]["runs"] == 2 and conv_small(result) == 2


# --- 5. a non-root grader, and the permission jail: graders run inside an outer wrapper ----------------

def _outer_wrapper(home: Path, uid: int, binds: dict | None = None) -> list[str]:
    """A root-made view of the file system for a grader run as ``uid`` (or as root with a 0700 package):
    /root (0700 here, as on Ubuntu) becomes an enterable tmpfs holding only the Python trees and a copy of
    the grader package owned by the grader, mode 0700.  The folders where the permission jail's self-test
    looks for stray copies of the grader (other checkouts and builds on a shared test machine) are empty
    too, except the grader's ``home`` and ``binds`` (host path -> path seen)."""
    trees = jail.python_trees(sys.executable, [])
    args = ["bwrap", "--dev-bind", "/", "/", "--die-with-parent"]
    covered: list[str] = []
    for hide in ("/root", str(jail.PACKAGE_DIR.parent), *jail.HUNT_DIRS):  # the repository (an editable install) too
        if os.path.isdir(hide) and not any(hide == t or hide.startswith(t + "/") for t in trees):
            args += _parents(hide, covered) + ["--perms", "0755", "--tmpfs", hide]
            covered.append(hide)
    for tree in trees:
        args += _parents(tree, covered) + ["--ro-bind", tree, tree]
    args += _parents(str(jail.PACKAGE_DIR), covered) + ["--ro-bind", str(home / "pkg"), str(jail.PACKAGE_DIR)]
    (assignments,) = jail.assignment_dirs()  # the answer keys: a copy owned by the grader, like its package
    args += _parents(str(assignments), covered) + ["--ro-bind", str(home / "assignments"), str(assignments)]
    for source, seen in {str(home): str(home), **(binds or {})}.items():
        args += _parents(seen, covered) + ["--bind", source, seen]
    args += ["--chdir", str(home), "--setenv", "HOME", str(home), "--setenv", "CNN_GRADER_CACHE", str(home / "cache")]
    if uid:
        args += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return args


def _parents(path: str, covered: list[str]) -> list[str]:
    out = []
    for parent in reversed(Path(path).parents):
        if any(str(parent).startswith(c + "/") for c in covered):
            out += ["--perms", "0755", "--dir", str(parent)]
    return out


@pytest.fixture
def home():
    """A grader's home outside pytest's root-only folder, so a non-root grader can reach it."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="cnn-grader-home-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _grade_wrapped(home: Path, autograder, notebook: Path, uid: int, env: dict, memory_mb: int = 3072,
                   binds: dict | None = None, disk: str = "") -> dict:
    from autograder import data

    (home / "cache").mkdir(parents=True)
    shutil.copytree(jail.PACKAGE_DIR, home / "pkg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(jail.assignment_dirs()[0], home / "assignments", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(data.cache_dir() / "mnist.npz", home / "cache" / "mnist.npz")
    shutil.copy(autograder, home / "autograder.zip")
    shutil.copy(notebook, home / "sub.ipynb")
    for p in [home, *home.rglob("*")]:
        os.chown(p, uid, uid, follow_symlinks=False)
    for p in (home, home / "pkg", home / "assignments", home / "cache"):
        p.chmod(0o700)
    code = ("import json\nfrom autograder import engine\n"
            "r = engine.grade_notebook('sub.ipynb', 'autograder.zip', retrain=engine.RetrainOptions(enabled=False),"
            f" limits=engine.Limits(cell_seconds=30, notebook_seconds=240, memory_mb={memory_mb}{disk}))\n"
            "print('@@RESULT@@' + json.dumps(r))")
    proc = subprocess.run(_outer_wrapper(home, uid, binds) + [sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})
    mark = proc.stdout.rfind("@@RESULT@@")
    assert mark >= 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[mark + len("@@RESULT@@"):])


ATTACK_FROM_OUTSIDE = """
    import glob, os, signal
    try:
        import autograder
        print('IMPORTED', autograder.__file__)
    except Exception as exc:  # ImportError, or PermissionError where an editable install's finder points
        print('BLOCKED import', type(exc).__name__)
    for pattern in ('{home}/*', '{home}/cache/*', '{home}/cache/retrain/*', '{home}/pkg/*'):
        for p in glob.glob(pattern):
            print('VISIBLE', p)
    try:
        os.makedirs('{home}/cache/retrain', exist_ok=True)
        open('{home}/cache/retrain/forged.json', 'w').write('{{"accuracy": 0.9999}}')
        print('FORGED')
    except OSError as exc:
        print('NO FORGERY', type(exc).__name__)
    grader = []
    for p in os.listdir('/proc'):
        try:
            if p.isdigit() and b'grade_notebook' in open('/proc/%s/cmdline' % p, 'rb').read():
                grader.append(int(p))
        except OSError:
            pass
    for pid in grader:  # signal 0: the same permission check as SIGKILL, harmless if the jail failed
        try:
            os.kill(pid, 0)
            print('COULD SIGNAL GRADER')
        except OSError as exc:
            print('CANNOT SIGNAL', type(exc).__name__)
    print('GRADER PIDS SEEN', len(grader))
    """


@needs_root
@needs_bwrap
def test_non_root_grader_jails_with_a_user_namespace_and_its_cache_cannot_be_forged(autograder, tmp_path, home):
    """The grader itself runs as uid 60999 (set up by an outer bubblewrap as root); retraining is off.  It cannot
    mount a tmpfs: bubblewrap's own caps the bytes a submission writes (not its files), and says so."""
    nb = tiny(tmp_path / "attack.ipynb", ATTACK_FROM_OUTSIDE.format(home=home), DISK_FILL)
    result = _grade_wrapped(home, autograder, nb, 60999, {}, disk=", disk_mb=64, disk_files=2000")
    out = result["execution"]["output_tail"]
    assert result["status"] == "graded" and result["isolation"]["mode"] == "bwrap", result["error"]
    assert re.search(r"FILL big STOPPED AT 6[0-4] MB ENOSPC", out) and "SAME DISK True" in out, out[-1500:]
    assert "disk limit (64 MB) reached during cell 2" in result["limits_hit"], result["limits_hit"]
    assert "no file-count limit" in " ".join(result["isolation"]["notes"])
    assert result["isolation"]["uid"] is None and "user namespace" in " ".join(result["isolation"]["notes"])
    assert "BLOCKED import" in out and "VISIBLE" not in out and "COULD SIGNAL GRADER" not in out
    # the jail's /tmp is its own tmpfs: a write to the cache's path lands there, never in the real cache
    assert not (home / "cache" / "retrain" / "forged.json").exists()
    assert conv_small(result) == 2


@needs_root
def test_permission_jail_without_namespaces_keeps_the_grader_out_of_reach(autograder, tmp_path, home):
    """Bubblewrap turned off (CNN_GRADER_ISOLATION=permissions); the grader runs as root with its package
    mode 0700; retraining is off."""
    nb = tiny(tmp_path / "attack.ipynb", ATTACK_FROM_OUTSIDE.format(home=home))
    result = _grade_wrapped(home, autograder, nb, 0, {jail.ENV_MODE: "permissions"})
    out = result["execution"]["output_tail"]
    assert result["status"] == "graded", result["error"]
    assert result["isolation"]["mode"] == "permissions" and result["isolation"]["uid"] >= jail.SLOT_UID_BASE
    assert "BLOCKED import" in out and "NO FORGERY" in out and "VISIBLE" not in out
    assert not (home / "cache" / "retrain" / "forged.json").exists()
    assert "COULD SIGNAL GRADER" not in out and "GRADER PIDS SEEN 0" not in out  # visible here, but untouchable
    assert conv_small(result) == 2


@needs_root
def test_permission_jail_counts_orphans_of_its_uid_and_leaves_no_files_behind(autograder, tmp_path, home):
    """An orphan (setsid + double fork, re-parented away from the grader) holding 2 GiB costs its cell;
    what the uid left in /tmp, /var/tmp and /dev/shm is deleted when its lease ends."""
    nb = tiny(tmp_path / "attack.ipynb", """
        import os
        for d in ('/tmp', '/var/tmp', '/dev/shm'):
            with open(f'{d}/cnn-grader-test-left-{os.getuid()}', 'w') as f:
                f.write('left behind')
        """, """
        import subprocess, sys, time
        HOG = (
            "import os, time\\n"
            "os.setsid()\\n"
            "if os.fork() == 0 and os.fork() == 0:\\n"
            "    hog = bytearray(2200 << 20)\\n"
            "    for i in range(0, len(hog), 4096):\\n"
            "        hog[i] = 1\\n"
            "    time.sleep(120)\\n")
        subprocess.run([sys.executable, '-c', HOG])
        time.sleep(40)
        print('ORPHAN SURVIVED')
        """, "size_valid = 24")
    result = _grade_wrapped(home, autograder, nb, 0, {jail.ENV_MODE: "permissions"}, memory_mb=1500)
    assert result["status"] == "graded", result["error"]
    uid = result["isolation"]["uid"]
    assert result["isolation"]["mode"] == "permissions" and uid >= jail.SLOT_UID_BASE
    assert [s["index"] for s in result["execution"]["skipped_cells"]] == [2], result["limits_hit"]
    assert "memory limit (1500 MiB" in result["execution"]["skipped_cells"][0]["reason"]
    assert result["execution"]["skipped_cells"][0]["cause"] == "memory_limit"
    assert "ORPHAN SURVIVED" not in result["execution"]["output_tail"] and conv_small(result) == 2
    left = [f"{d}/cnn-grader-test-left-{uid}" for d in ("/dev/shm",)]  # (the wrapper's /tmp and /var/tmp are its own)
    assert not [p for p in left if os.path.lexists(p)]


@needs_root
def test_permission_jail_refuses_where_a_copy_of_the_grader_is_readable(autograder, tmp_path, home):
    import tempfile

    leak = Path(tempfile.mkdtemp(prefix="cnn-grader-leak-"))  # an old build, world-readable
    try:
        leak.chmod(0o755)
        shutil.copy(autograder, leak / "autograder.zip")
        (leak / "autograder.zip").chmod(0o644)
        nb = tiny(tmp_path / "sub.ipynb", "x = 1")
        result = _grade_wrapped(home, autograder, nb, 0, {jail.ENV_MODE: "permissions"}, binds={str(leak): "/srv/old"})
    finally:
        shutil.rmtree(leak)
    assert result["status"] == "grader_error" and result["questions"] == []
    assert "/srv/old/autograder.zip" in result["error"] and "chmod go-rwx" in result["error"]


@needs_bwrap
def test_memory_held_in_memfds_counts_against_the_limit(autograder, tmp_path):
    nb = tiny(tmp_path / "sub.ipynb", """
        import os, time
        fds = []
        for i in range(5):  # 5 x 400 MiB, each under the file size limit, none of it in RSS
            fd = os.memfd_create(f'hog{i}')
            for _ in range(400):
                os.write(fd, b'x' * (1 << 20))
            fds.append(fd)
        time.sleep(40)
        print('MEMFD SURVIVED')
        """, "size_valid = 24")
    result = grade(nb, autograder, Limits(cell_seconds=60, notebook_seconds=240, memory_mb=1500))
    assert [s["index"] for s in result["execution"]["skipped_cells"]] == [1], result["limits_hit"]
    assert "memory limit (1500 MiB" in result["execution"]["skipped_cells"][0]["reason"]
    assert result["execution"]["skipped_cells"][0]["cause"] == "memory_limit"
    assert "MEMFD SURVIVED" not in result["execution"]["output_tail"] and conv_small(result) == 2


DISK_FILL = """
    import errno, os, time
    def fill(path):
        written = 0
        try:
            with open(path, 'wb') as f:
                for _ in range(2000):  # 2000 MB, each file under the file size limit
                    f.write(b'x' * (1 << 20))
                    written += 1
        except OSError as exc:
            print('FILL', path, 'STOPPED AT', written, 'MB', errno.errorcode[exc.errno])
        time.sleep(1)  # full for a moment: the grader looks a few times a second
        os.remove(path)
    fill('big')
    fill('/tmp/big')
    print('SAME DISK', os.stat('/tmp').st_dev == os.stat('.').st_dev)
    """
FILE_FLOOD = """
    import errno, os
    made = 0
    try:
        for folder in ('.', '/tmp'):
            os.makedirs(f'{folder}/many', exist_ok=True)
            for i in range(300_000):
                open(f'{folder}/many/{i}', 'w').close()
                made += 1
    except OSError as exc:
        print('FILES STOPPED AT', made, errno.errorcode[exc.errno])
    """
DISK_ATTACK = DISK_FILL + FILE_FLOOD


@needs_bwrap
def test_disk_is_capped_in_bytes_and_files_for_the_folder_and_tmp_together_and_shm_is_closed(autograder, tmp_path):
    """A cell writes 2000 MB into its working folder and /tmp, then 300,000 empty files: the jail's one tmpfs
    stops both at the disk limit (the write fails in that cell), the limit is named in limits_hit, and the
    rest of the notebook is graded; /dev/shm is not writable."""
    nb = tiny(tmp_path / "sub.ipynb", """
        import os
        try:
            open('/dev/shm/x', 'w').write('x')
            print('SHM WRITABLE')
        except OSError:
            print('SHM CLOSED')
        """, DISK_ATTACK)
    out = grade(nb, autograder, Limits(cell_seconds=60, notebook_seconds=240, memory_mb=3072, disk_mb=64,
                                       disk_files=2000))
    tail = out["execution"]["output_tail"]
    assert "SHM CLOSED" in tail and "SAME DISK True" in tail, tail[-1000:]
    assert re.search(r"FILL big STOPPED AT 6[0-4] MB ENOSPC", tail) and "FILL /tmp/big STOPPED AT" in tail, tail[-1000:]
    made = int(re.search(r"FILES STOPPED AT (\d+) ENOSPC", tail).group(1))
    assert 1900 <= made < 2000, tail[-1000:]
    assert "disk limit (64 MB / 2000 files) reached during cell 2" in out["limits_hit"], out["limits_hit"]
    assert "disk: 64 MB and 2000 files in all" in " ".join(out["isolation"]["notes"])
    assert conv_small(out) == 2 and not out["execution"]["skipped_cells"]


@needs_root
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="needs a system python3 that a slot uid can run")
@pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=needs_bwrap), "permissions"])
def test_every_folder_a_jail_can_write_shares_one_capped_tmpfs(mode, monkeypatch):
    """The same attack in each mode, on the jail alone: in a permission jail the host's /tmp, /var/tmp,
    /dev/shm and /run/lock are the jail's own tmpfs folder too (its own mount namespace), so nothing it
    writes reaches the host's disk; the tmpfs is gone with the jail."""
    code = """
    import errno, os
    for shared in ('/var/tmp', '/dev/shm', '/run/lock'):  # writable only where they are the jail's own disk
        try:
            open(f'{shared}/escape', 'w').close()
            print(shared, 'SAME' if os.stat(shared).st_dev == os.stat('.').st_dev else 'ESCAPED')
        except OSError as exc:
            print(shared, 'CLOSED', errno.errorcode[exc.errno])
    """ + DISK_ATTACK
    uid, out = run_jailed(code, mode, monkeypatch, disk_mb=64, disk_files=2000)
    assert re.search(r"FILL big STOPPED AT 6[0-4] MB ENOSPC", out), out
    assert re.search(r"FILL /tmp/big STOPPED AT \d+ MB ENOSPC", out), out
    assert 1900 <= int(re.search(r"FILES STOPPED AT (\d+) ENOSPC", out).group(1)) < 2000, out
    assert "SAME DISK True" in out and "ESCAPED" not in out, out
    if mode == "permissions":  # the host's shared folders, as the jail sees them, are its own tmpfs
        assert "/var/tmp SAME" in out and "/dev/shm SAME" in out, out
    # unmounted (this process's own jails: other graders may be running on the machine)
    assert not [line for line in open("/proc/self/mountinfo") if jail.disk.folder_name() in line]


@needs_root
def test_a_jails_tmpfs_left_by_a_grader_killed_with_sigkill_is_swept(tmp_path):
    """A grader killed mid-run cannot unmount its jail's tmpfs (which holds RAM): the next grader does."""
    code = ("import sys, time\nfrom autograder.probe import jail\n"
            "with jail.open_jail() as j:\n    print(j.work, flush=True)\n    time.sleep(600)\n")
    killed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        work = killed.stdout.readline().strip()
    finally:
        killed.kill()
        killed.wait()
    assert work.startswith(str(jail.disk.JAILS_DIR)) and jail.disk.is_mounted(Path(work))
    jail.disk.sweep()
    assert not jail.disk.is_mounted(Path(work)) and not os.path.exists(work)


def test_non_root_grader_without_namespaces_refuses_unless_told_otherwise(autograder, tmp_path, monkeypatch):
    monkeypatch.setattr(jail, "_is_root", lambda: False)
    monkeypatch.setattr(jail, "bwrap_works", lambda: False)
    nb = tiny(tmp_path / "sub.ipynb", "x = 1")
    refused = engine.grade_notebook(nb, autograder, limits=FAST, retrain=NO_RETRAIN)
    assert refused["status"] == "grader_error" and "--unsafe-no-isolation" in refused["error"]
    assert refused["questions"] == []
    monkeypatch.setenv(jail.ENV_UNSAFE, "1")
    unsafe = engine.grade_notebook(nb, autograder, limits=FAST, retrain=NO_RETRAIN)
    assert unsafe["status"] == "graded" and unsafe["isolation"]["mode"] == "none"
    assert not unsafe["isolation"]["isolated"] and "not isolated" in unsafe["isolation"]["notes"][0]
    assert conv_small(unsafe) == 2


# --- 5b. the self-test, kept per host and version -----------------------------------------------------

@pytest.fixture
def kept_tests(tmp_path, monkeypatch):
    """An empty store of kept self-tests, and a fresh process's memory of self-tests."""
    from autograder.probe import self_test_cache

    folder = tmp_path / "kept"
    monkeypatch.setattr(self_test_cache, "folder", lambda: folder)
    monkeypatch.setattr(jail, "_SELF_TESTS", {})
    monkeypatch.setattr(jail, "_CHECKED", {})
    return folder


def _no_full_self_test(monkeypatch) -> list:
    """Record the self-test's runs: the full one must not run (raises), a light rerun is allowed."""
    runs = []

    def run(private, python, imports):
        runs.append(list(imports))
        if imports:
            raise AssertionError("the full self-test ran again")
        return {}

    monkeypatch.setattr(jail, "_run_self_test", run)
    return runs


@needs_bwrap
def test_a_passed_self_test_is_kept_and_served_until_anything_it_depends_on_changes(kept_tests, monkeypatch, tmp_path):
    """The full self-test runs once per host and version; a batch's own folders (outputs, inputs) are proved
    by a light rerun each time; any change to what the jail is built from runs the full test again."""
    from autograder.probe import self_test_cache

    outputs = tmp_path / "outputs"  # a batch's outputs: registered for every jail of the batch
    outputs.mkdir(mode=0o700)
    monkeypatch.setenv(jail.ENV_PRIVATE, str(outputs))
    first = jail.self_test()  # the real one, once
    stored = self_test_cache.key_parts(*jail.kept_self_test_inputs())
    assert first["self_test"] == "passed" and len(list(kept_tests.glob("*.json"))) == 1
    assert stat.S_IMODE(kept_tests.stat().st_mode) == 0o700
    assert stat.S_IMODE(next(kept_tests.glob("*.json")).stat().st_mode) == 0o600
    runs = _no_full_self_test(monkeypatch)
    now = self_test_cache.key_parts(*jail.kept_self_test_inputs())
    assert now == stored, {part: (stored[part], now[part]) for part in stored if stored[part] != now[part]}

    def served() -> bool:  # as a new grader process on this host would find it
        monkeypatch.setattr(jail, "_SELF_TESTS", {})
        runs.clear()
        try:
            found = jail.self_test()
        except AssertionError:
            return False
        assert found["mode"] == "bwrap" and "kept for this host and version" in found["self_test"]
        return True

    assert served() and runs == [[]]  # kept; the outputs folder proved by the light rerun (no imports)
    monkeypatch.setenv(jail.ENV_PRIVATE, f"{outputs}:{tmp_path / 'another batch'}")
    assert served() and runs == [[]]
    originals = {"dirs": jail.assignment_dirs, "bwrap": self_test_cache._bwrap}
    monkeypatch.setattr(jail, "assignment_dirs", lambda: [tmp_path])  # another installation of the answer keys
    assert not served()
    monkeypatch.setattr(jail, "assignment_dirs", originals["dirs"])
    assert served()
    monkeypatch.setattr(self_test_cache, "_SOURCE_DIGEST", ["another version of the grader"])
    assert not served()
    monkeypatch.setattr(self_test_cache, "_SOURCE_DIGEST", [])
    monkeypatch.setattr(self_test_cache, "_bwrap", lambda: ["bubblewrap 9.9"])
    assert not served()
    monkeypatch.setattr(self_test_cache, "_bwrap", originals["bwrap"])
    release = self_test_cache.platform.release
    monkeypatch.setattr(self_test_cache.platform, "release", lambda: "9.9.9-another-kernel")
    assert not served()
    monkeypatch.setattr(self_test_cache.platform, "release", release)
    assert served()


@needs_bwrap
def test_a_kept_self_test_is_used_only_from_a_private_store_and_while_fresh(kept_tests, monkeypatch):
    from autograder.probe import self_test_cache

    jail.self_test()
    (entry,) = kept_tests.glob("*.json")
    _no_full_self_test(monkeypatch)

    def served() -> bool:
        monkeypatch.setattr(jail, "_SELF_TESTS", {})
        try:
            jail.self_test()
            return True
        except AssertionError:
            return False

    assert served()
    kept_tests.chmod(0o777)  # anyone could have written it
    assert not served()
    kept_tests.chmod(0o700)
    entry.chmod(0o666)
    assert not served()
    entry.chmod(0o600)
    os.chown(entry, 12345, 12345)  # not the grader's
    assert not served()
    os.chown(entry, os.geteuid(), os.getegid())
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "passed_at": time.time() - self_test_cache.MAX_AGE_SECONDS - 60}))
    assert not served()
    entry.write_text(json.dumps(data))
    assert served()


@needs_root
def test_a_permission_jails_self_test_is_never_kept(kept_tests, monkeypatch):
    monkeypatch.setenv(jail.ENV_MODE, "permissions")
    runs = []
    monkeypatch.setattr(jail, "_run_self_test", lambda private, python, imports: runs.append(imports) or {"m": 1})
    jail.self_test()
    monkeypatch.setattr(jail, "_SELF_TESTS", {})
    jail.self_test()
    assert len(runs) == 2 and not kept_tests.exists()


@needs_bwrap
def test_the_first_jail_starts_beside_the_self_test_and_gets_nothing_if_the_test_fails(tmp_path, monkeypatch):
    """A single grade's jail starts while the self-test runs (their start-ups overlap); the notebook goes in
    only once the test has passed, and a failed test closes the jail unused."""
    from autograder.probe import sandbox

    started = []
    start = sandbox._WarmProbe.start

    def record(spec, private):
        started.append(start(spec, private))
        return started[-1]

    monkeypatch.setattr(sandbox._WarmProbe, "start", record)
    monkeypatch.setattr(jail, "self_test_passed", lambda **k: False)
    nb = tiny(tmp_path / "sub.ipynb", "print('RAN')")
    monkeypatch.setattr(jail, "self_test", lambda private: (_ for _ in ()).throw(jail.JailError("it does not hold")))
    refused = sandbox.probe(nb, ["conv_small"], {}, limits=FAST)
    assert refused.fault.cause == "jail_unsafe" and "it does not hold" in refused.fault.message and refused.runs == 0
    assert len(started) == 1 and not started[0].alive() and not started[0].jail.work.exists()
    monkeypatch.undo()
    monkeypatch.setattr(sandbox._WarmProbe, "start", record)
    monkeypatch.setattr(jail, "self_test_passed", lambda **k: False)
    ran = sandbox.probe(nb, ["conv_small"], {}, limits=FAST)
    assert "RAN" in ran.output and ran.warm_starts == [False] and len(started) == 2  # the one started beside


# --- 6. the status pipe --------------------------------------------------------------------------

@needs_bwrap
def test_forged_status_messages_add_no_cells_and_extend_no_timer(autograder, tmp_path):
    nb = tiny(tmp_path / "sub.ipynb", """
        import json, os, sys, time
        STATUS = int(sys.argv[2])  # the runtime's status pipe, as its command line says (argv[3] is the go-ahead pipe)
        def say(**m):
            os.write(STATUS, (json.dumps(m) + '\\n').encode())
        for i in range(2000):
            say(kind='cell_done', index=i % 7, seconds='forever', error='x' * 5000)
            say(kind='cell', index=i % 7)
        say(kind='value', name='conv_small', data={'status': 'json', 'value': [[9, 9], [9, 9]]})
        while True:  # keeps claiming that a new cell just started
            say(kind='cell', index=1)
            say(kind='step', label='probing conv2d')
            time.sleep(0.2)
        """, "late = 1")
    result = grade(nb, autograder, Limits(cell_seconds=6, notebook_seconds=240, memory_mb=3072))
    cells = result["execution"]["cells"]
    assert [c["index"] for c in cells] == [0, 1, 2]
    assert all(c["error"] is None or len(c["error"]) <= 500 for c in cells)
    assert any("cell time limit (6 s)" in h for h in result["limits_hit"])
    assert result["execution"]["seconds"] < 120  # far below the 240 s notebook limit: no timer was reset
    assert any("forged" in h for h in result["limits_hit"])
    assert len(json.dumps(result)) < 200_000 and conv_small(result) == 2


@needs_bwrap
def test_forged_values_are_bounded_and_a_lone_surrogate_breaks_no_report(autograder, tmp_path):
    from autograder.lms import reports

    nb = tiny(tmp_path / "sub.ipynb", r"""
        import json, os, sys
        STATUS = int(sys.argv[2])  # the runtime's status pipe
        # the submission's job reached the runtime on its stdin, already read; the names are public anyway
        job = {'variables': ['conv_small', 'size_valid', 'size_same', 'model']}
        def say(**m):
            os.write(STATUS, (json.dumps(m) + '\n').encode())
        say(kind='cell_done', index=1, seconds=0, error='bad \ud800 ' + 'E' * 1_000_000)
        say(kind='step', label='extract')
        first, second, *rest = job['variables']
        say(kind='value', name=first, data={'status': 'error', 'message': 'FORGED \ud800' + 'X' * 1_000_000})
        os.write(STATUS, b'{"kind": "value", "name": "' + second.encode() + b'", "data": {"status": "error", '
                 b'"message": "' + b'Y' * (20 << 20) + b'"}}\n')  # one 20 MiB line
        for name in rest:
            say(kind='value', name=name, data={'status': 'model', 'config': '{}', 'fits': [{'x': 'Z' * 100}] * 10_000})
        """, r'raise ValueError("bad \ud800 char")')
    result = grade(nb, autograder)
    assert len(json.dumps(result)) < 300_000, "forged fields reached the result"
    assert result["execution"]["cells"][2]["error"].startswith("ValueError: bad ?")
    assert any("forged" in h for h in result["limits_hit"])
    out = tmp_path / "out"
    out.mkdir()
    result["student"] = {"id": "surrogate"}
    assert reports.write_all([result, {**result, "student": {"id": "other"}}], out) == []
    page = (out / "feedback" / "surrogate.html").read_text(encoding="utf-8")
    assert len(page) < 300_000
    assert (out / "report.html").is_file() and (out / "feedback" / "other.html").is_file()


def test_a_report_page_with_undecodable_text_is_written_and_stops_nothing(tmp_path):
    from autograder.lms import reports

    bad = {"student": {"id": "s1"}, "status": "error", "score": 0, "max_score": 2, "error": "lone \ud800 surrogate",
           "questions": [{"name": "q", "score": 0, "max_score": 2,
                          "cases": [{"name": "t", "hidden": False, "points": 2, "passed": False,
                                     "message": "❌ Test case failed\nbad \udcff"}]}]}
    good = {**bad, "student": {"id": "s2"}, "error": "fine", "questions": []}
    assert reports.write_all([bad, good], tmp_path) == []
    assert "lone ? surrogate" in (tmp_path / "feedback" / "s1.html").read_text(encoding="utf-8")
    assert (tmp_path / "feedback" / "s2.html").is_file() and (tmp_path / "report.html").is_file()
    assert (tmp_path / "grades.csv").is_file()


@pytest.mark.parametrize("data, n_outputs, why", [
    ({"status": "json", "value": [[1] * 10] * 20_000}, None, "plain data"),
    ({"status": "json", "value": "s" * 20_000}, None, "plain data"),
    ({"status": "json", "value": {"a": 1}}, None, "plain data"),
    ({"status": "array", "npy": "A" * 20_000_000}, None, "too large"),
    ({"status": "function", "outputs": [{"status": "ok", "npy": "AAAA"}] * 3}, 2, "one output per planned call"),
    ({"status": "function", "outputs": [{"status": "weird"}]}, 1, "malformed"),
    ({"status": "model", "config": "{" * 300_000, "fits": []}, None, "config"),
    ({"status": "model", "config": "{}", "fits": [{}] * 21}, None, "fit records"),
    ({"status": "model", "config": "{}", "fits": [{"evil": 1}]}, None, "malformed fit"),
    ({"status": "model", "config": "{}", "fits": [{"x": "Z" * 30_000}]}, None, "malformed fit"),
    ({"status": "nope"}, None, "unknown"),
])
def test_sandbox_values_are_checked_field_by_field(data, n_outputs, why):
    from autograder.jail_messages import checked_value

    checked = checked_value(data, n_outputs)
    assert checked["status"] == "error" and why in checked["message"] and len(checked["message"]) < 200


# --- 7. start-up is the grader's, not the student's ------------------------------------------------

@needs_bwrap
def test_start_up_is_not_charged_to_the_first_cell_or_the_notebook(autograder, tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_GRADER_FORKSERVER", "0")  # a fresh jail's start-up: longer than the limits below
    nb = tiny(tmp_path / "sub.ipynb", "x = 1")
    result = grade(nb, autograder, Limits(cell_seconds=1.5, notebook_seconds=2, memory_mb=3072))
    assert result["limits_hit"] == [] and result["status"] == "graded"
    assert result["execution"]["seconds"] > 2  # the start-up (TensorFlow, IPython) alone took longer
    assert conv_small(result) == 2


# --- 8. a crash costs the cell -------------------------------------------------------------------

@needs_bwrap
def test_a_cell_that_kills_the_run_is_left_out_and_the_rest_graded(autograder, tmp_path):
    nb = tiny(tmp_path / "sub.ipynb", "import ctypes\nctypes.string_at(0)", "size_valid = 24")
    result = grade(nb, autograder)
    assert result["status"] == "graded" and result["execution"]["runs"] == 2
    assert [s["index"] for s in result["execution"]["skipped_cells"]] == [1]
    assert "SIGSEGV" in result["execution"]["skipped_cells"][0]["reason"]
    assert result["execution"]["skipped_cells"][0]["cause"] == "crashed"
    assert "not run" in result["execution"]["cells"][1]["error"]
    assert conv_small(result) == 2
    assert {q["name"]: q for q in result["questions"]}["output_sizes"]["score"] > 0


# --- 9. a grader fault is a grader error ----------------------------------------------------------

@needs_root
def test_an_unreachable_interpreter_is_a_grader_error_that_names_the_fix(autograder, tmp_path, monkeypatch):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.symlink(sys.executable, private / "python")
    monkeypatch.setenv(jail.ENV_MODE, "permissions")
    monkeypatch.setattr(jail, "PROBE_PYTHON", str(private / "python"))
    nb = tiny(tmp_path / "sub.ipynb", "x = 1")
    result = engine.grade_notebook(nb, autograder, limits=FAST, retrain=NO_RETRAIN)
    assert result["status"] == "grader_error" and result["questions"] == []
    assert result["cause"] == result["fault"]["cause"] == "interpreter" and result["fault"]["owner"] == "grader"
    assert "not reachable by uid" in result["error"] and "is mode 0700" in result["error"]
    assert "bubblewrap" in result["error"]  # the fix


# --- 10. grader errors are graded again; an installed package under a 0700 folder ---------------------

def test_a_grader_error_is_not_kept_and_the_next_run_grades_it_again(autograder, tmp_path, monkeypatch):
    from autograder import batch

    subs = tmp_path / "subs"
    tiny(subs / "alice.ipynb", "x = 1")
    options = batch.BatchOptions(jobs=1, limits=FAST, retrain=NO_RETRAIN, progress=False)
    monkeypatch.setattr(jail, "_is_root", lambda: False)  # a grader with no possible jail: it must refuse
    monkeypatch.setattr(jail, "bwrap_works", lambda: False)
    (first,) = batch.run_batch([subs], Path(autograder), tmp_path / "out", options)
    assert first["status"] == "grader_error" and "no isolation is available" in first["error"]
    assert first["cause"] == "jail_unsafe" and first["fault"]["owner"] == "grader"  # typed, not "interpreter"
    monkeypatch.undo()
    (second,) = batch.run_batch([subs], Path(autograder), tmp_path / "out", options)
    assert second["status"] == "graded" and conv_small(second) == 2


@needs_root
@needs_bwrap
def test_package_installed_in_a_venv_under_a_0700_folder_grades_the_solution(autograder, tmp_path):
    """``pip install --no-deps .`` into a venv in a 0700 folder (as a venv in /root would be); the
    dependencies come from this environment through a .pth file, so nothing is downloaded.  Retraining
    is off (--no-retrain): every question but the retrained accuracy gets full marks, and the installed
    package, now inside a mounted site-packages, is masked in the jail."""
    import sysconfig

    from assignments.cnn_mnist import sample_answers as samples

    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    venv = folder / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(repo)], check=True, cwd=tmp_path)
    nb = tmp_path / "subs" / "solution.ipynb"
    nb.parent.mkdir()
    attack = nbformat.v4.new_code_cell("try:\n    from assignments.cnn_mnist import reference\n    print('IMPORTED')\nexcept ImportError:\n"
                                       "    print('BLOCKED')")
    solution = nbformat.read(samples.SAMPLES_DIR / "solution.ipynb", as_version=4)
    solution.cells.insert(3, attack)
    nbformat.write(solution, nb)
    out = tmp_path / "out"
    proc = subprocess.run([str(venv / "bin/python"), "-m", "autograder", "grade", str(nb), "--autograder",
                           str(autograder), "--out", str(out), "--no-retrain", "--jobs", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = (out / "results").glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["status"] == "graded" and result["isolation"]["mode"] == "bwrap", result["error"]
    assert "BLOCKED" in result["execution"]["output_tail"] and "IMPORTED" not in result["execution"]["output_tail"]
    for q in result["questions"]:
        missed = [c for c in q["cases"] if not c["passed"]]
        assert all(c.get("undecided") == "retraining_off" for c in missed), (q["name"], missed)
    pending_by_hand = sum(m["max_score"] for m in result.get("manual", []) if m.get("score") is None)
    assert result["score"] >= result["max_score"] - pending_by_hand - max(
        q["max_score"] for q in result["questions"] if q["name"] == "training")


# --- 11. the trusted judge is bounded too ----------------------------------------------------------

@pytest.mark.parametrize("limit, expected, cause", [({"memory_mb": 20}, "memory limit (20 MiB)", "host_limit"),
                                                    ({"timeout": 0.3}, "time limit", "timeout_infrastructure")])
def test_the_judge_runs_under_memory_and_time_limits(limit, expected, cause):
    request = {"tests": {}, "public_module": "", "public_module_name": "cnn_checks", "values": {}, "functions": {}, "retrain": None}
    assert runner.run_judge(request) == {"questions": [], "retrain": None}  # within its limits: judged
    with pytest.raises(FaultError, match=re.escape(expected)) as raised:
        runner.run_judge(request, **limit)
    assert raised.value.fault.cause == cause and raised.value.fault.owner == "host"


# --- 12. the command line --------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [([], "permissions"), (["--isolation", "bwrap"], "bwrap")])
def test_the_isolation_option_keeps_the_environment_unless_given(tmp_path, monkeypatch, argv, expected):
    from typer.testing import CliRunner

    from autograder import batch, cli

    seen = {}
    monkeypatch.setenv(jail.ENV_MODE, "permissions")
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: seen.setdefault("mode", os.environ[jail.ENV_MODE]) and [])
    (tmp_path / "subs").mkdir()
    (tmp_path / "ag.zip").write_bytes(b"")
    run = CliRunner().invoke(cli.app, ["grade", str(tmp_path / "subs"), "--autograder", str(tmp_path / "ag.zip"),
                                       "--out", str(tmp_path / "out"), *argv])
    assert seen.get("mode") == expected, run.output


# --- 13. the retraining queue's lock files ---------------------------------------------------------

def test_retraining_locks_live_in_a_private_folder_and_never_follow_a_planted_link(tmp_path, monkeypatch):
    from autograder.verifier import retrain

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = tmp_path / "planted"  # a folder another user made (mode 0755), holding a link as a lock file
    planted.mkdir(mode=0o755)
    planted.chmod(0o755)
    (planted / "slot-0.lock").symlink_to(victim)
    with pytest.raises(FaultError, match="mode 0700") as refused:
        with retrain._Slot(planted, 1):
            pass
    assert refused.value.fault.graders  # the grader's folder: never the student's
    planted.chmod(0o700)  # even in a private folder a planted link is never followed
    with pytest.raises(OSError):
        with retrain._Slot(planted, 1):
            pass
    assert victim.read_text() == "precious"
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    folder = retrain.default_slot_dir()
    assert not str(folder).startswith(str(tmp_path)) and not str(folder).startswith("/tmp")
    with retrain._Slot(folder, 1):
        st = os.lstat(folder)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()


# --- 14. a recipe too big to retrain is the student's failed check, never a grader error -------------

def test_a_single_batch_of_60000_images_is_the_students_failed_training_check(autograder, tmp_path):
    """The red team's idea (``fit(batch_size=60000)`` made the judge run out of memory, a grader error):
    the verifier refuses the recipe before any training, and the engine scores it as the student's."""
    from assignments.cnn_mnist import sample_answers as samples

    nb = nbformat.read(samples.SAMPLES_DIR / "solution.ipynb", as_version=4)
    fits = [c for c in nb.cells if c.cell_type == "code" and ".fit(" in c.source]
    assert fits
    for cell in fits:
        cell.source = re.sub(r"batch_size\s*=\s*\w+", "batch_size=60000", cell.source)
        cell.source = re.sub(r"epochs\s*=\s*\w+", "epochs=1", cell.source)
    path = tmp_path / "huge_batch.ipynb"
    nbformat.write(nb, path)
    options = RetrainOptions(cache_dir=str(tmp_path / "cache"), data_subset=(2000, 500), seeds=1)
    result = engine.grade_notebook(path, autograder, limits=FAST, retrain=options)
    assert result["status"] == "graded", result["error"]
    assert result["retrain"]["fault"]["cause"] == "recipe_refused" and result["retrain"]["accuracy"] is None
    assert "batch_size=60,000 is outside the allowed range" in result["retrain"]["error"]
    training = {q["name"]: q for q in result["questions"]}["training"]
    assert training["score"] < training["max_score"]
    assert "batch_size=60,000" in json.dumps(training)
