"""Jail: where, and as whom, one untrusted probe runs; and a start-up self-test that proves it.

Modes (chosen once per process; ``CNN_GRADER_ISOLATION`` = ``auto`` (default), ``bwrap``,
``permissions`` or ``none``):

* ``bwrap``: a bubblewrap jail with its own mount, PID, IPC, UTS and network namespaces.
  Only ``/usr``, a few files of ``/etc`` and the Python trees the interpreter needs are
  mounted, read-only; the grader's package, caches, inputs and outputs are masked with an
  empty tmpfs wherever they lie inside a mounted tree.  ``/tmp`` is a private tmpfs and the
  working folder holds only what the grader copied in.  As root, the probe then drops to a
  slot uid of its own (``setpriv``); as another user, bwrap maps it into a user namespace.
* ``permissions`` (root without namespaces): the probe runs under a slot uid of its own in a
  private 0700 folder filled by root before it is handed over; it sees the real file system,
  so the self-test checks that nothing of the grader is readable to other users.
* ``none``: the probe runs as the grader; results say "not isolated".  Used only when asked
  for, or with ``--unsafe-no-isolation`` (``CNN_GRADER_UNSAFE_NO_ISOLATION=1``) where no
  jail is possible; otherwise a grader without any jail refuses to grade (grader error).

Slot uids (``SLOT_UID_BASE`` + n) are leased with ``flock`` on files in a root-only folder, so
concurrent sandboxes, even in separate worker processes, never share a uid.

As root, every jail (any mode) also gets a control group of its own (:mod:`autograder.metering.cgroup`, v1 or
v2): memory including kernel memory, a CPU quota and equal weight, ``pids.max``; its processes join it
before they run anything, and it is killed and removed with the jail.  Where none can be made, the
isolation notes and the self-test say "no cgroup".  A permission jail's slot uid also loses its System V
IPC objects and POSIX message queues when its lease is taken and released.

Everything a jail can write is one tmpfs capped in bytes and files (:mod:`autograder.probe.disk`), and every
jail runs under a seccomp filter that denies the kernel's key system calls, whose keyrings outlive a jail in
its uid (:mod:`autograder.probe.seccomp`).  A passed ``bwrap`` self-test is kept per host and version
(:mod:`autograder.probe.self_test_cache`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from autograder import children, settings
from autograder.metering import cgroup
from autograder.metering.processes import SYSVIPC, still_running, uid_ipc, uid_processes  # noqa: F401
from autograder.probe import disk, forkserver, seccomp
from autograder.probe.jail_basics import STARTUP_SECONDS, WORK_INSIDE, JailError  # noqa: F401 (named here too)

ENV_MODE = settings.ISOLATION.name
ENV_UNSAFE = settings.UNSAFE_NO_ISOLATION.name  # "1": where no jail is possible, grade unjailed (--unsafe-no-isolation)
ENV_PRIVATE = settings.PRIVATE_PATHS.name  # os.pathsep-separated: outputs and inputs of a batch
MODES = ("auto", "bwrap", "permissions", "none")
SLOT_UID_BASE = 60001
SLOT_COUNT = 512
SLOT_DIR = Path("/run/cnn-grader-slots")
# /etc/fonts: Matplotlib (imported with Keras) asks fontconfig for the fonts; without its configuration every
# probe printed "Fontconfig error: Cannot load default config file" into the student's output
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives",
             "/etc/fonts")
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the grader package (autograder/)
PROBE_PYTHON: str | None = None  # the interpreter submissions run under (None: the grader's own)


def probe_python() -> str:
    return PROBE_PYTHON or sys.executable


def requested_mode() -> str:
    mode = settings.current().isolation
    if mode not in MODES:
        raise JailError(f"{ENV_MODE}={mode!r} is not one of {', '.join(MODES)}")
    return mode


def _is_root() -> bool:
    return os.geteuid() == 0


_BWRAP_OK: dict[bool, bool] = {}


def bwrap_works() -> bool:
    """Whether bubblewrap can create the namespaces we need here (cached)."""
    root = _is_root()
    if root not in _BWRAP_OK:
        ok = False
        if shutil.which("bwrap"):
            cmd = ["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--unshare-ipc",
                   "--unshare-uts", *([] if root else ["--unshare-user"]), "--die-with-parent", "true"]
            try:
                ok = children.run(cmd, capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        _BWRAP_OK[root] = ok
    return _BWRAP_OK[root]


def choose_mode() -> str:
    """The isolation mode for this process, or :class:`JailError` saying why there is none."""
    mode = requested_mode()
    if mode == "none":
        return "none"
    if mode in ("auto", "bwrap") and bwrap_works():
        if not _is_root() or shutil.which("setpriv"):
            return "bwrap"
    if mode == "bwrap":
        raise JailError("bubblewrap was asked for but cannot create namespaces here "
                        f"(bwrap {'missing' if not shutil.which('bwrap') else 'refused'}). Fix: install it "
                        "(apt-get install bubblewrap) and allow user namespaces, or use "
                        f"{ENV_MODE}=permissions as root.")
    if _is_root() and shutil.which("setpriv"):
        return "permissions"
    if mode == "auto" and settings.current().unsafe_no_isolation:
        return "none"
    if mode == "permissions":
        raise JailError("the permission jail needs the grader to run as root (to hand each sandbox its own uid) "
                        "and setpriv (util-linux).")
    raise JailError("no isolation is available: this grader is not root and cannot create user namespaces, "
                    "so a submission would run as the grader's own user and could read or rewrite its files. "
                    "Fix: install bubblewrap and enable unprivileged user namespaces "
                    "(sysctl kernel.unprivileged_userns_clone=1), or grade as root; "
                    "--unsafe-no-isolation grades anyway and marks every result as not isolated.")


def assignment_dirs() -> list[Path]:
    """Where the ``assignments`` package (every assignment's answer key) lives, found without importing
    any assignment: wherever it is installed (site-packages, ``lib/``), it is masked like the grader."""
    import importlib.util

    try:
        found = importlib.util.find_spec("assignments")
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (found.submodule_search_locations or [])] if found else []


def private_paths(extra=(), *, registered: bool = True) -> list[Path]:
    """What a submission must never see: the grader, its caches, inputs and outputs (``registered``: with
    the folders a batch registered, :func:`add_private_paths`; else the grader's own alone)."""
    from autograder.data import cache_dir

    paths = [PACKAGE_DIR, *assignment_dirs(), cache_dir(), Path.home() / ".cache" / "cnn-grader", Path.home() / ".keras"]
    if (PACKAGE_DIR.parent / "pyproject.toml").is_file():  # an editable install: the whole repository
        paths.append(PACKAGE_DIR.parent)
    if registered:
        paths += [Path(p) for p in settings.current().private_paths]
    paths += [Path(p) for p in extra]
    out: list[Path] = []
    for p in paths:
        try:
            p = Path(os.path.realpath(p))
        except OSError:
            continue
        if p not in out and str(p) != "/":
            out.append(p)
    return out


def add_private_paths(paths) -> None:
    """Register folders (a batch's inputs and outputs) for every jail of this process and its workers."""
    current = list(settings.current().private_paths)
    for p in paths:
        p = os.path.realpath(p)
        if p not in current:
            current.append(p)
    settings.PRIVATE_PATHS.set(os.pathsep.join(current))


# --- slot uids --------------------------------------------------------------------------------

def _slot_dir() -> Path:
    SLOT_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(SLOT_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        raise JailError(f"{SLOT_DIR} must be a root-owned folder of mode 0700 (it holds the sandbox uid leases)")
    return SLOT_DIR


_RETIRED: list[int] = []  # lease locks kept for good: their uid had a process no kill could end


class SlotLease:
    """An unprivileged uid that no other sandbox on this machine holds while we hold the lock."""

    def __init__(self, clean_shared: bool = False) -> None:
        self.clean_shared = clean_shared  # a permission jail's uid can write to the host's shared folders
        folder = _slot_dir()
        for n in range(SLOT_COUNT):
            fd = os.open(folder / f"{n}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.fd, self.uid = fd, SLOT_UID_BASE + n
            try:
                self._clean()  # nothing a previous holder left behind may survive into this sandbox
            except Exception:  # noqa: BLE001
                _RETIRED.append(fd)  # never leased again by this process; the next slot is tried
                continue
            return
        raise JailError(f"all {SLOT_COUNT} sandbox uids are in use or retired")

    def release(self) -> None:
        try:
            self._clean()
        except BaseException as exc:  # fail closed: the uid is not leased again while something of it may live
            _RETIRED.append(self.fd)
            print(f"warning: the clean-up of sandbox uid {self.uid} failed ({exc}); the uid is retired", file=sys.stderr)
            if not isinstance(exc, Exception):
                raise
            return
        os.close(self.fd)

    def _clean(self) -> None:
        _kill_uid(self.uid)
        if self.clean_shared:
            remove_uid_files(self.uid)
            left = remove_uid_ipc(self.uid)
            if left:
                raise JailError(f"IPC objects of sandbox uid {self.uid} could not be removed: {', '.join(left[:5])}")
            if remove_uid_mqueues(self.uid) is False:
                raise JailError(f"POSIX message queues of sandbox uid {self.uid} could not be removed")


SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")  # world-writable folders of the host
IPC_RMID = 0


def remove_uid_ipc(uid: int) -> list[str]:
    """Remove every System V IPC object ``uid`` owns or created (``IPC_RMID``: a shared-memory segment
    still attached goes once its last user detaches; the uid's processes are killed first).  POSIX
    message queues: :func:`remove_uid_mqueues`.  Returns what is left."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    remove = {"shm": lambda i: libc.shmctl(i, IPC_RMID, None), "sem": lambda i: libc.semctl(i, 0, IPC_RMID),
              "msg": lambda i: libc.msgctl(i, IPC_RMID, None)}
    for obj in uid_ipc(uid):
        remove[obj["kind"]](obj["id"])
    return [f"{o['kind']} {o['id']}" for o in uid_ipc(uid) if not o["removed"]]


MQUEUES_LEFT = 3  # the exit status of remove_uid_mqueues's helper when a queue of the uid could not be removed


def remove_uid_mqueues(uid: int) -> bool | None:
    """Remove every POSIX message queue ``uid`` owns.  They live in the IPC namespace, not on a disk: where no
    ``mqueue`` file system is mounted on ``/dev/mqueue`` (:func:`remove_uid_files` cleans it where one is), a
    queue a permission jail made (``mq_open``) outlived it, readable by the next sandbox of that uid.  A forked
    helper mounts the namespace's queues in a mount namespace of its own, where nobody else sees the mount,
    and removes the uid's.  True: none is left; False: one could not be removed; None: the queues could not
    be looked at here (no mount namespace: a root grader without ``CAP_SYS_ADMIN``)."""
    import ctypes

    if os.path.ismount("/dev/mqueue") or not disk.can_unshare_mounts():
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def helper() -> None:
        if libc.unshare(disk.CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, disk.MS_REC | disk.MS_PRIVATE,
                                                             None) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        if libc.mount(b"mqueue", b"/tmp", b"mqueue", disk.MS_NOSUID | disk.MS_NODEV, None) != 0:
            raise OSError(ctypes.get_errno(), "mount mqueue")  # over /tmp, in this helper's namespace alone
        left = False
        for name in os.listdir("/tmp"):
            try:
                if os.lstat(f"/tmp/{name}").st_uid != uid:
                    continue
            except OSError:
                continue  # gone meanwhile
            try:
                os.unlink(f"/tmp/{name}")
            except OSError:
                left = True
        if left:
            os._exit(MQUEUES_LEFT)

    status = children.run_forked(helper)
    return True if status == 0 else False if status == MQUEUES_LEFT else None


def remove_uid_files(uid: int, folders=SHARED_WRITABLE) -> None:
    """Delete what ``uid`` owns in the host's world-writable folders (``find -xdev -uid U -delete``:
    links are removed, never followed), so nothing outlives a sandbox or reaches the next one."""
    for folder in folders:
        if os.path.isdir(folder) and not os.path.islink(folder):
            try:
                children.run(["find", folder, "-xdev", "-mindepth", "1", "-uid", str(uid), "-delete"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                pass


def killer_uid(uid: int) -> int:
    """The uid the clean-up helper of slot uid ``uid`` takes as its real and saved uid (see _kill_uid):
    one per slot, outside the slot range, so that no two helpers may signal each other either."""
    return uid + SLOT_COUNT


def _kill_uid(uid: int, passes: int = 20) -> None:
    """Kill every process of ``uid``; raises :class:`JailError` if one survives.

    A forked helper (no program: its ids survive) takes real and saved uid ``killer_uid(uid)`` and effective
    uid ``uid``, and sends ``kill(SIGKILL, -1)``: the kernel signals every process of ``uid`` in one pass
    that no fork slips through (a forking process with the kill pending makes no child), while no
    process of ``uid`` may signal the helper (none has its real or saved uid), so a process that kills
    everything of its uid in a loop cannot stop it.  Then every survivor the listing finds is killed
    by pid, zombie-looking ones too (:func:`still_running`), until none is left."""
    import psutil

    def kill_all_of_uid() -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(killer_uid(uid), uid, killer_uid(uid))
        try:
            os.kill(-1, 9)
        except ProcessLookupError:
            pass

    for _ in range(passes):
        if _is_root():  # first, always: a listing can miss a process that keeps changing its pid
            try:
                children.run_forked(kill_all_of_uid)
            except OSError:  # no process to be had (e.g. a pid limit filled): the kill by pid below
                pass
        victims = uid_processes(uid)
        if not any(still_running(p) for p in victims):
            psutil.wait_procs(victims, timeout=0)  # reaps those that are our children
            return
        for p in victims:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=0.5)
    raise JailError(f"processes of sandbox uid {uid} survived {passes} rounds of killing")


# --- the jail ---------------------------------------------------------------------------------

_TREES: dict[str, list[str]] = {}


def python_trees(python: str, private: list[Path]) -> list[str]:
    """Folders the probe's interpreter needs (its prefixes and ``sys.path`` as it sees it with -I),
    less any private folder (a legacy editable install puts the repository on ``sys.path``)."""
    if python not in _TREES:
        code = "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]))"
        try:
            listed = json.loads(children.run([python, "-I", "-c", code], capture_output=True, text=True,
                                             timeout=60, check=True).stdout)
        except Exception:
            listed = [sys.prefix, sys.base_prefix, sys.exec_prefix]
        listed.append(os.path.dirname(python))
        trees: list[str] = []
        for p in listed:
            if not p or not os.path.exists(p):
                continue
            for candidate in {os.path.abspath(p), os.path.realpath(p)}:
                if os.path.isfile(candidate):  # a zip on sys.path
                    candidate = os.path.dirname(candidate)
                if candidate != "/" and not _under(candidate, ["/usr"]):
                    trees.append(candidate)
        trees = sorted(set(trees), key=len)
        _TREES[python] = trees
    hidden = [str(p) for p in private]
    trees = [t for t in _TREES[python] if t not in hidden]
    return [t for i, t in enumerate(trees) if not _under(t, trees[:i])]


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@dataclass
class Jail:
    mode: str
    work: Path  # the private working folder, as the grader sees it
    uid: int | None = None  # the slot uid (root graders)
    private: list[Path] = field(default_factory=list)
    python: str = field(default_factory=probe_python)
    disk_mb: int = disk.DISK_MB  # what the submission may write, working folder and /tmp together: MB...
    disk_files: int = disk.DISK_FILES  # ...and files
    disk_how: str | None = None  # "tmpfs": ours, mounted on `work`; "bwrap": bubblewrap's (bytes only); None: none
    disk_missing: str | None = None  # why the total is not (fully) capped
    exposed: tuple | None = None  # view() when the sandbox's command was built
    group: "cgroup.Group | None" = None  # the kernel-metered control group its processes join (root graders)
    group_missing: str | None = None  # why it has none

    @property
    def inside(self) -> str:
        """The working folder as the probe sees it."""
        return WORK_INSIDE if self.mode == "bwrap" else str(self.work)

    def put(self, name: str, data: bytes, mode: int = 0o444) -> str:
        """Create a new file in the (still root-only) working folder; never follows a link."""
        dfd = os.open(self.work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        finally:
            os.close(dfd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        return f"{self.inside}/{name}"

    def copy_in(self, name: str, source: str | os.PathLike) -> str:
        """A read-only copy (never a link to the grader's file)."""
        dfd = os.open(self.work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        finally:
            os.close(dfd)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            os.fchmod(out.fileno(), 0o444)
        return f"{self.inside}/{name}"

    def hand_over(self) -> None:
        """Give the filled folder to the sandbox's uid (root graders); nothing is written into it after.  Its
        ``tmp`` (the jail's /tmp) is made first, and a tmpfs of ours is capped: what it holds now (the files the
        notebook must see) plus the submission's allowance."""
        if self.mode == "permissions" or self.disk_how == "tmpfs":
            os.mkdir(self.work / "tmp", 0o700)
        if self.uid is not None:
            if self.mode == "permissions" or self.disk_how == "tmpfs":
                os.chown(self.work / "tmp", self.uid, self.uid, follow_symlinks=False)
            os.chown(self.work, self.uid, self.uid, follow_symlinks=False)
        os.chmod(self.work, 0o700, follow_symlinks=False)
        if self.disk_how == "tmpfs":
            disk.cap(self.work, self.disk_mb * 2**20, self.disk_files)

    def disk_full(self, pid: int | None = None) -> bool:
        """Whether the jail's disk has no room left for a page or a file (``pid``: a process inside the jail,
        through whose root bubblewrap's own tmpfs is seen); False where it cannot be read."""
        where = (self.work if self.disk_how == "tmpfs" else
                 f"/proc/{pid}/root{WORK_INSIDE}" if self.disk_how == "bwrap" and pid else None)
        try:
            return where is not None and disk.full(where)
        except OSError:
            return False

    @property
    def disk_limit(self) -> str:
        """The limit as ``limits_hit`` names it."""
        return (f"disk limit ({self.disk_mb} MB / {self.disk_files} files)" if self.disk_how == "tmpfs"
                else f"disk limit ({self.disk_mb} MB)")

    @property
    def disk_note(self) -> str:
        """What caps this jail's writing, for its isolation notes."""
        places = "working folder and /tmp" if self.mode == "bwrap" else (
            ", ".join(["working folder", *disk.shared_targets()]) if self.private_shared() else "working folder")
        if self.disk_how == "tmpfs":
            note = (f"disk: {self.disk_mb} MB and {self.disk_files} files in all ({places}: one tmpfs, in RAM, "
                    "charged to the jail's memory)")
            if self.mode == "permissions" and not self.private_shared():
                note += ("; the host's /tmp, /var/tmp, /dev/shm and /run/lock stay writable by the sandbox uid, "
                         "not capped (no mount namespace can be made here)")
            elif self.mode == "permissions" and not disk.can_make_host_read_only():
                note += f"; {disk.READ_ONLY_NOTE}"
            return note
        if self.disk_how == "bwrap":
            return (f"disk: {self.disk_mb} MB in all ({places}: one tmpfs); no file-count limit "
                    f"({self.disk_missing or 'bubblewrap cannot set one'})")
        return f"{disk.NO_DISK_NOTE}: {self.disk_missing or 'no tmpfs could be mounted'}"

    def private_shared(self) -> bool:
        """Whether a permission jail's processes see its tmpfs in place of the host's world-writable folders."""
        return self.mode == "permissions" and self.disk_how == "tmpfs" and disk.can_unshare_mounts()

    def env(self, extra: dict | None = None) -> dict:
        """The environment of a process in this jail: quiet libraries (see :func:`quiet_env`), then ``extra``."""
        env = {"PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin:/bin", "HOME": self.inside,
               "LANG": "C.UTF-8", "USER": "student", "LOGNAME": "student",
               "TMPDIR": "/tmp" if self.mode == "bwrap" else f"{self.work}/tmp", **quiet_env(self.inside)}
        env.update(extra or {})
        return env

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` (starting with the interpreter) wrapped so that it runs inside the jail."""
        drop = []
        if self.uid is not None:
            drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--no-new-privs"]
        if self.mode == "bwrap":
            return [*self._bwrap(), *drop, *argv]
        if self.mode == "permissions":
            return [*drop, "--pdeathsig", "KILL", *argv]
        return list(argv)

    def _bwrap(self) -> list[str]:
        a = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
             "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
        if not _is_root():
            a.append("--unshare-user")
        a += ["--ro-bind", "/usr", "/usr"]
        for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(name):
                a += ["--symlink", os.readlink(name), name]
            elif os.path.isdir(name):
                a += ["--ro-bind", name, name]
        a += ["--perms", "0755", "--dir", "/etc"]
        for f in ETC_FILES:
            if os.path.exists(f):
                a += ["--ro-bind", f, f]
        self.exposed = self.view()
        a += ["--proc", "/proc", "--dev", "/dev", *self._bwrap_writable()]
        made = {"/", "/usr", "/etc", "/tmp", WORK_INSIDE}  # /tmp first: an environment may live under it
        trees = list(self.exposed[0])
        for tree in trees:
            parts = Path(tree).parents
            for parent in reversed(list(parts)):
                p = str(parent)
                if p not in made and not _under(p, trees):
                    a += ["--perms", "0755", "--dir", p]
                    made.add(p)
            a += ["--ro-bind", tree, tree]
        for p in self.exposed[1]:  # masked wherever a mounted tree contains it
            a += (["--perms", "0000", "--tmpfs", p] if os.path.isdir(p) else ["--ro-bind", "/dev/null", p])
        a += ["--chdir", WORK_INSIDE]
        return a

    def _bwrap_writable(self) -> list[str]:
        """The working folder and /tmp, one tmpfs for both: ours, mounted on the working folder (its ``tmp``
        bound on /tmp), or bubblewrap's own, capped in bytes, with the grader's (read-only) files mounted into it
        and /tmp a link to its ``tmp``."""
        if self.disk_how == "tmpfs":
            return ["--bind", str(self.work), WORK_INSIDE, "--bind", str(self.work / "tmp"), "/tmp"]
        a = ["--size", str(self.disk_mb * 2**20), "--perms", "0700", "--tmpfs", WORK_INSIDE]
        for entry in sorted(os.listdir(self.work)):
            a += ["--ro-bind", str(self.work / entry), f"{WORK_INSIDE}/{entry}"]
        return a + ["--perms", "0700", "--dir", f"{WORK_INSIDE}/tmp", "--symlink", f"{WORK_INSIDE}/tmp", "/tmp"]

    def masked(self) -> list[str]:
        """The private paths this jail hides (bwrap: those inside a mounted tree; what we cannot even stat,
        the sandbox cannot read); none in the other modes, where permissions keep them out of reach."""
        if self.mode != "bwrap":
            return []
        trees = python_trees(self.python, self.private)
        return [str(p) for p in self.private if _under(str(p), trees) and os.path.exists(p)]

    def view(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What the sandbox can see of the host, besides /usr and its own folder: (mounted trees, masked paths)."""
        if self.mode != "bwrap":
            return (), ()
        return tuple(python_trees(self.python, self.private)), tuple(self.masked())

    def hides_as_much_as(self, private) -> bool:
        """Whether this (already opened) jail hides everything a fresh jail for ``private`` would hide:
        the same trees mounted, and every path that jail would mask masked here too (or below a masked folder).
        A warm jail opened before its submission was known serves it only if so."""
        if self.mode != "bwrap":
            return True
        fresh = Jail(self.mode, self.work, self.uid, private_paths(private), self.python, self.disk_mb, self.disk_files,
                     self.disk_how)
        trees, masked = self.exposed if self.exposed is not None else self.view()  # as its command was built
        fresh_trees, fresh_masked = fresh.view()
        return trees == fresh_trees and all(
            any(m == w or (os.path.isdir(w) and _under(m, [w])) for w in masked) for m in fresh_masked)

    @property
    def description(self) -> dict:
        notes = {
            "bwrap": ["bubblewrap jail: own mount, PID, IPC, UTS and network namespaces; only the Python runtime "
                      "mounted, read-only; private /tmp and working folder",
                      f"runs as sandbox uid {self.uid}" if self.uid is not None else "runs in a user namespace"],
            "permissions": [f"permission jail: sandbox uid {self.uid}, private 0700 folder; no namespaces here "
                            "(processes visible, network not cut off)"],
            "none": ["not isolated (--unsafe-no-isolation): the submission ran as the grader's own user"],
        }[self.mode]
        notes.append(self.metering)
        notes.append(self.disk_note)
        if self.mode != "none":
            notes.append(seccomp.FILTERED_NOTE if seccomp.supported() else seccomp.NOT_FILTERED_NOTE)
        return {"mode": self.mode, "isolated": self.mode != "none", "uid": self.uid, "notes": notes,
                "cgroup": self.group.version if self.group else None, "metering": self.metering,
                "disk": self.disk_note}

    @property
    def metering(self) -> str:
        """What the kernel meters of this jail, for its isolation notes."""
        if self.group is not None:
            return f"metered by the kernel ({self.group.description})"
        return f"{cgroup.NO_CGROUP_NOTE}: {self.group_missing or cgroup.unavailable() or 'none made'}"

    def preexec(self):
        """What a jailed child runs between fork and exec, before any student code: join the jail's group, and
        install the seccomp filter that denies key system calls (:mod:`autograder.probe.seccomp`), which every
        process of the jail inherits."""
        steps = [self.group.joiner()] if self.group is not None else []
        if self.private_shared():
            steps.append(disk.private_shared(self.work / "tmp"))
        if self.mode != "none" and seccomp.supported():
            steps.append(seccomp.installer(no_new_privs=not _is_root()))

        def run() -> None:
            for step in steps:
                step()

        return run


def quiet_env(home: str) -> dict[str, str]:
    """What keeps the libraries a notebook imports from printing the grader's own noise into the student's
    output: TensorFlow's, absl's and gRPC's logging at errors only (:data:`autograder.settings.QUIET_LOGGING_ENV`),
    Matplotlib's cache in the jail's writable home, and joblib in its serial mode (a jail has no shared-memory
    semaphores, which joblib otherwise tries, then warns "joblib will operate in serial mode")."""
    from autograder import settings

    return {**settings.QUIET_LOGGING_ENV, "MPLCONFIGDIR": f"{home}/.matplotlib", "XDG_CACHE_HOME": f"{home}/.cache",
            "JOBLIB_MULTIPROCESSING": "0"}


@contextmanager
def open_jail(private=(), *, python: str | None = None, disk_mb: int = disk.DISK_MB,
              disk_files: int = disk.DISK_FILES, memory_mb: int | None = None):
    """A fresh jail (folder, slot uid, control group) for one run; everything is removed when the block ends.
    The submission may write ``disk_mb`` MB and ``disk_files`` files in all (:mod:`autograder.probe.disk`)."""
    mode = choose_mode()
    lease = SlotLease(clean_shared=mode == "permissions") if _is_root() and mode != "none" else None
    work, disk_missing = disk.working_folder()  # 0700, ours, unpredictable name; a tmpfs of ours as root
    disk_how = "tmpfs" if disk_missing is None else "bwrap" if mode == "bwrap" else None
    group, missing = None, cgroup.unavailable()
    try:
        if missing is None:
            try:
                group = cgroup.create("jail", memory_bytes=cgroup.memory_ceiling(memory_mb) if memory_mb else None)
            except OSError as exc:  # made for the self-test, but not now: said in this result's notes
                missing = f"this jail's cgroup could not be made ({exc})"
        yield Jail(mode, work, lease.uid if lease else None, private_paths(private), python or probe_python(),
                   disk_mb, disk_files, disk_how, disk_missing, group=group, group_missing=missing)
    finally:
        if group is not None:
            group.kill()  # by group: nothing of the jail outlives it, whatever session it started
        if disk_how == "tmpfs":
            disk.unmount(work)  # its pages go (before its group does: they are charged to it)
        if group is not None:
            group.remove()
        shutil.rmtree(work, ignore_errors=True)  # fd-based: does not follow links planted inside
        if lease:
            lease.release()


# --- start-up self-test -----------------------------------------------------------------------

SELF_TEST = r'''
import json, os, socket, sys
with open(sys.argv[1]) as f:
    args = json.load(f)
out = {"uid": os.getuid(), "imports": {}}
for mod in args["imports"]:
    try:
        __import__(mod)
        out["imports"][mod] = None
    except BaseException as e:
        out["imports"][mod] = (type(e).__name__ + ": " + str(e))[:300]
out["grader"] = None
for key in args["answer_keys"]:  # a masked package folder may still import as an empty namespace package
    try:
        module = __import__(key, fromlist=["_"])
        out["grader"] = str(getattr(module, "__file__", key))
        break
    except BaseException:
        pass
out["readable"] = []
for p in args["secrets"]:
    try:
        if os.path.isdir(p):  # entries that only lead to the mounted Python trees do not count
            if [e for e in os.listdir(p) if not any((t + "/").startswith(os.path.join(p, e) + "/")
                                                     for t in args["trees"])]:
                out["readable"].append(p)
        else:
            with open(p, "rb") as f:
                if f.read(1):
                    out["readable"].append(p)
    except OSError:
        pass
import time
out["copies"] = []  # readable copies of the grader's secrets elsewhere on the disk (permission jail)
deadline = time.monotonic() + args.get("hunt_seconds", 0)
def secret(folder, name, names):
    if name == "autograder.zip":
        return True
    if name in ("reference.py", "checks.py"):  # an assignment package's answer key
        return "spec.py" in names
    if name in args["public_modules"]:  # a student-side check module beside hidden tests
        return "tests" in names
    return name.endswith(".ipynb") and os.path.basename(folder) in ("solution", "solutions")
for top in args.get("hunt", []):
    stack = [(top, 0)]
    while stack and time.monotonic() < deadline and len(out["copies"]) < 20:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        names = {e.name for e in entries}
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if depth < 7 and e.path not in args["skip"]:
                        stack.append((e.path, depth + 1))
                elif e.is_file(follow_symlinks=False) and secret(folder, e.name, names):
                    with open(e.path, "rb") as f:
                        if f.read(1):
                            out["copies"].append(e.path)
            except OSError:
                pass
st, here = os.statvfs("."), os.stat(".").st_dev
out["disk"] = {"bytes": st.f_blocks * st.f_frsize, "files": st.f_files,
               "apart": [p for p in args["writable"] if os.path.isdir(p) and os.stat(p).st_dev != here]}
out["keyring"] = None
if args["key_syscalls"]:  # a key added here would reach the next jail of this uid
    import ctypes
    add_key, _, keyctl = args["key_syscalls"]
    libc = ctypes.CDLL(None, use_errno=True)
    serial = libc.syscall(add_key, b"user", b"cnn-grader-self-test", b"x", 1, ctypes.c_int(-4))
    out["keyring"] = serial >= 0
    if serial >= 0:  # keyctl(KEYCTL_UNLINK, key, KEY_SPEC_USER_KEYRING): take it back
        libc.syscall(keyctl, 9, ctypes.c_int(serial), ctypes.c_int(-4))
try:
    os.kill(args["pid"], 0)
    out["signal"] = True
except OSError:
    out["signal"] = False
out["sees"] = False
for pid in os.listdir("/proc"):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            if args["marker"].encode() in f.read() and int(pid) != os.getpid():
                out["sees"] = True
    except (OSError, ValueError):
        pass
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("127.0.0.1", args["port"]))
    out["network"] = True
except OSError:
    out["network"] = False
print("@@SELFTEST@@" + json.dumps(out), flush=True)
'''

# Where a permission jail's self-test looks, as the sandbox uid, for other readable copies of the grader's
# secrets (an old checkout or build, a Gradescope source folder): a pragmatic, time-capped search.
HUNT_DIRS = ("/tmp", "/var/tmp", "/srv", "/home", "/opt", "/work", "/mnt", "/data", "/autograder")
HUNT_SECONDS = 20.0
_SELF_TESTS: dict[tuple, dict | str] = {}
_CHECKED: dict[tuple, set] = {}
NOTEBOOK_IMPORTS = ("numpy", "keras", "IPython", "otter")


def self_test(private=(), *, python: str | None = None) -> dict:
    """Prove the jail works before any submission runs in it.

    The full test (Python starts and imports what notebooks need; the grader, its zip, caches
    and outputs are out of reach; no other process can be seen or signalled; no network) runs
    once per process and setting, or, in ``bwrap`` mode, once per host and version: a passed one is
    kept (:mod:`autograder.probe.self_test_cache`) and served while nothing it depends on changes.
    Folders registered later (or not covered by a kept test) are checked by a light rerun.
    Returns the isolation description for results; raises :class:`JailError` naming the cause
    and the fix.  It has ``STARTUP_SECONDS`` of its own, never a submission's time."""
    from autograder.probe import self_test_cache

    python = python or probe_python()
    mode = choose_mode()
    key = (mode, python, os.geteuid(), _forking(mode))
    secrets = {str(p) for p in private_paths(private) if os.path.exists(p)}
    if key not in _SELF_TESTS:
        kept = None
        if mode == "bwrap":  # (a permission jail's test depends on every file of the host: never kept)
            base = private_paths(registered=False)  # a batch's own folders: proved by the light rerun below
            kept_key = kept_self_test_key(python)
            kept = self_test_cache.load(kept_key)
        if kept is not None:
            _SELF_TESTS[key] = kept
            _CHECKED[key] = {str(p) for p in base if os.path.exists(p)}
        else:
            try:
                _SELF_TESTS[key] = _run_self_test(private, python, NOTEBOOK_IMPORTS)
                _CHECKED[key] = secrets
                if mode == "bwrap":
                    self_test_cache.store(kept_key, _SELF_TESTS[key])
            except JailError as exc:
                _SELF_TESTS[key] = exc
    found = _SELF_TESTS[key]
    if isinstance(found, JailError):
        raise JailError(str(found), found.fault.cause)
    if not secrets <= _CHECKED[key]:
        _run_self_test(private, python, ())  # raises if a newly registered folder is reachable
        _CHECKED[key] |= secrets
    return dict(found)


def self_test_passed(*, python: str | None = None) -> bool:
    """Whether the full self-test has passed in this process (what may remain, for folders registered since,
    is a light rerun)."""
    try:
        mode = choose_mode()
        return isinstance(_SELF_TESTS.get((mode, python or probe_python(), os.geteuid(), _forking(mode))), dict)
    except JailError:
        return False


def kept_self_test_key(python: str | None = None) -> str:
    """The key a passed ``bwrap`` self-test of this grader is kept under (:mod:`autograder.probe.self_test_cache`)."""
    from autograder.probe import self_test_cache

    return self_test_cache.key(*kept_self_test_inputs(python))


def kept_self_test_inputs(python: str | None = None) -> tuple:
    """What :func:`kept_self_test_key` digests (``self_test_cache.key_parts(*these)`` shows it part by part)."""
    python = python or probe_python()
    private = private_paths(registered=False)
    return ("bwrap" + ("+forked" if _forking("bwrap") else ""), python, python_trees(python, private), private, *_secret_modules(), NOTEBOOK_IMPORTS)


def _forking(mode: str) -> bool:
    """Whether this process's jails of ``mode`` are meant to be forked from a template (then so is the self-test
    that proves them, kept apart from a fresh jail's)."""
    return mode == "bwrap" and _is_root() and forkserver.wanted() and not forkserver._BROKEN


def _secret_modules() -> tuple[list[str], list[str]]:
    """What must not import in a jail (every assignment's answer key), and the student-side check modules."""
    from autograder import registry

    specs = registry.all_assignments()
    return ([s.checks for s in specs] + [f"{s.package}.reference" for s in specs],
            sorted({s.public_module_name for s in specs}))


def _run_self_test(private, python: str, imports) -> dict:
    marker = f"cnn-grader-sentinel-{os.getpid()}-{time.monotonic_ns()}"
    sentinel = children.popen([sys.executable, "-c", "import time; time.sleep(3600)", marker],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    answer_keys, public_modules = _secret_modules()
    try:
        with open_jail(private, python=python) as jail:
            if jail.mode == "none":
                return jail.description
            secrets = [str(p) for p in jail.private if os.path.exists(p)]  # (False where we may not look)
            script = jail.put("self_test.py", SELF_TEST.encode())
            args = jail.put("self_test.json", json.dumps({  # a file: the marker must not be on any command line
                "secrets": secrets, "pid": sentinel.pid, "marker": marker, "imports": list(imports),
                "answer_keys": answer_keys, "public_modules": public_modules,
                "trees": python_trees(python, jail.private) if jail.mode == "bwrap" else [],
                "skip": python_trees(python, []),
                "port": listener.getsockname()[1],
                "hunt": [d for d in HUNT_DIRS if os.path.isdir(d)] if jail.mode == "permissions" else [],
                "hunt_seconds": HUNT_SECONDS,
                "key_syscalls": seccomp.key_syscall_numbers(),
                "writable": ["/tmp"] if jail.mode == "bwrap" else
                            disk.shared_targets() if jail.private_shared() else []}).encode())
            jail.hand_over()
            env = jail.env({"PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
            try:
                if forkserver.unavailable(jail) is None:  # the jails will be forked: so is their self-test
                    proc = forkserver.run(jail, [script, args], env, STARTUP_SECONDS)
                    return {**_judge_self_test(jail, python, proc), "started": "forked"}
                proc = children.run(jail.command([python, "-I", script, args]), cwd=jail.work, env=env,
                                    capture_output=True, text=True, timeout=STARTUP_SECONDS,
                                    preexec_fn=jail.preexec())
            except subprocess.TimeoutExpired:
                raise JailError(f"the jail's self-test did not finish within {STARTUP_SECONDS:.0f} s "
                                f"({jail.mode} mode); the machine may be overloaded", "timeout_infrastructure") from None
            return {**_judge_self_test(jail, python, proc), "started": "fresh"}
    finally:
        sentinel.kill()
        sentinel.wait()
        children.forget(sentinel)
        listener.close()


def _judge_self_test(jail: Jail, python: str, proc: subprocess.CompletedProcess) -> dict:
    mark = proc.stdout.rfind("@@SELFTEST@@")
    who = f"uid {jail.uid}" if jail.uid is not None else "the sandbox"
    if jail.mode == "permissions":  # the sandbox sees the real file system: is the environment reachable?
        for needed in [python, *python_trees(python, [])]:
            cause = unreachable(needed, jail.uid)
            if cause:
                raise JailError(f"the interpreter under {needed} is not reachable by {who}: {cause}. Fix: install the "
                                "grader's Python environment where other users can read it (e.g. a venv in /opt), "
                                "or install bubblewrap (apt-get install bubblewrap), which mounts it into the jail.",
                                "interpreter")
    if mark < 0:
        tail = (proc.stderr or proc.stdout)[-800:].strip()
        raise JailError(f"the jailed Python did not start ({jail.mode} mode, exit {proc.returncode}): {tail}",
                        "interpreter")
    found = json.loads(proc.stdout[mark + len("@@SELFTEST@@"):].splitlines()[0])
    broken = {m: e for m, e in found["imports"].items() if e}
    if broken:
        raise JailError(f"the jailed Python cannot import what notebooks need ({jail.mode} mode): "
                        + "; ".join(f"{m}: {e}" for m, e in broken.items())
                        + ". Fix: install numpy, keras, IPython and otter-grader into the grader's environment, "
                        "readable by other users.", "interpreter")
    problems = []
    if found["grader"]:
        problems.append(f"it can import the grader package ({found['grader']}): make that folder unreadable to "
                        "other users (chmod 0700) or use bubblewrap")
    if found["readable"]:
        problems.append(f"it can read {', '.join(found['readable'][:5])}: make these unreadable to other users "
                        "(chmod go-rwx) or use bubblewrap")
    if found.get("copies"):
        problems.append(f"it can read copies of the grader's files elsewhere: {', '.join(found['copies'][:5])}: "
                        "delete them or make them unreadable to other users (chmod go-rwx), or use bubblewrap")
    if found["signal"]:
        problems.append("it can signal the grader's processes (it runs as the grader's user)")
    problems += _disk_problems(jail, found["disk"])
    if found.get("keyring"):
        problems.append("it can add keys to its uid's keyring, which the next sandbox of that uid could read "
                        "(the seccomp filter did not hold)")
    if jail.mode == "bwrap" and found["sees"]:
        problems.append("it can see the grader's processes (no PID namespace)")
    if jail.mode == "bwrap" and found["network"]:
        problems.append("it can reach the network (no network namespace)")
    if jail.group is not None and not jail.group.cpu_seconds():
        problems.append(f"its cgroup ({jail.group.version}) did not meter it (no CPU time counted)")
    if problems:
        raise JailError(f"the jail does not hold ({jail.mode} mode, {who}): " + "; ".join(problems) + ".")
    description = jail.description
    description["uid"] = None  # per run; the probe fills in its own
    description["self_test"] = "passed"
    if jail.mode == "permissions":
        description["notes"] = [n for n in description["notes"]] + (
            ["the network is reachable from the sandbox"] if found["network"] else [])
    return description


SELF_TEST_DISK_SLACK = 16 * 2**20  # what the grader's own files and page rounding may add to a jail's disk


def _disk_problems(jail: Jail, found: dict) -> list[str]:
    """Whether the jail's working folder is capped as its notes say, and /tmp shares its total."""
    problems = []
    if jail.disk_how is not None and found["bytes"] > jail.disk_mb * 2**20 + SELF_TEST_DISK_SLACK:
        problems.append(f"its working folder is not capped at {jail.disk_mb} MB ({found['bytes'] >> 20} MB)")
    if jail.disk_how == "tmpfs" and found["files"] > jail.disk_files + 1000:
        problems.append(f"its working folder is not capped at {jail.disk_files} files ({found['files']})")
    if found["apart"]:
        problems.append(f"{', '.join(found['apart'])} is not on its capped disk")
    return problems


def unreachable(path: str, uid: int | None) -> str | None:
    """Why ``uid`` cannot reach ``path`` (a folder on the way it may not enter), or None."""
    if uid is None:
        return None
    for candidate in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
        p = Path(candidate)
        for folder in [*reversed(p.parents)]:
            try:
                st = os.stat(folder)
            except OSError:
                continue
            bit = stat.S_IXUSR if st.st_uid == uid else (stat.S_IXGRP if st.st_gid == uid else stat.S_IXOTH)
            if not st.st_mode & bit:
                return f"{folder} is mode {stat.S_IMODE(st.st_mode):04o} (owner uid {st.st_uid})"
    return None
