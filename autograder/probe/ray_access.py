"""Whether ``--ray`` is safe with this jail: no sandbox may reach the cluster or read its credentials.

A Ray cluster runs any task sent to it by a client that gets in.  Bubblewrap's network namespace cuts a
sandbox off from every cluster.  A permission jail shares the host's network and sees its file system, so
there ``--ray`` is refused (:func:`ray_refusal`, before anything is graded) unless a sandbox uid can neither
connect to the cluster nor get in: the cluster requires authentication (Ray's token, ``RAY_AUTH_MODE=token``;
mutual TLS, ``RAY_USE_TLS=1``; or the operator's word, ``CNN_GRADER_RAY_AUTHENTICATED=1``) and none of its
credentials (the token file, TLS's private key) can be read, or replaced, by a sandbox uid: a forked helper
takes a slot uid and tries to open each file and to write to each folder on its path, and every part of the
path must belong to root or the grader.

Local Ray (``ray.init()`` without an address) writes the token it generates with mode 0644 in a 0755
``~/.ray``.  Where the grader starts a local instance, it creates the token itself first
(:func:`prepare_local_token`: mode 0600, in a folder made 0700) and turns token authentication on, so Ray
uses that one; and it keeps the instance's session folders (which Ray makes writable by everyone) in a
folder of its own that no sandbox uid can enter (:func:`private_temp_dir`).
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import tempfile
from pathlib import Path

from autograder import children, settings
from autograder.probe.jail import SLOT_COUNT, SLOT_UID_BASE, SlotLease, choose_mode

ENV_RAY_AUTHENTICATED = settings.RAY_AUTHENTICATED.name  # "1": the operator vouches that the cluster requires authentication
RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
RAY_USE_TLS, RAY_TLS_KEY = "RAY_USE_TLS", "RAY_TLS_SERVER_KEY"


def _auth_mode() -> str:
    return os.environ.get(RAY_AUTH_MODE, "").strip().lower()


def ray_authenticated() -> bool:
    """Whether the Ray cluster requires authentication: Ray's token authentication (``RAY_AUTH_MODE=token``),
    mutual TLS (``RAY_USE_TLS=1``: a client needs the grader's private key), or the operator's word
    (``CNN_GRADER_RAY_AUTHENTICATED=1``)."""
    return (_auth_mode() == "token"
            or os.environ.get(RAY_USE_TLS, "").strip().lower() in ("1", "true")
            or settings.current().ray_authenticated)


def token_file() -> Path:
    """The file Ray reads its token from: ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    given = os.environ.get(RAY_AUTH_TOKEN_PATH, "").strip()
    return Path(given).expanduser() if given else Path.home() / ".ray" / "auth_token"


def credentials() -> list[Path]:
    """The files that let a client into the cluster, as this grader is configured: the token file (where it
    exists and authentication by token is not turned off: Ray uses a token it finds) and TLS's private key."""
    found = []
    if _auth_mode() != "disabled" and not os.environ.get(RAY_AUTH_TOKEN) and os.path.lexists(token_file()):
        found.append(token_file())
    if os.environ.get(RAY_USE_TLS, "").strip().lower() in ("1", "true") and os.environ.get(RAY_TLS_KEY):
        found.append(Path(os.environ[RAY_TLS_KEY]))
    return found


def _supports_tokens() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("ray._private.authentication") is not None
    except (ImportError, ValueError):
        return False


def prepare_local_token(address: str | None) -> Path | None:
    """Before the grader starts a local Ray instance (no address, no ``RAY_ADDRESS``): turn Ray's token
    authentication on (unless ``RAY_AUTH_MODE`` says otherwise) and create its token where Ray will read it,
    mode 0600 in a folder made 0700, unless one is there or given in ``RAY_AUTH_TOKEN``: Ray would write its
    own readable by everyone.  Returns the token file created, or None."""
    if address or os.environ.get("RAY_ADDRESS") or _auth_mode() not in ("", "token") or not _supports_tokens():
        return None
    os.environ[RAY_AUTH_MODE] = "token"  # Ray's default for a new local instance; said, so that it is checked
    if os.environ.get(RAY_AUTH_TOKEN):
        return None
    path = token_file()
    if os.path.lexists(path):
        return None  # the operator's, or ours from an earlier run: checked by ray_refusal
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(secrets.token_hex(32))
    return path


def private_temp_dir() -> Path:
    """A folder of the grader's own (0700, an unpredictable name) for a local Ray instance's session: Ray makes
    its session folders (logs, runtime resources, sockets) writable by everyone, which in the shared /tmp/ray a
    permission jail's sandbox could reach and change."""
    return Path(tempfile.mkdtemp(prefix="cnn-grader-ray-"))


def _ray_endpoints(address: str | None) -> list[tuple[str, int]]:
    """Where a sandbox would reach the cluster: a listener of ours on the loopback (a local Ray instance
    listens there, unauthenticated) and the address given, where it names a host and port."""
    found = []
    if address and address not in ("auto", "local"):
        hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        if host and port.isdigit():
            found.append((host.strip("[]"), int(port)))
    return found


def _as_slot(lease: SlotLease, action) -> bool:
    """Whether ``action`` succeeds in a forked helper that has taken the leased slot uid (no program, no imports)."""
    def helper() -> None:
        os.setgroups([])
        os.setresgid(lease.uid, lease.uid, lease.uid)
        os.setresuid(lease.uid, lease.uid, lease.uid)
        action()

    return children.run_forked(helper, timeout=10) == 0


def slot_reaches(endpoints: list[tuple[str, int]] = ()) -> list[str]:
    """Which of ``endpoints`` (and a listener on 127.0.0.1 opened here) a process under a sandbox uid can
    connect to: a forked helper takes a leased slot uid and tries each for 3 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    targets = [("127.0.0.1", listener.getsockname()[1]), *endpoints]
    reached = []
    lease = SlotLease()
    try:
        for host, port in targets:
            try:  # resolved here: the helper, under the sandbox uid, may not read the codecs a lookup imports
                family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            except OSError:
                continue

            def attempt(family=family, where=(where[0].encode(), *where[1:])) -> None:
                s = socket.socket(family, socket.SOCK_STREAM)
                s.settimeout(3)
                s.connect(where)  # raises: exit status 1
                s.close()

            if _as_slot(lease, attempt):
                reached.append(f"{host}:{port}")
    finally:
        listener.close()
        lease.release()
    return reached


def _describe(path: Path) -> str:
    try:
        st = os.lstat(path)
        return f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}"
    except OSError as exc:
        return exc.strerror or str(exc)


def exposed_credentials(files: list[Path] | None = None) -> list[str]:
    """How a sandbox uid could get at each credential file: read it (tried as a slot uid), or replace it: write
    to it or to a folder on its path (tried likewise; a sticky folder such as /tmp only where what lies in it
    is not root's or the grader's), or a part of its path owned by someone other than root or the grader.
    Both the path as given and the path its links lead to are checked.  Empty where none is exposed."""
    files = credentials() if files is None else files
    if not files:
        return []
    trusted = {0, os.geteuid()}
    found = []
    lease = SlotLease()
    try:
        for path in files:
            given = Path(os.path.abspath(path))
            real = Path(os.path.realpath(path))
            encoded = os.fsencode(real)
            if _as_slot(lease, lambda: os.close(os.open(encoded, os.O_RDONLY | os.O_NONBLOCK))):
                found.append(f"{path} can be read by sandbox uid {lease.uid} ({_describe(real)}; folder "
                             f"{real.parent}: {_describe(real.parent)})")
                continue
            why = _replaceable(lease, [given, real], trusted)
            if why:
                found.append(f"{path} {why}")
    finally:
        lease.release()
    return found


def _replaceable(lease: SlotLease, paths: list[Path], trusted: set[int]) -> str | None:
    for path in paths:
        below = None  # the part of the path inside the folder being checked
        for part in [path, *path.parents]:
            try:
                st = os.lstat(part)
            except OSError:
                below = part
                continue
            if st.st_uid not in trusted:
                return f"lies in {part}, owned by uid {st.st_uid}, who could replace it"
            sticky_guard = (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and below is not None
                            and os.path.lexists(below) and os.lstat(below).st_uid in trusted)
            encoded = os.fsencode(part)
            if not sticky_guard and _as_slot(lease, lambda encoded=encoded: _must(os.access(encoded, os.W_OK))):
                return f"can be replaced by sandbox uid {lease.uid}: it may write to {part} ({_describe(part)})"
            below = part
    return None


def _must(ok: bool) -> None:
    if not ok:
        raise PermissionError


def ray_refusal(address: str | None = None) -> str | None:
    """Why ``--ray`` must not run here, or None.  In a permission jail the sandbox shares the host's network,
    and a Ray cluster runs tasks from any client that gets in: a submission could run code as the grader.
    Allowed only where sandbox uids cannot reach the network (a firewall rule by uid owner), or where the
    cluster requires authentication and no sandbox uid can read or replace its credentials."""
    if choose_mode() != "permissions":
        return None
    reached = slot_reaches(_ray_endpoints(address))
    if not reached:
        return None
    fix = ("Fix: install bubblewrap (its network namespace cuts the sandbox off), block the sandbox uids "
           f"{SLOT_UID_BASE}-{SLOT_UID_BASE + SLOT_COUNT - 1} from the network (e.g. iptables -m owner --uid-owner)")
    if not ray_authenticated():
        return (f"--ray is refused in the permission jail: sandbox uids can reach the network ({', '.join(reached)}), "
                "and a Ray cluster without authentication runs any task sent to it, so a submission could run code "
                f"as the grader. {fix}, or run Ray with authentication (RAY_AUTH_MODE=token; "
                f"{ENV_RAY_AUTHENTICATED}=1 where it has another).")
    exposed = exposed_credentials()
    if exposed:
        return (f"--ray is refused in the permission jail: sandbox uids can reach the network ({', '.join(reached)}) "
                f"and get at the cluster's credentials: {'; '.join(exposed)}. With them a submission could run code as "
                f"the grader. {fix}, or make the credentials private (chmod 600 the file, chmod 700 its folder; a "
                "token the grader creates for a local Ray instance is made so).")
    return None
