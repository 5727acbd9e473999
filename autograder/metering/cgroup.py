"""A kernel-metered control group per jail (and per retraining process): what a submission uses,
counted and capped by the kernel rather than sampled by a watchdog.

Each group gets, where the controllers exist:

* a memory limit that charges kernel memory too (socket buffers, page tables, tmpfs, shm: cgroup v1's
  ``memory.usage_in_bytes`` includes kernel memory on current kernels; v2's ``memory.max`` charges it
  natively), with swap off (``memory.memsw.limit_in_bytes`` / ``memory.swap.max``);
* an equal CPU weight (v1 ``cpu.shares`` / v2 ``cpu.weight``) and a CPU quota
  (``cpu.cfs_quota_us`` / ``cpu.max``; :data:`CPU_CORES_PER_JAIL` cores, the one place to change it);
* ``pids.max``, which counts threads as well as processes.

It reads the group's CPU time (``cpuacct.usage`` / ``cpu.stat usage_usec``), its memory in use and
peak, and its OOM kills (``memory.oom_control oom_kill`` / ``memory.events oom_kill``), and kills by
group (v2 ``cgroup.kill``; else freeze where a freezer exists and SIGKILL every pid listed in
``cgroup.procs`` until none is left) before it removes the group.

Groups are made below the grader's own group (read from ``/proc/self/cgroup``; a grader may itself
sit in a sub-group such as a container's).  On v2, controllers are enabled through the parent's
``cgroup.subtree_control``; as a group with processes may not also hand controllers to children
("no internal processes"), the grader's own processes first move to a leaf of their group.

Where no group can be made (not root, controllers missing or read-only, ``CNN_GRADER_NO_CGROUP=1``),
:func:`create` returns ``None`` and :func:`unavailable` says why: results and the self-test then carry
:data:`NO_CGROUP_NOTE`, and the watchdog's samples (RSS, memfd, shm; wall clocks) are all there is.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from autograder import settings

ENV_DISABLE = settings.NO_CGROUP.name  # "1": act as if no cgroup could be made (tests; hosts that forbid it)
CPU_CORES_PER_JAIL = 1.0  # the CPU quota of one jail, in cores: the one place to change it
CPU_PERIOD_US = 100_000
PIDS_MAX = 4096  # tasks (threads included) in one group: TensorFlow starts many threads
NO_CGROUP_NOTE = "no cgroup: memory/CPU/pids not metered by the kernel (sampled by the watchdog only)"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")  # cpuacct may share a mount with cpu ("cpu,cpuacct")
V2_CONTROLLERS = ("memory", "cpu", "pids")
PREFIX = "cnn-grader"
STALE_SECONDS = 3600.0
LEAF = f"{PREFIX}-self"  # v2: where the grader's own processes move so its group may delegate

_COUNTER = itertools.count()
_LOCK = threading.Lock()
_LAYOUT: dict = {}  # cached: ("v1", {controller: folder}) / ("v2", folder) / ("none", reason)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _mounts() -> list[tuple[str, str, str, set]]:
    """(mount point, root within the hierarchy, type, super options) of every cgroup mount."""
    found = []
    try:
        lines = _read(Path("/proc/self/mountinfo")).splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        found.append((point, fields[3], rest[0], set(rest[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's group path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    try:
        lines = _read(Path("/proc/self/cgroup")).splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _inside(point: str, root: str, path: str) -> Path:
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root):]
    return Path(point) / path.lstrip("/")


def _layout_v1() -> tuple[str, object]:
    own = _own_paths()
    folders: dict[str, Path] = {}
    for point, root, kind, options in _mounts():
        if kind != "cgroup":
            continue
        for c in (*V1_CONTROLLERS, "freezer"):
            if c in options and c in own and c not in folders:
                folders[c] = _inside(point, root, own[c])
    missing = [c for c in ("memory", "cpu", "pids") if c not in folders]
    if missing:
        return "none", f"cgroup v1 without the {', '.join(missing)} controller(s)"
    for c, folder in folders.items():
        if not os.access(folder, os.W_OK):
            return "none", f"the grader's cgroup v1 {c} group ({folder}) is not writable"
    return "v1", folders


def _layout_v2() -> tuple[str, object]:
    own = _own_paths()
    for point, root, kind, _ in _mounts():
        if kind != "cgroup2" or "" not in own:
            continue
        folder = _inside(point, root, own[""])
        try:
            available = set(_read(folder / "cgroup.controllers").split())
        except OSError:
            continue
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            return "none", f"cgroup v2 at {point} without the {', '.join(missing)} controller(s) for the grader's group"
        if not os.access(folder, os.W_OK):
            return "none", f"the grader's cgroup v2 group ({folder}) is not writable"
        return "v2", folder
    return "none", "no cgroup v2 mount"


def _delegate_v2(folder: Path) -> None:
    """Enable the controllers for the grader's group's children; first, as a group with processes may not
    delegate, move every process of the group into a leaf of its own (the grader stays metered by it)."""
    enabled = set(_read(folder / "cgroup.subtree_control").split())
    if all(c in enabled for c in V2_CONTROLLERS):
        return
    leaf = folder / LEAF
    leaf.mkdir(exist_ok=True)
    for _ in range(10):
        pids = _read(folder / "cgroup.procs").split()
        if not pids:
            break
        for pid in pids:
            try:
                _write(leaf / "cgroup.procs", pid)
            except OSError:  # exited meanwhile, or a kernel thread
                pass
    _write(folder / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS if c not in enabled))


def layout() -> tuple[str, object]:
    """("v1", {controller: the grader's own group folder}), ("v2", folder) or ("none", why)."""
    if settings.current().no_cgroup:
        return "none", f"disabled ({ENV_DISABLE}=1)"
    key = os.getpid()
    with _LOCK:
        if key not in _LAYOUT:
            _LAYOUT.clear()
            if os.geteuid() != 0:
                found = ("none", "the grader is not root")
            else:
                pure_v2 = any(k == "cgroup2" and p == "/sys/fs/cgroup" for p, _, k, _ in _mounts())
                found = _layout_v2() if pure_v2 else _layout_v1()
                if found[0] == "none" and not pure_v2:  # hybrid: v1 lacked something; the unified tree may do
                    second = _layout_v2()
                    found = second if second[0] == "v2" else found
                if found[0] == "v2":
                    try:
                        _delegate_v2(found[1])
                    except OSError as exc:
                        found = ("none", f"cgroup v2 controllers cannot be delegated below the grader's group: {exc}")
                if found[0] != "none":
                    _sweep(found)
                if found[0] != "none":  # prove it: a group must be made, limited and removed
                    try:
                        probe = Group._make(found, "check")
                        probe.remove()
                    except OSError as exc:
                        found = ("none", f"a cgroup cannot be made here: {exc}")
            _LAYOUT[key] = found
        return _LAYOUT[key]


def _sweep(found) -> None:
    """Remove the groups a grader that died (SIGKILL) left behind: named for its pid, which no longer runs, empty
    (its processes died with it: they have a parent-death signal) and older than ``STALE_SECONDS``."""
    parents = set(found[1].values()) if found[0] == "v1" else {found[1]}
    for parent in parents:
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for e in entries:
            parts = e.name.split("-")
            if not e.name.startswith(PREFIX + "-") or e.name == LEAF or len(parts) < 5 or not parts[-3].isdigit():
                continue
            try:
                os.kill(int(parts[-3]), 0)
                continue  # its grader runs
            except ProcessLookupError:
                pass
            except OSError:
                continue
            try:  # only empty and old: another grader's (another pid namespace's) may look dead from here
                if time.time() - e.stat().st_mtime < STALE_SECONDS or _read(Path(e.path) / "cgroup.procs").strip():
                    continue
                os.rmdir(e.path)
            except OSError:
                pass


def version() -> str:
    """"v1", "v2" or "none"."""
    return layout()[0]


def unavailable() -> str | None:
    """Why no group can be made here, or None."""
    kind, detail = layout()
    return detail if kind == "none" else None


def memory_ceiling(memory_mb: int) -> int:
    """The kernel's hard limit, in bytes, for a group whose watchdog stops it at ``memory_mb``: a little above,
    so that the watchdog names the step first where it can, and the kernel stops what is faster."""
    return (memory_mb + max(64, memory_mb // 16)) * 2**20


def create(kind: str = "jail", *, memory_bytes: int | None = None, cpu_cores: float | None = CPU_CORES_PER_JAIL,
           pids_max: int | None = PIDS_MAX) -> "Group | None":
    """A new group under the grader's own, limited as asked; None where no group can be made
    (see :func:`unavailable`).  ``cpu_cores=None``: no quota (the equal weight stays)."""
    found = layout()
    if found[0] == "none":
        return None
    group = Group._make(found, kind)
    try:
        group.limit(memory_bytes, cpu_cores, pids_max)
    except BaseException:
        group.remove()
        raise
    return group


class Group:
    """One control group (v1: one folder per controller; v2: one folder)."""

    def __init__(self, version: str, folders: dict[str, Path]):
        self.version, self.folders = version, folders
        self.memory_limit: int | None = None
        self.cpu_cores: float | None = None
        self.pids_max: int | None = None
        # memory its processes hold that another group was charged for (the pages a forked jail still shares
        # with its template, which a fresh jail's own imports would have charged here): a function, or None
        self.shared_elsewhere = None

    @classmethod
    def _make(cls, found, kind: str) -> "Group":
        name = f"{PREFIX}-{kind}-{os.getpid()}-{next(_COUNTER)}-{time.monotonic_ns() % 10**6}"
        if found[0] == "v1":
            folders = {}
            group = cls("v1", folders)
            try:
                for c, parent in found[1].items():
                    target = parent / name
                    if target in folders.values():  # controllers mounted together ("cpu,cpuacct")
                        folders[c] = target
                        continue
                    target.mkdir()
                    folders[c] = target
            except BaseException:
                group.remove()
                raise
            return group
        target = found[1] / name
        target.mkdir()
        return cls("v2", {c: target for c in ("", *V2_CONTROLLERS)})

    @property
    def description(self) -> str:
        parts = []
        if self.memory_limit is not None:
            parts.append(f"memory {self.memory_limit >> 20} MiB incl. kernel memory, no swap")
        parts.append(f"CPU quota {self.cpu_cores:g} core(s)" if self.cpu_cores else "equal CPU weight, no quota")
        if self.pids_max is not None:
            parts.append(f"pids.max {self.pids_max} (threads included)")
        return f"cgroup {self.version}: " + ", ".join(parts)

    def _folder(self, controller: str) -> Path:
        """The folder of ``controller``; a removed group's (or a missing controller's) reads as a missing file."""
        found = self.folders.get(controller) or (self.folders.get("") if self.version == "v2" else None)
        return found if found is not None else Path("/nonexistent-cgroup")

    def limit(self, memory_bytes: int | None, cpu_cores: float | None, pids_max: int | None) -> None:
        mem, cpu, pids = self._folder("memory"), self._folder("cpu"), self._folder("pids")
        if self.version == "v1":
            if memory_bytes is not None:
                _write(mem / "memory.limit_in_bytes", memory_bytes)
                for name, value in (("memory.memsw.limit_in_bytes", memory_bytes), ("memory.swappiness", 0)):
                    try:  # swap accounting may be off in the kernel: then there is no file
                        _write(mem / name, value)
                    except OSError:
                        pass
            _write(cpu / "cpu.shares", 1024)
            _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
            _write(cpu / "cpu.cfs_quota_us", int(cpu_cores * CPU_PERIOD_US) if cpu_cores else -1)
            if pids_max is not None:
                _write(pids / "pids.max", pids_max)
        else:
            if memory_bytes is not None:
                _write(mem / "memory.max", memory_bytes)
                for name, value in (("memory.swap.max", 0), ("memory.oom.group", 1)):
                    try:
                        _write(mem / name, value)
                    except OSError:
                        pass
            _write(cpu / "cpu.weight", 100)
            _write(cpu / "cpu.max", f"{int(cpu_cores * CPU_PERIOD_US)} {CPU_PERIOD_US}" if cpu_cores
                   else f"max {CPU_PERIOD_US}")
            if pids_max is not None:
                _write(pids / "pids.max", pids_max)
        self.memory_limit, self.cpu_cores, self.pids_max = memory_bytes, cpu_cores, pids_max

    # -- joining -----------------------------------------------------------------------------
    def procs_files(self) -> list[str]:
        """The cgroup.procs files a process must be written to (one per v1 hierarchy)."""
        return sorted({str(f / "cgroup.procs") for f in self.folders.values()})

    def joiner(self):
        """A function for a child between fork and exec (a ``preexec_fn``): moves the calling process into
        the group before it runs anything else, so everything it starts is in it too.  Only system calls."""
        files = [f.encode() for f in self.procs_files()]

        def join() -> None:
            me = str(os.getpid()).encode()
            for f in files:
                fd = os.open(f, os.O_WRONLY)
                try:
                    os.write(fd, me)
                finally:
                    os.close(fd)

        return join

    def add(self, pid: int) -> None:
        for f in self.procs_files():
            _write(Path(f), pid)

    # -- reading ------------------------------------------------------------------------------
    def pids(self) -> list[int]:
        found: set[int] = set()
        for f in self.procs_files():
            try:
                found.update(int(p) for p in _read(Path(f)).split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def cpu_seconds(self) -> float | None:
        """CPU time the group's tasks used (user and system, the dead included), or None if unreadable."""
        try:
            if self.version == "v1":
                return int(_read(self._folder("cpuacct") / "cpuacct.usage")) / 1e9
            for line in _read(self._folder("cpu") / "cpu.stat").splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        except (OSError, ValueError):
            pass
        return None

    def _stat(self, name: str) -> dict[str, int]:
        out = {}
        try:
            for line in _read(self._folder("memory") / name).splitlines():
                k, _, v = line.partition(" ")
                try:
                    out[k] = int(v)
                except ValueError:
                    pass
        except OSError:
            pass
        return out

    def memory_bytes(self) -> int:
        """Memory charged to the group now, kernel memory (socket buffers, page tables) and tmpfs/shared
        memory included, less the page cache of files on disk: a start-up that reads TensorFlow's libraries
        is charged their cache, which the kernel reclaims before it fails an allocation, and which no limit
        of the submission's should count (the pages its processes map show in their RSS)."""
        mem = self._folder("memory")
        try:
            stat = self._stat("memory.stat")
            if self.version == "v1":
                usage = int(_read(mem / "memory.usage_in_bytes"))
                file_cache = stat.get("total_cache", 0) - stat.get("total_shmem", 0)
            else:
                usage = int(_read(mem / "memory.current"))
                file_cache = stat.get("file", 0) - stat.get("shmem", 0)
        except (OSError, ValueError):
            return 0
        return max(usage - max(file_cache, 0), 0) + (self.shared_elsewhere() if self.shared_elsewhere else 0)

    def memory_peak(self) -> int:
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        try:
            return int(_read(self._folder("memory") / name))
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        """Processes the kernel killed because the group hit its memory limit."""
        found = self._stat("memory.oom_control" if self.version == "v1" else "memory.events")
        return found.get("oom_kill", 0)

    def memory_failures(self) -> int:
        """Times a charge hit the limit (v1 ``memory.failcnt``; v2 ``memory.events max``)."""
        if self.version == "v1":
            try:
                return int(_read(self._folder("memory") / "memory.failcnt"))
            except (OSError, ValueError):
                return 0
        return self._stat("memory.events").get("max", 0)

    def pids_failures(self) -> int:
        """Forks refused because of ``pids.max`` (``pids.events max``)."""
        return self._stat_of("pids", "pids.events").get("max", 0)

    def _stat_of(self, controller: str, name: str) -> dict[str, int]:
        out = {}
        try:
            for line in _read(self._folder(controller) / name).splitlines():
                k, _, v = line.partition(" ")
                out[k] = int(v)
        except (OSError, ValueError):
            pass
        return out

    # -- ending --------------------------------------------------------------------------------
    def _freeze(self, frozen: bool) -> bool:
        try:
            if self.version == "v2":
                _write(self.folders[""] / "cgroup.freeze", 1 if frozen else 0)
                return True
            if "freezer" in self.folders:
                _write(self.folders["freezer"] / "freezer.state", "FROZEN" if frozen else "THAWED")
                return True
        except OSError:
            pass
        return False

    @contextmanager
    def frozen(self):
        """Within: every task of the group is stopped (v2 ``cgroup.freeze``, v1 ``freezer.state``), so that the
        host can be measured without the group's load; yields whether it could be frozen."""
        done = self._freeze(True)
        try:
            yield done
        finally:
            if done:
                self._freeze(False)

    def kill(self, rounds: int = 100) -> bool:
        """Kill every process in the group; True once none is left.  v2: ``cgroup.kill``; else freeze the
        group (no fork slips through), SIGKILL every pid it lists, thaw, and again until it is empty."""
        if self.version == "v2":
            try:
                _write(self.folders[""] / "cgroup.kill", 1)
            except OSError:
                pass
        for i in range(rounds):
            pids = self.pids()
            if not pids:
                return True
            frozen = self._freeze(True)
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if frozen:
                self._freeze(False)
            time.sleep(0.01 if i < 10 else 0.1)
        return not self.pids()

    def remove(self) -> None:
        """Kill what is left and remove the group (every v1 hierarchy's folder)."""
        if self.folders:
            self.kill()
        for folder in sorted(set(self.folders.values()), key=str, reverse=True):
            for attempt in range(50):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy: a dying task not yet gone
                    time.sleep(0.02)
                    if attempt % 10 == 9:
                        self.kill(rounds=5)
        self.folders = {}

    def __enter__(self) -> "Group":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
