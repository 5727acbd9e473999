"""Find the submissions in what an instructor hands the grader, and whose each one is.

Accepts notebooks, folders, zip files, a Gradescope submissions export (a folder or zip with
``submission_metadata.yml``), a Canvas submissions download and nbgrader's
``submitted/<student>/<assignment>/<notebook>.ipynb`` tree.  Anything that cannot be graded (a
non-notebook file, a corrupt or oversized zip, an empty or malformed notebook, a student's
second file) becomes a :class:`Submission` with an error, so it shows up as a row for a person
instead of stopping the batch.

**Identity comes from the outside.**  A Canvas download names each file
``[name_][LATE_]<user id>_<attachment id>_<file name>``, or ``[LATE_]anon_<anonymous id>_...``
when the assignment is graded anonymously (see ``get_filename`` and ``add_upload_submission``
in Canvas's ``lib/content_zipper.rb``: the user name is the sortable name, lower-cased, with
every non-word character removed, so it may hold any Unicode letter; the second number is the
*attachment* id).  A zip that a student uploaded (Otter's export) belongs to the student its
outer name names: the names of the files inside never decide whose it is, so a zip named for
student A that holds a notebook named for B is A's.  nbgrader's student is the folder under
``submitted/``; Gradescope's comes from ``submission_metadata.yml``.

**Archives are untrusted.**  Every zip is read under :class:`ArchiveLimits` (members, total
uncompressed bytes counted while reading, nesting depth, notebook size); symbolic links and
paths that leave the archive refuse the whole zip.  Only notebooks and nested zips are ever
written to disk, into a folder readable by its owner only.

When one student has several files, one is graded (a gradable notebook first, then the latest
Canvas upload) and the others become ``duplicate`` rows that never reach the Canvas import.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from autograder.submission_files import SubmissionFileError, describe_error, parse_notebook, read_submission_file

# Canvas's per-file names (lib/content_zipper.rb): [name_][LATE_]userid_attachmentid_file or
# [LATE_]anon_anonymousid_attachmentid_file.  \w is Unicode-aware, as Ruby's [[:word:]] is.
# A name part is only word characters; the ids are ASCII digits.  CANVAS_IDS is tried at the
# start and after every underscore: each place it matches is one way to read the name.
CANVAS_IDS = re.compile(r"(?P<late>LATE_)?(?P<user>[0-9]+)_(?P<attachment>[0-9]+)_(?P<file>.+)$", re.S)
CANVAS_NAME_PART = re.compile(r"\w*")
CANVAS_ANON_NAME = re.compile(r"^(?P<late>LATE_)?anon_(?P<anon>[A-Za-z0-9]+)_(?P<attachment>\d+)_(?P<file>.+)$")
# Otter's export is named <assignment>_YYYY_MM_DDTHH_MM_SS_ffffff.zip: on its own (not inside a
# Canvas name) the date's numbers must not read as a Canvas user and attachment id
OTTER_STAMP = re.compile(r"^\d{2}T\d{2}_\d{2}_\d{2}")
OTTER_STAMP_SPAN = re.compile(r"_[0-9]{4}_[0-9]{2}_[0-9]{2}T[0-9]{2}_[0-9]{2}_[0-9]{2}_[0-9]+")
SAFE_ID = re.compile(r"[^\w.@-]+")
SKIPPED_FOLDERS = {"__MACOSX"}  # with every hidden (dot) folder: .ipynb_checkpoints, .git, ...


@dataclass(frozen=True)
class ArchiveLimits:
    """What one input archive may hold; a zip over any limit becomes an error row, unread."""

    max_members: int = 2000  # per zip
    max_submission_bytes: int = 64 * 2**20  # what one student's zip unpacks to, nested zips included
    max_class_bytes: int = 2 * 2**30  # what a class's zip (Canvas, Gradescope) unpacks to
    max_submission_members: int = 2000  # members of one student's upload, counted over every nesting level
    max_class_members: int = 50_000  # members of a class's zip, every zip in it included
    # what each member costs of the byte budgets at least, however small: empty members are not free
    min_member_bytes: int = 4096
    max_depth: int = 3  # a class zip holding a student's zip holding a zip
    max_notebook_bytes: int = 32 * 2**20  # one notebook, in a zip or not


class ArchiveRefused(Exception):
    """The archive breaks a limit or a rule; the message says which, for the instructor."""


@dataclass
class Submission:
    id: str  # the student id used in grade sheets and file names
    source: str  # where it came from, for people
    notebook: Path | None = None
    error: str | None = None
    name: str = ""
    email: str = ""
    sha256: str = ""
    # canvas_user_id, canvas_attachment_id, canvas_anonymous_id, late, sis_user_id,
    # sis_login_id, duplicate_of, identical_to: see collect() and reports.write_canvas_csv
    extra: dict = field(default_factory=dict)


def _safe(text: str) -> str:
    return SAFE_ID.sub("_", text).strip("_") or "unknown"


def _hidden(parts) -> bool:
    return any(p.startswith(".") or p in SKIPPED_FOLDERS for p in parts)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


# --- who a file belongs to ----------------------------------------------------------------------

@dataclass
class Owner:
    id: str
    name: str = ""
    email: str = ""
    extra: dict = field(default_factory=dict)


def canvas_readings(file_name: str) -> list[dict]:
    """Every way to read a Canvas download's (non-anonymous) file name as
    ``name_[LATE_]user_attachment_file``, leftmost first (``name``, ``late``, ``user``,
    ``attachment``, ``file``).  Numbers inside Otter's export stamp never count as ids.

    More than one reading means the name is ambiguous: Canvas takes the name part from the
    student's sortable name, which a student may be able to edit, and only partly strips digits
    from it (``sanitize_user_name`` drops the underscores of ``_<digits>_``, but a name such as
    ``x_222-_9`` loses its ``-`` afterwards and reads ``x_222_9``), so a name part can itself
    look like a user id and an attachment id."""
    stamps = [m.span() for m in OTTER_STAMP_SPAN.finditer(file_name)]
    readings, seen = [], set()
    for start in [0] + [i + 1 for i, ch in enumerate(file_name) if ch == "_"]:
        m = CANVAS_IDS.match(file_name, start)
        if not m:
            continue
        user_at = m.start("user")
        if user_at in seen or any(a < user_at < b for a, b in stamps) or OTTER_STAMP.match(m.group("file")):
            continue
        name = file_name[:start - 1] if start else ""
        if not CANVAS_NAME_PART.fullmatch(name):
            continue
        seen.add(user_at)
        readings.append({"name": name, "late": bool(m.group("late")), "user": m.group("user"),
                         "attachment": m.group("attachment"), "file": m.group("file")})
    return readings


def canvas_owner(file_name: str) -> Owner | None:
    """The student a Canvas download's file name names, or ``None`` if it is not one.

    A name that reads more than one way (see :func:`canvas_readings`) is read as before (the
    leftmost reading) and marked ``canvas_ambiguous`` with the other readings: it never outranks
    an unambiguous file of the same student (:func:`collect`), and a person decides whose it is."""
    file_name = unicodedata.normalize("NFC", file_name)  # a name unpacked on macOS comes decomposed
    m = CANVAS_ANON_NAME.match(file_name)
    if m:
        anon = m.group("anon")
        return Owner(f"anon_{anon}", extra={"canvas_anonymous_id": anon, "late": bool(m.group("late")),
                                             "canvas_attachment_id": m.group("attachment")})
    readings = canvas_readings(file_name)
    if not readings:
        return None
    first = readings[0]
    extra = {"canvas_user_id": first["user"], "late": first["late"], "canvas_attachment_id": first["attachment"]}
    if len(readings) > 1:
        others = ", ".join(f"user {r['user']} (attachment {r['attachment']}, name {r['name']!r})" for r in readings[1:])
        extra["canvas_ambiguous"] = (f"ambiguous Canvas file name: read as user {first['user']} (attachment "
                                     f"{first['attachment']}), but it could also be {others}; check whose it is")
    return Owner(first["user"], name=first["name"], extra=extra)


def _nbgrader_student(rel: PurePosixPath) -> str | None:
    """``.../submitted/<student>/<assignment>/<file>``: nbgrader's student, else ``None``."""
    parts = rel.parts
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] == "submitted" and len(parts) - i == 4:
            return parts[i + 1]
    return None


def _notebook_submission(path: Path, owner: Owner, source: str, limits: ArchiveLimits,
                         root: Path | None = None) -> Submission:
    """``root``: the folder the path was found under, every folder below which must be a real one."""
    sub = Submission(owner.id, source, name=owner.name, email=owner.email, extra=dict(owner.extra))
    if path.suffix.lower() != ".ipynb":
        sub.error = f"not a notebook: {path.name}"
        return sub
    try:
        data = read_submission_file(path, limits.max_notebook_bytes, root=root, what="the notebook")
    except SubmissionFileError as exc:  # a link, not a regular file, too large: never handed on
        sub.error = str(exc)
        return sub
    sub.notebook = path
    sub.sha256 = hashlib.sha256(data).hexdigest()
    try:
        nb = parse_notebook(data, path.name)
    except SubmissionFileError as exc:
        sub.error = str(exc)
        return sub
    if not any(c.cell_type == "code" and c.source.strip() for c in nb.cells):
        sub.error = "the notebook has no code cells"
    return sub


# --- archives ------------------------------------------------------------------------------------

class _Budget:
    """What one archive (with the zips nested in it) may still unpack: uncompressed bytes, and
    members counted over every nesting level, each costing at least ``min_member_bytes`` of the
    bytes.  A student's budget inside a class's zip draws on the class's budget too."""

    def __init__(self, limits: ArchiveLimits, total: int, members: int, parent: "_Budget | None" = None):
        self.limits, self.total, self.left = limits, total, total
        self.members_total, self.members_left = members, members
        self.parent = parent

    def take(self, n: int, *, parent: bool = True) -> None:
        self.left -= n
        if self.left < 0:
            raise ArchiveRefused(f"it unpacks to more than {self.total / 2**20:.0f} MB")
        if parent and self.parent is not None:
            self.parent.take(n)

    def count(self, members: int) -> None:
        """Charge a zip's members (from its directory, before any is read), here and above."""
        self.members_left -= members
        if self.members_left < 0:
            raise ArchiveRefused(f"it holds more than {self.members_total} members, counting those of the zips "
                                 "inside it")
        self.take(members * self.limits.min_member_bytes, parent=False)  # the parent's count charges its own
        if self.parent is not None:
            self.parent.count(members)


EXTRACTED = (".ipynb", ".zip")  # the only members ever written to disk (and Gradescope's metadata)


def _name(name: str, limit: int = 100) -> str:
    """A member's name for a message: quoted, cut short (the name, never the member's content)."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return f"it contains a symbolic link ({_name(name)})"
    path = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        return f"a member's path leaves the archive ({_name(name)})"
    return None


def _open_checked(path: Path, budget: _Budget, depth: int) -> zipfile.ZipFile:
    """Open a zip and check its directory against the limits before anything is read."""
    limits = budget.limits
    if depth > limits.max_depth:
        raise ArchiveRefused(f"zips nested more than {limits.max_depth} deep")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveRefused(f"corrupt zip ({describe_error(exc)})") from None
    infos = z.infolist()
    if len(infos) > limits.max_members:
        z.close()
        raise ArchiveRefused(f"the zip has {len(infos)} members, over the limit of {limits.max_members}")
    try:
        budget.count(len(infos))
    except ArchiveRefused:
        z.close()
        raise
    for info in infos:
        problem = _member_problem(info)
        if problem:
            z.close()
            raise ArchiveRefused(f"unsafe zip: {problem}")
    declared = sum(i.file_size for i in infos if not _hidden(PurePosixPath(i.filename).parts)
                   and PurePosixPath(i.filename).suffix.lower() in EXTRACTED)
    if declared > budget.left:
        z.close()
        raise ArchiveRefused(f"its notebooks and zips declare {declared / 2**20:.0f} MB uncompressed, over "
                             f"the {budget.total / 2**20:.0f} MB limit")
    return z


def _extract_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget, cap: int) -> None:
    """Stream one member to ``target`` (mode 0600), counting the bytes actually produced:
    a member whose header understates its size is cut off at the limit, not written out."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with z.open(info) as src, os.fdopen(fd, "wb") as dst:
            while block := src.read(1 << 20):
                written += len(block)
                if written > cap:
                    raise ArchiveRefused(f"{_name(info.filename)} is larger than {cap / 2**20:.0f} MB")
                budget.take(len(block))
                dst.write(block)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as exc:
        target.unlink(missing_ok=True)
        raise ArchiveRefused(f"corrupt zip member {_name(info.filename)} ({describe_error(exc)})") from None
    except ArchiveRefused:
        target.unlink(missing_ok=True)
        raise


def _unpack_dir(workdir: Path, archive: Path) -> Path:
    key = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:10]
    target = workdir / "_unpacked" / f"{_safe(archive.stem)[:60]}-{key}"
    private_dir(workdir / "_unpacked")
    if target.exists():
        shutil.rmtree(target)
    return private_dir(target)


#: A student's zip is read until its second notebook: two already make it ambiguous (refused).
STOP_AT_NOTEBOOKS = 2


def _notebooks_in_zip(path: Path, workdir: Path, budget: _Budget, depth: int,
                      found: list[tuple[Path, str]] | None = None, prefix: str = "") -> list[tuple[Path, str]]:
    """The notebooks in a student's zip (nested zips included), unpacked, ``(path, inner name)``,
    in the order met: reading stops at the second, which is enough to refuse the zip."""
    found = [] if found is None else found
    with _open_checked(path, budget, depth) as z:
        target = _unpack_dir(workdir, path)
        try:
            _unpack_notebooks(z, target, workdir, budget, depth, found, prefix)
        except ArchiveRefused:
            shutil.rmtree(target, ignore_errors=True)  # a refused zip leaves nothing behind
            raise
    return found


def _unpack_notebooks(z: zipfile.ZipFile, target: Path, workdir: Path, budget: _Budget, depth: int,
                      found: list[tuple[Path, str]], prefix: str) -> None:
    for i, info in enumerate(z.infolist()):
        if len(found) >= STOP_AT_NOTEBOOKS:
            break
        rel = PurePosixPath(info.filename)
        if info.is_dir() or _hidden(rel.parts):
            continue
        suffix = rel.suffix.lower()
        if suffix == ".ipynb":
            out = target / f"{i}-{_safe(rel.name)}"
            _extract_member(z, info, out, budget, budget.limits.max_notebook_bytes)
            found.append((out, prefix + info.filename))
        elif suffix == ".zip":
            out = target / f"{i}-{_safe(rel.name)}"
            _extract_member(z, info, out, budget, budget.left)
            _notebooks_in_zip(out, workdir, budget, depth + 1, found, f"{prefix}{info.filename}/")
            out.unlink(missing_ok=True)  # read: its notebooks are out


def _student_budget(limits: ArchiveLimits, class_budget: _Budget | None = None) -> _Budget:
    return _Budget(limits, limits.max_submission_bytes, limits.max_submission_members, class_budget)


def _student_zip(path: Path, owner: Owner, source: str, workdir: Path, limits: ArchiveLimits, depth: int,
                 budget: _Budget | None = None) -> Submission:
    """A zip one student uploaded (Otter's export): its one notebook, graded as ``owner``'s.
    ``budget``: what is left of the student's (shared by all their zips), else a fresh one."""
    sub = Submission(owner.id, source, name=owner.name, email=owner.email, extra=dict(owner.extra))
    budget = budget or _student_budget(limits)
    try:
        notebooks = _notebooks_in_zip(path, workdir, budget, depth)
    except ArchiveRefused as exc:
        sub.error = f"zip refused: {exc}"
        return sub
    if not notebooks:
        sub.error = f"no notebook in the zip {path.name}"
        return sub
    if len(notebooks) > 1:
        for nb_path, _ in notebooks:  # never graded: not kept
            nb_path.unlink(missing_ok=True)
        sub.error = (f"the zip {path.name} holds more than one notebook ({', '.join(_name(n) for _, n in notebooks)}, "
                     "...; not read further): upload one")
        return sub
    nb_path, inner = notebooks[0]
    return _notebook_submission(nb_path, owner, f"{source}:{inner}", limits)


# --- folders, zips of folders, Gradescope exports ----------------------------------------------

def _gradescope(folder: Path, limits: ArchiveLimits) -> list[Submission]:
    import yaml

    try:
        text = read_submission_file(folder / "submission_metadata.yml", 16 * 2**20, root=folder,
                                    what="submission_metadata.yml").decode("utf-8")
        meta = yaml.safe_load(text) or {}
        if not isinstance(meta, dict):
            raise ValueError("not a mapping")
    except (SubmissionFileError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        # YAML's own messages show the lines around a fault: only its kind is named
        why = str(exc) if isinstance(exc, SubmissionFileError) else f"submission_metadata.yml is not readable " \
            f"({type(exc).__name__})"
        return [Submission(_safe(folder.name), folder.name, error=f"unreadable Gradescope export: {why}")]
    subs = []
    for key, info in meta.items():
        submitters = (info or {}).get(":submitters") or [{}]
        who = submitters[0]
        sid = str(who.get(":sid") or "")
        owner = Owner(_safe(str(who.get(":sid") or who.get(":email") or key)), name=who.get(":name", ""),
                      email=who.get(":email", ""),
                      extra={"sis_user_id": sid, "sis_login_id": who.get(":email", "") if not sid else ""})
        sub_dir = folder / _safe(str(key))  # a key is a submission id; never a path of its own
        notebooks = [p for p in _files(sub_dir) if p.suffix.lower() == ".ipynb"] \
            if sub_dir.is_dir() and not sub_dir.is_symlink() else []
        if not notebooks:
            subs.append(Submission(owner.id, f"{folder.name}/{key}", error="no notebook in the submission",
                                   name=owner.name, email=owner.email, extra=owner.extra))
            continue
        subs.append(_notebook_submission(notebooks[0], owner, f"{folder.name}/{key}", limits, root=folder))
    return subs


def _files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):  # never follows symlinked folders
        dirs[:] = sorted(d for d in dirs if not _hidden([d]))
        out += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
    return out


def _folder(folder: Path, workdir: Path, limits: ArchiveLimits, depth: int,
            class_budget: _Budget | None = None) -> list[Submission]:
    """``class_budget``: what is left of the class zip's (the folder was unpacked from one)."""
    if (folder / "submission_metadata.yml").is_file():
        return _gradescope(folder, limits)
    subs, budgets = [], {}
    for path in _files(folder):
        rel = PurePosixPath(path.relative_to(folder).as_posix())
        source = str(rel)
        if path.is_symlink():
            owner = canvas_owner(path.name) or Owner(_safe(str(rel.with_suffix(""))))
            subs.append(Submission(owner.id, source, error="a symbolic link, not read", extra=owner.extra))
            continue
        student = _nbgrader_student(PurePosixPath(folder.name, *rel.parts))  # the folder may be submitted/
        if student is not None:
            if path.suffix.lower() == ".ipynb":  # nbgrader's timestamp.txt and other files are not submissions
                subs.append(_notebook_submission(path, Owner(_safe(student), extra={"nbgrader_student": student}),
                                                 source, limits, root=folder))
            continue
        owner = canvas_owner(path.name) or Owner(_safe(str(rel.with_suffix(""))))
        if path.suffix.lower() == ".zip":
            # one budget per student for all their zips; files whose Canvas name is ambiguous share one of
            # their own, so that a name reading as a classmate's can never spend the classmate's budget
            key = "\0ambiguous" if owner.extra.get("canvas_ambiguous") else owner.id
            budget = budgets.setdefault(key, _student_budget(limits, class_budget))
            subs.append(_student_zip(path, owner, source, workdir, limits, depth + 1, budget))
        else:
            subs.append(_notebook_submission(path, owner, source, limits, root=folder))
    return subs


def _top_zip(path: Path, workdir: Path, limits: ArchiveLimits) -> list[Submission]:
    """A zip given on the command line: one student's upload, or a class's (Canvas, Gradescope)."""
    budget = _Budget(limits, limits.max_class_bytes, limits.max_class_members)
    owner = canvas_owner(path.name)
    try:
        with _open_checked(path, budget, 1) as z:
            names = [PurePosixPath(i.filename) for i in z.infolist() if not i.is_dir() and not _hidden(PurePosixPath(i.filename).parts)]
            gradescope = any(n.name == "submission_metadata.yml" and len(n.parts) == 1 for n in names)
            gradable = [n for n in names if n.suffix.lower() in (".ipynb", ".zip")]
            # one student's upload: named for a student, or holding a single notebook that names no one
            # (a class download of one Canvas file or one nbgrader folder is still a class download)
            single = owner is not None or (
                not gradescope and len(gradable) == 1 and gradable[0].suffix.lower() == ".ipynb"
                and canvas_owner(gradable[0].name) is None and _nbgrader_student(PurePosixPath(path.stem, *gradable[0].parts)) is None)
            if single:
                z.close()
                return [_student_zip(path, owner or Owner(_safe(path.stem)), path.name, workdir, limits, 1)]
            target = _unpack_dir(workdir, path)
            for info in z.infolist():
                rel = PurePosixPath(info.filename)
                if info.is_dir() or _hidden(rel.parts):
                    continue
                keep = rel.suffix.lower() in EXTRACTED or (gradescope and rel.name == "submission_metadata.yml")
                out = target / Path(*rel.parts)
                if keep:
                    cap = limits.max_notebook_bytes if rel.suffix.lower() == ".ipynb" else budget.left
                    _extract_member(z, info, out, budget, cap)
                else:  # not a submission, but a row for a person: an empty stand-in, never the content
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.touch()
                    os.chmod(out, 0o600)
    except ArchiveRefused as exc:
        return [Submission((owner.id if owner else _safe(path.stem)), path.name, error=f"zip refused: {exc}",
                           extra=owner.extra if owner else {})]
    for sub_folder in [p for p in target.rglob("*") if p.is_dir()]:
        os.chmod(sub_folder, 0o700)
    return _folder(target, workdir, limits, 1, budget)


# --- the whole input ---------------------------------------------------------------------------

def _attachment(sub: Submission) -> int:
    try:
        return int(sub.extra.get("canvas_attachment_id") or -1)
    except ValueError:
        return -1


def collect(paths: list[Path], workdir: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Submission]:
    """Every submission under ``paths``.

    One file per student is graded: a file whose Canvas name is unambiguous before one whose
    name reads more than one way, then a gradable notebook before an error, then the latest
    Canvas upload (highest attachment id), then the first found.  The others become ``duplicate``
    rows (``<id>~2``, ...), not graded.  Byte-identical notebooks of different students are
    graded and flagged (``extra["identical_to"]``) for the instructor's report only.
    """
    subs: list[Submission] = []
    for p in map(Path, paths):
        if p.is_dir():
            subs += _folder(p, workdir, limits, 0)
        elif p.suffix.lower() == ".zip" and p.is_file():
            subs += _top_zip(p, workdir, limits)
        elif p.is_file():  # named by the instructor: a link given here is followed, once, here
            subs.append(_notebook_submission(Path(os.path.realpath(p)), canvas_owner(p.name) or Owner(_safe(p.stem)),
                                             p.name, limits))
        else:
            subs.append(Submission(_safe(p.name), str(p), error="no such file or folder"))
    by_student: dict[str, list[Submission]] = {}
    for sub in subs:
        by_student.setdefault(sub.id, []).append(sub)
    ordered: list[Submission] = []
    for sid, group in by_student.items():
        # stable: then as found; a file whose Canvas name is ambiguous never outranks one that is not
        ranked = sorted(group, key=lambda s: (bool(s.extra.get("canvas_ambiguous")), s.error is not None,
                                              -_attachment(s)))
        primary = ranked[0]
        ordered.append(primary)
        for n, other in enumerate(ranked[1:], start=2):
            other.id = f"{sid}~{n}"
            other.extra["duplicate_of"] = sid
            why = f"; this file had an error too ({other.error})" if other.error else ""
            other.error = (f"duplicate: student {sid} has another file ({primary.source}), which is the one "
                           f"graded{why}")
            ordered.append(other)
    seen_bytes: dict[str, Submission] = {}
    for sub in ordered:
        if not sub.sha256 or sub.error:
            continue
        if sub.sha256 in seen_bytes:  # graded, but flagged for a person
            sub.extra["identical_to"] = seen_bytes[sub.sha256].id
        else:
            seen_bytes[sub.sha256] = sub
    return ordered
