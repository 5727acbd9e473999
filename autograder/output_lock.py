"""One ``grade`` run per output folder at a time.

Two runs on the same folder would each grade everything (consistent results, twice the work) and
rewrite each other's reports and log.  A run therefore holds ``OUT/.grade.lock`` with ``flock`` for as
long as it works in the folder, and writes into it who it is (pid, host, command, since when).  A
second run either refuses, saying who holds the folder (:class:`OutputFolderBusy`), or, asked to wait
(``grade --wait``), waits until the holder is done and then grades what is left.

The kernel releases a ``flock`` when its holder dies, whatever kills it: a lock left by a killed run is
simply free, and the next run takes it and writes its own description over the stale one.  The lock
belongs to the open file, which forked children share: the batch's worker processes close their copy
(:func:`close_inherited`), so a worker that outlives a killed run does not keep the folder locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

LOCK_NAME = ".grade.lock"
MAX_DESCRIPTION_BYTES = 4096  # what is read of a holder's description (the file is in a private folder)
MAX_COMMAND_CHARS = 500

_HELD: dict[str, tuple[int, int, tuple[int, int]]] = {}  # realpath of OUT -> (fd, depth, (st_dev, st_ino))
_LOCK = threading.Lock()


class OutputFolderBusy(RuntimeError):
    """Another run holds the output folder (refused without ``wait``); ``holder`` describes it."""

    def __init__(self, out: Path, holder: dict | None):
        self.out, self.holder = out, holder
        super().__init__(f"{out} is being graded by another run ({describe(holder)}). Nothing was graded or "
                         "written. Wait for it to finish, or run again with --wait to grade what is left once "
                         "it is done (what it graded is not graded again).")


def lock_path(out: Path) -> Path:
    return Path(out) / LOCK_NAME


def describe(holder: dict | None) -> str:
    """The holder of a lock, for people: ``pid 123 on host h, since 2025-01-01 10:00:00+00:00, command `...```."""
    if not holder:
        return "its description is not written yet"
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("user"):
        parts.append(f"user {holder['user']}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    if holder.get("command"):
        parts.append(f"command `{holder['command']}`")
    return ", ".join(str(p) for p in parts)


def read_holder(out: Path) -> dict | None:
    """What the lock file says about its holder (never through a link; at most a few KB); None if unreadable."""
    try:
        fd = os.open(lock_path(out), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        raw = os.read(fd, MAX_DESCRIPTION_BYTES)
    finally:
        os.close(fd)
    try:
        found = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    return {k: str(v)[:MAX_COMMAND_CHARS] for k, v in found.items() if k in ("pid", "host", "user", "since", "command")}


def _me() -> dict:
    try:
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        user = str(os.geteuid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "user": user,
            "since": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv])[:MAX_COMMAND_CHARS]}


@contextmanager
def hold(out: Path, *, wait: bool = False, on_wait=None):
    """Hold the output folder ``out`` (created, private) for the block.  Held already by this process (the
    command line holds it around ``run_batch``, which holds it too): nothing more.  Held by another run:
    :class:`OutputFolderBusy`, or with ``wait``, ``on_wait(holder)`` is called once and the call blocks
    until the folder is free."""
    from autograder.lms.submissions import private_dir

    private_dir(Path(out))
    key = os.path.realpath(out)
    with _LOCK:
        if key in _HELD:
            fd, depth, ident = _HELD[key]
            _HELD[key] = (fd, depth + 1, ident)
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _LOCK:
                fd, depth, ident = _HELD[key]
                _HELD[key] = (fd, depth - 1, ident)
        return
    fd = _take(Path(out), wait, on_wait)
    try:
        os.ftruncate(fd, 0)  # the previous holder's description (a killed run's, say) is replaced whole
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        os.fsync(fd)
        st = os.fstat(fd)
        with _LOCK:
            _HELD[key] = (fd, 1, (st.st_dev, st.st_ino))
        try:
            yield
        finally:
            with _LOCK:
                _HELD.pop(key, None)
            try:
                os.ftruncate(fd, 0)  # a finished run leaves no description that could be mistaken for a holder
            except OSError:
                pass
    finally:
        os.close(fd)  # releases the lock


def _take(out: Path, wait: bool, on_wait) -> int:
    """The lock file's descriptor, locked.  The lock counts only on the file that is at its path when it is
    taken (one removed or replaced meanwhile, by hand, is let go and the new one taken)."""
    told = False
    while True:
        fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(out)
                if not wait:
                    raise OutputFolderBusy(out, holder) from None
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel hands it over when the holder ends, however it ends
            st = os.fstat(fd)
            try:
                now = os.stat(lock_path(out), follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def close_inherited() -> None:
    """In a forked worker: close its copies of the parent's lock files, so that only the run itself holds
    them (a worker that outlives a killed run must not keep its folder locked).  A descriptor is closed only
    if it is still the lock file (a process started another way has other files under those numbers)."""
    for fd, _, ident in list(_HELD.values()):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            os.close(fd)
    _HELD.clear()


def wait_message(out: Path, holder: dict | None) -> str:
    return f"waiting: {out} is being graded by another run ({describe(holder)}); this run starts once it ends"
