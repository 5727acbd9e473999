"""The jail's self-test, kept per host and version: a passed self-test is not paid again by every ``grade``.

The full self-test (a jailed Python that imports what notebooks need, then tries to reach the grader) costs a
jail's start-up, several CPU seconds, before the first cell of a single ``grade``.  Its outcome depends only on
what the grader builds the jail from, so a passed one is kept under a key made of all of it (:func:`key`):

* the grader's version and the source of everything that builds or tests a jail;
* the interpreter (its path, where it leads, the file itself) and every Python tree it mounts (their
  modification times: installing or removing a package changes them);
* the jail mode, the grader's uid and capabilities, the cgroup layout, the seccomp filter's architecture;
* the grader's own private paths (its package, repository and caches: where they are, and whether they are
  folders; bubblewrap masks those that lie in a mounted tree), and the installed assignments' answer keys and
  check modules.  Folders a batch registers (its inputs and outputs, the zip's folder, the notebook's) are
  proved by the self-test's light rerun, as before;
* bubblewrap (its path, file and version) and the kernel (release and build).

Any change re-runs it.  Only ``bwrap`` mode is kept: there the jail's view of the host is built from the key's
inputs alone.  A permission jail sees the real file system, and its self-test hunts the whole disk for readable
copies of the grader's files, which no key can cover: it runs in every process, as before.  Entries expire
after :data:`MAX_AGE_SECONDS`.  They lie where no sandbox can write (a root grader's in
``/run/cnn-grader-self-test``, another's in its cache folder, ``<cache>/self-test``, which every jail masks;
0700, files 0600); an entry is used only if the folder and the file belong to the grader and nobody else may
write to them.  A failed self-test is never kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
import sys
import tempfile
import time
from pathlib import Path

MAX_AGE_SECONDS = 24 * 3600.0
FOLDER_NAME = "self-test"
SOURCES = ("probe/jail.py", "probe/jail_basics.py", "probe/disk.py", "probe/seccomp.py", "probe/runtime.py",
           "probe/sandbox.py", "probe/forkserver.py", "probe/forkserver_template.py", "metering/cgroup.py", "metering/processes.py", "metering/watchdog.py", "faults.py", "settings.py",
           "protocol.py", "children.py")

_SOURCE_DIGEST: list[str] = []
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the grader package (autograder/), whose SOURCES count


ROOT_FOLDER = Path("/run/cnn-grader-self-test")  # a root grader's: cleared at boot, as a new kernel needs one


def folder() -> Path:
    """Where entries lie: a root grader's in :data:`ROOT_FOLDER`, another's in its cache folder."""
    if os.geteuid() == 0:
        return ROOT_FOLDER
    from autograder.data import cache_dir

    return cache_dir() / FOLDER_NAME


def _stat(path) -> list:
    try:
        st = os.stat(path)
    except OSError as exc:
        return [str(path), "missing", exc.errno]
    return [str(path), st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns]


def _source_digest() -> str:
    if not _SOURCE_DIGEST:
        from autograder import __version__

        h = hashlib.sha256(__version__.encode())
        for name in SOURCES:
            try:
                h.update(name.encode() + b"\0" + (PACKAGE_DIR / name).read_bytes())
            except OSError:
                h.update(name.encode() + b"\0missing")
        _SOURCE_DIGEST.append(h.hexdigest())
    return _SOURCE_DIGEST[0]


def _capabilities() -> str:
    try:
        with open("/proc/self/status") as f:
            return " ".join(line.strip() for line in f if line.startswith(("CapEff", "CapBnd", "NoNewPrivs", "Seccomp:")))
    except OSError:
        return ""


def _bwrap() -> list:
    import shutil

    from autograder import children

    path = shutil.which("bwrap")
    if not path:
        return ["no bwrap"]
    try:
        version = children.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, Exception):  # noqa: BLE001 - any failure: a key no earlier run had
        version = "unknown"
    return [_stat(os.path.realpath(path)), version]


def _cgroup_kind() -> list:
    """The cgroup layout as a jail sees it: the version and its controllers, or why there is none (not the
    grader's own group, which differs from one service or session to the next)."""
    from autograder.metering import cgroup

    kind, detail = cgroup.layout()
    return [kind, sorted(detail) if isinstance(detail, dict) else [] if kind == "v2" else str(detail)]


def key(mode: str, python: str, trees: list[str], private: list[Path], answer_keys: list[str],
        public_modules: list[str], imports: tuple) -> str:
    """The digest of everything a full self-test's outcome depends on (see the module's description)."""
    parts = key_parts(mode, python, trees, private, answer_keys, public_modules, imports)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def key_parts(mode: str, python: str, trees: list[str], private: list[Path], answer_keys: list[str],
              public_modules: list[str], imports: tuple) -> dict:
    """What :func:`key` digests, part by part (a test names the part that changed); ``trees``: the folders the
    interpreter runs from (:func:`autograder.probe.jail.python_trees`, which calls this module)."""
    from autograder.probe import seccomp

    parts = {
        "grader": _source_digest(),
        "python": [python, os.path.realpath(python), _stat(os.path.realpath(python))],
        "trees": [_stat(t) for t in trees],
        "mode": mode, "euid": os.geteuid(), "egid": os.getegid(), "caps": _capabilities(),
        "cgroup": _cgroup_kind(), "seccomp": [seccomp.machine(), seccomp.supported()],
        "private": [[str(p), os.path.isdir(p), os.path.exists(p)] for p in private],  # masked where a tree holds it
        "answer_keys": answer_keys, "public_modules": public_modules, "imports": list(imports),
        "bwrap": _bwrap(), "kernel": [platform.release(), platform.version()],
        "interpreter": [sys.version, sys.executable],
    }
    return parts


def _trusted(path: Path, kind) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return kind(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def load(digest: str) -> dict | None:
    """The description a passed self-test left under ``digest``, if it is there, fresh and trustworthy."""
    where = folder()
    entry = where / f"{digest}.json"
    if not (_trusted(where, stat.S_ISDIR) and _trusted(entry, stat.S_ISREG)):
        return None
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or found.get("key") != digest or not isinstance(found.get("description"), dict):
        return None
    try:
        passed_at = float(found.get("passed_at", 0))
    except (TypeError, ValueError):
        return None
    if not 0 <= time.time() - passed_at <= MAX_AGE_SECONDS:
        return None
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(passed_at))
    return {**found["description"], "self_test": f"passed at {when}, kept for this host and version"}


def store(digest: str, description: dict) -> None:
    """Keep a passed self-test's description under ``digest`` (atomically; quiet if the folder cannot be made)."""
    where = folder()
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _trusted(where, stat.S_ISDIR):
            return
        fd, tmp = tempfile.mkstemp(dir=where, prefix=".entry-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": digest, "passed_at": time.time(), "description": description}, f)
        os.replace(tmp, where / f"{digest}.json")
    except OSError:
        pass
