"""Find the submissions in what an instructor hands the grader.

Accepts notebooks, folders, zip files, a Gradescope submissions export (a folder or zip with
``submission_metadata.yml``) and a Canvas submissions download (files named
``name_[LATE_]userid_submissionid_filename``).  Anything that cannot be graded (a non-notebook
file, a corrupt zip, an empty or malformed notebook, a duplicate) becomes a :class:`Submission`
with an error, so it shows up as a row in the grade sheet instead of stopping the batch.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

CANVAS_NAME = re.compile(r"^(?P<name>[a-z0-9-]+?)(?:_late)?_(?P<user>\d+)_(?P<submission>\d+)_(?P<file>.+)$", re.I)
SAFE_ID = re.compile(r"[^A-Za-z0-9_.@-]+")


@dataclass
class Submission:
    id: str  # the student id used in grade sheets and file names
    source: str  # where it came from, for people
    notebook: Path | None = None
    error: str | None = None
    name: str = ""
    email: str = ""
    sha256: str = ""
    extra: dict = field(default_factory=dict)


def _safe(text: str) -> str:
    return SAFE_ID.sub("_", text).strip("_") or "unknown"


def check_notebook(path: Path) -> str | None:
    """Why this file cannot be graded, or ``None``."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:
        return f"not a readable notebook ({type(exc).__name__}: {str(exc)[:200]})"
    if not any(c.cell_type == "code" and c.source.strip() for c in nb.cells):
        return "the notebook has no code cells"
    return None


def _from_file(path: Path, sub_id: str, source: str, **kw) -> Submission:
    if path.suffix != ".ipynb":
        return Submission(sub_id, source, error=f"not a notebook: {path.name}", **kw)
    sub = Submission(sub_id, source, notebook=path, error=check_notebook(path), **kw)
    sub.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return sub


def _gradescope(folder: Path) -> list[Submission]:
    import yaml

    meta = yaml.safe_load((folder / "submission_metadata.yml").read_text()) or {}
    subs = []
    for key, info in meta.items():
        submitters = (info or {}).get(":submitters") or [{}]
        who = submitters[0]
        sub_id = _safe(str(who.get(":sid") or who.get(":email") or key))
        notebooks = sorted((folder / key).rglob("*.ipynb")) if (folder / key).is_dir() else []
        if not notebooks:
            subs.append(Submission(sub_id, f"{folder.name}/{key}", error="no notebook in the submission",
                                   name=who.get(":name", ""), email=who.get(":email", "")))
            continue
        subs.append(_from_file(notebooks[0], sub_id, f"{folder.name}/{key}", name=who.get(":name", ""),
                               email=who.get(":email", "")))
    return subs


def _folder(folder: Path) -> list[Submission]:
    if (folder / "submission_metadata.yml").is_file():
        return _gradescope(folder)
    subs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix == ".zip":
            subs += _zip(path, folder.parent)
            continue
        m = CANVAS_NAME.match(path.name)
        sub_id = m.group("user") if m else _safe(path.relative_to(folder).with_suffix("").as_posix())
        subs.append(_from_file(path, sub_id, str(path.relative_to(folder)), name=m.group("name") if m else "",
                               extra={"canvas_submission": m.group("submission")} if m else {}))
    return subs


def _zip(path: Path, workdir: Path) -> list[Submission]:
    target = workdir / "_unpacked" / _safe(path.stem)
    try:
        with zipfile.ZipFile(path) as z:
            bad = [n for n in z.namelist() if n.startswith("/") or ".." in Path(n).parts]
            if bad:
                raise zipfile.BadZipFile(f"unsafe member path {bad[0]!r}")
            z.extractall(target)
    except (zipfile.BadZipFile, OSError) as exc:
        return [Submission(_safe(path.stem), path.name, error=f"corrupt zip: {exc}")]
    return _folder(target)


def collect(paths: list[Path], workdir: Path) -> list[Submission]:
    """Every submission under ``paths``: a second one for the same student is an error row;
    byte-identical notebooks of different students are graded and flagged."""
    subs: list[Submission] = []
    for p in map(Path, paths):
        if p.is_dir():
            subs += _folder(p)
        elif p.suffix == ".zip":
            subs += _zip(p, workdir)
        elif p.is_file():
            subs.append(_from_file(p, _safe(p.stem), p.name))
        else:
            subs.append(Submission(_safe(p.name), str(p), error="no such file or folder"))
    seen_ids: dict[str, Submission] = {}
    seen_bytes: dict[str, Submission] = {}
    for sub in subs:
        if sub.id in seen_ids:
            n = 2
            while f"{sub.id}~{n}" in seen_ids:
                n += 1
            first = seen_ids[sub.id]
            sub.id = f"{sub.id}~{n}"
            if not sub.error:
                sub.error = f"duplicate: student {first.id} already has a submission ({first.source})"
        if sub.sha256 and sub.sha256 in seen_bytes and not sub.error:  # graded, but flagged for a person
            sub.extra["identical_to"] = seen_bytes[sub.sha256].id
        seen_ids[sub.id] = sub
        if sub.sha256:
            seen_bytes.setdefault(sub.sha256, sub)
    return subs
