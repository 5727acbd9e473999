"""The fork server against hostile jails: a jail forked from the template has the isolation of a fresh
``bwrap`` jail, shares nothing with the next one, and cannot change the template.

These tests start scripts in forked jails directly (no notebook, no judge): one template per test process,
then a fraction of a second per jail.  The end-to-end tests of ``tests/test_jail.py`` and
``tests/test_metering.py`` run with the fork server on wherever it can be (``auto``, the default).
"""

from __future__ import annotations

import json
import mmap
import os
import select
import textwrap
import time
from contextlib import ExitStack

import pytest

from autograder.probe import forkserver, forkserver_template, jail

ROOT = os.geteuid() == 0
needs_forkserver = pytest.mark.skipif(not (ROOT and jail.bwrap_works()),
                                      reason="the fork server needs a root grader with bubblewrap (CI runs as root)")

REPORT = r'''
import json, os, random, resource, signal, socket, sys
def status():
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
st = status()
out = {
    "uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
    "caps": {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    "no_new_privs": st["NoNewPrivs"], "seccomp": st["Seccomp"],
    "ns": {n: os.readlink("/proc/self/ns/" + n) for n in ("mnt", "pid", "net", "ipc", "uts", "cgroup")},
    "pid": os.getpid(), "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "hostname": socket.gethostname(), "cwd": os.getcwd(),
    "sandbox_dev": os.stat("/sandbox").st_dev, "tmp_dev": os.stat("/tmp").st_dev,
    "sandbox": sorted(os.listdir("/sandbox")), "tmp": sorted(os.listdir("/tmp")), "dev": sorted(os.listdir("/dev")),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
    "cgroup": open("/proc/self/cgroup").read().split(),
    "random": random.random(), "numpy_random": None, "env": dict(os.environ),
    "numpy_pi": None, "tf_version": None, "argv": sys.argv,
    "planted": [p for p in ("/planted", "/etc/planted", "/dev/planted", "/dev/shm/planted") if os.path.exists(p)],
}
for name, path in (("pid1_readable", "/proc/1/environ"), ("own_readable", "/proc/self/environ")):
    try:
        open(path, "rb").read()
        out[name] = True
    except OSError:
        out[name] = False
numpy = sys.modules.get("numpy")
if numpy is not None:
    out["numpy_random"] = float(numpy.random.random())
    out["numpy_pi"] = numpy.pi
tf = sys.modules.get("tensorflow")
out["tf_version"] = getattr(tf, "__version__", None)
try:
    os.kill(int(sys.argv[1]), 0)
    out["signal_template"] = True
except OSError:
    out["signal_template"] = False
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
probe = socket.socket()
probe.settimeout(2)
try:
    probe.connect(listener.getsockname())
    out["loopback"] = True
except OSError:
    out["loopback"] = False
outside = socket.socket()
outside.settimeout(2)
try:
    outside.connect(("127.0.0.1", int(sys.argv[2])))
    out["outside"] = True
except OSError:
    out["outside"] = False
'''


def start(code: str, *args: str, stack: ExitStack) -> tuple:
    """One forked jail running ``code`` (a script) with ``args``: (jail, child)."""
    opened = stack.enter_context(jail.open_jail(memory_mb=3072))
    script = opened.put("attack.py", textwrap.dedent(code).encode())
    opened.hand_over()
    assert forkserver.unavailable(opened) is None, forkserver.unavailable(opened)
    status_r, status_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        child = forkserver.start(opened, [script, *args], opened.env({"PYTHONDONTWRITEBYTECODE": "1"}), 64,
                                 status_w, go_r)
    finally:
        os.close(status_w)
        os.close(go_r)
    stack.callback(os.close, status_r)
    stack.callback(os.close, go_w)
    stack.callback(child.release)
    return opened, child


def read_line(child, timeout: float = 120.0) -> str:
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf and time.monotonic() < deadline:
        if select.select([child.stdout], [], [], 0.5)[0]:
            chunk = child.stdout.read1(65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode("utf-8", "replace")


def report(stack: ExitStack, then: str = "", port: int = 9) -> tuple:
    """A forked jail that prints its REPORT as one JSON line, runs ``then`` and waits for its stdin to close."""
    template = forkserver._TEMPLATES and next(iter(forkserver._TEMPLATES.values()))
    code = REPORT + "\nprint('@@' + json.dumps(out), flush=True)\n" + textwrap.dedent(then) + "\nsys.stdin.read()\n"
    pid = template.hello["pid"] if template else 1
    opened, child = start(code, str(pid), str(port), stack=stack)
    line = read_line(child)
    assert line.startswith("@@"), line[-2000:]
    return opened, child, json.loads(line[2:])


@pytest.fixture(scope="module", autouse=True)
def forkserver_on():
    """The fork server is off by default (CNN_GRADER_FORKSERVER): these tests turn it on."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(forkserver.ENV, "1")
        yield


@pytest.fixture(scope="module")
def template():
    """The template, started once for this file (its own start-up: seconds of TensorFlow import)."""
    with ExitStack() as stack:
        report(stack)
    found = next(iter(forkserver._TEMPLATES.values()))
    assert found.alive() and not found.hello["failed"] and not found.hello["shared"], found.hello
    return found


@needs_forkserver
def test_two_forked_jails_share_no_uid_folder_namespace_or_process_and_hold_no_privilege(template):
    """Two jails forked at once: each its own slot uid, working folder, /tmp and every namespace (none the
    grader's); no capability in any set, no_new_privs, the seccomp filter, the rlimits; its PID namespace
    shows its own processes only, so the template can be neither seen nor signalled; its loopback works and
    nothing outside is reachable."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    mine = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "pid", "net", "ipc", "uts", "cgroup")}
    with ExitStack() as stack:
        first = report(stack, port=listener.getsockname()[1])
        second = report(stack, port=listener.getsockname()[1])
        seen = [first[2], second[2]]
        assert first[1].pid != second[1].pid and first[0].uid != second[0].uid
        for (opened, child, out) in (first, second):
            assert out["uid"] == [opened.uid] * 3 and out["gid"] == [opened.uid] * 3 and out["groups"] == []
            assert out["caps"] == dict.fromkeys(out["caps"], 0), out["caps"]
            assert out["no_new_privs"] == "1" and out["seccomp"] == "2"
            assert out["nofile"] == [1024, 1024] and out["fsize"] == [64 * 2**20] * 2
            assert out["hostname"] == "sandbox" and out["cwd"] == "/sandbox"
            assert out["sandbox"] == ["attack.py", "tmp"], out["sandbox"]  # not the template's folder
            assert out["tmp"] == [] and set(out["dev"]) >= {"null", "zero", "urandom", "shm", "fd"}
            assert out["procs"] == [1, out["pid"]], out["procs"]  # its PID 1 and itself
            assert not out["signal_template"] and out["loopback"] and not out["outside"]
            assert not out["pid1_readable"] and out["own_readable"]  # its PID 1 (root until it dropped) is closed
            assert out["cgroup"] and all(line.endswith(":/") for line in out["cgroup"]), out["cgroup"]
            assert set(out["ns"].values()).isdisjoint(mine.values()), out["ns"]
            assert out["env"]["HOME"] == "/sandbox" and "CNN_GRADER_PRIVATE_PATHS" not in out["env"]
            assert opened.group is not None and set(opened.group.pids()) >= {p for p in _tree(child.pid)}
            assert out["tf_version"] and out["numpy_pi"] is not None  # imported by the template, not again
        for kind in seen[0]["ns"]:
            assert seen[0]["ns"][kind] != seen[1]["ns"][kind], kind
        assert seen[0]["sandbox_dev"] != seen[1]["sandbox_dev"] and seen[0]["tmp_dev"] == seen[0]["sandbox_dev"]
        assert seen[0]["random"] != seen[1]["random"] and seen[0]["numpy_random"] != seen[1]["numpy_random"]
    listener.close()


def _tree(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


TAMPER = """
import ctypes, numpy, random
numpy.pi = 3.0
sys.modules["tensorflow"].__version__ = "tampered"
random.seed(1234)
numpy.random.seed(1234)
open("/tmp/left-behind", "w").write("x")
for where in ("/dev/planted", "/dev/shm/planted", "/planted", "/etc/planted"):
    try:
        open(where, "w").write("x")
        print("WROTE", where, flush=True)
    except OSError:
        pass
# every writable page of the process, filled: copy on write keeps it this jail's own
filled = 0
for line in open("/proc/self/maps"):
    addr, perms = line.split()[:2]
    if perms.startswith("rw") and "[stack]" not in line and "[vvar]" not in line:
        lo, hi = (int(x, 16) for x in addr.split("-"))
        if hi - lo <= 1 << 16:
            try:
                ctypes.memset(lo, 0x41, hi - lo)  # noqa - this jail's copy only (it may crash: that is fine)
                filled += 1
            except Exception:
                pass
"""


@needs_forkserver
def test_what_a_forked_jail_changes_never_reaches_the_template_or_the_next_jail(template):
    """A jail rewrites the modules the template imported, reseeds every generator, writes wherever it can and
    scribbles over its own writable memory: the template lives on unchanged (no writable shared mapping, the
    same process), and the next jail sees the libraries as imported, fresh random state and empty folders."""
    before = template.hello["pid"]
    with ExitStack() as stack:
        first = report(stack, then="import sys\n" + TAMPER + "\nprint('TAMPERED', flush=True)")
        first[1].stdin.close()
        first[1].wait(timeout=60)  # whatever it did to itself, it ended, alone
    with ExitStack() as stack:
        _, _, after = report(stack)
    assert template.alive() and template.hello["pid"] == before
    assert after["numpy_pi"] == pytest.approx(3.141592653589793) and after["tf_version"] != "tampered"
    assert after["tmp"] == [] and after["planted"] == [] and first[2]["planted"] == []
    import numpy, random

    random.seed(1234)
    numpy.random.seed(1234)
    assert after["random"] != random.random() and after["numpy_random"] != float(numpy.random.random())


@needs_forkserver
def test_a_forked_jails_writes_in_its_memory_and_disk_stay_within_its_limits(template):
    """The jail's group meters and limits the forked jail: memory beyond the group's limit kills the jail (not the
    template), and its tmpfs stops writes at the disk cap."""
    with ExitStack() as stack:
        opened = stack.enter_context(jail.open_jail(memory_mb=700, disk_mb=32, disk_files=500))
        script = opened.put("attack.py", textwrap.dedent("""
            import errno
            try:
                with open("/tmp/big", "wb") as f:
                    for _ in range(64):
                        f.write(b"x" * 2**20)
                        f.flush()
            except OSError as exc:
                print("DISK STOPPED", errno.errorcode[exc.errno], flush=True)
            hog = []
            for _ in range(4000):
                hog.append(bytearray(2**20))
            print("MEMORY NOT LIMITED", flush=True)
            """).encode())
        opened.hand_over()
        child = forkserver.run(opened, [script], opened.env(), timeout=240)
    assert "DISK STOPPED ENOSPC" in child.stdout, child.stdout[-2000:]
    assert "MEMORY NOT LIMITED" not in child.stdout and child.returncode != 0, child
    assert template.alive()


def test_a_template_holding_a_writable_shared_mapping_refuses_to_fork():
    """A writable shared mapping in the template would let one jail write into every later jail: the template
    finds it in its own map and refuses (a grader error: the grader then starts jails fresh)."""
    before = len(forkserver_template.shared_writable_mappings())
    shared = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        assert len(forkserver_template.shared_writable_mappings()) == before + 1
        refused = forkserver_template.spawn({}, {}, None)  # refused before any fork
        assert "writable shared mapping" in refused["error"] and "pid" not in refused
    finally:
        shared.close()
    assert len(forkserver_template.shared_writable_mappings()) == before


def test_the_fork_server_is_bwrap_and_root_only_and_can_be_turned_off(monkeypatch, tmp_path):
    """Permission jails, a non-root grader, a jail without a tmpfs of ours and ``CNN_GRADER_FORKSERVER=0`` start
    fresh, and say why."""
    fake = jail.Jail("bwrap", tmp_path, None, disk_how="tmpfs")
    monkeypatch.delenv(forkserver.ENV, raising=False)  # off by default
    assert "CNN_GRADER_FORKSERVER=0" in forkserver.unavailable(fake)
    monkeypatch.setenv(forkserver.ENV, "0")
    assert "CNN_GRADER_FORKSERVER=0" in forkserver.unavailable(fake)
    monkeypatch.setenv(forkserver.ENV, "1")
    assert "bubblewrap jails only" in forkserver.unavailable(jail.Jail("permissions", tmp_path, None))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root grader" in forkserver.unavailable(fake)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert "tmpfs of ours" in forkserver.unavailable(jail.Jail("bwrap", tmp_path, None, disk_how="bwrap"))



@needs_forkserver
def test_a_notebook_graded_in_a_forked_jail_gets_its_score_and_says_it_was_forked(autograder, tmp_path):
    """The whole path (engine, sandbox, watchdog, judge) with the fork server on: a forked jail grades a
    notebook as a fresh one does, and the result says how its jail started."""
    import nbformat

    from autograder import engine
    from autograder.engine import RetrainOptions
    from autograder.probe.sandbox import Limits

    nb = tmp_path / "sub.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import numpy as np\nconv_small = np.array([[1, 4], [3, 3]])"),
        nbformat.v4.new_code_cell("import random\nprint('draw', random.random())")]), nb)
    limits = Limits(cell_seconds=30, notebook_seconds=240, memory_mb=3072, max_processes=48)
    result = engine.grade_notebook(nb, autograder, limits=limits, retrain=RetrainOptions(enabled=False))
    assert result["status"] == "graded" and result["isolation"]["started"] == "forked", result["isolation"]
    assert {q["name"]: q["score"] for q in result["questions"]}["conv_small"] == 2
