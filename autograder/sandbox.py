"""Probe: execute one untrusted submission in its own process, under limits, and collect data.

The child (:mod:`autograder.probe_runtime`) runs in a fresh temporary folder holding only the
notebook and a read-only link to MNIST; no tests, no solutions.  This parent enforces:

* a wall-time limit per cell (SIGINT, which IPython turns into an error in that cell only)
  and per notebook (the whole process tree is killed);
* a memory limit on the resident size of the whole process tree, and a process-count limit
  (fork bombs), checked by a watchdog thread;
* capped output (only the head and tail of stdout/stderr are kept);
* where the platform allows it: no network (a fresh network namespace) and, when the grader
  runs as root, an unprivileged user so the submission cannot write the grader's files.

Whatever happens, :func:`probe` returns a :class:`ProbeResult`; it never raises for anything
the submission does and never leaves a process behind.
"""

from __future__ import annotations

import base64
import ctypes
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil

RUNTIME = Path(__file__).with_name("probe_runtime.py")
UNPRIVILEGED_UID = 65534  # nobody


@dataclass(frozen=True)
class Limits:
    """Resource limits for one submission (instructors may raise them for slow machines)."""

    cell_seconds: float = 120.0
    notebook_seconds: float = 600.0
    memory_mb: int = 6144
    max_processes: int = 64
    output_kb: int = 64
    file_size_mb: int = 512


@dataclass
class ProbeResult:
    values: dict = field(default_factory=dict)  # variable -> untrusted plain data (see probe_runtime)
    cells: list = field(default_factory=list)  # per executed cell: index, seconds, error
    limits_hit: list = field(default_factory=list)
    crashed: str | None = None  # why the child ended before extraction finished, if it did
    output: str = ""
    seconds: float = 0.0
    isolation: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.crashed is None


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


def _become_subreaper() -> None:
    """Orphans of the submission (double forks) re-parent to us, so we can kill them all."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _isolation_prefix() -> tuple[list[str], list[str]]:
    """Command prefix for network and user isolation, as far as this platform allows."""
    prefix, notes = [], []
    if shutil.which("unshare"):
        for candidate in (["unshare", "--net"], ["unshare", "--user", "--map-root-user", "--net"]):
            if subprocess.run(candidate + ["true"], capture_output=True).returncode == 0:
                prefix += candidate
                notes.append("no network (own network namespace)")
                break
    if os.geteuid() == 0 and shutil.which("setpriv"):
        prefix += ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}", "--clear-groups",
                   "--pdeathsig", "KILL"]
        notes.append("runs as an unprivileged user")
    if not notes:
        notes.append("no OS-level isolation available: limits and integrity checks only")
    return prefix, notes


_PREFIX_CACHE: tuple[list[str], list[str]] | None = None


def isolation() -> tuple[list[str], list[str]]:
    global _PREFIX_CACHE
    if _PREFIX_CACHE is None:
        _PREFIX_CACHE = _isolation_prefix()
    return _PREFIX_CACHE


def code_cells(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _my_children() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def _kill_everything(child: subprocess.Popen, preexisting: set[int]) -> None:
    """Kill the child, its descendants, and any orphan of it that re-parented to this process
    (we are a subreaper); processes this grader had before the probe are left alone.

    The child dies first so it cannot spawn more; then we sweep until nothing new appears,
    because a process born between two looks would otherwise escape."""
    me = psutil.Process()
    for kill in (lambda: os.killpg(child.pid, signal.SIGKILL), child.kill):
        try:
            kill()
        except OSError:
            pass
    for _ in range(50):
        victims = _tree(child.pid)
        try:
            victims += [p for p in me.children(recursive=True) if p.pid != child.pid and p.pid not in preexisting]
        except psutil.Error:
            pass
        alive = []
        for p in victims:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
                    alive.append(p)
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=0.5)  # also reaps orphans that became our children
        if not alive:
            break
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _rlimits(file_size_mb: int, unprivileged: bool):
    def apply() -> None:
        try:  # if the grader dies (even by SIGKILL), the submission dies with it
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:
            pass
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        size = file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        if unprivileged:  # counts the unprivileged user's threads too; TF uses many
            resource.setrlimit(resource.RLIMIT_NPROC, (4096, 4096))

    return apply


def probe(
    notebook: str | os.PathLike,
    variables: list[str],
    functions: dict[str, list[dict]],
    *,
    limits: Limits = Limits(),
    real_fit: bool = False,
    mnist_npz: str | os.PathLike | None = None,
) -> ProbeResult:
    """Execute ``notebook`` in a sandbox and extract ``variables`` as plain data.

    ``functions`` maps a variable that should hold a function to the calls to make on it
    (``{"args": [...], "kwargs": {...}}``); their outputs come back instead of the function.
    """
    result = ProbeResult()
    started = time.monotonic()
    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except Exception as exc:
        result.crashed = f"the notebook could not be read: {type(exc).__name__}: {exc}"
        return result

    prefix, result.isolation = isolation()
    unprivileged = "setpriv" in prefix
    _become_subreaper()
    with tempfile.TemporaryDirectory(prefix="cnn-probe-") as tmp:
        work = Path(tmp)
        if unprivileged:
            os.chmod(work, 0o777)
        nb_path = work / "submission.ipynb"
        nbformat.write(nb, nb_path)
        mnist_in_sandbox = None
        if mnist_npz:
            mnist_in_sandbox = work / "mnist.npz"
            try:
                os.link(mnist_npz, mnist_in_sandbox)
            except OSError:
                shutil.copy(mnist_npz, mnist_in_sandbox)
            os.chmod(mnist_in_sandbox, 0o444)
        job = {"cells": code_cells(nb), "variables": variables, "functions": functions,
               "real_fit": real_fit, "mnist_npz": str(mnist_in_sandbox) if mnist_in_sandbox else None}
        (work / "job.json").write_text(json.dumps(job))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LANG": "C.UTF-8",
            "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_HOME": str(work / ".keras"),
            "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": "",
        }
        if "KERAS_BACKEND" in os.environ:
            env["KERAS_BACKEND"] = os.environ["KERAS_BACKEND"]
        preexisting = _my_children()
        status_r, status_w = os.pipe()
        cmd = [*prefix, sys.executable, "-I", str(RUNTIME), str(work / "job.json"), str(status_w)]
        child = subprocess.Popen(
            cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, pass_fds=(status_w,), start_new_session=True,
            preexec_fn=_rlimits(limits.file_size_mb, unprivileged),
        )
        os.close(status_w)
        output = _BoundedBuffer(limits.output_kb * 1024)
        state = {"step": "start", "step_started": time.monotonic(), "done": False}

        def read_output() -> None:
            while chunk := child.stdout.read1(65536):
                output.feed(chunk)

        def read_status() -> None:
            buf = b""
            with os.fdopen(status_r, "rb") as f:
                while chunk := f.read1(1 << 20):
                    buf += chunk
                    if len(buf) > 64 * 1024 * 1024:  # a flood on the status pipe: stop listening
                        result.limits_hit.append("status stream exceeded 64 MiB")
                        return
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        _on_status(line)

        def _on_status(line: bytes) -> None:
            try:
                msg = json.loads(line)
                kind = msg.get("kind")
            except Exception:
                return
            now = time.monotonic()
            if kind in ("cell", "step"):
                state["step"] = f"cell {msg.get('index')}" if kind == "cell" else str(msg.get("label"))
                state["step_started"] = now
            elif kind == "cell_done":
                result.cells.append({k: msg.get(k) for k in ("index", "seconds", "error")})
            elif kind == "value" and isinstance(msg.get("name"), str) and msg["name"] in variables:
                result.values.setdefault(msg["name"], msg.get("data"))
            elif kind == "done":
                state["done"] = True

        threads = [threading.Thread(target=read_output, daemon=True),
                   threading.Thread(target=read_status, daemon=True)]
        for t in threads:
            t.start()

        interrupted_step = None
        while child.poll() is None:
            time.sleep(0.05)
            now = time.monotonic()
            procs = _tree(child.pid)
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            if rss > limits.memory_mb * 1024 * 1024:
                result.limits_hit.append(f"memory limit ({limits.memory_mb} MiB) exceeded during {state['step']}")
                break
            if len(procs) > limits.max_processes:
                result.limits_hit.append(f"process limit ({limits.max_processes}) exceeded during {state['step']}")
                break
            if now - started > limits.notebook_seconds:
                result.limits_hit.append(f"notebook time limit ({limits.notebook_seconds:.0f} s) reached during {state['step']}")
                break
            over = now - state["step_started"] - limits.cell_seconds
            if over > 0:
                if interrupted_step != (state["step"], state["step_started"]):
                    interrupted_step = (state["step"], state["step_started"])
                    result.limits_hit.append(f"cell time limit ({limits.cell_seconds:.0f} s) reached in {state['step']}")
                    try:
                        os.kill(child.pid, signal.SIGINT)
                    except OSError:
                        pass
                elif over > 10:  # the interrupt was ignored: give up on this submission
                    result.limits_hit.append(f"{state['step']} ignored the interrupt")
                    break
        _kill_everything(child, preexisting)
        for t in threads:
            t.join(timeout=5)
        result.output = output.text()
        if not state["done"]:
            code = child.returncode
            why = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exited with status {code}")
            if result.limits_hit:
                why = result.limits_hit[-1]
            result.crashed = f"the submission stopped before grading finished ({why}, during {state['step']})"
    result.seconds = round(time.monotonic() - started, 3)
    return result


def decode_npy(b64: str, max_elements: int = 1_000_000):
    """Untrusted ``.npy`` bytes to an array: no pickle, numeric dtypes only, size capped."""
    import numpy as np

    raw = base64.b64decode(b64, validate=True)
    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    if arr.dtype.kind not in "biuf" or arr.size > max_elements:
        raise ValueError(f"refusing array of dtype {arr.dtype} and size {arr.size}")
    return arr
