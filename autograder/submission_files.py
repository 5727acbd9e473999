"""Reading a file that a submission supplied: never through a symbolic link, never more than a
cap, and never quoting what it holds.

Every reader of a submitted file (the batch's folder and archive readers, the Gradescope runner,
the probe, the assignment picker) goes through :func:`read_submission_file` or
:func:`read_notebook`:

- the file is checked with ``lstat`` and opened with ``O_NOFOLLOW`` (and ``O_NONBLOCK``, so a FIFO
  put in its place cannot stall the grader), and what was opened must be the regular file that
  was checked (same device and inode);
- given ``root`` (a folder the grader trusts, such as Gradescope's ``submission/``), every folder
  between ``root`` and the file is opened the same way, one ``openat`` at a time, so a symlinked
  folder on the way is refused too;
- at most ``max_bytes`` are read, whatever the file's size says.

A refusal raises :class:`SubmissionFileError`, whose message names the file and the problem and
never its content: nbformat's own errors (``Notebook does not appear to be JSON: '...'``) quote
the file, so a notebook is parsed here and only the kind of fault and its position are reported.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

#: The largest notebook any reader accepts unless told otherwise (the batch's ArchiveLimits agrees).
DEFAULT_MAX_NOTEBOOK_BYTES = 32 * 2**20


class SubmissionFileError(Exception):
    """A submitted file that is not read; the message never quotes the file's content."""


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def _label(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def _open(path: Path, root: Path | None, label: str) -> tuple[int, os.stat_result]:
    """An fd open for reading on the regular file ``path`` (no link followed), and its fstat."""
    dir_fd = None
    opened: list[int] = []
    try:
        if root is not None:
            try:
                rel = path.relative_to(root)
            except ValueError:
                raise SubmissionFileError(f"{label}: not inside the submission") from None
            parts = rel.parts
            if not parts or any(p in ("", ".", "..") for p in parts):
                raise SubmissionFileError(f"{label}: not a file inside the submission")
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the grader's own folder
            opened.append(dir_fd)
            for part in parts[:-1]:
                try:
                    dir_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise SubmissionFileError(f"{label}: a folder on its path ({part}) is a symbolic link "
                                                  "or not a folder; not read") from None
                    raise SubmissionFileError(f"{label}: cannot be opened ({exc.strerror})") from None
                opened.append(dir_fd)
            name = parts[-1]
        else:
            name = str(path)
        try:
            before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise SubmissionFileError(f"{label}: cannot be read ({exc.strerror})") from None
        if stat.S_ISLNK(before.st_mode):
            raise SubmissionFileError(f"{label} is a symbolic link; not read")
        if not stat.S_ISREG(before.st_mode):
            raise SubmissionFileError(f"{label} is not a regular file; not read")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SubmissionFileError(f"{label} is a symbolic link; not read") from None
            raise SubmissionFileError(f"{label}: cannot be opened ({exc.strerror})") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            os.close(fd)
            raise SubmissionFileError(f"{label} changed while it was being opened; not read")
        return fd, st
    finally:
        for d in opened:
            os.close(d)


def read_submission_file(path: str | os.PathLike, max_bytes: int, *, root: str | os.PathLike | None = None,
                         what: str = "the file") -> bytes:
    """The bytes of a submitted regular file (never through a link), at most ``max_bytes``."""
    path = Path(path)
    root = Path(root) if root is not None else None
    label = _label(path, root)
    fd, st = _open(path, root, label)
    with os.fdopen(fd, "rb") as f:
        if st.st_size > max_bytes:
            raise SubmissionFileError(f"{what} is {st.st_size / 2**20:.1f} MB, over the {_mb(max_bytes)} limit")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after the check
        raise SubmissionFileError(f"{what} is over the {_mb(max_bytes)} limit")
    return data


def parse_notebook(data: bytes, label: str):
    """A notebook (nbformat 4) from a file's bytes; faults are named, never quoted."""
    import nbformat
    from nbformat import reader

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubmissionFileError(f"{label} is not a readable notebook: not UTF-8 text (byte {exc.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:  # exc.msg is json's fixed vocabulary ("Expecting value"), never the text
        raise SubmissionFileError(f"{label} is not a readable notebook: not JSON ({exc.msg} at line {exc.lineno}, "
                                  f"column {exc.colno})") from None
    except RecursionError:
        raise SubmissionFileError(f"{label} is not a readable notebook: its JSON is nested too deeply") from None
    if not isinstance(raw, dict):
        raise SubmissionFileError(f"{label} is not a readable notebook: its JSON is not an object")
    try:
        major, minor = reader.get_version(raw)
        if major not in nbformat.versions:
            raise SubmissionFileError(f"{label} is not a readable notebook: unsupported notebook format version")
        nb = nbformat.versions[major].to_notebook_json(raw, minor=minor)
        nb = nbformat.convert(nb, 4)
    except SubmissionFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - nbformat's messages may quote the file: name the kind only
        raise SubmissionFileError(f"{label} is not a readable notebook: not in notebook format "
                                  f"({type(exc).__name__})") from None
    cells = nb.get("cells")
    if not isinstance(cells, list) or not all(
            isinstance(c, dict) and isinstance(c.get("cell_type"), str) and isinstance(c.get("source", ""), str)
            for c in cells):
        raise SubmissionFileError(f"{label} is not a readable notebook: its cells are malformed")
    return nb


def read_notebook(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_NOTEBOOK_BYTES, *,
                  root: str | os.PathLike | None = None):
    """A submitted notebook as nbformat 4, read as :func:`read_submission_file` reads."""
    path = Path(path)
    data = read_submission_file(path, max_bytes, root=root, what="the notebook")
    return parse_notebook(data, _label(path, Path(root) if root is not None else None))


_QUOTED = re.compile(r"""(['"]).*?\1|b(['"]).*?\2""", re.S)


def describe_error(exc: BaseException, limit: int = 160) -> str:
    """An exception raised while reading untrusted data, as text safe to show: its kind and its
    message with anything quoted in it (where libraries put what they read) left out."""
    text = _QUOTED.sub("…", str(exc)).replace("\n", " ")
    text = re.split(r"['\"]", text, maxsplit=1)[0]  # an unmatched quote: what follows may be content
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__
