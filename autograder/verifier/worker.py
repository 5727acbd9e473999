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
from autograder.metering import calibration
from autograder.metering.watchdog import Reading, Watchdog
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
    retrain's start-up.  The process inherits no ``CNN_GRADER_*`` variable: this process's configuration
    (:class:`autograder.settings.GraderConfig`) travels in its job and is installed there before anything reads it.

    Watched (:class:`autograder.metering.watchdog.Watchdog`) from start to end:

    * memory over ``memory_mb`` before the training starts (the grader's own start-up: imports, data) is the
      host's (``host_limit``); after it, while the recipe is built, trained, evaluated and predicted with, the
      recipe's (``recipe_memory``, with the figures);
    * time: from the training's start, a deadline the training process sends with each projection of its clock (first the
      allowance, then :func:`autograder.verifier.training.overrun_limit` of its projection), enforced by this
      timer also during a step that never ends.  At the deadline the host is measured against its calibration
      with the process frozen: running normally, the recipe is stopped and refused (``recipe_too_slow``, with the
      figures); measurably slower, the deadline grows by its slowdown, up to ``max_seconds``, the safety net,
      which is then the host's fault (``host_slow``)."""
    bootstrap = (f"import sys; sys.path.insert(0, {str(PACKAGE_DIR.parent)!r}); "
                 "from autograder.verifier.training import worker_main; worker_main()")
    config = settings.current()
    progress_r, progress_w = os.pipe()
    job = {**job, "config": config.to_dict(), "progress_fd": progress_w}
    allowed = float(job.get("allowed_seconds") or max_seconds)
    threads = config.retrain_threads or len(os.sched_getaffinity(0))
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
                              stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, preexec_fn=start,
                              pass_fds=(progress_w,))
    except BaseException:
        os.close(progress_r)
        if group is not None:
            group.remove()
        raise
    finally:
        os.close(progress_w)
    watchdog = Watchdog(proc, group=group, interval=0.25)
    run = _Deadlines(allowed, max_seconds, watchdog)
    stopped: list = []  # what stopped it: ("memory", reading), ("time", used, limit, speed), ("host", used, speed)

    def read_progress() -> None:
        with os.fdopen(progress_r, "rb") as f:
            for line in f:
                run.told(line[:100_000])

    def rule(r: Reading):
        if r.memory > memory_mb * 2**20 or r.oom:
            return ("memory", r)
        if run.go is None or r.now <= run.check_at:
            return None
        used = r.now - run.go - (watchdog.paused - run.paused_at_go)  # the host's measurements left out
        if used <= run.check_at - run.go:
            return None
        speed = run.measured(watchdog.host_speed(threads))  # with the process frozen; the slowest of the run
        if calibration.normal_seconds(used, used, speed) > run.limit:
            return ("time", used, run.limit, speed)  # on this host running normally, past the recipe's own limit
        if used >= max_seconds:  # the safety net, reached only on a host measurably slower than its calibration
            return ("host", used, speed)
        run.check_at = run.go + min(max(run.limit * speed.slowdown, used + 1.0), max_seconds)  # the slow host's time
        return None

    def guard() -> None:
        found = watchdog.watch(rule)
        if found is not None:
            stopped.append(found)
            proc.kill()

    threading.Thread(target=read_progress, daemon=True).start()
    guarding = threading.Thread(target=guard, daemon=True)
    guarding.start()
    try:
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died starting: its exit and stderr are reported below
        with slot:  # the process trains once it is prepared and has the go-ahead; it says when it starts
            stdout, stderr = proc.communicate(GO + "\n", timeout=max_seconds + SAFETY_SLACK_S)
    except subprocess.TimeoutExpired:  # the timer above failed to act: the grader's own safety net
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
        guarding.join(timeout=5)  # it ends with the process: no reading of a group being removed
        if group is not None:
            if watchdog.oom_killed() and not stopped:  # the kernel stopped it at the group's ceiling
                stopped.append(("memory", None))
            group.remove()  # kills by group: nothing of the retrain outlives it
    if stopped:
        return _stopped(stopped[0], run, memory_mb, watchdog)
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


SAFETY_SLACK_S = 30.0  # the last resort after max_seconds, should the timer above not act


class _Deadlines:
    """The training run's clock as this process keeps it: started when the training process says it starts
    training (after its start-up and the go-ahead); ``limit`` is the recipe's own (seconds from that start: the
    allowance, then the deadline the training process last sent, a monotonic time on the same clock on both
    sides); ``check_at`` is when this timer looks next (later than the limit only on a host measured slower
    than its calibration)."""

    def __init__(self, allowed: float, max_seconds: float, watchdog: Watchdog):
        self.allowed, self.max_seconds, self.watchdog = min(allowed, max_seconds), max_seconds, watchdog
        self.go: float | None = None
        self.limit = self.allowed
        self.check_at = float("inf")
        self.paused_at_go = 0.0
        self.baseline = 0  # the memory of the grader's own start-up, when the slot came
        self.projection: dict | None = None
        self.slowest = None  # the slowest the host was measured during this run

    def told(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            deadline = float(msg["deadline"])
        except (ValueError, KeyError, TypeError):
            return
        if self.go is None:  # the first message: training starts now (its start-up's memory is the grader's)
            self.go, self.paused_at_go, self.baseline = time.monotonic(), self.watchdog.paused, self.watchdog.peak
        if isinstance(msg.get("projection"), dict):
            self.projection = msg["projection"]
        self.limit = min(max(deadline - self.go, 0.0), self.max_seconds)
        self.check_at = self.go + self.limit

    def measured(self, speed: calibration.HostSpeed) -> calibration.HostSpeed:
        if self.slowest is None or speed.slowdown > self.slowest.slowdown:
            self.slowest = speed
        return self.slowest


def _stopped(why: tuple, run: _Deadlines, memory_mb: int, watchdog: Watchdog) -> dict:
    """The outcome of a run this process stopped: the recipe's fault (returned, as the worker's own refusals are)
    or the host's (raised)."""
    if why[0] == "memory":
        if run.go is None:  # before training: the grader's imports and data
            raise FaultError.of("host_limit", f"the retraining process's own start-up needs more than the grader's "
                                              f"{memory_mb} MB memory limit")
        fault = Fault("recipe_memory", f"retraining the recipe needed more than the {memory_mb:,} MB memory limit "
                                       f"(the grader's own start-up used {run.baseline / 2**20:,.0f} MB of it; the "
                                       f"largest reading was {watchdog.peak / 2**20:,.0f} MB): use a smaller batch "
                                       "size or a smaller model")
        return {"fault": fault.to_dict(), "projection": run.projection}
    if why[0] == "time":
        _, used, limit, speed = why
        projected = (run.projection or {}).get("projected_seconds")
        estimate = f"its own measured projection of {projected:,.0f} s" if projected is not None else \
            "the assignment's allowance, before any step could be measured"
        note = f"; counted at the host's normal speed: {speed.describe()}" if speed.slow else ""
        fault = Fault("recipe_too_slow", f"your recipe was stopped {used:,.0f} s into its training run, during a step "
                                         f"or an evaluation, at the {limit:,.0f} s that {estimate} allows{note}; use "
                                         "fewer epochs, a smaller batch of a heavy layer, or a smaller model")
        return {"fault": fault.to_dict(), "projection": run.projection}
    _, used, speed = why
    raise FaultError.of("host_slow", f"retraining did not finish within the grader's {run.max_seconds:.0f} s safety "
                                     f"limit while {speed.describe()}; not the submission's fault")
