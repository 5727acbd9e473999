"""The grader's own child processes: what a probe's clean-up must never kill.

A probe's clean-up (:func:`autograder.metering.processes.kill_everything`) kills the probe's process
tree and every orphan that re-parented to the grader (it is a subreaper).  Orphans are told apart
from the grader's own children (a jail waiting in the warm pool, a judge, a retraining process,
each possibly started by another thread a moment ago) by this registry: every process the grader
launches is registered here, under the same lock that a clean-up holds while it lists its victims,
so no launch can fall between the two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager

_LOCK = threading.RLock()
_OWN: set[int] = set()


def popen(*args, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen``, with the new process registered as the grader's own before any clean-up
    can list it.  :func:`forget` it when it is done (its pid may be reused)."""
    with _LOCK:
        proc = subprocess.Popen(*args, **kwargs)
        _OWN.add(proc.pid)
    return proc


def run(args, *, timeout: float | None = None, check: bool = False, input=None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` for the grader's own helpers (``find``, ``bwrap`` checks, the jail's self-test):
    registered while it runs, so that no clean-up takes it for an orphan."""
    if kwargs.pop("capture_output", False):
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    proc = popen(args, stdin=subprocess.PIPE if input is not None else kwargs.pop("stdin", None), **kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        forget(proc)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def run_forked(action, timeout: float = 10.0) -> int:
    """Run ``action`` in a forked child that never executes a program (so it must only make system
    calls: set ids, send signals), registered like every other child; returns its exit status (-9
    if it had to be killed after ``timeout`` seconds).  For a helper that must take ids no program
    could keep across ``execve`` (a saved uid).  Signals are blocked across the fork, so none can
    send the child back into the grader's code."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        with _LOCK:
            pid = os.fork()
            if pid == 0:  # the child: signals stay blocked; no Python-level locks, no imports, no return
                code = 1
                try:
                    action()
                    code = 0
                finally:
                    os._exit(code)
            _OWN.add(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    try:
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return -9
            time.sleep(0.005)
    finally:
        forget(pid)


def forget(proc: subprocess.Popen | int) -> None:
    with _LOCK:
        _OWN.discard(proc if isinstance(proc, int) else proc.pid)


@contextmanager
def listing():
    """Hold while listing processes to kill: yields the pids launched by the grader (a copy)."""
    with _LOCK:
        yield set(_OWN)


def _after_fork() -> None:
    global _LOCK
    _LOCK = threading.RLock()  # a lock held by another thread at fork time would never be released
    _OWN.clear()  # a forked worker's children are its own; its parent's are not its to spare or kill


os.register_at_fork(after_in_child=_after_fork)
