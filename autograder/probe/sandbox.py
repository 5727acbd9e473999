"""Probe: run a notebook in a jail and collect its messages, under limits.

The child (:mod:`autograder.probe.runtime`, copied in) runs in a jail (:mod:`autograder.probe.jail`)
whose working folder holds only the notebook, the runtime and a read-only copy of MNIST; no
tests, no solutions, no grader.  What it sends is checked by :mod:`autograder.jail_messages`; what it
uses is metered by :mod:`autograder.metering` (one :class:`~autograder.metering.watchdog.Watchdog`, whose
readings the rules below judge).  This parent enforces:

* a time limit per cell (SIGINT, which IPython turns into an error in that cell only)
  and per notebook (the whole process tree is killed); both start at the first student cell,
  the grader's own start-up has a separate limit whose expiry is a grader error.  With a cgroup
  they count wall time less what the host made the cells' thread wait for a CPU, and never less than
  the jail's own CPU time (:func:`autograder.metering.clocks.charged`), so a neighbour's load cannot run
  them down while sleeping still counts; over a limit, the CPU-bound time counts at the host's normal
  speed where the host, measured with the jail frozen, runs measurably slower than its calibration
  (:mod:`autograder.metering.calibration`).  A wall-clock backstop ``WALL_BACKSTOP`` times longer
  remains, and a backstop reached while that thread waited for a CPU, or on a measurably slow host, is
  the host's fault (``host_slow``: run again once, then a grader error), not the student's.  Without a
  cgroup they count wall time, as the isolation notes say;
* a memory limit on the whole jail: the kernel's count of its cgroup (kernel memory, socket buffers,
  tmpfs included; OOM kills are this limit) and, always, the resident size of its process tree plus
  memfd, /dev/shm and System V shared memory; a process-count limit (fork bombs), and the cgroup's
  ``pids.max`` on threads;
* capped output (only the head and tail of stdout/stderr are kept);
* a strict protocol on the status pipe: one record per real cell, in order, with bounded
  fields; values only for the requested names, once; the parent owns every timer.

Every stop is a typed fault (:class:`autograder.faults.Fault`): the submission's (a limit, a crash) or the
host's or the grader's (the jail, the grader's start-up, a starved or slow host).

A cell that brings the whole run down (``os._exit``, a segfault, a memory or fork bomb, a
loop that ignores interrupts) costs that cell: the notebook runs again without it, at most
twice more.  Whatever happens, :func:`probe` returns a :class:`ProbeResult`; it never raises
for anything the submission does and never leaves a process behind.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import resource
import signal
import subprocess
import select
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil

from autograder import children, protocol, settings, warm
from autograder.faults import Fault
from autograder.jail_messages import checked_value, clean_text
from autograder.metering import clocks, processes
from autograder.metering import calibration
from autograder.metering.calibration import HostSpeed
from autograder.metering.watchdog import Reading, Watchdog
from autograder.probe import jail as jails
from autograder.probe import disk, forkserver

RUNTIME = Path(__file__).with_name("runtime.py")
PROTOCOL = Path(protocol.__file__)
MAX_RERUNS = 2  # a notebook runs at most this many more times, each without a cell that crashed it
MAX_STARVED_RERUNS = 1  # a run the host starved of CPU runs again this often, then is a grader error
STARVED_PAUSE = 5.0
SPEED_TTL = 30.0  # a measurement of the host's speed (with the jail frozen) stands this many seconds
MAX_STATUS_BYTES = 64 * 1024 * 1024  # the whole status stream of one run
MAX_STATUS_LINE = 16 * 1024 * 1024  # one message (an array of 1M float64 is ~10.7 MB in base64: MAX_NPY_CHARS)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one submission (instructors may raise them for slow machines)."""

    cell_seconds: float = 120.0  # time one cell may run: a cell over it is interrupted and the rest still runs
    notebook_seconds: float = 600.0  # time the whole notebook may run, from its first cell: past it the run stops
    memory_mb: int = 6144  # memory of the submission's whole process tree (MiB)
    max_processes: int = 64  # processes the submission may have at once
    # output of the notebook kept, in KiB: the first and the last this many of everything it printed
    output_kb: int = 64
    file_size_mb: int = 512  # the largest file the submission may write (MiB)
    # all a submission writes, its working folder and /tmp together, in MB (a tmpfs, in RAM: it counts against
    # memory_mb too); reaching it is in limits_hit
    disk_mb: int = disk.DISK_MB
    disk_files: int = disk.DISK_FILES  # the files, folders and links a submission may create in all


@dataclass
class ProbeResult:
    values: dict = field(default_factory=dict)  # variable -> untrusted plain data (see probe_runtime)
    cells: list = field(default_factory=list)  # per real cell: index, seconds (measured here), error
    limits_hit: list = field(default_factory=list)
    # why the last run ended before extraction finished, if it did: the submission's fault (a limit, a crash,
    # an unreadable notebook), or the host's or the grader's (the jail, the grader's start-up)
    fault: Fault | None = None
    skipped: list = field(default_factory=list)  # cells left out of a rerun: index, reason, cause
    runs: int = 0
    output: str = ""
    seconds: float = 0.0
    isolation: dict = field(default_factory=dict)
    warm_starts: list = field(default_factory=list)  # per run: whether its jail had started ahead (warm pool)

    @property
    def complete(self) -> bool:
        return self.fault is None


class _BoundedBuffer:
    """Keeps the first and last ``limit`` bytes of a stream: huge output costs nothing."""

    def __init__(self, limit: int):
        self.limit, self.head, self.tail, self.dropped = limit, bytearray(), bytearray(), 0

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.limit:
                self.dropped += len(self.tail) - self.limit
                del self.tail[: len(self.tail) - self.limit]

    def text(self) -> str:
        middle = f"\n... [{self.dropped} bytes of output omitted] ...\n" if self.dropped else ""
        return (bytes(self.head) + middle.encode() + bytes(self.tail)).decode("utf-8", "replace")


def code_cells(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]


NOFILE = 1024  # open files per jailed process: each one can hold kernel memory (socket buffers, pipes)


def _rlimits(file_size_mb: int, slot_uid: bool, join=None):
    def apply() -> None:
        if join is not None:  # the jail's own steps first (its control group, its seccomp filter)
            join()
        try:  # if the grader dies (even by SIGKILL), the submission dies with it
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:
            pass
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        size = file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        if slot_uid:  # counts the sandbox uid's threads too; TF uses many
            resource.setrlimit(resource.RLIMIT_NPROC, (4096, 4096))

    return apply


ENV_PROBE_THREADS = settings.PROBE_THREADS.name
PROBE_THREAD_VARIABLES = settings.THREAD_VARIABLES  # the same variables as a retrain's


def probe_threads() -> int:
    """CPU threads a probe's TensorFlow and BLAS may use (``CNN_GRADER_PROBE_THREADS``; 0 or unset: their
    defaults).  The batch grader sets 1, so that probes beside a retrain do not oversubscribe the cores;
    ``--real-fit`` probes, which train, keep the defaults."""
    return settings.current().probe_threads


@dataclass(frozen=True)
class _ProbeSpec:
    """Everything a jail's start-up depends on: a warm jail serves only work with the same spec."""

    data_file: str | None  # the assignment's dataset file, copied in read-only (autograder.spec.Dataset.probe_file)
    real_fit: bool
    file_size_mb: int
    python: str
    mode: str
    keras_backend: str | None
    registered_private: tuple
    threads: int = 0  # CPU threads for TensorFlow and BLAS in the probe (0: their defaults, every core)
    data_setup: str | None = None  # the dataset's start-up code, run with data_file (Dataset.probe_setup)
    memory_mb: int = 0  # the submission's memory limit: its jail's cgroup is made for it (0: none set)
    disk_mb: int = disk.DISK_MB  # what the submission may write (its jail's tmpfs is capped to it)
    disk_files: int = disk.DISK_FILES  # the files it may create (its jail's tmpfs has this many inodes)


def _probe_spec(limits: Limits, real_fit: bool, data_file, data_setup: str | None) -> _ProbeSpec:
    return _ProbeSpec(str(data_file) if data_file else None, real_fit, limits.file_size_mb, jails.probe_python(),
                      jails.choose_mode(), os.environ.get("KERAS_BACKEND"),
                      tuple(sorted(settings.current().private_paths)),
                      0 if real_fit else probe_threads(), data_setup, limits.memory_mb, limits.disk_mb,
                      limits.disk_files)


def _start_beside_self_test(spec: _ProbeSpec, private) -> "_WarmProbe | None":
    """The first run's jail, started now where the full self-test has not passed in this process yet (a single
    grade, a worker's first submission): its start-up (the grader's, importing what notebooks need) overlaps
    the test's.  Nothing of the submission is in it until the test has passed (it goes in on stdin, in
    :meth:`_Run.execute`).  None where the test passed here already (a batch's later submissions: the warm
    pool serves them) or no jail can be made (the self-test then says why)."""
    if jails.self_test_passed():
        return None
    try:
        return _WarmProbe.start(spec, private)
    except Exception:  # noqa: BLE001 - the self-test, run next, names the fault
        return None


class _WarmProbe:
    """A jail opened and its runtime started, importing what notebooks need; it gets its one submission
    on stdin after it says ``ready`` (:meth:`_Run.execute`).  Nothing of any submission is in it before."""

    def __init__(self, stack: ExitStack, jail, child: subprocess.Popen, status_r: int, go_w: int):
        self.stack, self.jail, self.child, self.status_r, self.go_w = stack, jail, child, status_r, go_w

    @classmethod
    def start(cls, spec: _ProbeSpec, private) -> "_WarmProbe":
        stack = ExitStack()
        try:
            jail = stack.enter_context(jails.open_jail(private, python=spec.python, disk_mb=spec.disk_mb,
                                                       disk_files=spec.disk_files, memory_mb=spec.memory_mb or None))
            runtime = jail.put(protocol.RUNTIME_FILE, RUNTIME.read_bytes())
            jail.put(protocol.PROTOCOL_FILE, PROTOCOL.read_bytes())  # the runtime loads it before any student code
            data = jail.copy_in(Path(spec.data_file).name, Path(spec.data_file)) if spec.data_file else None
            setup = jail.put("setup.json", json.dumps({"real_fit": spec.real_fit, "data_file": data,
                                                       "data_setup": spec.data_setup if data else None}).encode())
            jail.hand_over()  # nothing is written into the folder after this
            env = jail.env({**settings.QUIET_LOGGING_ENV, "MPLBACKEND": "Agg", "KERAS_HOME": f"{jail.inside}/.keras",
                            "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": ""})
            if spec.keras_backend:
                env["KERAS_BACKEND"] = spec.keras_backend
            if spec.threads > 0:  # beside a retrain that uses every core: the probe's cells are light
                env.update({name: str(spec.threads) for name in PROBE_THREAD_VARIABLES})
            cmd = jail.command([jail.python, "-I", runtime, setup])
            status_r, status_w = os.pipe()
            go_r, go_w = os.pipe()  # the grader's go-ahead between cells (see _Run._go_ahead)
            os.set_blocking(go_w, False)
            stack.callback(os.close, go_w)
            try:
                if forkserver.unavailable(jail) is None:  # forked from a template that has imported the libraries
                    child = forkserver.start(jail, [runtime, setup, "3", "4"], env, spec.file_size_mb, status_w, go_r)
                    stack.callback(child.release)
                    return cls(stack, jail, child, status_r, go_w)
                child = children.popen(
                    [*cmd, str(status_w), str(go_r)], cwd=jail.work, env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(status_w, go_r),
                    start_new_session=True,
                    preexec_fn=_rlimits(spec.file_size_mb, jail.uid is not None, jail.preexec()))
            except BaseException:
                os.close(status_r)
                raise
            finally:
                os.close(status_w)
                os.close(go_r)
            return cls(stack, jail, child, status_r, go_w)
        except BaseException:
            stack.close()
            raise

    def alive(self) -> bool:
        return self.child.poll() is None

    def ready(self) -> bool:
        """Its runtime has said something (``ready`` comes first, after the imports)."""
        try:
            return bool(select.select([self.status_r], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def pids(self) -> set[int]:
        return {p.pid for p in processes.tree(self.child.pid)}

    def close(self) -> None:
        """Discard it unused: kill its processes, remove its folder, release its uid."""
        try:
            processes.kill_everything(self.child, processes.my_children() - set(processes.tree(self.child.pid)))
        finally:
            try:
                os.close(self.status_r)
            except OSError:
                pass
            self.stack.close()


def probe(
    notebook: str | os.PathLike,
    variables: list[str],
    functions: dict[str, list[dict]],
    *,
    limits: Limits = Limits(),
    real_fit: bool = False,
    data_file: str | os.PathLike | None = None,
    data_setup: str | None = None,
    private: list | tuple = (),
    files: dict[str, bytes] | None = None,
) -> ProbeResult:
    """Execute ``notebook`` in a jail and extract ``variables`` as plain data.

    ``files`` are put beside the notebook (what students have there, such as ``cnn_checks.py``): they
    travel with the submission on the jail's stdin and the runtime writes them, as the sandbox's own
    user, before the first cell (a warm jail was handed over before its submission was known).

    ``functions`` maps a variable that should hold a function to the calls to make on it
    (``{"args": [...], "kwargs": {...}}``); their outputs come back instead of the function.
    ``private`` names more folders the submission must not see (the autograder zip's, the
    submission's own).  ``files`` are put beside the notebook (what students have there, such as
    ``cnn_checks.py``).  The jail is self-tested first (once per process)."""
    result = ProbeResult()
    started = time.monotonic()
    from autograder.submission_files import SubmissionFileError, read_notebook

    try:  # never through a link; the reason names the fault, never the file's content
        nb = read_notebook(notebook)
    except SubmissionFileError as exc:
        result.fault = Fault("unreadable", f"the notebook could not be read: {exc}")
        return result
    private = [*private, Path(notebook).resolve().parent]
    processes.become_subreaper()
    try:
        spec = _probe_spec(limits, real_fit, data_file, data_setup)
    except jails.JailError:  # no jail can be made here: the self-test, run next, says why
        spec = None
    first = _start_beside_self_test(spec, private) if spec is not None else None
    try:
        result.isolation = dict(jails.self_test(private))
    except BaseException as exc:
        if first is not None:
            first.close()
        if not isinstance(exc, jails.JailError):
            raise
        result.fault = exc.fault.with_message(f"the sandbox is not safe to grade in: {exc}")
        result.seconds = round(time.monotonic() - started, 3)
        return result
    cells = code_cells(nb)
    skipped: dict[int, Fault] = {}  # cell -> what it did that brought the run down
    starved_runs = 0
    while True:
        run = _Run([(i, src) for i, src in cells if i not in skipped], variables, functions, limits, real_fit)
        run.files = dict(files or {})
        run.data_setup = data_setup
        run.execute(nb, data_file, private, result, ready=first)
        first = None
        result.runs += 1
        if run.starved and starved_runs < MAX_STARVED_RERUNS:  # the host's fault: the same run again, a moment later
            starved_runs += 1
            time.sleep(STARVED_PAUSE)
            continue
        if run.fault is not None and run.fault.graders:
            break
        culprit = run.crashed_cell
        if run.fault is not None and culprit is not None and run.rerunnable and result.runs <= MAX_RERUNS:
            skipped[culprit] = run.crash_reason
            result.limits_hit += run.limits_hit
            continue
        break
    result.values = run.values
    result.cells = sorted(run.cells + [{"index": i, "seconds": None, "error": f"not run: on an earlier run this cell "
                                        f"brought the whole notebook down ({why.message}); the rest was graded without it"}
                                       for i, why in skipped.items()], key=lambda c: c["index"])
    result.skipped = [{"index": i, "reason": why.message, "cause": why.cause} for i, why in skipped.items()]
    result.limits_hit += run.limits_hit
    result.fault = run.fault
    result.output = run.output
    result.seconds = round(time.monotonic() - started, 3)
    return result


class _Run:
    """One execution of the notebook in a fresh jail, with the parent owning every timer.

    The status pipe is untrusted: a message is accepted only where the protocol expects it
    (``ready``; then ``cell i`` / ``cell_done i`` for each real cell in order; ``step extract``;
    a bounded number of ``step probing NAME``; one ``value`` per requested name in order;
    ``done``).  Anything else is counted and ignored, so forged records cannot add cells.  The
    cell clock never stops between ``ready`` and ``done``: a message restarts it only when it
    advances the protocol, which it can do a bounded number of times, and the notebook limit,
    started at the first cell, is never restarted."""

    def __init__(self, cells, variables, functions, limits: Limits, real_fit: bool):
        self.job_cells, self.variables, self.functions = cells, variables, functions
        self.limits, self.real_fit = limits, real_fit
        self.expected = [i for i, _ in cells]
        self.probe_steps = {name: len(functions.get(name, [])) for name in variables}
        self.values: dict = {}
        self.cells: list = []
        self.limits_hit: list = []
        self.fault: Fault | None = None  # why this run ended before grading finished (see ProbeResult.fault)
        self.crashed_cell: int | None = None  # the cell that brought it down, if one did
        self.crash_reason: Fault | None = None  # what that cell did (a limit, an exit), said in skipped cells
        self.rerunnable = False
        self.output = ""
        self.phase = "startup"  # startup -> cells -> extract -> done
        self.position = 0  # next cell of self.expected
        self.current: int | None = None  # the cell running now
        self.step = "start-up"
        self.step_started = self.notebook_started = None
        self.value_position = 0
        self.ignored = 0
        self.lock = threading.Lock()
        self.uid: int | None = None  # the slot uid, once the jail is open
        self.files: dict[str, bytes] = {}  # put beside the notebook
        self.root_pid: int | None = None  # the jail's outermost process, once started
        self.process_culprit: int | None = None  # the cell that left too many processes behind
        self.go_fd: int | None = None  # write end of the go-ahead pipe the runtime waits on between cells
        self.on_ready = None  # hands the submission over once the jail's start-up is done
        self.group = None  # the jail's control group (None: no cgroup here; wall clocks only)
        self.step_cpu = self.notebook_cpu = 0.0  # the group's CPU seconds when the step / notebook clock started
        self.starved = False  # a wall backstop was reached while the jail waited for a CPU: the host's fault
        self.watchdog: Watchdog | None = None  # what meters this run (memory, processes, CPU time, run-queue waits)
        self.step_delays: dict[int, float] = {}  # the same when the step / notebook clock started
        self.notebook_delays: dict[int, float] = {}
        self.step_paused = self.notebook_paused = 0.0  # the watchdog's paused seconds when each clock started
        self.files: dict[str, bytes] = {}  # put beside the notebook (sent with the submission)
        self.data_setup: str | None = None  # the dataset's start-up code in the probe (Dataset.probe_setup)

    # -- status protocol --------------------------------------------------------------------
    def on_status(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            kind = msg["kind"]
        except Exception:
            self.ignored += 1
            return
        with self.lock:
            accepted = self._accept(msg, kind, time.monotonic())
            if not accepted:
                self.ignored += 1
                return
            if kind == protocol.CELL_DONE and self.process_culprit is None:
                self._go_ahead()
        if kind == protocol.READY and self.on_ready is not None:
            self.on_ready()

    def _go_ahead(self) -> None:
        """Let the runtime start its next cell.  Non-blocking: a notebook that reopened the
        pipe and filled it only loses its own attribution, never stalls the grader."""
        if self.go_fd is not None:
            try:
                os.write(self.go_fd, b"g")
            except OSError:
                pass
        self.step_started = time.monotonic()  # the check above was the grader's time, not the student's
        self._mark_step()

    def cpu(self) -> float | None:
        """The jail's own CPU seconds since its watch began (its cgroup's), or None without a cgroup."""
        return self.watchdog.cpu() if self.watchdog is not None else None

    def _mark_step(self) -> None:
        """The step clock started: note the jail's CPU time, run-queue wait and paused time with it."""
        self.step_cpu = self.cpu() or 0.0
        self.step_delays = self.watchdog.delays if self.watchdog is not None else {}
        self.step_paused = self.watchdog.paused if self.watchdog is not None else 0.0

    def _begin_step(self, label: str, now: float) -> None:
        self.step, self.step_started = label, now
        self._mark_step()
        if self.notebook_started is None:  # the notebook's clock starts with the first student code
            self.notebook_started = now
            self.notebook_cpu, self.notebook_delays = self.step_cpu, self.step_delays
            self.notebook_paused = self.step_paused

    def _accept(self, msg: dict, kind, now: float) -> bool:
        if kind == protocol.READY and self.phase == "startup":
            self.phase = "cells"
            self.step, self.step_started = "between cells", now
            self._mark_step()
            return True
        if kind == protocol.CELL and self.phase == "cells" and self.current is None:
            index = msg.get("index")
            if self.position < len(self.expected) and type(index) is int and index == self.expected[self.position]:
                self.current = index
                self._begin_step(f"cell {index}", now)
                return True
            return False
        if kind == protocol.CELL_DONE and self.phase == "cells" and self.current is not None:
            if msg.get("index") != self.current or type(msg.get("index")) is not int:
                return False
            error = msg.get("error")
            error = None if error is None else clean_text(error)
            self.cells.append({"index": self.current, "seconds": round(now - self.step_started, 3), "error": error})
            if self.process_culprit is None and self._process_count() > self.limits.max_processes:
                # counted here, before the next cell starts, so a busy watcher cannot blame a later cell
                self.process_culprit = self.current
            self.current = None
            self.position += 1
            self.step, self.step_started = "between cells", now  # the clock keeps running until the next cell
            self._mark_step()
            return True
        if kind == protocol.STEP and msg.get("label") == "extract" and self.phase == "cells" and self.current is None \
                and self.position == len(self.expected):
            self.phase = "extract"
            self._begin_step("extract", now)
            return True
        if kind == protocol.STEP and self.phase == "extract":
            label = msg.get("label")
            name = label[len("probing "):] if isinstance(label, str) and label.startswith("probing ") else None
            if name is not None and self.probe_steps.get(name, 0) > 0:
                self.probe_steps[name] -= 1
                self._begin_step(f"probing {name}", now)
                return True
            return False
        if kind == protocol.VALUE and self.phase == "extract" and self.value_position < len(self.variables):
            name = self.variables[self.value_position]
            if msg.get("name") != name or not isinstance(msg.get("data"), dict):
                return False
            planned = len(self.functions[name]) if name in self.functions else None
            self.values[name] = checked_value(msg["data"], planned)
            self.value_position += 1
            return True
        if kind == protocol.DONE and self.phase == "extract" and self.value_position == len(self.variables):
            self.phase = "done"
            return True
        return False

    def _process_count(self) -> int:
        if self.root_pid is None:
            return 0
        procs = {p.pid for p in processes.tree(self.root_pid)}
        return len(procs | {p.pid for p in processes.uid_processes(self.uid)})

    # -- one run ----------------------------------------------------------------------------
    def execute(self, nb, data_file, private, into: ProbeResult, ready: "_WarmProbe | None" = None) -> None:
        """One run, in ``ready`` (a jail started for it beside the self-test), a warm jail, or a new one."""
        spec = _probe_spec(self.limits, self.real_fit, data_file, self.data_setup)
        if ready is not None and not ready.alive():  # it ended during its start-up: a fresh one, as a warm jail's
            ready.close()
            ready = None
        started = ready or warm.PROBES.take(spec, lambda w: w.jail.hides_as_much_as(private))
        into.warm_starts.append(started is not None and ready is None)
        if started is None:
            started = _WarmProbe.start(spec, private)
        jail, child = started.jail, started.child
        preexisting = processes.my_children() - set(processes.tree(child.pid))
        try:  # from here on the jail is ours: whatever happens, it is killed and its folder and uid released
            warm.PROBES.fill(spec, lambda: _WarmProbe.start(spec, private))  # the next jail warms up meanwhile
            into.isolation["uid"] = jail.uid
            self.uid = jail.uid
            self.group = jail.group
            into.isolation["cgroup"] = jail.group.version if jail.group else None
            # this run's own group and disk (or why it has none), in place of the self-test's
            shown = (into.isolation.get("metering"), into.isolation.get("disk"))
            notes = [n for n in into.isolation.get("notes", []) if n not in shown]
            into.isolation["notes"] = notes + [jail.metering, jail.disk_note]
            into.isolation["metering"], into.isolation["disk"] = jail.metering, jail.disk_note
            into.isolation["started"] = "forked" if isinstance(child, forkserver.ForkedChild) else "fresh"
            files = {name: base64.b64encode(data).decode() for name, data in self.files.items()}
            job = json.dumps({"cells": self.job_cells, "variables": self.variables, "functions": self.functions,
                              "files": files}).encode()

            def hand_over() -> None:  # the submission goes to this jail alone, once it is ready for it
                try:
                    child.stdin.write(job)
                    child.stdin.close()
                except (OSError, ValueError):
                    pass  # it died: the watchdog reports it

            self.on_ready = lambda: threading.Thread(target=hand_over, daemon=True).start()
            self.go_fd = started.go_w
            with _DiskWatch(self, jail, child.pid):
                self._watch(child, started.status_r, preexisting)
        finally:
            processes.kill_everything(child, preexisting)
            with self.lock:
                self.go_fd = None
            started.stack.close()

    def _watch(self, child: subprocess.Popen, status_r: int, preexisting: set[psutil.Process]) -> None:
        limits = self.limits
        self.root_pid = child.pid
        output = _BoundedBuffer(limits.output_kb * 1024)

        def read_output() -> None:
            while chunk := child.stdout.read1(65536):
                output.feed(chunk)

        def read_status() -> None:
            buf, total = b"", 0
            with os.fdopen(status_r, "rb") as f:
                while chunk := f.read1(1 << 20):
                    total += len(chunk)
                    if total > MAX_STATUS_BYTES:  # a flood on the status pipe: stop listening
                        self.limits_hit.append(f"status stream exceeded {MAX_STATUS_BYTES >> 20} MiB")
                        return
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if len(line) > MAX_STATUS_LINE:
                            self.ignored += 1
                        else:
                            self.on_status(line)
                    if len(buf) > MAX_STATUS_LINE:  # a line without end: drop it up to its newline
                        self.ignored += 1
                        buf, skipping = b"", True
                        while skipping and (chunk := f.read1(1 << 20)):
                            total += len(chunk)
                            if total > MAX_STATUS_BYTES:
                                self.limits_hit.append(f"status stream exceeded {MAX_STATUS_BYTES >> 20} MiB")
                                return
                            if b"\n" in chunk:
                                buf, skipping = chunk.split(b"\n", 1)[1], False

        watchdog = Watchdog(child, group=self.group, uid=self.uid, run_delays=True)
        self.watchdog = watchdog  # before the status reader starts: its clocks read it
        threads = [threading.Thread(target=read_output, daemon=True), threading.Thread(target=read_status, daemon=True)]
        for t in threads:
            t.start()
        metered = watchdog.metered  # the clocks below count the jail's own CPU time, wall time as a backstop
        interrupted = None
        interrupted_at = interrupted_cpu = 0.0
        runtime_pid = None
        memory_limit = limits.memory_mb * 1024 * 1024

        def rule(r: Reading) -> _Stop | None:  # None: go on
            nonlocal interrupted, interrupted_at, interrupted_cpu, runtime_pid
            with self.lock:
                phase, step, step_started, nb_started = self.phase, self.step, self.step_started, self.notebook_started
                step_cpu, nb_cpu = self.step_cpu, self.notebook_cpu
                step_delays, nb_delays = self.step_delays, self.notebook_delays
                step_paused, nb_paused = self.step_paused, self.notebook_paused
                running = phase in ("cells", "extract")  # no state without a clock: see _accept
            now, cpu_now = r.now, r.cpu
            if phase == "startup":
                used = cpu_now if metered else r.wall
                if used > jails.STARTUP_SECONDS or r.wall > jails.STARTUP_SECONDS * (clocks.WALL_BACKSTOP if metered else 1):
                    return _Stop("timeout_infrastructure", f"the probe did not start within {jails.STARTUP_SECONDS:.0f} s "
                                 "(grader start-up, before any student code); the machine may be overloaded")
                if r.memory > memory_limit or r.oom:
                    return _startup_memory(limits)
                return None
            if r.memory > memory_limit or r.oom:
                return _Stop("memory_limit", f"memory limit ({limits.memory_mb} MiB"
                             f"{', enforced by the kernel' if r.oom else ''}) exceeded", step)
            with self.lock:
                left_behind = self.process_culprit
            if r.processes > limits.max_processes or left_behind is not None:
                if left_behind is not None:
                    step = f"cell {left_behind}"
                return _Stop("process_limit", f"process limit ({limits.max_processes}) exceeded", step)
            if running and runtime_pid is None:
                runtime_pid = _runtime_pid(child.pid)  # its main thread runs the cells: whose wait is the host's
            if nb_started is not None:
                wall = now - nb_started - (watchdog.paused - nb_paused)  # the host's measurements left out
                nb_waited = clocks.waited(watchdog.delays, nb_delays, runtime_pid) if metered else 0.0
                charged = clocks.charged(cpu_now - nb_cpu, wall, nb_waited) if metered else wall
                speed = host_speed() if metered and charged > limits.notebook_seconds else None
                if calibration.normal_seconds(charged, (cpu_now or 0.0) - nb_cpu, speed) > limits.notebook_seconds:
                    return _Stop("notebook_time_limit", f"notebook time limit ({limits.notebook_seconds:.0f} s) reached",
                                 step, _normal_speed_note(speed))
                if metered and wall > clocks.WALL_BACKSTOP * limits.notebook_seconds:
                    speed = host_speed()
                    if clocks.starved(nb_waited, wall) or speed.slow:
                        self.starved = True
                        return _Stop("host_slow", _starved_message("the notebook", cpu_now - nb_cpu, wall, speed))
                    return _Stop("notebook_time_limit", f"notebook time limit ({limits.notebook_seconds:.0f} s) reached",
                                 step, f" (wall-clock backstop of {clocks.WALL_BACKSTOP * limits.notebook_seconds:.0f} s: "
                                       "it mostly waited)")
            over, how = 0.0, ""
            if running and step_started:
                wall = now - step_started - (watchdog.paused - step_paused)  # the host's measurements left out
                waited = clocks.waited(watchdog.delays, step_delays, runtime_pid) if metered else 0.0
                charged = clocks.charged(cpu_now - step_cpu, wall, waited) if metered else wall
                speed = host_speed() if metered and charged > limits.cell_seconds else None
                over = calibration.normal_seconds(charged, (cpu_now or 0.0) - step_cpu, speed) - limits.cell_seconds
                how = _normal_speed_note(speed)
                if metered and over <= 0 and wall > clocks.WALL_BACKSTOP * limits.cell_seconds:
                    speed = host_speed()
                    if clocks.starved(waited, wall) or speed.slow:
                        self.starved = True
                        return _Stop("host_slow", _starved_message(step, cpu_now - step_cpu, wall, speed))
                    over = wall - clocks.WALL_BACKSTOP * limits.cell_seconds
                    how = f" (wall-clock backstop of {clocks.WALL_BACKSTOP * limits.cell_seconds:.0f} s: it mostly waited)"
            if over > 0:
                if interrupted != (step, step_started):
                    interrupted = (step, step_started)
                    interrupted_at, interrupted_cpu = now, cpu_now or 0.0
                    self.limits_hit.append(f"cell time limit ({limits.cell_seconds:.0f} s) reached in {step}{how}")
                    runtime_pid = runtime_pid or _runtime_pid(child.pid)
                    try:
                        os.kill(runtime_pid or child.pid, signal.SIGINT)
                    except OSError:
                        pass
                elif ((cpu_now - interrupted_cpu if metered else now - interrupted_at) > 10
                      or now - interrupted_at > 10 * clocks.WALL_BACKSTOP):  # the interrupt was ignored: this run cannot go on
                    return _Stop("interrupt_ignored", "ignored the interrupt of its time limit", step)
            return None

        measured: list = [None, float("-inf")]  # the host's speed, and when it was measured

        def host_speed() -> HostSpeed:
            """The host against its calibration, measured with the jail frozen, at most every SPEED_TTL seconds."""
            if time.monotonic() - measured[1] > SPEED_TTL:
                measured[:] = [watchdog.host_speed(1), time.monotonic()]
            return measured[0]

        stop = watchdog.watch(rule)
        if stop is None and watchdog.oom_killed():  # the kernel ended it: whose memory?
            stop = (_startup_memory(limits) if self.phase == "startup" else
                    _Stop("memory_limit", f"memory limit ({limits.memory_mb} MiB, enforced by the kernel) exceeded",
                          self.step))
        if self.group is not None:
            self.group.kill()  # everything in the jail's group, whatever session or uid it took
        processes.kill_everything(child, preexisting)
        for t in threads:
            t.join(timeout=5)
        # Blame only once the status reader has read everything the runtime wrote: on a loaded machine
        # the runtime may have started its next cell (and filled the memory) before its `cell` message
        # was read, which the watchdog then saw as time "between cells".
        with self.lock:
            culprit = self.current if self.process_culprit is None else self.process_culprit
            if stop is not None and culprit is not None and stop.step == "between cells":
                stop.step = f"cell {culprit}"
        self.output = output.text()
        if self.ignored:
            self.limits_hit.append(f"{self.ignored} forged or out-of-order status message(s) ignored")
        if stop is not None and stop.fault().graders:
            self.fault = stop.fault()
            return
        if stop is not None:
            self.limits_hit.append(stop.message)
        if self.phase == "startup":
            self.fault = Fault("interpreter", f"the probe stopped during the grader's start-up, before any student code "
                                              f"ran (exit {child.returncode}): {self.output[-1500:].strip()}")
            return
        if self.phase != "done":
            why = stop.fault() if stop is not None else Fault("crashed", _exit_reason(child.returncode))
            self.crash_reason = why
            where = "" if stop is not None and stop.step else f", during {self.step}"  # said once
            self.fault = Fault(why.cause, f"the submission stopped before grading finished ({why.message}{where})")
            self.crashed_cell = culprit
            self.rerunnable = culprit is not None and why.cause != "notebook_time_limit"


@dataclass
class _Stop:
    """Why the watchdog stopped a run: a fault whose message, for the submission's limits, names the step (a cell
    is named once the status reader has caught up, see :meth:`_Run._watch`)."""

    cause: str  # autograder.faults.CAUSES
    what: str  # the limit, or what happened
    step: str | None = None  # where it happened (the submission's faults)
    detail: str = ""  # said after the step

    @property
    def message(self) -> str:
        return self.what if self.step is None else f"{self.what} during {self.step}{self.detail}"

    def fault(self) -> Fault:
        return Fault(self.cause, self.message)


def _startup_memory(limits: Limits) -> _Stop:
    return _Stop("host_limit", f"the probe's own start-up needs more than the memory limit ({limits.memory_mb} MiB); "
                               "raise --memory-mb")


class _DiskWatch:
    """While a run's watchdog runs: notes in ``limits_hit`` the first step in which the jail's disk was full
    (the kernel refuses the write, which fails in the student's cell; the run goes on).  A thread of its own
    that reads the file system's free space a few times a second."""

    INTERVAL = 0.2

    def __init__(self, run: "_Run", jail, outer_pid: int):
        self.run, self.jail, self.outer_pid = run, jail, outer_pid
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "_DiskWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        inside = None
        while not self.stop.wait(self.INTERVAL):
            with self.run.lock:
                phase, step = self.run.phase, self.run.step
            if phase not in ("cells", "extract"):
                continue
            if self.jail.disk_how == "bwrap" and inside is None:  # bubblewrap's tmpfs: seen through the jail's root
                inside = _runtime_pid(self.outer_pid)
            if self.jail.disk_full(inside):
                with self.run.lock:
                    self.run.limits_hit.append(f"{self.jail.disk_limit} reached during {step}")
                return


def _starved_message(step: str, cpu: float, wall: float, speed: HostSpeed | None = None) -> str:
    slow = f", and {speed.describe()}" if speed is not None and speed.slow else ""
    return (f"the host was overloaded: {step} got {cpu:.1f} s of CPU in {wall:.0f} s while waiting for a CPU{slow}, "
            f"on {1 + MAX_STARVED_RERUNS} runs; not the submission's fault, it is graded again on the next run")


def _normal_speed_note(speed: HostSpeed | None) -> str:
    """For a limit reached on a host measured slower than its calibration: how it was counted."""
    if speed is None or not speed.slow:
        return ""
    return f" (its CPU time counted at the host's normal speed: {speed.describe()})"


def _exit_reason(code: int | None) -> str:
    """bubblewrap reports a child killed by signal N as status 128 + N."""
    signum = -code if code is not None and code < 0 else (code - 128 if code is not None and 128 < code < 160 else 0)
    try:
        return f"killed by signal {signal.Signals(signum).name}"
    except ValueError:
        return f"exited with status {code}"


def _runtime_pid(outer: int) -> int | None:
    """The probe runtime's pid: under bubblewrap, the first process below the bwrap processes."""
    if forkserver.is_outer(outer):  # a forked jail: by position, whatever its processes call themselves
        return forkserver.runtime_pid(outer)
    try:
        p = psutil.Process(outer)
        while p.name() == "bwrap":
            kids = p.children()
            if not kids:
                return None
            p = min(kids, key=lambda k: k.create_time())
        return p.pid
    except psutil.Error:
        return None
