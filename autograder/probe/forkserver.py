"""Fork server: jails forked from a template that has imported NumPy, TensorFlow/Keras and IPython once.

A fresh jail pays about 4 CPU-seconds of TensorFlow import before the student's first cell.  Here a
*template* (:mod:`autograder.probe.forkserver_template`, standalone: it imports nothing of the grader) runs
in a bubblewrap sandbox with the same read-only view as every ``bwrap`` jail (``/usr``, a few files of
``/etc``, the interpreter's trees, the grader's folders masked), as root with its capabilities, and never runs
student code.  Each jail is a fork of it that, before anything of a submission reaches it, joins its own
control group, takes its own mount, PID, IPC, UTS, network and cgroup namespaces, mounts a fresh ``/proc`` and
``/dev``, its own working folder (the capped tmpfs of :mod:`autograder.probe.disk`, moved in as a detached
mount) on ``/sandbox`` and its ``tmp`` on ``/tmp``, applies the rlimits, empties every capability set, sets
``no_new_privs``, installs the seccomp filter of :mod:`autograder.probe.seccomp` and takes its slot uid: the
isolation of a ``bwrap`` jail, proved by the same self-test, run in a forked jail.

Only for ``bwrap`` jails of a root grader whose working folder is a tmpfs of ours; permission jails, a
non-root grader, and whatever the template cannot serve start a fresh jail as before (the result's isolation
says ``"started": "forked"`` or ``"fresh"``).  ``CNN_GRADER_FORKSERVER``: ``1`` (where it can) or ``0``
(never; the default while one crash seen in testing is unexplained).

What a fork shares with its template and differs from a fresh interpreter in: the memory of the imported
libraries (copy on write: a jail's writes stay its own; the template refuses to fork while it holds a writable
shared mapping), the Python hash seed (per template, not per jail), and the generators of :mod:`random` and
``numpy.random``, which each jail seeds again from the kernel.  A template serves one interpreter, one view
(trees and masks) and one set of the variables its imports read (``KERAS_BACKEND``, the thread counts).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from autograder import children, settings
from autograder.probe import disk, seccomp
from autograder.probe import jail_basics as jails

ENV = settings.FORKSERVER.name
TEMPLATE = Path(__file__).with_name("forkserver_template.py")
IMPORTS = ("numpy", "tensorflow", "keras")  # as the runtime's WARM_IMPORTS (IPython's shell too, in the template)
WRAPPER_NAME = "cnn-jail"  # the name of a forked jail's outer process and of its PID 1
IMPORT_ENV = ("KERAS_BACKEND", *settings.THREAD_VARIABLES)  # read when the libraries are imported: one template each
NO_FORK_NOTE = "started fresh"
_libc = ctypes.CDLL(None, use_errno=True)
SYS_OPEN_TREE = 428  # the same on every architecture
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
AT_FDCWD = -100


def wanted() -> bool:
    """Whether the fork server is asked for (``CNN_GRADER_FORKSERVER=1``; off by default while one crash seen
    in testing is unexplained: see the operators' Isolation page)."""
    return settings.current().forkserver


def unavailable(jail) -> str | None:
    """Why ``jail`` cannot be forked from a template (it then starts fresh), or None."""
    if not wanted():
        return f"{ENV}={settings.FORKSERVER.get()} (1 turns it on)"
    if jail.mode != "bwrap":
        return f"the fork server serves bubblewrap jails only (this one: {jail.mode})"
    if os.geteuid() != 0:
        return "the fork server needs a root grader (its jails build their own namespaces)"
    if jail.disk_how != "tmpfs":
        return "the fork server needs the jail's working folder on a tmpfs of ours"
    if not hasattr(socket, "send_fds"):
        return "this Python cannot pass file descriptors"
    return _BROKEN.get("reason")


_BROKEN: dict[str, str] = {}  # a template that failed to start: every later jail of this process starts fresh


def open_tree(path: Path) -> int:
    """A detached copy of the mount at ``path`` (``open_tree(OPEN_TREE_CLONE)``): a forked jail moves it into
    its own mount namespace, where the host's paths do not exist."""
    fd = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(path), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return fd


def seccomp_program() -> str | None:
    import base64

    if not seccomp.supported():
        return None
    return base64.b64encode(b"".join(struct.pack("HBBI", *ins) for ins in seccomp.program())).decode()


class Template:
    """One template process (bubblewrap, the template script) and its control socket."""

    def __init__(self, jail, env: dict):
        self.lock = threading.Lock()
        self.view = jail.view()
        self.python = jail.python
        work, missing = disk.working_folder()
        self.own = type(jail)("bwrap", work, None, list(jail.private), jail.python,
                               disk_how="tmpfs" if missing is None else "bwrap", disk_missing=missing)
        self.own.put(TEMPLATE.name, TEMPLATE.read_bytes())
        self.own.hand_over()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        bwrap = [a for a in self.own._bwrap() if a not in ("--die-with-parent", "--unshare-pid",
                                                              "--unshare-cgroup-try")]
        cmd = [bwrap[0], "--cap-add", "ALL", *bwrap[1:], self.python, "-I", f"{jails.WORK_INSIDE}/{TEMPLATE.name}",
               str(theirs.fileno()), json.dumps(list(IMPORTS))]
        try:
            self.proc = children.popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),), start_new_session=True)
        finally:
            theirs.close()
        self.control = ours
        self.errors = b""
        threading.Thread(target=self._drain, daemon=True).start()
        ours.settimeout(jails.STARTUP_SECONDS)
        try:
            hello = ours.recv(1 << 16)
        except OSError:
            hello = b""
        if not hello:
            self.close()
            tail = self.errors.decode("utf-8", "replace")[-600:].strip()
            raise jails.JailError(f"the fork server's template did not start (exit {self.proc.poll()}): {tail}")
        ours.settimeout(None)
        self.hello = json.loads(hello)
        self._drop_host_folder()
        self.anonymous = _status_kb(f"/proc/{self.hello['pid']}/status", "RssAnon")  # what its imports hold
        self.outers: set[int] = set()

    def _drain(self) -> None:
        while chunk := self.proc.stderr.read1(65536):
            self.errors = (self.errors + chunk)[-4096:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, message: dict, fds=()) -> dict:
        with self.lock:
            socket.send_fds(self.control, [json.dumps(message).encode()], list(fds))
            reply = self.control.recv(1 << 16)
        if not reply:
            raise jails.JailError("the fork server's template ended")
        return json.loads(reply)

    def spawn(self, jail, argv: list[str], env: dict, fds: dict[str, int], file_size_mb: int) -> "ForkedChild":
        """Fork one jail for ``jail`` (opened and handed over) that runs ``argv`` (a script in the jail and its
        arguments).  ``fds``: the jail's stdin (read end), stdout (write end), status and go pipes."""
        report_r, report_w = os.pipe()
        sent = [report_w]
        try:
            sent += [open_tree(jail.work), open_tree(jail.work / "tmp")]
            if jail.group is not None:
                sent += [os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in jail.group.procs_files()]
            message = {"op": "spawn", "fds": ["stdin", "stdout", "status", "go", "report", "work", "tmp"],
                       "uid": jail.uid, "env": env, "argv": argv, "cwd": jails.WORK_INSIDE, "hostname": "sandbox",
                       "rlimits": {"fsize": file_size_mb * 2**20, "nofile": NOFILE,
                                   "nproc": NPROC if jail.uid is not None else None},
                       "seccomp": seccomp_program()}
            reply = self.request(message, [fds["stdin"], fds["stdout"], fds["status"], fds["go"], *sent])
        except BaseException:
            os.close(report_r)
            raise
        finally:
            for fd in sent:
                os.close(fd)
        if "pid" not in reply:
            os.close(report_r)
            raise jails.JailError(f"the fork server refused: {reply.get('error')}")
        self.outers.add(reply["pid"])
        _OUTERS[reply["pid"]] = self
        return ForkedChild(self, reply["pid"], report_r)

    def reap(self, pid: int) -> None:
        _OUTERS.pop(pid, None)
        self.outers.discard(pid)
        if self.alive():
            try:
                self.request({"op": "reap", "pid": pid})
            except (OSError, jails.JailError):
                pass

    def close(self) -> None:
        try:
            self.control.close()  # the template kills its jails and ends at end of file
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        children.forget(self.proc)
        self._drop_host_folder()

    def _drop_host_folder(self) -> None:
        """The template's folder leaves the host once the template has it mounted (its own mount namespace
        keeps it): no tmpfs of a jail stays mounted on the host while the template lives."""
        import shutil

        if self.own.work.exists():
            disk.unmount(self.own.work)
            shutil.rmtree(self.own.work, ignore_errors=True)


def _status_kb(path: str, field: str) -> int:
    """A ``kB`` field of a /proc file, in bytes (0 if unreadable)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


NOFILE = 1024  # as sandbox.NOFILE
NPROC = 4096


class ForkedChild:
    """A forked jail as the sandbox watches it (the parts of ``subprocess.Popen`` it uses).  Its outer process is
    the template's child, kept unreaped (its pid cannot be reused) until :meth:`release`."""

    def __init__(self, template: Template, pid: int, report_r: int):
        self.template, self.pid, self.report_r = template, pid, report_r
        self.returncode: int | None = None
        self.stdin = self.stdout = None
        self.released = False
        self._runtime: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self.released:
            if select.select([self.report_r], [], [], 0)[0]:
                data = os.read(self.report_r, 64).strip()
                self.returncode = int(data) if data.isdigit() else -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(WRAPPER_NAME, timeout)
            select.select([self.report_r], [], [], 0.05)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None and not self.released:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def shared_with_template(self) -> int:
        """Bytes of its runtime's memory still shared with the template (dirty pages mapped by both: the
        libraries' heap as imported), which the template's group was charged for; 0 once it is gone."""
        if self._runtime is None and not self.released:
            self._runtime = runtime_pid(self.pid)
        shared = _status_kb(f"/proc/{self._runtime}/smaps_rollup", "Shared_Dirty")
        return min(shared, self.template.anonymous)  # (also shared with its own children: at most the template's)

    def release(self) -> None:
        """Done with it: the template reaps its outer process (killed first if still there)."""
        if not self.released:
            self.kill()
            self.released = True
            os.close(self.report_r)
            self.template.reap(self.pid)


_TEMPLATES: dict[tuple, Template] = {}
_OUTERS: dict[int, Template] = {}
_LOCK = threading.Lock()


def template_for(jail, env: dict) -> Template:
    """The running template for this jail's interpreter, view and import-time variables (started if need be)."""
    imports_env = tuple((k, env[k]) for k in IMPORT_ENV if k in env)
    key = (jail.python, jail.view(), imports_env)
    with _LOCK:
        found = _TEMPLATES.get(key)
        if found is not None and not found.alive():
            _TEMPLATES.pop(key).close()
            found = None
        if found is None:
            base = jail.env({**settings.QUIET_LOGGING_ENV, "MPLBACKEND": "Agg", "KERAS_HOME": f"{jail.inside}/.keras",
                             "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": "", **dict(imports_env)})
            _close_at_exit()
            try:
                found = _TEMPLATES[key] = Template(jail, base)
            except jails.JailError as exc:
                _BROKEN["reason"] = str(exc)
                raise
    return found


def spawn(jail, argv: list[str], env: dict, fds: dict[str, int], file_size_mb: int) -> ForkedChild:
    """A forked jail; a template that cannot serve it (it failed to start, ended, or refused) is a grader fault
    (:class:`~autograder.probe.jail.JailError`), and this process's later jails start fresh."""
    try:
        return template_for(jail, env).spawn(jail, argv, env, fds, file_size_mb)
    except (OSError, jails.JailError) as exc:
        _BROKEN["reason"] = f"the fork server failed: {exc}"
        raise jails.JailError(_BROKEN["reason"]) from None


def start(jail, argv: list[str], env: dict, file_size_mb: int, status_w: int, go_r: int) -> ForkedChild:
    """A forked jail with pipes as ``subprocess.Popen(stdin=PIPE, stdout=PIPE, stderr=STDOUT)`` makes them."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        child = spawn(jail, argv, env, {"stdin": in_r, "stdout": out_w, "status": status_w, "go": go_r},
                      file_size_mb)
    except BaseException:
        os.close(in_w)
        os.close(out_r)
        raise
    finally:
        os.close(in_r)
        os.close(out_w)
    child.stdin = os.fdopen(in_w, "wb")
    child.stdout = os.fdopen(out_r, "rb")
    if jail.group is not None:
        count_shared_memory(jail.group, child)
    return child


def count_shared_memory(group, child: ForkedChild) -> None:
    """The jail's memory counts what a fresh jail's would, its imports included, though the template's group was
    charged for the pages it still shares with the template: the watchdog's count adds them (as long as they are
    shared), and the kernel's hard limit is lowered by the template's anonymous memory (pages the jail rewrites
    are then counted twice by the kernel: at most the template's own size, which the limit's margin covers)."""
    group.shared_elsewhere = child.shared_with_template
    if group.memory_limit is not None:
        whole = group.memory_limit
        group.limit(max(whole - child.template.anonymous, whole // 2), group.cpu_cores, group.pids_max)
        group.memory_limit = whole  # as the jail's notes say: its total


def run(jail, argv: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run ``argv`` in a forked jail to its end, its output captured (the self-test)."""
    null_r = os.open(os.devnull, os.O_RDONLY)
    null_w = os.open(os.devnull, os.O_WRONLY)
    try:
        child = start(jail, argv, env, 512, null_w, null_r)
    finally:
        os.close(null_r)
        os.close(null_w)
    child.stdin.close()
    out = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(argv, timeout)
            if select.select([child.stdout], [], [], 0.1)[0]:
                chunk = child.stdout.read1(65536)
                if not chunk:
                    break
                out.append(chunk)
        child.wait(timeout=max(deadline - time.monotonic(), 1))
        return subprocess.CompletedProcess(argv, child.returncode, b"".join(out).decode("utf-8", "replace"), "")
    finally:
        child.stdout.close()
        if jail.group is not None:
            jail.group.kill()
        child.release()


def is_outer(pid: int) -> bool:
    return pid in _OUTERS


def runtime_pid(outer: int) -> int | None:
    """The runtime of a forked jail: the child of its PID 1, the child of its outer process."""
    import psutil

    try:
        (init,) = psutil.Process(outer).children()
        kids = init.children()
        return min(kids, key=lambda k: k.create_time()).pid if kids else None
    except (psutil.Error, ValueError):
        return None


def close_all() -> None:
    with _LOCK:
        found = list(_TEMPLATES.values())
        _TEMPLATES.clear()
    for template in found:
        template.close()


def _forget_after_fork() -> None:
    """A forked worker of the grader gets templates of its own: the parent's sockets are closed in it, so that
    the parent's templates still end when the parent does."""
    global _LOCK
    _LOCK = threading.Lock()
    for template in _TEMPLATES.values():
        try:
            template.control.close()
        except OSError:
            pass
    _TEMPLATES.clear()
    _OUTERS.clear()


_REGISTERED: list[int] = []  # the pid that registered _close_at_exit


def _close_at_exit() -> None:
    """Close the templates when this process exits, also as a worker of a process pool (whose exit skips atexit):
    the template's jails end with it, and its CPU time is counted to this process.  Registered with the first
    template of each process (a pool worker clears what it inherited when it starts)."""
    if _REGISTERED == [os.getpid()]:
        return
    import atexit
    from multiprocessing import util

    _REGISTERED[:] = [os.getpid()]
    atexit.register(close_all)
    util.Finalize(None, close_all, exitpriority=90)


os.register_at_fork(after_in_child=_forget_after_fork)
