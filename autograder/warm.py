"""Warm pool: processes started ahead of the work they will get, each used exactly once.

A jailed probe spends seconds starting Python and importing TensorFlow/Keras before the
student's first cell; the judge, importing Otter.  While one submission runs, the pool starts
the next jail (and the next judge) so that its start-up overlaps with the current one.  A warm
process gets its work only when it is taken (the probe reads its notebook on stdin after sending
``ready``), serves that one submission and is never reused: nothing of one submission can reach
another through the pool.  Start-up is the grader's time, never the student's: the probe's
clocks start when its work is handed over (see :mod:`autograder.probe.sandbox`).

Every warm process is started by one long-lived thread of the pool: ``PR_SET_PDEATHSIG`` (and
bubblewrap's ``--die-with-parent``, which uses it) fire when the *thread* that forked a child
ends, so a short-lived thread would kill its children at once.  When the grader exits (also a
worker of a process pool), the pool kills what is still waiting and removes its folders.

``CNN_GRADER_WARM`` (or :func:`configure`) sets how many processes of each kind wait at most
(default 0 in a library call: a single notebook gains nothing from starting a second jail; the
batch grader turns it on).
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
from typing import Callable, Hashable, Protocol

from autograder import settings

ENV_WARM = settings.WARM.name
_MORE_COMING = True  # see expect_more


class Warm(Protocol):
    def alive(self) -> bool: ...
    def ready(self) -> bool: ...  # its start-up is over: it waits for work
    def pids(self) -> set[int]: ...
    def close(self) -> None: ...


class Pool:
    """At most ``size`` waiting processes per pool (of any key); ``take`` hands one out at most once."""

    def __init__(self, name: str, size: int = 0):
        self.name, self.size = name, size
        self._items: list[tuple[Hashable, Warm]] = []
        self._pending: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue | None = None
        self._closed = False
        self.stats = {"taken_warm": 0, "started_cold": 0, "started_warm": 0, "discarded": 0, "failed": 0}

    # -- taking -------------------------------------------------------------------------------
    def take(self, key: Hashable, fits: Callable[[Warm], bool] = lambda item: True) -> Warm | None:
        """A waiting process started for ``key`` that ``fits`` the work, removed from the pool; or None."""
        stale = []
        found = None
        with self._lock:
            for entry in list(self._items):
                k, item = entry
                if item.alive() and (k != key or found is not None):
                    continue
                if not item.alive():
                    self._items.remove(entry)
                    stale.append(item)
                elif k == key:
                    self._items.remove(entry)
                    if fits(item):
                        found = item
                    else:  # started for work it cannot serve (e.g. it does not hide a newly private folder)
                        stale.append(item)
        for item in stale:
            self._discard(item)
        self.stats["taken_warm" if found else "started_cold"] += 1
        return found

    # -- filling ------------------------------------------------------------------------------
    def fill(self, key: Hashable, start: Callable[[], Warm]) -> None:
        """Start one more process for ``key`` in the background, unless ``size`` are waiting or starting
        or no more work is coming to this process (:func:`expect_more`)."""
        if self.size <= 0 or not _MORE_COMING:
            return
        evicted = []
        with self._lock:
            while len(self._items) + sum(self._pending.values()) >= self.size and \
                    any(k != key for k, _ in self._items):  # what waits for other work makes room
                entry = next(e for e in self._items if e[0] != key)
                self._items.remove(entry)
                evicted.append(entry[1])
            full = self._closed or len(self._items) + sum(self._pending.values()) >= self.size
            if not full:
                self._pending[key] = self._pending.get(key, 0) + 1
                if self._queue is None:
                    self._queue = queue.Queue()
                    threading.Thread(target=self._spawner, args=(self._queue,), daemon=True,
                                     name=f"warm-{self.name}").start()
                    _register(self)
        for item in evicted:  # outside the lock: a discard's clean-up asks every pool for its pids
            self._discard(item)
        if not full:
            self._queue.put((key, start))

    def _spawner(self, jobs: queue.Queue) -> None:
        while True:
            key, start = jobs.get()
            try:
                item = start()
            except Exception:  # a failed warm start leaves nothing behind; the cold path starts one instead
                item = None
                self.stats["failed"] += 1
            with self._lock:
                self._pending[key] -= 1
                keep = item is not None and not self._closed
                if keep:
                    self._items.append((key, item))
                    self.stats["started_warm"] += 1
            if item is not None and not keep:
                self._discard(item)

    # -- bookkeeping ----------------------------------------------------------------------------
    def pids(self) -> set[int]:
        """Every process of the waiting items: another run's clean-up must spare them."""
        with self._lock:
            items = [item for _, item in self._items]
        out: set[int] = set()
        for item in items:
            out |= item.pids()
        return out

    def waiting(self) -> tuple[int, int]:
        """(processes waiting, of which ready for work)."""
        with self._lock:
            items = [item for _, item in self._items]
        return len(items), sum(1 for item in items if item.alive() and item.ready())

    def _discard(self, item: Warm) -> None:
        self.stats["discarded"] += 1
        try:
            item.close()
        except Exception:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            items, self._items = [item for _, item in self._items], []
        for item in items:
            self._discard(item)

    def resize(self, size: int) -> None:
        self.size = size
        if size <= 0:
            with self._lock:
                items, self._items = [item for _, item in self._items], []
            for item in items:
                self._discard(item)


_POOLS: list[Pool] = []
_REGISTERED = False


def _register(pool: Pool) -> None:
    """Close the pool when this process exits, also as a worker of a process pool (whose exit skips atexit)."""
    global _REGISTERED
    if pool not in _POOLS:
        _POOLS.append(pool)
    if not _REGISTERED:
        _REGISTERED = True
        atexit.register(close_all)
        try:
            from multiprocessing import util

            util.Finalize(None, close_all, exitpriority=100)
        except Exception:
            pass


def close_all() -> None:
    for pool in list(_POOLS):
        pool.close()


def default_size() -> int:
    return settings.current().warm


def _forget_after_fork() -> None:
    """A forked child (a batch worker) starts with empty pools: the waiting processes are its parent's,
    and the parent's spawner thread does not exist in the child."""
    global _REGISTERED
    for pool in (PROBES, JUDGES):
        pool._lock = threading.Lock()
        pool._items, pool._pending, pool._queue, pool._closed = [], {}, None, False
    _POOLS.clear()
    _REGISTERED = False


PROBES = Pool("probe", default_size())
JUDGES = Pool("judge", default_size())
os.register_at_fork(after_in_child=_forget_after_fork)


def all_pids() -> set[int]:
    """Every process waiting in a pool of this process (a probe's clean-up spares them)."""
    return PROBES.pids() | JUDGES.pids()


def wait_ready(timeout: float = 600.0) -> bool:
    """Wait until every pool that is on holds as many ready processes as its size (benchmarks, tests)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(pool.waiting()[1] >= pool.size for pool in (PROBES, JUDGES)):
            return True
        if not any(pool._items or any(pool._pending.values()) for pool in (PROBES, JUDGES)):
            return False  # nothing is starting: nothing to wait for
        time.sleep(0.1)
    return False


def expect_more(more: bool) -> None:
    """Whether this process will get more work after the current one.  The batch says no for its last
    submissions, so that no jail and no judge is started only to be thrown away at the end."""
    global _MORE_COMING
    _MORE_COMING = bool(more)


def configure(size: int) -> None:
    """How many jails and judges wait ahead at most in this process (0: none, every start is cold)."""
    settings.WARM.set(max(size, 0))  # inherited by the batch's worker processes
    for pool in (PROBES, JUDGES):
        if pool.size != max(size, 0):
            pool.resize(max(size, 0))
