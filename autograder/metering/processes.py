"""Process-tree control: what a metered run started, what it holds in RAM outside its processes' RSS, and
killing all of it.

The grader becomes a subreaper (:func:`become_subreaper`) so that a run's orphans (double forks) re-parent to
it; :func:`kill_everything` then kills a run's child, its descendants and those orphans, sparing the grader's
own processes (:mod:`autograder.children`, the warm pool).  A sandbox's slot uid is leased to one run alone,
so every process of that uid (:func:`uid_processes`) and every System V IPC object it made (:func:`uid_ipc`) is
that run's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess

import psutil

from autograder import children, warm

SHARED_DIRS = ("/dev/shm",)  # RAM-backed folders outside the jail's own (size-capped) /tmp
SYSVIPC = {"shm": ("shmid", 0), "sem": ("semid", 1), "msg": ("msqid", 2)}  # /proc/sysvipc table: (id column, kind)


def become_subreaper() -> None:
    """Orphans of the submission (double forks) re-parent to us, so we can kill them all."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def uid_processes(uid: int | None) -> list:
    """Every process whose real, effective or saved uid is ``uid`` (none for ``None``): for a slot uid,
    exactly the sandbox's, orphans that left its process tree included, since the uid is leased to
    that sandbox alone."""
    if uid is None:
        return []
    found = []
    for p in psutil.process_iter(["uids"]):
        try:
            if p.info["uids"] and uid in (p.info["uids"].real, p.info["uids"].effective, p.info["uids"].saved):
                found.append(p)
        except psutil.Error:
            pass
    return found


def still_running(p) -> bool:
    """Whether ``p`` (a psutil process) may still run code: a process whose main thread has exited
    shows as a zombie while its other threads run; a real zombie has its one thread exited."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE or p.num_threads() > 1
    except psutil.Error:
        return False


def uid_ipc(uid: int, kinds=tuple(SYSVIPC)) -> list[dict]:
    """System V IPC objects (shared memory, semaphore sets, message queues) that ``uid`` owns or created,
    from ``/proc/sysvipc``: ``{"kind", "id", "bytes" (shm: resident, else its size), "attached"}``."""
    found = []
    for kind in kinds:
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = f.read().splitlines()
        except OSError:
            continue
        names = header.split()
        for row in rows:
            values = dict(zip(names, row.split()))
            try:
                if uid not in (int(values["uid"]), int(values["cuid"])):
                    continue
                size = int(values.get("rss", values.get("size", 0))) if kind == "shm" else 0
                found.append({"kind": kind, "id": int(values[SYSVIPC[kind][0]]), "bytes": size,
                              "attached": int(values.get("nattch", 0)),
                              # SHM_DEST: removed, gone once its last user (outside the uid) detaches
                              "removed": kind == "shm" and bool(int(values.get("perms", "0"), 8) & 0o1000)})
            except (KeyError, ValueError):
                continue
    return found


def memory_outside_rss(procs: list[psutil.Process], uid: int | None) -> int:
    """Bytes the sandbox holds in RAM that no RSS shows: memfd files open in its processes and,
    for a slot uid, its files in /dev/shm (each file counted once) and its System V shared memory."""
    seen, total = set(), 0
    for p in procs:
        try:
            fds = os.listdir(f"/proc/{p.pid}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{p.pid}/fd/{fd}"
            try:
                if not os.readlink(path).startswith(("/memfd:", "/dev/shm/")):
                    continue
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    if uid is not None:
        for folder in SHARED_DIRS:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_uid == uid and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
        # System V shared memory it owns or made, attached or not (resident pages; the host's IPC namespace:
        # a permission jail's); an attached segment's pages may be in an RSS too: counted twice, never missed
        total += sum(o["bytes"] for o in uid_ipc(uid, ("shm",)))
    return total


def my_children() -> set[psutil.Process]:
    """The grader's processes now, by identity (pid and start time: a pid freed later and taken by a
    submission's orphan is not one of them)."""
    try:
        return set(psutil.Process().children(recursive=True))
    except psutil.Error:
        return set()


def kill_everything(child: subprocess.Popen, preexisting: set[psutil.Process]) -> None:
    """Kill the child, its descendants, and any orphan of it that re-parented to this process
    (we are a subreaper); processes this grader had before the probe (the same processes, not just
    the same pids) are left alone.

    The child dies first so it cannot spawn more; then we sweep until nothing new appears,
    because a process born between two looks would otherwise escape."""
    me = psutil.Process()
    preexisting = set(preexisting)
    if child.poll() is None:  # once reaped, its pid (and group id) may already be another process's
        for kill in (lambda: os.killpg(child.pid, signal.SIGKILL), child.kill):
            try:
                kill()
            except OSError:
                pass
    for _ in range(50):
        # its descendants: through the child while it is not reaped, else re-parented to us (below)
        victims = tree(child.pid) if child.returncode is None else []
        with children.listing() as own:  # no launch of the grader's falls between the listing and the kill
            spared = own | warm.all_pids()  # jails, judges and retrains of other work (registered, unreaped)
            try:
                # direct children only: an orphan re-parents to us (we are a subreaper), while what a
                # spared process starts (a warm jail's own bwrap and Python) is its child, not ours
                for p in me.children():
                    if p.pid != child.pid and p.pid not in spared and p not in preexisting:
                        victims += tree(p.pid)
            except psutil.Error:
                pass
        alive = []
        for p in victims:
            try:
                if still_running(p):
                    alive.append(p)
                p.kill()  # harmless on a real zombie
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=0.5)  # also reaps orphans that became our children
        child.poll()  # the wait above may have reaped the child: from now on its pid is not ours to use
        if not alive:
            break
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    children.forget(child)
