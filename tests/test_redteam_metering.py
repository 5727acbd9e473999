"""Red team of issue 25's windows (and the fork server): each test is one attack that acts just outside a
control (another ABI for a key system call, a link out of the jail's disk, a stale or planted lock, a forged
self-test or fault, a later batch size, a blame shift to the host).  An attack the code stops is a plain
regression guard; one it does not is ``xfail(strict=True)`` with the reason."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autograder import faults, output_lock
from autograder.faults import Fault
from autograder.metering import calibration, clocks
from autograder.probe import jail, seccomp, self_test_cache

ROOT = os.geteuid() == 0
X86_64 = platform.machine().lower() == "x86_64"
needs_root = pytest.mark.skipif(not ROOT, reason="needs a root grader (CI runs as root)")
needs_bwrap = pytest.mark.skipif(not jail.bwrap_works(), reason="needs bubblewrap with namespaces")
SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)


@pytest.fixture(autouse=True)
def _isolation_from_environment(monkeypatch):
    monkeypatch.delenv(jail.ENV_MODE, raising=False)
    monkeypatch.delenv(jail.ENV_UNSAFE, raising=False)
    monkeypatch.delenv(jail.ENV_PRIVATE, raising=False)


# --- keyrings: the key system calls through every ABI of the machine ---------------------------------------

KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING = 0, -4


def _int80_keyctl() -> int:
    """keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0) through the i386 ABI (``int 0x80`` from 64-bit
    code: the kernel reports AUDIT_ARCH_I386 and the i386 number 288), in executable memory of our own."""
    code = bytes([
        0x53,                                # push rbx (callee-saved)
        0xB8, 0x20, 0x01, 0x00, 0x00,        # mov eax, 288 (i386 keyctl)
        0xBB, 0x00, 0x00, 0x00, 0x00,        # mov ebx, KEYCTL_GET_KEYRING_ID
        0xB9, 0xFC, 0xFF, 0xFF, 0xFF,        # mov ecx, KEY_SPEC_USER_KEYRING (-4)
        0x31, 0xD2,                          # xor edx, edx (create = 0)
        0xCD, 0x80,                          # int 0x80
        0x5B,                                # pop rbx
        0xC3,                                # ret
    ])
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return ctypes.CFUNCTYPE(ctypes.c_int)(address)()


def _key_calls() -> dict[str, int]:
    """Each way in to the keyrings: the result (>= 0: it worked) or -errno."""
    libc = ctypes.CDLL(None, use_errno=True)

    def native(nr: int, *args) -> int:
        r = libc.syscall(ctypes.c_long(nr), *args)
        return r if r >= 0 else -ctypes.get_errno()

    add_key, request_key, keyctl = seccomp.key_syscall_numbers()
    out = {"native keyctl": native(keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0),
           "native add_key": native(add_key, b"user", b"redteam", b"x", 1, KEY_SPEC_USER_KEYRING),
           "native request_key": native(request_key, b"user", b"redteam", None, 0)}
    if X86_64:
        out["x32 keyctl"] = native(seccomp.X32_SYSCALL_BIT | keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0)
        out["i386 int 0x80 keyctl"] = _int80_keyctl()
    return out


def _in_child(fn) -> dict:
    """``fn()`` (a JSON-able result) in a forked child; its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        raw = f.read()
    os.waitpid(pid, 0)
    return json.loads(raw)


@pytest.mark.skipif(not seccomp.supported(), reason="no seccomp filter for this architecture")
def test_no_abi_reaches_the_keyrings_under_the_jails_filter():
    """add_key, request_key and keyctl through the native ABI, the x32 ABI (number | 0x40000000) and the i386
    ABI (``int 0x80`` from 64-bit code, number 288): every one fails with EPERM once the filter is on; without
    it the i386 way does reach the keyring (the control shows the attack is real where the kernel has it)."""
    unfiltered = _in_child(_key_calls)
    if X86_64 and unfiltered["i386 int 0x80 keyctl"] == -errno.ENOSYS:
        pytest.skip("this kernel has no i386 emulation")

    def filtered() -> dict:
        seccomp.installer(no_new_privs=True)()
        return _key_calls()

    got = _in_child(filtered)
    assert got and all(v == -errno.EPERM for v in got.values()), got
    if X86_64:
        assert unfiltered["i386 int 0x80 keyctl"] >= 0, unfiltered  # the control: it works without the filter


@pytest.mark.skipif(not X86_64, reason="x86_64 ABIs")
def test_the_filter_denies_a_call_of_any_unknown_architecture_and_every_x32_number():
    """The BPF program itself: an x32 number of any call (not only the key ones) and an architecture the
    table does not name end at the deny."""
    prog = seccomp.program()

    def run(arch: int, nr: int) -> int:  # a tiny interpreter of the instructions the module emits
        acc, pc = 0, 0
        while True:
            code, jt, jf, k = prog[pc]
            if code == 0x20:
                acc = {0: nr, 4: arch}[k]
                pc += 1
            elif code == 0x06:
                return k
            elif code == 0x15:
                pc += 1 + (jt if acc == k else jf)
            elif code == 0x35:
                pc += 1 + (jt if acc >= k else jf)
            else:
                raise AssertionError(code)

    deny = 0x00050000 | errno.EPERM
    assert run(seccomp.AUDIT_ARCH_X86_64, 0) == 0x7FFF0000  # read(2) allowed
    assert run(seccomp.AUDIT_ARCH_X86_64, 0x40000000 | 0) == deny  # x32 read: the whole ABI
    assert run(seccomp.AUDIT_ARCH_I386, 3) == 0x7FFF0000
    for nr in (286, 287, 288):
        assert run(seccomp.AUDIT_ARCH_I386, nr) == deny
    assert run(0xC00000B7, 219) == deny  # aarch64's keyctl on an x86_64 kernel: an unknown architecture


# --- the total disk: a link out of the jail's tmpfs, and every folder a jail can write ----------------------

def _run_jailed(code: str, mode: str, monkeypatch, **limits) -> str:
    from autograder import children

    monkeypatch.setenv(jail.ENV_MODE, mode)
    with jail.open_jail(python=SYSTEM_PYTHON, **limits) as j:
        script = j.put("attack.py", textwrap.dedent(code).encode())
        j.hand_over()
        proc = children.run(j.command([j.python, "-I", script]), cwd=j.work, env=j.env(), capture_output=True,
                            text=True, timeout=120, preexec_fn=j.preexec())
        return proc.stdout + proc.stderr


LINK_ATTACK = """
import errno, os
here = os.stat('.').st_dev
def attempt(label, fn):
    try:
        fn()
        print(label, 'WORKED')
    except OSError as exc:
        print(label, 'FAILED', errno.errorcode.get(exc.errno, exc.errno))
# a hard link of a file of ours into a folder of another file system, and of a host file into ours
attempt('HARDLINK OUT /tmp', lambda: os.link('attack.py', '/tmp/out-link'))
attempt('HARDLINK IN', lambda: os.link('/etc/hostname' if os.path.exists('/etc/hostname') else '/etc/passwd', 'in-link'))
# a symlink that points out: writing through it must not reach the host's disk
os.symlink('/var/tmp/through-link', 'sym')
attempt('WRITE THROUGH SYMLINK', lambda: open('sym', 'w').write('x' * 4096))
if os.path.exists('/var/tmp/through-link'):
    print('THROUGH LINK ON', 'SAME' if os.stat('/var/tmp/through-link').st_dev == here else 'HOST DISK')
# every mount point the jail sees: may it create a file there, on another device than its own?
seen = set()
for line in open('/proc/self/mountinfo'):
    point = line.split()[4].replace('\\\\040', ' ')
    if point in seen or point.startswith(('/proc', '/sys')):
        continue
    seen.add(point)
    try:
        fd = os.open(os.path.join(point, '.redteam-probe'), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except OSError:
        continue
    os.close(fd)
    dev = os.stat(os.path.join(point, '.redteam-probe')).st_dev
    os.unlink(os.path.join(point, '.redteam-probe'))
    if dev != here:
        print('WRITABLE ELSEWHERE', point)
print('DONE')
"""


@needs_root
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="needs a system python3 that a slot uid can run")
@pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=needs_bwrap), "permissions"])
def test_no_link_and_no_other_mount_leads_out_of_the_jails_capped_disk(mode, monkeypatch):
    """Files vs bytes vs the total: a hard link cannot cross into or out of the tmpfs (EXDEV), a symlink to a
    host folder writes nowhere the host keeps, and no mount point the jail sees other than its own tmpfs takes
    a new file (bubblewrap's and the permission jail's views alike)."""
    out = _run_jailed(LINK_ATTACK, mode, monkeypatch, disk_mb=16, disk_files=500)
    assert "DONE" in out, out
    assert "HARDLINK OUT /tmp WORKED" not in out, out
    assert "HARDLINK IN WORKED" not in out, out
    assert "HOST DISK" not in out, out
    assert "WRITABLE ELSEWHERE" not in out, out
    assert not os.path.exists("/var/tmp/through-link")


@pytest.fixture
def world_writable_host_folder():
    """A world-writable folder of the host outside the four the permission jail replaces, as hosts have them
    (``/var/crash``, ``/var/lib/php/sessions``, a spool folder): made for the test, removed after it."""
    base = Path("/srv") if Path("/srv").is_dir() else Path("/opt")
    folder = base / f"cnn-redteam-{os.getpid()}"
    folder.mkdir(mode=0o777)
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@needs_root
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="needs a system python3 that a slot uid can run")
def test_a_permission_jail_writes_nothing_past_its_cap_into_another_world_writable_host_folder(
        world_writable_host_folder, monkeypatch):
    """The permission jail's own mount namespace replaced only /tmp, /var/tmp, /dev/shm and /run/lock by its
    tmpfs: a host folder anyone may write to that the list does not name took 32 MB past a 16 MB allowance, on
    the host's disk.  Every mount but the jail's tmpfs is now read-only in that namespace."""
    code = f"""
    import os
    written = 0
    try:
        with open({str(world_writable_host_folder / 'fill')!r}, 'wb') as f:
            for _ in range(32):  # 32 MB, twice the jail's allowance
                f.write(b'x' * (1 << 20))
                written += 1
    except OSError as exc:
        print('STOPPED', exc)
    print('WROTE', written, 'MB')
    """
    out = _run_jailed(code, "permissions", monkeypatch, disk_mb=16, disk_files=500)
    assert "WROTE" in out, out
    written = int(out.split("WROTE", 1)[1].split()[0])
    assert written == 0 and "Read-only file system" in out, out
    assert not (world_writable_host_folder / "fill").exists()


# --- one run per output folder: a stale, planted or raced lock --------------------------------------------

def test_a_stale_lock_naming_a_dead_pid_is_taken_over_and_its_description_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    output_lock.lock_path(out).write_text(json.dumps({"pid": 999999, "host": "gone", "command": "killed run"}))
    with output_lock.hold(out):
        holder = output_lock.read_holder(out)
        assert holder["pid"] == str(os.getpid()) and holder["command"] != "killed run"


def test_a_lock_path_planted_as_a_link_is_never_followed(tmp_path):
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    output_lock.lock_path(out).symlink_to(victim)
    with pytest.raises(OSError), output_lock.hold(out):
        pass
    assert victim.read_text() == "precious"


def test_a_second_run_beside_a_live_holder_is_refused_and_names_it(tmp_path):
    """Another process holds the folder: the second run is refused at once, naming the holder's pid."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from pathlib import Path
        from autograder import output_lock
        with output_lock.hold(Path(sys.argv[1])):
            print('HELD', flush=True)
            sys.stdin.readline()
    """), str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(output_lock.OutputFolderBusy) as busy, output_lock.hold(out):
            pass
        assert str(holder.pid) in str(busy.value)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_huge_or_malformed_holder_description_is_bounded(tmp_path):
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    output_lock.lock_path(out).write_text(json.dumps({"pid": "1" * 100_000, "command": "x" * 100_000}))
    assert output_lock.read_holder(out) is None  # over the 4 KB read: not JSON, no description
    output_lock.lock_path(out).write_text(json.dumps({"pid": 1, "command": "y" * 3000, "evil": "z"}))
    found = output_lock.read_holder(out)
    assert set(found) == {"pid", "command"} and len(found["command"]) <= output_lock.MAX_COMMAND_CHARS


# --- a forged self-test cache entry -------------------------------------------------------------------------

def test_a_forged_kept_self_test_is_not_served(tmp_path, monkeypatch):
    folder = tmp_path / "kept"
    monkeypatch.setattr(self_test_cache, "folder", lambda: folder)
    digest = "a" * 64
    self_test_cache.store(digest, {"mode": "bwrap"})
    entry = folder / f"{digest}.json"
    assert self_test_cache.load(digest) is not None  # the control: a genuine entry is served
    data = json.loads(entry.read_text())
    # passed "in the future", to last for ever
    entry.write_text(json.dumps({**data, "passed_at": time.time() + 10 * self_test_cache.MAX_AGE_SECONDS}))
    assert self_test_cache.load(digest) is None
    # an entry for one key copied under another key
    other = "b" * 64
    (folder / f"{other}.json").write_text(json.dumps(data))
    (folder / f"{other}.json").chmod(0o600)
    assert self_test_cache.load(other) is None
    # a link to a file the grader owns elsewhere (a planted symlink in place of the entry)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(data))
    elsewhere.chmod(0o600)
    entry.unlink()
    entry.symlink_to(elsewhere)
    assert self_test_cache.load(digest) is None
    # a description that is not a dict, a non-numeric time
    entry.unlink()
    entry.write_text(json.dumps({**data, "description": ["x"]}))
    entry.chmod(0o600)
    assert self_test_cache.load(digest) is None
    entry.write_text(json.dumps({**data, "passed_at": "nan"}))
    assert self_test_cache.load(digest) is None


# --- a typed fault forged across a process boundary ----------------------------------------------------------

@pytest.mark.parametrize("record", [
    {"cause": "memory_limit", "message": "m", "owner": "host"},  # the student's limit claimed as the host's
    {"cause": "host_slow", "message": "m", "owner": "submission"},
])
def test_a_fault_record_cannot_choose_its_owner(record):
    """The owner follows from the cause alone: a record that names another owner is not believed."""
    fault = Fault.from_dict(record)
    assert fault.owner == faults.OWNER_OF[record["cause"]]


@pytest.mark.parametrize("record", [{"cause": "no such cause"}, {"message": "no cause"}, {"cause": ["host_slow"]}, []])
def test_a_malformed_fault_record_is_the_graders_crash_never_a_host_excuse(record):
    fault = Fault.from_dict(record) if isinstance(record, dict) else Fault.from_dict({"cause": record})
    assert fault.cause == "grader_crash"


def test_a_forged_status_message_cannot_set_a_fault_or_leave_the_startup_phase_twice():
    """What a submission writes to its status pipe: a record named like a fault, a second ``ready`` (which
    would restart the clocks), a ``done`` before the values: all ignored and counted, none accepted."""
    from autograder.probe.sandbox import Limits, _Run

    run = _Run([(1, "x = 1")], ["x"], {}, Limits(), real_fit=False)
    run.on_status(json.dumps({"kind": "ready"}).encode())  # the runtime's own, once
    assert run.phase == "cells"
    for forged in ({"kind": "fault", "cause": "host_slow", "message": "GRADER ERROR"},
                   {"kind": "ready"}, {"kind": "done"},
                   {"kind": "cell_done", "index": 1}, {"kind": "step", "label": "extract"},
                   {"kind": "cell", "index": 2}, {"kind": "cell", "index": True}):
        run.on_status(json.dumps(forged).encode())
    assert run.fault is None and run.phase == "cells" and run.current is None and run.ignored == 7


# --- memory and time at every batch size, every fit call --------------------------------------------------

def _fits(*batches_epochs) -> list[dict]:
    return [{"epochs": e, "batch_size": b, "validation_split": 0.0, "steps_per_epoch": None, "callbacks": [],
             "validation": None} for b, e in batches_epochs]


@pytest.mark.parametrize("fits", [
    _fits((16, 1), (4096, 1)),  # a later fit call at a larger batch
    _fits((4096, 1), (16, 1)),
    _fits((16, 15), (4096, 1)),  # the large-batch call capped to 0 epochs: it never runs
])
def test_the_worker_predicts_only_at_a_batch_size_the_budget_checked(fits):
    """The evaluation batch is a batch size the budget priced (forward and backward), whatever the order of
    fit calls or which of them the epoch cap drops."""
    from autograder.verifier import training
    from autograder.verifier.budget import Budget, recipe_cost

    model = {"input_shape": [28, 28, 1], "layers": [
        {"type": "Conv2D", "filters": 4096, "kernel_size": [1, 1], "strides": [1, 1], "padding": "valid",
         "dilation_rate": [1, 1], "activation": "relu", "use_bias": True},
        {"type": "GlobalMaxPooling2D", "keepdims": False},
        {"type": "Dense", "units": 10, "activation": "softmax", "use_bias": True}]}
    cost, plan, _ = recipe_cost({"model": model, "fits": fits}, Budget(),
                                {"name": "MNIST", "num_classes": 10, "train_size": 60_000})
    assert training.evaluation_batch(plan) <= cost.largest_batch
    assert training.evaluation_batch(plan) in {f["batch_size"] for f in plan}


# --- the host or the recipe: a blame shift by sleeping or by slowing the calibration -------------------------

def test_sleeping_is_never_a_host_excuse():
    """A cell that sleeps: little CPU, a long wall time, no run-queue wait.  Charged its wall time, and the
    host's measured slowdown discounts only CPU-bound seconds."""
    charged = clocks.charged(cpu=0.5, wall=100.0, waited=0.0)
    assert charged == 100.0 and not clocks.starved(0.0, 100.0)
    very_slow = calibration.HostSpeed(seconds=1.0, calibrated=0.1)  # a host 10x slower than normal
    assert calibration.normal_seconds(charged, 0.5, very_slow) >= 99.5


def test_a_slow_calibration_run_does_not_become_the_hosts_normal_speed(tmp_path, monkeypatch):
    """The calibration is the fastest measurement ever seen: a submission that loads the host while it is
    measured (only possible outside its frozen group) can make one measurement slow, never the normal speed."""
    path = tmp_path / "calibration.json"
    timings = iter([0.01, 0.5, 0.5])
    monkeypatch.setattr(calibration, "measure", lambda threads=1: next(timings))
    first = calibration.host_speed(1, path)
    assert not first.slow
    loaded = calibration.host_speed(1, path)
    assert loaded.calibrated == 0.01 and loaded.slow  # the loaded measurement is slow against the calibration
    assert json.loads(path.read_text())[calibration.host_key(1)]["seconds"] == 0.01


@pytest.mark.parametrize("forge", ["world-writable", pytest.param("another uid's", marks=needs_root), "a link"])
def test_a_planted_tiny_calibration_does_not_make_the_host_look_slow(tmp_path, monkeypatch, forge):
    """A calibration file someone else could have written (world-writable, another uid's, a link to such a
    file): its figure (a reference "normally" run in a nanosecond) would make every measurement slow, every
    CPU-bound limit discounted and the run's overrun the host's fault.  It is not believed; the host is
    measured afresh and the file replaced by the grader's own."""
    path = tmp_path / "calibration.json"
    forged = json.dumps({calibration.host_key(1): {"seconds": 1e-9, "measured": time.time()}})
    if forge == "a link":
        target = tmp_path / "elsewhere.json"
        target.write_text(forged)
        target.chmod(0o666)
        path.symlink_to(target)
    else:
        path.write_text(forged)
        if forge == "world-writable":
            path.chmod(0o666)
        else:
            os.chown(path, 12345, 12345)
    monkeypatch.setattr(calibration, "measure", lambda threads=1: 0.02)
    speed = calibration.host_speed(1, path)
    assert not speed.slow and speed.calibrated == 0.02
    kept = os.lstat(path)
    assert not os.path.islink(path) and kept.st_uid == os.geteuid() and not kept.st_mode & 0o022
    # the control: the grader's own calibration is believed
    path.write_text(json.dumps({calibration.host_key(1): {"seconds": 0.01, "measured": time.time()}}))
    path.chmod(0o600)
    assert calibration.host_speed(1, path).slow


# --- the fork server: what a forked jail can reach of its PID 1, the template and the host's environment -----

FORKED_ATTACK = r'''
import ctypes, errno, json, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def err(r):
    return r if r >= 0 else -ctypes.get_errno()
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
out["ptrace pid1"] = err(libc.ptrace(ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(1), None, None))
out["seize pid1"] = err(libc.ptrace(ctypes.c_long(PTRACE_SEIZE), ctypes.c_long(1), None, None))
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(64)
local, remote = iovec(ctypes.addressof(buf), 64), iovec(0x400000, 64)
out["process_vm_readv pid1"] = err(libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))
for name in ("mem", "maps", "environ", "cmdline", "stack", "syscall"):
    try:
        open(f"/proc/1/{name}", "rb").read(64)
        out[f"/proc/1/{name}"] = "READ"
    except OSError as exc:
        out[f"/proc/1/{name}"] = errno.errorcode.get(exc.errno, exc.errno)
try:
    os.listdir("/proc/1/fd")
    out["/proc/1/fd"] = "READ"
except OSError as exc:
    out["/proc/1/fd"] = errno.errorcode.get(exc.errno, exc.errno)
# the i386 ABI's keyctl, as the template installed the filter (the grader built it)
code = bytes([0x53, 0xB8, 0x20, 0x01, 0, 0, 0xBB, 0, 0, 0, 0, 0xB9, 0xFC, 0xFF, 0xFF, 0xFF, 0x31, 0xD2, 0xCD, 0x80,
              0x5B, 0xC3])
m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
out["int80 keyctl"] = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
out["x32 keyctl"] = err(libc.syscall(ctypes.c_long(0x40000000 | 250), 0, -4, 0))
# what the template's start left in this process: its first environment block and argv
environ = open("/proc/self/environ", "rb").read()
out["environ grader names"] = sorted({w.split(b"=")[0].decode() for w in environ.split(b"\0") if b"CNN_GRADER" in w})
out["fds"] = sorted(int(f) for f in os.listdir("/proc/self/fd"))
print("@@" + json.dumps(out), flush=True)
sys.stdin.read()
'''


@pytest.mark.skipif(not (ROOT and jail.bwrap_works() and X86_64), reason="the fork server needs a root grader with "
                    "bubblewrap; the i386 ABI is x86_64's")
def test_a_forked_jail_reaches_neither_its_pid1_nor_the_keyrings_nor_the_graders_environment(monkeypatch):
    """ptrace (attach and seize), process_vm_readv and /proc/1 of its PID 1 (the slot uid's, not dumpable),
    the key system calls through the i386 and x32 ABIs under the filter the template installed, the
    template's environment block (``/proc/self/environ`` of a fork is the template's) and any descriptor
    beyond the jail's five."""
    from contextlib import ExitStack

    import test_forkserver as fs

    from autograder.probe import forkserver

    monkeypatch.setenv(forkserver.ENV, "1")
    with ExitStack() as stack:
        _, child = fs.start(FORKED_ATTACK, stack=stack)
        line = fs.read_line(child, timeout=300)
        assert line.startswith("@@"), line[-2000:]
        out = json.loads(line[2:])
    for call in ("ptrace pid1", "seize pid1", "process_vm_readv pid1"):
        assert out[call] in (-errno.EPERM, -errno.ESRCH), out
    assert all(v != "READ" for k, v in out.items() if k.startswith("/proc/1/") and k != "/proc/1/cmdline"), out
    assert out["int80 keyctl"] == -errno.EPERM and out["x32 keyctl"] == -errno.EPERM, out
    assert out["environ grader names"] == [], out
    assert set(out["fds"]) <= {0, 1, 2, 3, 4, max(out["fds"])}, out  # the jail's pipes (and the listing's own fd)


def test_a_permission_jail_says_where_the_rest_of_the_host_stays_writable(monkeypatch, tmp_path):
    """Where the kernel (or a container's seccomp profile) refuses to make the host read-only for the jail,
    its notes say so; where it can, they do not."""
    from autograder.probe import disk

    monkeypatch.setattr(disk, "can_unshare_mounts", lambda: True)
    j = jail.Jail("permissions", tmp_path, disk_how="tmpfs")
    monkeypatch.setattr(disk, "can_make_host_read_only", lambda: False)
    assert disk.READ_ONLY_NOTE in j.disk_note
    monkeypatch.setattr(disk, "can_make_host_read_only", lambda: True)
    assert disk.READ_ONLY_NOTE not in j.disk_note


@needs_root
def test_this_kernel_can_make_the_host_read_only_for_a_permission_jail():
    """The control for the test above: on this machine (Linux 5.12+, root) the protection is on, so the
    world-writable folder attack is really stopped by it and not skipped."""
    from autograder.probe import disk

    if not disk.can_unshare_mounts():
        pytest.skip("no mount namespace can be made here")
    assert disk.can_make_host_read_only()


# --- IPC just outside System V: a POSIX message queue left for the next sandbox of the uid -------------------

MQUEUE_ATTACK = r"""
import ctypes, os
rt = ctypes.CDLL("librt.so.1", use_errno=True)
class attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
q = rt.mq_open(b"/cnn-redteam-left", os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr(0, 4, 64, 0)))
print("OPENED", q, "SENT", rt.mq_send(q, b"for-the-next-one", 16, 0) if q >= 0 else None)
"""


def _host_queue(name: bytes) -> bytes | None:
    """What the host's IPC namespace holds in queue ``name`` (read and removed), or None if there is none."""
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    q = rt.mq_open(name, os.O_RDWR | os.O_NONBLOCK)
    if q < 0:
        return None
    buf = ctypes.create_string_buffer(64)
    n = rt.mq_receive(q, buf, 64, None)
    rt.mq_unlink(name)
    os.close(q)
    return buf.raw[:max(n, 0)]


@needs_root
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="needs a system python3 that a slot uid can run")
def test_a_posix_message_queue_left_by_a_permission_jail_is_gone_with_its_lease(monkeypatch):
    """System V objects are removed at lease and release; a POSIX message queue (``mq_open``) is not a System V
    object and not a file where no ``/dev/mqueue`` is mounted: it outlived the jail in the host's IPC
    namespace, and the next sandbox of that uid could read it.  It is removed with the lease."""
    from autograder.probe import disk

    if not disk.can_unshare_mounts() or os.path.ismount("/dev/mqueue"):
        pytest.skip("needs a root grader that may make mount namespaces, and no /dev/mqueue mounted")
    _host_queue(b"/cnn-redteam-left")  # nothing of an earlier run
    out = _run_jailed(MQUEUE_ATTACK, "permissions", monkeypatch, disk_mb=16, disk_files=500)
    assert "OPENED" in out and "SENT 0" in out, out  # the queue was made and filled inside the jail
    assert _host_queue(b"/cnn-redteam-left") is None


@needs_root
def test_the_mqueue_clean_up_removes_only_the_uids_queues():
    from autograder import children

    rt = ctypes.CDLL("librt.so.1", use_errno=True)

    def make_as(uid: int, name: bytes):
        def action() -> None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None) < 0:
                raise OSError(ctypes.get_errno(), "mq_open")
        assert children.run_forked(action) == 0

    uid, other = jail.SLOT_UID_BASE + jail.SLOT_COUNT - 1, jail.SLOT_UID_BASE + jail.SLOT_COUNT - 2
    make_as(uid, b"/cnn-redteam-mine")
    make_as(other, b"/cnn-redteam-theirs")
    try:
        found = jail.remove_uid_mqueues(uid)
        if found is None:
            pytest.skip("the queues cannot be looked at here")
        assert found is True
        assert rt.mq_open(b"/cnn-redteam-mine", os.O_RDWR, 0, None) < 0
        theirs = rt.mq_open(b"/cnn-redteam-theirs", os.O_RDWR, 0, None)
        assert theirs >= 0
        os.close(theirs)
    finally:
        rt.mq_unlink(b"/cnn-redteam-mine")
        rt.mq_unlink(b"/cnn-redteam-theirs")
