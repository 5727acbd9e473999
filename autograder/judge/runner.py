"""The judge's own process: a fresh ``python -I`` that never loaded student code (:mod:`autograder.judge.judge`),
started ahead where the warm pool is on, run under a time and a memory limit; a fault there is the host's or
the grader's (:class:`autograder.faults.FaultError`).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

from autograder import children, protocol
from autograder.faults import FaultError
from autograder.metering.watchdog import Watchdog

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the grader package (autograder/)
JUDGE_MEMORY_MB = 8192  # the trusted judge's own limits: a fault there is a grader error
JUDGE_SECONDS = 600.0


class _WarmJudge:
    """A judge process started ahead: Python, numpy and Otter imported, waiting for its one request on stdin."""

    KEY = "judge"

    def __init__(self, proc: subprocess.Popen, group=None):
        self.proc = proc
        self.group = group  # its control group (autograder.metering.cgroup), None where none can be made

    @classmethod
    def start(cls) -> "_WarmJudge":
        from autograder.metering import cgroup

        # -I: no environment variables, no user site; the package is found where this one was loaded from
        bootstrap = (f"import sys; sys.path.insert(0, {str(PACKAGE_DIR.parent)!r}); "
                     "from autograder.judge.judge import main, warm_up; warm_up(); main()")
        try:  # metered by the kernel: its clock counts its own CPU time (no quota: it is the grader's)
            group = cgroup.create("judge", memory_bytes=cgroup.memory_ceiling(JUDGE_MEMORY_MB), cpu_cores=None)
        except OSError:
            group = None
        join = group.joiner() if group is not None else None

        def no_core() -> None:
            if join is not None:
                join()
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        try:
            return cls(children.popen([sys.executable, "-I", "-c", bootstrap], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True, preexec_fn=no_core), group)
        except BaseException:
            if group is not None:
                group.remove()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        import select

        try:  # warm_up() prints a line once its imports are done
            return bool(select.select([self.proc.stdout], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def pids(self) -> set[int]:
        import psutil

        try:
            return {self.proc.pid, *(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True))}
        except psutil.Error:
            return set()

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except OSError:
            pass
        self.proc.communicate()
        children.forget(self.proc)
        if self.group is not None:
            self.group.remove()


def start_ahead() -> None:
    """Start a judge for this process's next request now, in the background (the warm pool's, when it is on
    and none waits already)."""
    from autograder import warm

    warm.JUDGES.fill(_WarmJudge.KEY, _WarmJudge.start)


def run_judge(request: dict, timeout: float = JUDGE_SECONDS, memory_mb: int = JUDGE_MEMORY_MB) -> dict:
    """Run the judge in a fresh process under a time and a memory limit (its whole process tree).
    With the warm pool on, the process was started ahead; it serves this one request and exits.
    In a cgroup, the time limit counts the judge's own CPU time, with a wall-clock backstop
    (``clocks.WALL_BACKSTOP`` times longer), and the memory limit the kernel's count (socket buffers and
    all); elsewhere both are sampled (wall time, RSS)."""
    from autograder import warm

    judge = warm.JUDGES.take(_WarmJudge.KEY) or _WarmJudge.start()
    warm.JUDGES.fill(_WarmJudge.KEY, _WarmJudge.start)
    proc, group = judge.proc, judge.group
    over: list[tuple[str, str]] = []  # (memory or time, the limit for people)
    watchdog = Watchdog(proc, group=group, interval=0.2)

    def guard() -> None:
        found = watchdog.watch(watchdog.over(memory_mb, timeout))
        if found is not None:
            over.append((found.what, found.limit))
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass

    guarding = threading.Thread(target=guard, daemon=True)
    guarding.start()
    try:
        stdout, stderr = proc.communicate(json.dumps(request))
    finally:
        children.forget(proc)
        guarding.join(timeout=5)
        if group is not None:
            if watchdog.oom_killed() and not over:
                over.append(("memory", f"memory limit ({memory_mb} MiB)"))
            group.remove()  # kills by group: nothing of the judge outlives it
    if over:
        what, limit = over[0]
        raise FaultError.of("host_limit" if what == "memory" else "timeout_infrastructure", f"the judge exceeded its {limit}")
    marker = stdout.rfind(protocol.JUDGE_REPLY)
    if proc.returncode != 0 or marker < 0:
        raise FaultError.of("grader_crash", f"judge failed (exit {proc.returncode}): {stderr[-2000:]}")
    return json.loads(stdout[marker + len(protocol.JUDGE_REPLY):])
