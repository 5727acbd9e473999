"""The fork server's template: runs INSIDE a bubblewrap sandbox, as root with its capabilities, and never runs
student code (trusted side).  Started by :mod:`autograder.probe.forkserver` as
``python -I forkserver_template.py CONTROL_FD IMPORTS_JSON``.

It imports what notebooks need (NumPy, TensorFlow/Keras, IPython) once, then serves requests on the control
socket (a ``SOCK_SEQPACKET`` pair with the grader): each ``spawn`` forks one jail, which builds its own isolation
before it runs anything of a submission:

1. the outer process (``cnn-jail``, in the template's view) joins the jail's control group (files the grader
   opened), takes new mount, PID, IPC, UTS, network and cgroup namespaces, forks the jail's PID 1, waits for it
   and writes its exit status to the grader's report pipe;
2. PID 1 makes every mount private, mounts a fresh ``/proc`` (its own PID namespace), a fresh ``/dev`` (device
   nodes bound as bubblewrap binds them), the jail's own working folder on ``/sandbox`` and its ``tmp`` on
   ``/tmp`` (detached mounts the grader cloned, ``move_mount``), sets the host name, brings the loopback up,
   applies the rlimits, drops every capability from its bounding set, sets ``no_new_privs``, installs the
   seccomp filter and takes the slot uid/gid; then forks
3. the runtime, which takes the pipes as fds 0-4, the jail's environment, fresh random state, and runs the
   script (the probe runtime or the self-test) as ``__main__``.

Nothing here imports :mod:`autograder`: a jail's memory holds no module of the grader.  Only system calls
through ``ctypes`` on the C library (no maintained Python binding covers ``move_mount``, ``unshare`` and
``PR_CAPBSET_DROP`` together).
"""

import ctypes
import json
import os
import signal
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2
AT_FDCWD = -100
SYS_MOVE_MOUNT = 429  # the same number on every architecture (424 and later are shared)
MOVE_MOUNT_F_EMPTY_PATH = 0x4
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 15, 22, 24, 38
SECCOMP_MODE_FILTER = 2
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")  # what bubblewrap's --dev binds
WRAPPER_NAME = b"cnn-jail"
JAIL_FDS = ("stdin", "stdout", "status", "go")  # become fds 0, 1 (and 2), 3, 4 of the runtime
MAX_MESSAGE = 1 << 20
TEMPLATE_PID = os.getpid()


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    enc = (lambda s: None if s is None else os.fsencode(s))
    check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
          f"mount {target}")


def umount(target):
    check(libc.umount2(os.fsencode(target), MNT_DETACH), f"umount {target}")


def prctl(option, value):
    check(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


def shared_writable_mappings():
    """Writable shared mappings of this process: a jail writing there would change the template and every later
    jail.  The template refuses to fork while one exists."""
    found = []
    with open("/proc/self/maps") as f:
        for line in f:
            perms = line.split()[1]
            if perms[1] == "w" and perms[3] == "s":
                found.append(line.strip())
    return found


# --- the jail ---------------------------------------------------------------------------------

def outer(req, fds):
    """The jail's outermost process (in the template's view): enters the group and namespaces, waits for PID 1."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != TEMPLATE_PID:  # the template ended before the line above
        os._exit(125)
    os.setsid()
    libc.prctl(PR_SET_NAME, WRAPPER_NAME, 0, 0, 0)
    for fd in fds.get("cgroup", []):  # first: everything below is metered and limited by the jail's group
        os.write(fd, b"0")
        os.close(fd)
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWCGROUP),
          "unshare")
    pid = os.fork()
    if pid == 0:
        run_guarded(init, req, fds)
    report = fds["report"]
    close_all_but({report})
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 255 << 8
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code  # as bubblewrap reports a child killed by a signal
    os.write(report, str(code).encode())
    os._exit(code & 0xFF)


def close_all_but(keep):
    """Close every file descriptor but ``keep`` (without /proc: PID 1 replaces it in this mount namespace)."""
    low = 0
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def init(req, fds):
    """PID 1 of the jail's PID namespace: builds its mounts and drops its privileges, then runs the script."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    libc.prctl(PR_SET_NAME, WRAPPER_NAME, 0, 0, 0)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    umount("/proc")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    build_dev()
    umount("/sandbox")
    check(libc.syscall(SYS_MOVE_MOUNT, fds.pop("work"), b"", AT_FDCWD, b"/sandbox", MOVE_MOUNT_F_EMPTY_PATH),
          "move_mount /sandbox")
    check(libc.syscall(SYS_MOVE_MOUNT, fds.pop("tmp"), b"", AT_FDCWD, b"/tmp", MOVE_MOUNT_F_EMPTY_PATH),
          "move_mount /tmp")
    name = req["hostname"].encode()
    check(libc.sethostname(name, len(name)), "sethostname")
    loopback_up()
    os.chdir(req["cwd"])
    import resource

    limits = req["rlimits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
    if limits.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))
    keep = {fds[name] for name in JAIL_FDS}
    close_all_but(keep)
    drop_privileges(req)
    pid = os.fork()
    if pid == 0:
        run_guarded(runtime, req, fds)
    for fd in keep:
        os.close(fd)
    while True:  # reap every orphan of the jail; end with the runtime (the kernel then ends the namespace)
        try:
            got, status = os.wait()
        except ChildProcessError:
            os._exit(255)
        except InterruptedError:
            continue
        if got == pid:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


def build_dev():
    """A fresh /dev of the jail's own (a small tmpfs: device nodes bound from the template's, pts, links), in
    place of the template's, so nothing written there reaches another jail."""
    umount("/tmp")  # the template's own /tmp: never seen by a jail
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64")
    for dev in DEVICES:
        os.close(os.open(f"/tmp/{dev}", os.O_CREAT | os.O_WRONLY, 0o666))
        mount(f"/dev/{dev}", f"/tmp/{dev}", None, MS_BIND)
    os.mkdir("/tmp/shm", 0o755)
    os.mkdir("/tmp/pts", 0o755)
    try:
        mount("devpts", "/tmp/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
        os.symlink("pts/ptmx", "/tmp/ptmx")
    except OSError:
        pass
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore")):
        os.symlink(target, f"/tmp/{link}")
    umount("/dev")
    mount("/tmp", "/dev", None, MS_MOVE)


def loopback_up():
    """``ip link set lo up`` in the jail's network namespace, as bubblewrap does (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    import fcntl

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, req)[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))  # IFF_UP
    finally:
        s.close()


def drop_privileges(req):
    """Every capability out of the bounding set, no_new_privs, the seccomp filter, then the slot uid and gid
    (which clears the permitted, effective and ambient sets); checked afterwards."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if req.get("seccomp"):
        import base64

        raw = base64.b64decode(req["seccomp"])

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        buffer = ctypes.create_string_buffer(raw, len(raw))
        fprog = SockFprog(len(raw) // 8, ctypes.addressof(buffer))
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")
    uid = req.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    clear_capabilities()
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if int(status[field].strip(), 16):
            raise OSError(f"{field} is not empty after the drop")
    if status["NoNewPrivs"].strip() != "1":
        raise OSError("no_new_privs is not set")
    if uid is not None and os.getresuid() != (uid, uid, uid):
        raise OSError("the slot uid was not taken")


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def clear_capabilities():
    """capset(2) with every set empty (the inheritable set survives a change of uid)."""
    header = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    data = (CapData * 2)()
    check(libc.capset(ctypes.byref(header), data), "capset")


def runtime(req, fds):
    """The process that runs the script: the jail's pipes as fds 0-4, its environment, fresh random state."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    prctl(PR_SET_DUMPABLE, 1)  # as after a fresh jail's execve (the change of uid cleared it): its own /proc files
    import fcntl

    high = {name: fcntl.fcntl(fds[name], fcntl.F_DUPFD, 100) for name in JAIL_FDS}  # out of the way first
    for name, target in zip(JAIL_FDS, (0, 1, 3, 4)):
        os.dup2(high[name], target)
    os.dup2(1, 2)
    os.closerange(5, 1 << 16)
    os.environ.clear()
    os.environ.update(req["env"])
    reseed()
    sys.argv = list(req["argv"])
    import runpy

    runpy.run_path(sys.argv[0], run_name="__main__")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def reseed():
    """The generators that Python and NumPy seeded when the template imported them would be the same in every
    jail: each jail's are seeded again from the kernel (TensorFlow and Keras draw from these or from os.urandom,
    per process, and set no global seed at import)."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))  # (default_rng() seeds each Generator itself)


def run_guarded(step, req, fds):
    """Run one of the jail's steps in a forked child; it never returns into the template's loop."""
    try:
        step(req, fds)
    except BaseException as exc:  # noqa: BLE001 - reported on the jail's output: a grader fault, before any cell
        try:
            os.write(fds.get("stdout", 2), f"\ncnn-grader fork server: the jail could not be set up: "
                                           f"{type(exc).__name__}: {exc}\n".encode())
        except Exception:  # noqa: BLE001
            pass
        os._exit(125)
    os._exit(0)


# --- the server -------------------------------------------------------------------------------

def serve(control):
    children = {}  # outer pid -> True, kept (unreaped) until the grader releases it: its pid stays its own
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 64)
        except InterruptedError:
            continue
        if not data:
            break
        req = json.loads(data)
        op = req.get("op")
        if op == "spawn":
            named = dict(zip(req["fds"], fds))
            named["cgroup"] = fds[len(req["fds"]):]
            reply = spawn(req, named, control)
            for fd in fds:
                os.close(fd)
            if "pid" in reply:
                children[reply["pid"]] = True
        elif op == "reap":
            pid = req.get("pid")
            if children.pop(pid, None):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            reply = {"ok": True}
            for fd in fds:
                os.close(fd)
        else:
            reply = {"error": f"unknown request {op!r}"}
            for fd in fds:
                os.close(fd)
        control.send(json.dumps(reply).encode())
    for pid in children:  # the grader is gone: so is every jail of ours
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def spawn(req, fds, control):
    shared = shared_writable_mappings()
    if shared:
        return {"error": "the template holds a writable shared mapping, which a jail could change for every "
                         "later one: " + shared[0][:200]}
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        control.close()
        run_guarded(outer, req, fds)
    return {"pid": pid}


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    imports = json.loads(sys.argv[2])
    import importlib

    failed = {}
    for name in imports:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a fresh jail would fail the same way: its own imports say so
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        from IPython.core.interactiveshell import InteractiveShell  # noqa: F401 - what the runtime starts
    except Exception:  # noqa: BLE001
        pass
    control.send(json.dumps({"ready": True, "pid": os.getpid(), "failed": failed,
                             "shared": shared_writable_mappings()[:3]}).encode())
    serve(control)
    os._exit(0)


if __name__ == "__main__":
    main()
