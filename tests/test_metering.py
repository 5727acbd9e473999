"""Metering: what a submission uses is counted and capped by the kernel (a cgroup per jail), clocks count the
jail's own CPU time, and a permission jail's IPC objects die with its lease (``--ray``: tests/test_ray_access.py).
Each test fails if its defence goes.

The cgroup tests run where the grader is root and a cgroup (v1 or v2) can be made; they are skipped
elsewhere, and the "no cgroup" note is tested everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from autograder import engine
from autograder.metering import cgroup, clocks, processes
from autograder.probe import jail, sandbox
from autograder.probe.sandbox import Limits

sys.path.insert(0, str(Path(__file__).parent))
from test_jail import NO_RETRAIN, conv_small, tiny  # noqa: E402  (one notebook maker for the jail's tests)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs a root grader (CI runs as root)")
needs_cgroup = pytest.mark.skipif(cgroup.unavailable() is not None,
                                  reason=f"no cgroup can be made here: {cgroup.unavailable()}")


@pytest.fixture(autouse=True)
def _isolation_from_environment(monkeypatch):
    monkeypatch.delenv(jail.ENV_MODE, raising=False)
    monkeypatch.delenv(jail.ENV_UNSAFE, raising=False)
    monkeypatch.delenv(jail.ENV_PRIVATE, raising=False)
    monkeypatch.delenv(cgroup.ENV_DISABLE, raising=False)


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) and jail.still_running(p):
                found.append(p)
        except psutil.Error:
            pass
    return found


# --- the group itself ----------------------------------------------------------------------------

@needs_cgroup
def test_a_group_kill_leaves_no_process_even_of_new_sessions_that_fork():
    marker = f"cnn-meter-kill-{os.getpid()}-{time.monotonic_ns()}"
    code = textwrap.dedent("""
        import os, sys, time
        for _ in range(6):  # new sessions, double forks: nothing a process tree or a session kill would catch
            if os.fork() == 0:
                os.setsid()
                if os.fork():
                    os._exit(0)
                while True:
                    try:
                        os.fork()
                    except OSError:
                        pass
                    time.sleep(0.05)
        time.sleep(600)
        """)
    group = cgroup.create("test", memory_bytes=256 << 20, pids_max=64)
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, marker], preexec_fn=group.joiner(),
                                start_new_session=True)
        time.sleep(2)
        assert len(group.pids()) > 6 and len(_marked(marker)) > 6
        assert group.cpu_seconds() > 0
    finally:
        assert group.kill()
        group.remove()
    proc.wait(timeout=10)
    time.sleep(0.2)
    assert _marked(marker) == []
    assert all(not os.path.exists(f) for f in group.procs_files()) and group.folders == {}


@needs_cgroup
def test_pids_max_counts_threads():
    code = textwrap.dedent("""
        import threading, time
        started = 0
        try:
            for _ in range(200):
                threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
                started += 1
        except RuntimeError:
            pass
        print(started)
        """)
    with cgroup.create("test", pids_max=40) as group:
        out = subprocess.run([sys.executable, "-c", code], preexec_fn=group.joiner(), capture_output=True,
                             text=True, timeout=60)
        assert int(out.stdout.strip()) < 40, out  # 200 threads asked for, fewer than pids.max allowed
        assert group.pids_failures() > 0


@needs_cgroup
def test_socket_buffers_are_charged_to_the_group_and_the_kernel_stops_them():
    code = textwrap.dedent(socket_bomb(200, "SURVIVED"))  # up to 3 GB of send buffers: no RSS, no file
    with cgroup.create("test", memory_bytes=192 << 20) as group:
        out = subprocess.run([sys.executable, "-c", code], preexec_fn=group.joiner(), capture_output=True,
                             text=True, timeout=120)
        assert "SURVIVED" not in out.stdout and group.oom_kills() >= 1
        assert group.memory_peak() <= 192 << 20


def test_no_cgroup_is_said_where_none_can_be_made(monkeypatch):
    monkeypatch.setenv(cgroup.ENV_DISABLE, "1")
    assert cgroup.create("test") is None and "disabled" in cgroup.unavailable()
    j = jail.Jail("none", Path("/nonexistent"), group_missing=cgroup.unavailable())
    assert any(n.startswith(cgroup.NO_CGROUP_NOTE) for n in j.description["notes"])
    assert j.description["cgroup"] is None


# --- IPC of a permission jail ----------------------------------------------------------------

IPC_CODE = ("import ctypes; l = ctypes.CDLL(None); "
            "assert l.shmget(0, 1 << 20, 0o1600) >= 0 and l.semget(0, 2, 0o1600) >= 0 and l.msgget(0, 0o1600) >= 0")


def _make_ipc(uid: int) -> None:
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c", IPC_CODE],
                   check=True, timeout=60)


@needs_root
@pytest.mark.skipif(not os.path.exists("/proc/sysvipc/shm"), reason="no System V IPC here")
def test_a_permission_jails_ipc_objects_do_not_outlive_its_lease():
    lease = jail.SlotLease(clean_shared=True)
    uid = lease.uid
    _make_ipc(uid)
    assert {o["kind"] for o in jail.uid_ipc(uid)} == {"shm", "sem", "msg"}
    lease.release()
    assert jail.uid_ipc(uid) == []
    _make_ipc(uid)  # left by a holder whose release never ran: removed when the uid is leased again
    again = []
    try:
        while True:
            again.append(jail.SlotLease(clean_shared=True))
            if again[-1].uid == uid:
                break
        assert jail.uid_ipc(uid) == []
    finally:
        for held in again:
            held.release()


@needs_root
@pytest.mark.skipif(not os.path.exists("/proc/sysvipc/shm"), reason="no System V IPC here")
def test_a_permission_jails_shared_memory_counts_against_its_memory():
    lease = jail.SlotLease(clean_shared=True)
    try:
        code = ("import ctypes; l = ctypes.CDLL(None); l.shmat.restype = ctypes.c_void_p; "
                "i = l.shmget(0, 64 << 20, 0o1600); a = l.shmat(i, None, 0); ctypes.memset(a, 1, 64 << 20); "
                "l.shmdt(ctypes.c_void_p(a))")
        subprocess.run(["setpriv", f"--reuid={lease.uid}", f"--regid={lease.uid}", "--clear-groups",
                        sys.executable, "-c", code], check=True, timeout=60)
        assert processes.memory_outside_rss([], lease.uid) >= 64 << 20  # detached, held by no process
    finally:
        lease.release()


# --- clocks --------------------------------------------------------------------------------------

def test_a_wall_backstop_is_a_host_fault_only_when_the_jail_waited_for_a_cpu():
    # only the main thread's wait counts: a student's niced or pinned helper that waited excuses nothing
    assert clocks.waited({1: 95.0, 2: 300.0}, {1: 5.0}, 1) == 90.0
    assert clocks.waited({1: 95.0}, {}, None) == 0.0
    assert clocks.starved(90.0, 100.0) and not clocks.starved(1.0, 100.0)


def test_sleeping_is_charged_and_a_neighbours_load_is_not():
    # a cell that slept 100 s used no CPU and waited for none: 100 s charged, as a wall clock would
    assert clocks.charged(cpu=0.0, wall=100.0, waited=0.0) == 100.0
    # a cell the host kept waiting 60 of 100 s is charged the 40 s it could run
    assert clocks.charged(cpu=40.0, wall=100.0, waited=60.0) == 40.0
    # a main thread waiting behind the jail's own busy threads: their CPU time is charged
    assert clocks.charged(cpu=95.0, wall=100.0, waited=90.0) == 95.0


def socket_bomb(pairs: int, marker: str) -> str:
    """A cell that fills the send buffers of ``pairs`` unix socketpairs (16 MiB each at most): kernel memory,
    no RSS, no file; it prints ``marker`` if it survives."""
    return f"""
    import socket
    pairs = []
    for _ in range({pairs}):
        a, b = socket.socketpair()
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        try:
            while True:
                a.send(b'x' * 65536)
        except BlockingIOError:
            pass
        pairs.append((a, b))
    print('{marker}', flush=True)
    """


# --- through the grader ----------------------------------------------------------------------

SOCKET_BOMB = socket_bomb(110, "BOMB SURVIVED")  # about 1.7 GB of unix socket send buffers


@needs_cgroup
def test_a_socket_buffer_memory_bomb_is_the_students_memory_limit_and_the_host_is_unharmed(autograder, tmp_path):
    nb = tiny(tmp_path / "sub.ipynb", SOCKET_BOMB, "size_valid = 24")
    result = engine.grade_notebook(nb, autograder, limits=Limits(cell_seconds=60, notebook_seconds=240, memory_mb=1024),
                                   retrain=NO_RETRAIN)
    assert result["status"] == "graded", result["error"]
    assert any("memory limit (1024 MiB" in h for h in result["limits_hit"]), result["limits_hit"]
    assert [s["index"] for s in result["execution"]["skipped_cells"]] == [1]
    assert result["execution"]["skipped_cells"][0]["cause"] == "memory_limit"
    assert "BOMB SURVIVED" not in result["execution"]["output_tail"] and conv_small(result) == 2
    assert result["isolation"]["cgroup"] in ("v1", "v2")
    assert any(n.startswith("metered by the kernel") for n in result["isolation"]["notes"])


def test_every_result_says_no_cgroup_where_none_can_be_made(autograder, tmp_path, monkeypatch):
    monkeypatch.setenv(cgroup.ENV_DISABLE, "1")
    monkeypatch.setattr(jail, "_SELF_TESTS", {})  # the self-test runs again, without a cgroup
    monkeypatch.setattr(jail, "_CHECKED", {})
    nb = tiny(tmp_path / "sub.ipynb", "import resource\nprint('NOFILE', resource.getrlimit(resource.RLIMIT_NOFILE))")
    result = engine.grade_notebook(nb, autograder, limits=Limits(cell_seconds=30, notebook_seconds=240,
                                                                 memory_mb=3072), retrain=NO_RETRAIN)
    assert result["status"] == "graded", result["error"]
    assert f"NOFILE ({sandbox.NOFILE}, {sandbox.NOFILE})" in result["execution"]["output_tail"]  # lowered in any case
    assert result["isolation"]["cgroup"] is None and conv_small(result) == 2
    assert any(n.startswith(cgroup.NO_CGROUP_NOTE) for n in result["isolation"]["notes"]), result["isolation"]
    assert any(n.startswith(cgroup.NO_CGROUP_NOTE) for n in jail._SELF_TESTS[next(iter(jail._SELF_TESTS))]["notes"])


# --- the "done when": a bombing classmate costs a correct solution nothing ------------------

CPU_BOMB = """
    import os, socket, time
    for _ in range(40):  # sessions of their own, each a busy loop: per-session fairness is defeated
        if os.fork() == 0:
            os.setsid()
            while True:
                pass
    pairs = []
    for _ in range(40):  # and kernel memory nobody samples: about 0.6 GB of socket buffers
        a, b = socket.socketpair()
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        try:
            while True:
                a.send(b'x' * 65536)
        except BlockingIOError:
            pass
        pairs.append((a, b))
    time.sleep(90)  # while the classmate is graded beside it
    """
SOLUTION_WORK = """
    total = sum(i * i for i in range(15_000_000))  # a few seconds of CPU, as loading and scaling MNIST takes
    """


@needs_cgroup
def test_a_cpu_and_memory_bombing_classmate_costs_a_correct_solution_nothing(autograder, tmp_path):
    from autograder import batch

    folder = tmp_path / "class"
    tiny(folder / "bomber.ipynb", CPU_BOMB)
    tiny(folder / "solver.ipynb", SOLUTION_WORK)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})  # both jails on one core, as a --jobs 2 batch on a small machine
    try:
        results = batch.run_batch([folder], autograder, tmp_path / "out",
                                  batch.BatchOptions(jobs=2, retrain=NO_RETRAIN, progress=False))
    finally:
        os.sched_setaffinity(0, before)
    rows = {r["student"]["id"]: r for r in results}
    solver = rows["solver"]
    assert solver["status"] == "graded" and solver["limits_hit"] == [], (solver["error"], solver["limits_hit"])
    assert conv_small(solver) == 2 and not solver["execution"]["skipped_cells"]
    assert rows["bomber"]["status"] != "grader_error", rows["bomber"]["error"]
    alone = engine.grade_notebook(folder / "solver.ipynb", autograder, retrain=NO_RETRAIN)  # default limits
    assert solver["score"] == alone["score"] and alone["limits_hit"] == []


def test_cgroup_v2_delegates_below_the_graders_group_and_limits_each_jail(tmp_path, monkeypatch):
    """cgroup v2 (as in most containers), on a stand-in tree: the grader's group hands its processes to a leaf
    (no internal processes) and enables the controllers; each jail's group gets memory.max (swap off),
    cpu.weight, cpu.max and pids.max, and its readings come from cpu.stat and memory.events."""
    own = tmp_path / "fs" / "kubepods" / "grader"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text("")
    monkeypatch.setattr(cgroup, "_mounts", lambda: [(str(tmp_path / "fs"), "/", "cgroup2", {"rw"})])
    monkeypatch.setattr(cgroup, "_own_paths", lambda: {"": "/kubepods/grader"})
    monkeypatch.setattr(cgroup.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cgroup, "_LAYOUT", {})
    monkeypatch.setattr(cgroup.Group, "kill", lambda self, rounds=100: True)  # no process in a stand-in tree
    kind, folder = cgroup._layout_v2()
    assert (kind, folder) == ("v2", own)
    cgroup._delegate_v2(own)
    assert (own / "cgroup.subtree_control").read_text() == "+memory +cpu +pids" and (own / cgroup.LEAF).is_dir()
    group = cgroup.Group._make(("v2", own), "jail")
    group.limit(1 << 30, 1.0, 512)
    jail_dir = group.folders[""]
    assert jail_dir.parent == own
    assert (jail_dir / "memory.max").read_text() == str(1 << 30) and (jail_dir / "memory.swap.max").read_text() == "0"
    assert (jail_dir / "cpu.max").read_text() == f"100000 {cgroup.CPU_PERIOD_US}"
    assert (jail_dir / "cpu.weight").read_text() == "100" and (jail_dir / "pids.max").read_text() == "512"
    (jail_dir / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (jail_dir / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.cpu_seconds() == 2.5 and group.oom_kills() == 1 and group.memory_failures() == 3
    assert group.procs_files() == [str(jail_dir / "cgroup.procs")]


@needs_cgroup
def test_a_run_the_host_starved_of_cpu_runs_again_then_is_a_grader_error_never_the_students_limit(
        autograder, tmp_path, monkeypatch):
    """The wall backstop of a cell reached while the jail waited for a CPU (here: said so by a stand-in for the
    run-queue reading) is the host's fault: the run is repeated once, then the result is a grader error, graded
    again by the next run; the student's limits_hit stays empty.  A backstop reached while the jail slept is the
    student's cell limit (tests/test_jail.py, forged status messages)."""
    monkeypatch.setattr(clocks, "WALL_BACKSTOP", 2.0)
    monkeypatch.setattr(sandbox, "STARVED_PAUSE", 0.0)
    monkeypatch.setattr(clocks, "waited", lambda delays, before, main: 1e9)  # the main thread waited throughout
    nb = tiny(tmp_path / "sub.ipynb", "import time\ntime.sleep(60)")
    result = engine.grade_notebook(nb, autograder, limits=Limits(cell_seconds=3, notebook_seconds=240, memory_mb=3072),
                                   retrain=NO_RETRAIN)
    assert result["status"] == "grader_error", result["error"]
    assert result["cause"] == result["fault"]["cause"] == "host_slow" and result["fault"]["owner"] == "host"
    assert result["execution"]["runs"] == 2 and not any("time limit" in h for h in result["limits_hit"])


@needs_cgroup
def test_a_cell_that_sleeps_reaches_its_cell_limit_not_the_wall_backstop(autograder, tmp_path):
    """Sleeping costs no CPU, but it is the student's time: with a cgroup, a sleeping cell is stopped at its
    cell limit (wall time less the host's run-queue wait), not after the backstop's four times as long."""
    nb = tiny(tmp_path / "sub.ipynb", "import time\ntime.sleep(60)")
    result = engine.grade_notebook(nb, autograder, limits=Limits(cell_seconds=3, notebook_seconds=240, memory_mb=3072),
                                   retrain=NO_RETRAIN)
    hits = [h for h in result["limits_hit"] if "cell time limit" in h]
    assert hits and not any("backstop" in h for h in hits), result["limits_hit"]
    assert result["status"] != "grader_error", result["error"]


# --- whose fault, typed: a start-up over the memory limit is the host's, a notebook over its limit the student's ----

def test_a_start_up_over_the_memory_limit_is_the_hosts_limit_not_the_interpreters(autograder, tmp_path):
    """The grader's own start-up (Python, TensorFlow) cannot fit a tiny memory limit: before any student code, so a
    grader error of the host's (``host_limit``), typed where it is raised; it used to read as ``interpreter``."""
    nb = tiny(tmp_path / "sub.ipynb", "x = 1")
    result = engine.grade_notebook(nb, autograder, limits=Limits(cell_seconds=30, notebook_seconds=60, memory_mb=64),
                                   retrain=NO_RETRAIN)
    assert result["status"] == "grader_error", result["error"]
    assert result["cause"] == result["fault"]["cause"] == "host_limit" and result["fault"]["owner"] == "host"
    assert result["limits_hit"] == []  # nothing of the student's


def test_a_notebook_over_its_time_limit_is_the_submissions_typed_fault(autograder, tmp_path):
    nb = tiny(tmp_path / "sub.ipynb", "import time\ntime.sleep(4)", "import time\ntime.sleep(4)", "y = 2")
    result = engine.grade_notebook(nb, autograder, limits=Limits(cell_seconds=30, notebook_seconds=6, memory_mb=3072),
                                   retrain=NO_RETRAIN)
    assert result["status"] == "error" and result["fault"]["cause"] == "notebook_time_limit", result["error"]
    assert result["fault"]["owner"] == "submission" and "cause" not in result
    assert result["execution"]["runs"] == 1  # not run again without a cell: the notebook as a whole took too long


def test_a_cell_over_its_limit_on_a_host_slower_than_its_calibration_is_the_hosts_never_the_students(
        autograder, tmp_path, monkeypatch):
    """The probe's clocks follow the same rule as retraining: a CPU-bound cell's time counts at the host's normal
    speed, measured against its calibration with the jail frozen.  On a host measurably slower (a calibration
    planted as if it ran the reference 1,000 times faster), a busy loop never reaches its limit at normal speed;
    its wall backstop is then the host's fault: the run is repeated once, then a grader error (``host_slow``),
    never the student's cell limit.  At the host's own speed the same loop is the student's cell limit."""
    from autograder import settings
    from autograder.metering import calibration

    monkeypatch.setattr(sandbox, "STARVED_PAUSE", 0.0)
    path = tmp_path / "calibration.json"
    monkeypatch.setenv(settings.CALIBRATION.name, str(path))
    path.write_text(json.dumps({calibration.host_key(1): {"seconds": calibration.measure(1) / 1000}}))
    nb = tiny(tmp_path / "sub.ipynb", "while True:\n    pass")
    limits = Limits(cell_seconds=2, notebook_seconds=240, memory_mb=3072)
    result = engine.grade_notebook(nb, autograder, limits=limits, retrain=NO_RETRAIN)
    assert result["status"] == "grader_error" and result["fault"]["cause"] == "host_slow", result["error"]
    assert "when it runs normally" in result["error"] and result["execution"]["runs"] == 2
    assert not any("cell time limit" in h for h in result["limits_hit"])
    path.unlink()  # calibrated afresh: the host runs at its own speed
    result = engine.grade_notebook(nb, autograder, limits=limits, retrain=NO_RETRAIN)
    assert result["status"] == "graded" and any("cell time limit" in h for h in result["limits_hit"]), result


def test_the_hosts_speed_is_measured_against_its_own_calibration(tmp_path):
    from autograder.metering import calibration

    path = tmp_path / "calibration.json"
    first = calibration.host_speed(1, path)  # the first measurement calibrates
    assert first.slowdown == 1.0 and not first.slow and path.is_file()
    path.write_text(json.dumps({calibration.host_key(1): {"seconds": first.seconds / 10}}))
    slow = calibration.host_speed(1, path)
    assert slow.slow and slow.slowdown > 3  # ten times its calibration, give or take the noise
    assert calibration.normal_seconds(30.0, 30.0, slow) < 10.0  # CPU-bound time counts at normal speed
    assert calibration.normal_seconds(30.0, 0.0, slow) == 30.0  # sleeping does not
    assert calibration.normal_seconds(30.0, 30.0, first) == 30.0 and calibration.normal_seconds(30.0, 30.0, None) == 30.0
