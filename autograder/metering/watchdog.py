"""One metered-process watchdog, for a jailed probe, the judge and a retraining worker alike.

A :class:`Watchdog` looks at one process tree (and, where it has one, its control group and its slot uid)
every ``interval`` seconds and hands each look, a :class:`Reading`, to its caller's rule, until the rule
says stop or the process ends.  A reading counts:

* memory: the resident size of the tree, plus what it holds in RAM outside any RSS (memfd files, its uid's
  files in ``/dev/shm`` and System V shared memory), or the kernel's count of its group (kernel memory,
  socket buffers, tmpfs), whichever is larger; and whether the kernel OOM-killed something in the group;
* processes: the tree's, and every other process of its uid (orphans that left the tree);
* time: wall time since the watch began and, with a group, the group's CPU time; each task's run-queue wait
  (:func:`autograder.metering.clocks.run_delays`) where the caller asks for it; and, on request, the host's speed
  against its calibration, measured with the group frozen (:meth:`Watchdog.host_speed`).

The watchdog measures and reports; whose fault an exceeded limit is, the caller decides (a probe's memory
limit is the submission's, the judge's the host's).  :meth:`Watchdog.over` is the rule the judge and the
retraining worker share: memory over a limit, or time over a limit (CPU time with a wall-clock backstop
``WALL_BACKSTOP`` times longer where there is a group, wall time where there is none).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import psutil

from autograder.metering import calibration, clocks, processes

T = TypeVar("T")
SLOW_SCAN_S = 0.25  # the uid's other processes, RAM outside RSS and the kernel's count: this often at most
DELAYS_SCAN_S = 1.0  # each task's run-queue wait: this often at most


@dataclass(frozen=True)
class Reading:
    """One look at a metered run."""

    now: float  # time.monotonic() of the look
    wall: float  # seconds since the watch began
    memory: int  # bytes: max(RSS of the tree + RAM held outside RSS, the kernel's count of the group)
    processes: int  # the tree's processes and the other processes of its uid
    cpu: float | None  # CPU seconds the group used since the watch began (None: no group)
    oom: bool  # the kernel OOM-killed a process of the group since the watch began


@dataclass(frozen=True)
class Exceeded:
    """What :meth:`Watchdog.over` found over its limit: ``what`` is ``memory`` or ``time``."""

    what: str
    reading: Reading
    limit: str  # the limit, for people ("memory limit (8192 MiB)", "time limit (600 s of CPU time, ...)")


class Watchdog:
    """Watches ``proc`` (a child process: its tree), its control group ``group`` and its slot ``uid``."""

    def __init__(self, proc: subprocess.Popen, *, group=None, uid: int | None = None, interval: float = 0.05,
                 run_delays: bool = False):
        self.proc, self.group, self.uid, self.interval = proc, group, uid, interval
        self.sample_delays = run_delays and group is not None
        self.started = time.monotonic()
        self.cpu_at_start = group.cpu_seconds() if group is not None else None
        self.ooms_at_start = group.oom_kills() if group is not None else 0
        self.peak = 0  # the largest memory reading so far
        self.paused = 0.0  # seconds the group was frozen to measure the host (host_speed)
        self.delays: dict[int, float] = {}  # task id -> seconds it waited for a CPU, as last sampled
        self._escaped, self._outside, self._kernel = [], 0, 0
        self._next_slow = self._next_delays = 0.0
        self._memory, self._count, self._next_scan = 0, 0, 0.0

    @property
    def metered(self) -> bool:
        """Whether the kernel meters the run (a group whose CPU time can be read)."""
        return self.cpu_at_start is not None

    def cpu(self) -> float | None:
        """The group's CPU seconds since the watch began, or None without a group."""
        if self.cpu_at_start is None:
            return None
        return (self.group.cpu_seconds() or self.cpu_at_start) - self.cpu_at_start

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a process of the group since the watch began."""
        return self.group is not None and self.group.oom_kills() > self.ooms_at_start

    def _scan(self, now: float) -> None:
        """The tree, the uid's other processes and the memory; on a loaded machine these scans are the grader's
        largest cost per run, so they become rarer (at most a fifth of the watchdog's time)."""
        procs = processes.tree(self.proc.pid)
        if now >= self._next_slow:  # a few times a second: the uid's other processes and RAM held outside RSS
            self._next_slow = now + SLOW_SCAN_S
            self._escaped = [p for p in processes.uid_processes(self.uid) if p.pid not in {q.pid for q in procs}]
            self._outside = processes.memory_outside_rss(procs + self._escaped, self.uid)
            if self.group is not None:  # what the kernel charged (socket buffers, tmpfs, page tables...)
                self._kernel = self.group.memory_bytes()
        if self.sample_delays and now >= self._next_delays:  # about once a second: who waited for a CPU
            self._next_delays = now + DELAYS_SCAN_S
            self.delays = {**self.delays, **clocks.run_delays(self.group.pids())}
        procs = procs + [p for p in self._escaped if p.is_running()]
        rss = self._outside
        for p in procs:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        self._memory, self._count = max(rss, self._kernel), len(procs)
        self.peak = max(self.peak, self._memory)
        self._next_scan = now + 4 * (time.monotonic() - now)

    def read(self) -> Reading:
        now = time.monotonic()
        if now >= self._next_scan:
            self._scan(now)
        return Reading(now, now - self.started, self._memory, self._count, self.cpu(), self.oom_killed())

    def host_speed(self, threads: int = 1) -> calibration.HostSpeed:
        """The host's speed now against its calibration (:mod:`autograder.metering.calibration`), measured with the
        watched group frozen, so that its own load does not count as the host's (without a group, beside it).
        The pause is added to :attr:`paused`, which the caller's clocks leave out."""
        started = time.monotonic()
        if self.group is not None:
            with self.group.frozen():
                speed = calibration.host_speed(threads)
        else:
            speed = calibration.host_speed(threads)
        self.paused += time.monotonic() - started
        return speed

    def watch(self, rule: Callable[[Reading], T | None]) -> T | None:
        """Read every ``interval`` seconds while the process lives; return the first thing ``rule`` returns
        that is not None (the caller stops the process), or None once the process has ended."""
        while self.proc.poll() is None:
            time.sleep(self.interval)
            found = rule(self.read())
            if found is not None:
                return found
        return None

    def over(self, memory_mb: int | None = None, seconds: float | None = None) -> Callable[[Reading], Exceeded | None]:
        """The shared rule: memory over ``memory_mb`` (or an OOM kill in the group), or time over ``seconds``:
        with a group its CPU time, with a wall-clock backstop ``WALL_BACKSTOP`` times longer; else wall time."""
        def rule(r: Reading) -> Exceeded | None:
            if memory_mb is not None and (r.memory > memory_mb * 2**20 or r.oom):
                return Exceeded("memory", r, f"memory limit ({memory_mb} MiB)")
            if seconds is None:
                return None
            if r.cpu is None and r.wall > seconds:
                return Exceeded("time", r, f"time limit ({seconds:.0f} s)")
            if r.cpu is not None and (r.cpu > seconds or r.wall > clocks.WALL_BACKSTOP * seconds):
                return Exceeded("time", r, f"time limit ({seconds:.0f} s of CPU time, "
                                           f"{clocks.WALL_BACKSTOP * seconds:.0f} s of wall time)")
            return None

        return rule
