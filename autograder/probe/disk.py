"""A jail's disk: one tmpfs for everything it can write, capped in bytes and in files.

Without it a cell writes into its working folder on the host's disk (2,000 MB in 6.5 s; 300,000 empty
files) until the host, the grader and a classmate's jail have no space left.  As root the grader mounts a
tmpfs on the jail's working folder (:func:`mount`), copies in what the notebook must see, and caps it when
it hands the folder over (:func:`cap`): the bytes and files already there plus the submission's allowance
(``Limits.disk_mb``, ``Limits.disk_files``), so the grader's own files always fit.  The jail's ``/tmp`` is a
folder of the same tmpfs, so the working folder and ``/tmp`` share one total.  Its pages are memory: the
kernel charges those a submission writes to the memory group of its jail, so files count against the
memory limit too, and they are gone when the tmpfs is unmounted with the jail.

Where a mount is impossible (a non-root grader; a root grader without ``CAP_SYS_ADMIN``), bubblewrap's own
``--size`` tmpfs caps the bytes but not the files, and a permission jail without a mount has no total:
the jail's notes say so (:data:`NO_DISK_NOTE`).  A permission jail sees the host's world-writable folders
(``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``); where the grader can give a process a mount namespace
of its own, they are replaced, for the jail's processes only, by its tmpfs folder, and every other mount of
the host is read-only there, so that no folder anyone may write to (``/var/crash``, a spool folder) takes
what the cap refuses (:func:`private_shared`).

A grader killed with SIGKILL leaves its mounts behind: :func:`sweep` unmounts those of graders (named by
pid in the folder's name) that no longer run.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

PREFIX = "cnn-probe-"
JAILS_DIR = Path("/run/cnn-grader-jails")  # root's working folders (mount points): outside every SHARED_FOLDERS
DISK_MB = 1024  # a submission's default allowance (Limits.disk_mb): written files and folders, in MB...
DISK_FILES = 10_000  # ...and in files (Limits.disk_files: inodes, folders and links included)
NO_DISK_NOTE = "no disk limit: the total a submission writes is not capped"
MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
CLONE_NEWNS = 0x00020000
SHARED_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable on a host; /dev/mqueue is no tmpfs
FULL_BYTES = 1 << 20  # less than this free (or no file left) reads as full: the next write of a page fails

_libc = ctypes.CDLL(None, use_errno=True)
_UNSHARE_OK: dict[int, bool] = {}


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def folder_name() -> str:
    """The prefix of a jail's working folder: names the grader's pid, so that :func:`sweep` knows its mounts."""
    return f"{PREFIX}{os.getpid()}-"


def working_folder() -> tuple[Path, str | None]:
    """A fresh working folder (0700, ours, an unpredictable name) and why it is no tmpfs of ours, or None if it
    is one (mounted: root only).  A root grader's lie in :data:`JAILS_DIR` (0711: reachable, not listable), not
    in a host folder that a permission jail's own mount namespace replaces (:func:`private_shared`); the others
    in the temporary folder."""
    if os.geteuid() != 0:
        return Path(tempfile.mkdtemp(prefix=folder_name())), "a non-root grader cannot mount a tmpfs"
    _sweep_once()
    try:
        JAILS_DIR.mkdir(mode=0o711, exist_ok=True)
        st = os.lstat(JAILS_DIR)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o022:
            raise OSError(f"{JAILS_DIR} is not a folder that root alone may write to")
        work = Path(tempfile.mkdtemp(prefix=folder_name(), dir=JAILS_DIR))
    except OSError as exc:
        return Path(tempfile.mkdtemp(prefix=folder_name())), f"no folder for its mount ({exc})"
    try:
        mount(work)
    except OSError as exc:
        os.rmdir(work)
        return Path(tempfile.mkdtemp(prefix=folder_name())), f"no tmpfs can be mounted here ({exc.strerror or exc})"
    return work, None


_SWEPT: set[int] = set()


def _sweep_once() -> None:
    if os.getpid() not in _SWEPT:
        _SWEPT.add(os.getpid())
        sweep()


def mount(path: Path) -> None:
    """Mount a fresh tmpfs on ``path`` (root only; mode 0700, no set-uid files, no devices), uncapped until
    :func:`cap`.  Raises ``OSError`` where the grader may not mount."""
    _check(_libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0700"),
           f"mount tmpfs on {path}")


def usage(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """(bytes used, files used, bytes free, files free) of the file system at ``path``."""
    st = os.statvfs(path)
    return ((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree, st.f_bavail * st.f_frsize,
            st.f_favail)


def cap(path: Path, extra_bytes: int, extra_files: int) -> tuple[int, int]:
    """Cap the tmpfs at ``path`` to what it holds now plus ``extra_bytes`` and ``extra_files``; returns the caps."""
    used_bytes, used_files, _, _ = usage(path)
    page = os.sysconf("SC_PAGE_SIZE")
    size = -(-(used_bytes + extra_bytes) // page) * page
    files = used_files + extra_files
    _check(_libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV,
                       f"size={size},nr_inodes={files}".encode()), f"cap the tmpfs on {path}")
    return size, files


def full(path: str | os.PathLike) -> bool:
    """Whether the file system at ``path`` has no room for another page or file."""
    _, _, free_bytes, free_files = usage(path)
    return free_bytes < FULL_BYTES or free_files == 0


def unmount(path: Path) -> None:
    """Detach the tmpfs at ``path`` (its pages are freed once no process uses it); quiet if there is none."""
    _libc.umount2(os.fsencode(path), MNT_DETACH)


def is_mounted(path: Path) -> bool:
    return os.path.realpath(path) in _mounted_tmpfs()


def _mounted_tmpfs() -> set[str]:
    found = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 4 and right.split()[:1] == ["tmpfs"]:
                    found.add(fields[4].replace("\\040", " "))
    except OSError:
        pass
    return found


def sweep() -> None:
    """Unmount and remove the working folders a grader killed with SIGKILL left mounted: named for a pid that
    no longer runs (only this grader's own temporary folder is looked at)."""
    pattern = re.compile(re.escape(os.path.join(JAILS_DIR, PREFIX)) + r"(\d+)-[^/]+$")
    for point in _mounted_tmpfs():
        found = pattern.match(point)
        if not found or int(found.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(found.group(1)), 0)
            continue  # its grader runs
        except ProcessLookupError:
            pass
        except OSError:
            continue
        unmount(Path(point))
        shutil.rmtree(point, ignore_errors=True)


def can_unshare_mounts() -> bool:
    """Whether a child of this grader may take a mount namespace of its own (cached; tried in a forked helper)."""
    from autograder import children

    key = os.getpid()
    if key not in _UNSHARE_OK:
        def attempt() -> None:
            _check(_libc.unshare(CLONE_NEWNS), "unshare")
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")

        try:
            _UNSHARE_OK[key] = children.run_forked(attempt) == 0
        except OSError:
            _UNSHARE_OK[key] = False
    return _UNSHARE_OK[key]


def shared_targets() -> list[str]:
    """The host's folders of :data:`SHARED_FOLDERS` that everyone may write to (not links)."""
    found = []
    for d in SHARED_FOLDERS:
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002:
            found.append(d)
    return found


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


SYS_MOUNT_SETATTR = 442  # the same on every architecture (424 and later are shared); Linux 5.12
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1


def _mount_setattr(path: bytes, flags: int, attr_set: int = 0, attr_clr: int = 0) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path, ctypes.c_uint(flags),
                         ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr {path!r}")


_READ_ONLY_OK: dict[int, bool] = {}
READ_ONLY_NOTE = ("the rest of the host stays writable where its permissions allow (this kernel cannot make it "
                  "read-only for the jail: mount_setattr, Linux 5.12)")


def can_make_host_read_only() -> bool:
    """Whether a child of this grader may, in a mount namespace of its own, make every mount read-only
    (``mount_setattr``, Linux 5.12; a container's seccomp profile may deny it); cached, tried in a forked helper."""
    from autograder import children

    key = os.getpid()
    if key not in _READ_ONLY_OK:
        def attempt() -> None:
            _check(_libc.unshare(CLONE_NEWNS), "unshare")
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
            _mount_setattr(b"/", AT_RECURSIVE, attr_set=MOUNT_ATTR_RDONLY)

        try:
            _READ_ONLY_OK[key] = can_unshare_mounts() and children.run_forked(attempt) == 0
        except OSError:
            _READ_ONLY_OK[key] = False
    return _READ_ONLY_OK[key]


def private_shared(folder: Path):
    """A step for a jailed child between fork and exec (a permission jail's): a mount namespace of its own in
    which every mount of the host is read-only but the jail's tmpfs (``folder``'s parent, its working folder)
    and ``/proc``, and the host's world-writable folders (:data:`SHARED_FOLDERS`) are ``folder`` (its tmpfs's
    ``tmp``): everything the jail can write is on its capped tmpfs, also a folder anyone may write to that the
    list does not name (``/var/crash``, a spool folder).  Nothing changes for any other process.  Where the
    kernel cannot (:func:`can_make_host_read_only`), the rest of the host stays as its permissions make it."""
    source = os.fsencode(folder)
    own = os.fsencode(folder.parent)
    targets = [os.fsencode(d) for d in shared_targets()]
    read_only = can_make_host_read_only()
    proc = read_only and os.path.ismount("/proc")

    def enter() -> None:
        _check(_libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        if read_only:
            _mount_setattr(b"/", AT_RECURSIVE, attr_set=MOUNT_ATTR_RDONLY)  # every mount, in this namespace only
            _mount_setattr(own, 0, attr_clr=MOUNT_ATTR_RDONLY)  # the jail's own tmpfs stays writable
            if proc:  # a process's own /proc files (no disk), as before
                _mount_setattr(b"/proc", 0, attr_clr=MOUNT_ATTR_RDONLY)
        for target in targets:  # binds of a writable mount: writable
            _check(_libc.mount(source, target, None, MS_BIND, None), f"bind {folder} on {target!r}")

    return enter
