"""The metered retraining worker: a fresh ``python -I`` process per training run, started ahead (it imports and
loads its data while it waits for a slot of the retraining queue, :class:`_Slot`), limited in memory and time
and watched, that returns only numbers (:func:`autograder.verifier.training.worker_main` is its side).
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from autograder import children, settings
from autograder.metering.watchdog import Watchdog
from autograder.faults import Fault, FaultError
from autograder.verifier.training import GO, THREAD_VARIABLES, device_description

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the grader package (autograder/)


def retrain_slots() -> int:
    """How many retrains may run at once on this machine: one CPU retrain uses every core;
    several small retrains share a GPU.  ``CNN_GRADER_RETRAIN_SLOTS`` overrides."""
    slots = settings.current().retrain_slots
    if slots is not None:
        return slots
    return 4 if device_description().startswith("GPU") else 1


class _Slot:
    """A cross-process semaphore made of lock files: the retraining queue shared by all workers.
    Waiting here never counts against a submission: the training process starts once a slot is free."""

    def __init__(self, folder: Path, slots: int):
        self.folder, self.slots, self.handle = folder, slots, None

    def __enter__(self):
        folder = _owned_private_dir(self.folder)
        while True:
            for i in range(self.slots):
                dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:  # never follows a link planted as a lock file
                    fd = os.open(f"slot-{i}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                 dir_fd=dfd)
                finally:
                    os.close(dfd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.handle = fd
                    return self
                except BlockingIOError:
                    os.close(fd)
            time.sleep(0.2)

    def __exit__(self, *exc):
        os.close(self.handle)  # closing releases the lock, also when the process dies


def _owned_private_dir(folder: Path) -> Path:
    """``folder``, created 0700 if missing, and checked: a real folder (no link), owned by this user,
    with no group or other bits; so no other user can plant files or links in it."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        raise FaultError.of("grader_crash", f"cannot create the retraining lock folder {folder}: {exc}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise FaultError.of("grader_crash", f"{folder} must be a folder of this user's own with mode 0700 (it holds the retraining "
                            "locks); remove it or fix its owner and mode")
    return folder


def default_slot_dir() -> Path:
    """Where the retraining queue lives without a cache: a root grader's is root-only, beside the jail's
    uid leases; any other grader's is in its own cache folder (never a world-writable TMPDIR)."""
    if os.geteuid() == 0:
        return Path("/run/cnn-grader-retrain-slots")
    from autograder.data import cache_dir

    return cache_dir() / "retrain-slots"


def _die_with(grader: int):
    """For the retrain process, before it starts: if the grader (pid ``grader``) dies, even by SIGKILL,
    so does it, and no training goes on unwatched, without its limits or its slot."""

    def arm() -> None:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != grader:  # the grader died before the line above
            os._exit(1)

    return arm


def _run_isolated(job: dict, max_seconds: float, memory_mb: int, slot) -> dict:
    """:func:`train_run` in a fresh ``python -I`` process; only its JSON numbers come back.  The process
    starts, imports and loads its data (:func:`prepare_run`) while this waits for ``slot`` (the
    retraining queue), and builds and trains its model once it has it: a slot is not spent on another
    retrain's start-up.  The ``max_seconds`` safety limit counts from the slot.  The process inherits no
    ``CNN_GRADER_*`` variable: this process's configuration (:class:`autograder.settings.GraderConfig`) travels
    in its job and is installed there before anything reads it."""
    bootstrap = (f"import sys; sys.path.insert(0, {str(PACKAGE_DIR.parent)!r}); "
                 "from autograder.verifier.training import worker_main; worker_main()")
    config = settings.current()
    job = {**job, "config": config.to_dict()}
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "KERAS_BACKEND", "CUDA_VISIBLE_DEVICES",
                                                         "TMPDIR", "LANG")}
    env.update(settings.QUIET_LOGGING_ENV)  # TensorFlow's and absl's start-up lines
    if config.retrain_threads:  # read by TensorFlow and BLAS at start-up, before the job is
        env.update({name: str(config.retrain_threads) for name in THREAD_VARIABLES})
    from autograder.metering import cgroup

    try:  # kernel-metered: memory (kernel memory included) and pids; no CPU quota, a retrain has the cores
        group = cgroup.create("retrain", memory_bytes=cgroup.memory_ceiling(memory_mb), cpu_cores=None)
    except OSError:
        group = None
    arm = _die_with(os.getpid())

    def start() -> None:
        if group is not None:
            group.joiner()()
        arm()

    try:
        proc = children.popen([sys.executable, "-I", "-c", bootstrap], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, preexec_fn=start)
    except BaseException:
        if group is not None:
            group.remove()
        raise
    over_memory = threading.Event()
    watchdog = Watchdog(proc, group=group, interval=0.25)

    def guard() -> None:
        if watchdog.watch(watchdog.over(memory_mb)) is not None:
            over_memory.set()
            proc.kill()

    threading.Thread(target=guard, daemon=True).start()
    try:
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died starting: its exit and stderr are reported below
        with slot:
            stdout, stderr = proc.communicate(GO + "\n", timeout=max_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise FaultError.of("timeout_infrastructure", f"retraining did not finish within the grader's {max_seconds:.0f} s "
                            "safety limit (the recipe is within the assignment's budget and its measured projection, so "
                            "the machine is too slow or overloaded)")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        children.forget(proc)
        if group is not None:
            oom = watchdog.oom_killed()
            group.remove()  # kills by group: nothing of the retrain outlives it
            if oom:
                over_memory.set()
    if over_memory.is_set():
        raise FaultError.of("host_limit", f"retraining used more than the grader's {memory_mb} MB memory limit")
    marker = stdout.rfind("\n@@RETRAIN@@")
    if proc.returncode != 0 or marker < 0:
        print(f"retraining process failed (exit {proc.returncode}):\n{stderr[-5000:]}", file=sys.stderr)  # the log
        last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
        raise FaultError.of("grader_crash", f"the retraining process failed (exit {proc.returncode}): {last[:300]} "
                            "(the traceback is in the grader's log)")
    out = json.loads(stdout[marker + len("\n@@RETRAIN@@"):])
    if out.get("fault"):
        fault = Fault.from_dict(out["fault"])
        if fault.graders:
            raise FaultError(fault)
        return out  # the recipe's own fault: the verifier reports it
    if not isinstance(out.get("accuracy"), float):
        raise FaultError.of("grader_crash", "the retraining process returned no accuracy")
    out["peak_mb"] = round(watchdog.peak / 2**20)  # sampled every 0.25 s: what a memory cap must leave room for
    return out
