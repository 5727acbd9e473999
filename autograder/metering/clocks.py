"""Clocks: the time a metered step is charged, and whether the host starved it of CPU.

With a control group (:mod:`autograder.metering.cgroup`) a step's clock counts its wall time less what the
host made the step's main thread wait on a run queue for a CPU (``/proc/<pid>/task/<tid>/schedstat``), and
never less than the CPU time the group used: sleeping is charged, a neighbour's load is not.  A wall-clock
backstop ``WALL_BACKSTOP`` times the limit remains; a backstop reached while that thread waited for a CPU at
least ``STARVED_SHARE`` of the time is the host's fault, not the process's.
"""

from __future__ import annotations

import os

WALL_BACKSTOP = 4.0  # with a cgroup, time limits count the jail's CPU time; wall time may run this much longer
STARVED_SHARE = 0.25  # a task of the jail that waited for a CPU this share of the wall time was starved


def run_delays(pids) -> dict[int, float]:
    """Seconds each task (thread) of ``pids`` has waited on a run queue for a CPU (``schedstat``)."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    out[int(tid)] = int(f.read().split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                pass
    return out


def waited(delays: dict, before: dict, main: int | None) -> float:
    """Seconds the runtime's main thread (the one that runs the cells) waited on a run queue for a CPU since
    the clock started.  Only that thread counts: a student's own threads or processes that wait (niced,
    pinned behind a busy sibling) excuse nothing, and its waiting behind the jail's own work is paid for by
    the CPU time that work used (see :func:`charged`)."""
    if main is None:
        return 0.0
    return max(0.0, delays.get(main, 0.0) - before.get(main, 0.0))


def charged(cpu: float, wall: float, waited: float) -> float:
    """The time a step is charged with a cgroup: its wall time less what the host made the main thread wait
    for a CPU, and never less than the CPU time the jail used.  Sleeping is charged (a cell that sleeps
    reaches its limit in wall time, as before); a classmate's load is not."""
    return max(cpu, wall - waited)


def starved(waited: float, wall: float) -> bool:
    """Whether the main thread waited for a CPU at least ``STARVED_SHARE`` of ``wall``: the host's load, not
    the submission's (the jail's own work would have been charged as CPU time first)."""
    return waited >= STARVED_SHARE * wall
