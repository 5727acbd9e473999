"""The host's calibration: how fast this machine runs a fixed reference workload when it runs normally, measured
on it and kept per host, so that a limit reached can be told apart as the host's fault or the run's.

The reference is a fixed amount of CPU work (SHA-256 over a fixed buffer, which releases the GIL) run in as many
threads at once as the metered run uses; :func:`measure` times it (the median of a few repeats, wall time).  The
calibration of a host (its name, CPU model and cores, and the thread count) is the fastest such measurement
seen on it so far, kept in a small JSON file (``CNN_GRADER_CALIBRATION``, by default in the grader's cache
folder; written 0600 and replaced atomically).  :func:`host_speed` measures now and compares: a host whose
reference now takes ``HOST_SLOW_FACTOR`` times its calibration or longer is measurably slower than normal.

The rule every metered clock applies (the probe's cell and notebook limits, a retrain's projection and its
deadline): a limit reached is the run's own when it would be reached on this host running normally, that is
with its CPU-bound time divided by the measured slowdown (:func:`normal_seconds`); only what a host measurably
slower than its calibration alone pushed over the limit is the host's.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from autograder import settings

REFERENCE_PASSES = 16  # SHA-256 over a 1 MiB buffer this many times per thread: 10-50 ms on a current core
REPEATS = 5  # the median of this many timings
HOST_SLOW_FACTOR = 1.5  # a reference this many times slower than the calibration: the host is measurably slow
_BUFFER = bytes(range(256)) * 4096  # 1 MiB


def _one_round(threads: int) -> float:
    """Wall seconds for ``threads`` threads to each hash the reference buffer, all at once."""
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        digest = hashlib.sha256()
        for _ in range(REFERENCE_PASSES):
            digest.update(_BUFFER)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    started = time.perf_counter()
    barrier.wait()
    for w in workers:
        w.join()
    return time.perf_counter() - started


def measure(threads: int = 1) -> float:
    """The reference's seconds on this host now (median of ``REPEATS``), in ``threads`` threads at once."""
    threads = max(int(threads), 1)
    return statistics.median(_one_round(threads) for _ in range(REPEATS))


def host_key(threads: int) -> str:
    """Which host (and thread count) a calibration belongs to: a copied cache folder calibrates anew."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.node()}|{model}|{os.cpu_count()}|threads={max(int(threads), 1)}"


def _load(path: Path) -> dict:
    """The calibrations kept at ``path``; none from a file the grader does not own or others may write (a
    forged, tiny calibration would make every host look slow and every limit it reached the host's)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return {}
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            data = json.loads(f.read(1 << 20))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the calibration is not kept, every measurement stands alone
        pass


@dataclass(frozen=True)
class HostSpeed:
    """The reference measured now against this host's calibration."""

    seconds: float  # the reference now
    calibrated: float  # the fastest ever seen on this host (its normal speed)

    @property
    def slowdown(self) -> float:
        """How many times slower than normal the host runs now (1.0: at its calibrated speed or faster)."""
        return max(self.seconds / self.calibrated, 1.0) if self.calibrated > 0 else 1.0

    @property
    def slow(self) -> bool:
        """Measurably slower than its calibration: a limit it alone pushed a run over is the host's fault."""
        return self.slowdown >= HOST_SLOW_FACTOR

    def describe(self) -> str:
        return (f"the host ran its reference workload in {self.seconds * 1000:.0f} ms against {self.calibrated * 1000:.0f} "
                f"ms when it runs normally ({self.slowdown:.1f}x)")


def host_speed(threads: int = 1, path: Path | None = None) -> HostSpeed:
    """Measure the reference now and compare it with this host's calibration (``path``: the configuration's
    calibration file); a faster measurement than any before becomes the calibration."""
    path = path or settings.current().calibration_file
    now = measure(threads)
    data, key = _load(path), host_key(threads)
    entry = data.get(key) if isinstance(data.get(key), dict) else {}
    calibrated = entry.get("seconds")
    if not isinstance(calibrated, (int, float)) or calibrated <= 0 or now < calibrated:
        data[key] = {"seconds": now, "measured": time.time()}
        _store(path, data)
        calibrated = now if not isinstance(calibrated, (int, float)) or calibrated <= 0 else min(now, calibrated)
    return HostSpeed(now, float(calibrated))


def normal_seconds(charged: float, cpu: float, speed: HostSpeed | None) -> float:
    """What ``charged`` seconds (of which ``cpu`` were CPU-bound) would have been on this host running normally:
    the CPU-bound part divided by its slowdown, where the host is measurably slow; the rest (sleeping, waiting
    on the run's own work) as it was.  Without a measurement, as charged."""
    if speed is None or not speed.slow:
        return charged
    cpu = min(max(cpu, 0.0), charged)
    return (charged - cpu) + cpu / speed.slowdown
