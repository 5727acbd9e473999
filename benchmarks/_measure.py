"""Shared by the benchmarks: wall time and peak memory of this process plus all its children."""

from __future__ import annotations

import resource
import threading
import time
from contextlib import contextmanager

import psutil


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def measured(label: str, sink: dict):
    """Record seconds, CPU seconds (this process plus the children it waited for: less sensitive to
    other load on a shared machine than wall time) and peak resident memory (MiB, whole process
    tree, sampled every 50 ms)."""
    me = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    try:
        yield
    finally:
        sink[label] = {"seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu_started,
                       "peak_mib": peak[0] / 2**20}
        stop.set()
        t.join()


def report(results: dict, baseline: str, ours: str) -> None:
    for label, r in results.items():
        print(f"{label:40s} {r['seconds']:9.2f} s   CPU {r.get('cpu_seconds', 0):8.1f} s   peak {r['peak_mib']:8.0f} MiB")
    ratio = results[baseline]["seconds"] / results[ours]["seconds"]
    print(f"ratio {baseline} / {ours}: {ratio:.2f}x (time)")
    if results[ours].get("cpu_seconds"):
        print(f"ratio of CPU seconds: {results[baseline]['cpu_seconds'] / results[ours]['cpu_seconds']:.2f}x")
