"""``--ray`` in a permission jail: refused where a sandbox uid could reach the cluster and get in (no
authentication, or credentials it can read or replace); a token the grader creates for a local Ray instance
is private.  No cluster is started: the checks are what a slot uid can connect to and open."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from autograder import batch
from autograder.probe import jail, ray_access

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs a root grader (CI runs as root)")
RAY_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_USE_TLS", "RAY_TLS_SERVER_KEY",
                 "RAY_ADDRESS", ray_access.ENV_RAY_AUTHENTICATED)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in (jail.ENV_MODE, jail.ENV_UNSAFE, jail.ENV_PRIVATE, *RAY_VARIABLES):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(monkeypatch):
    """The grader's home, which a sandbox uid can traverse (as on many hosts: 0755), as ``HOME``."""
    path = Path(tempfile.mkdtemp(prefix="cnn-grader-ray-home-"))
    path.chmod(0o755)
    monkeypatch.setenv("HOME", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _grade_cli(tmp_path, monkeypatch, *argv):
    from typer.testing import CliRunner

    from autograder import cli

    graded = []
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: graded.append(a) or [])
    (tmp_path / "subs").mkdir(exist_ok=True)
    (tmp_path / "ag.zip").write_bytes(b"")
    run = CliRunner().invoke(cli.app, ["grade", str(tmp_path / "subs"), "--autograder", str(tmp_path / "ag.zip"),
                                       "--out", str(tmp_path / "out"), *argv])
    return run, graded


def _ray_tokens_as_ray_writes_them(home: Path) -> Path:
    """What ``ray.init()`` leaves when it generates a token: ~/.ray 0755 and auth_token 0644 (umask 022)."""
    folder = home / ".ray"
    folder.mkdir(mode=0o755)
    token = folder / "auth_token"
    token.write_text("0123456789abcdef")
    token.chmod(0o644)
    return token


@needs_root
def test_ray_is_refused_in_a_permission_jail_whose_sandbox_reaches_an_unauthenticated_cluster(
        tmp_path, monkeypatch, home):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    run, graded = _grade_cli(tmp_path, monkeypatch, "--isolation", "permissions", "--ray")
    assert run.exit_code == 2 and graded == [], run.output  # refused before anything was graded
    assert "--ray is refused" in run.output and "127.0.0.1" in run.output
    with pytest.raises(jail.JailError, match="--ray is refused"):  # the batch refuses too, for library callers
        list(batch._run_ray([], {}, tmp_path, batch.BatchOptions(ray=True)))
    monkeypatch.setattr(ray_access, "slot_reaches", lambda endpoints=(): [])  # uids cut off by a firewall
    run, graded = _grade_cli(tmp_path, monkeypatch, "--isolation", "permissions", "--ray")
    assert run.exit_code == 0 and len(graded) == 1, run.output


@needs_root
def test_a_token_everybody_can_read_is_refused_and_a_private_one_allowed(tmp_path, monkeypatch, home):
    """Ray's own token (0644 in a 0755 ~/.ray, the home traversable): a sandbox uid reads it and could run a
    task as the grader.  Refused, naming the file; once private (0600, folder 0700) allowed."""
    token = _ray_tokens_as_ray_writes_them(home)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv(jail.ENV_MODE, "permissions")
    refusal = ray_access.ray_refusal()
    assert refusal and f"{token} can be read by sandbox uid" in refusal and "mode 0644" in refusal, refusal
    run, graded = _grade_cli(tmp_path, monkeypatch, "--isolation", "permissions", "--ray")
    assert run.exit_code == 2 and not graded and "auth_token" in run.output, run.output
    monkeypatch.setenv(ray_access.ENV_RAY_AUTHENTICATED, "1")  # the operator's word does not cover a readable token
    assert ray_access.ray_refusal() is not None
    token.chmod(0o600)
    token.parent.chmod(0o700)
    assert ray_access.ray_refusal() is None
    run, graded = _grade_cli(tmp_path, monkeypatch, "--isolation", "permissions", "--ray")
    assert run.exit_code == 0 and len(graded) == 1, run.output


@needs_root
def test_a_token_a_sandbox_uid_could_replace_is_refused(monkeypatch, home):
    """A token it cannot read but could replace with one it knows (a folder on the path it may write to, a file
    it may write) is as good as read: the next local instance would take the planted token."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv(jail.ENV_MODE, "permissions")
    token = _ray_tokens_as_ray_writes_them(home)
    token.chmod(0o600)
    token.parent.chmod(0o777)  # e.g. a shared folder
    assert "can be replaced by sandbox uid" in ray_access.ray_refusal()
    token.parent.chmod(0o755)
    token.chmod(0o622)  # not readable by others but writable: a known token written over it
    assert f"{token} can be replaced by sandbox uid" in ray_access.ray_refusal()
    token.chmod(0o600)
    assert ray_access.ray_refusal() is None
    elsewhere = home / "elsewhere"  # RAY_AUTH_TOKEN_PATH names the file, through a link too
    elsewhere.mkdir(mode=0o755)
    (elsewhere / "t").write_text("x")
    (elsewhere / "t").chmod(0o644)
    (home / "link").symlink_to(elsewhere / "t")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "link"))
    assert f"{home / 'link'} can be read" in ray_access.ray_refusal()


@needs_root
def test_a_tls_private_key_a_sandbox_uid_can_read_is_refused(monkeypatch, home):
    monkeypatch.setenv("RAY_USE_TLS", "1")
    monkeypatch.setenv(jail.ENV_MODE, "permissions")
    key = home / "ray.key"
    key.write_text("-----BEGIN PRIVATE KEY-----")
    key.chmod(0o644)
    monkeypatch.setenv("RAY_TLS_SERVER_KEY", str(key))
    assert f"{key} can be read" in ray_access.ray_refusal()
    key.chmod(0o600)
    assert ray_access.ray_refusal() is None


@needs_root
def test_the_token_the_grader_creates_for_a_local_instance_is_private_and_ray_reads_it(tmp_path, monkeypatch, home):
    """``--ray`` without an address starts a local instance: the grader makes its token first (0600 in a 0700
    folder) and turns token authentication on, so Ray uses that token instead of writing one everybody reads."""
    run, graded = _grade_cli(tmp_path, monkeypatch, "--isolation", "permissions", "--ray")
    assert run.exit_code == 0 and len(graded) == 1, run.output
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(token.read_text()) == 64
    from ray._raylet import AuthenticationTokenLoader  # what Ray's own loader finds (it caches: reset first)

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()
    assert loader.has_token(ignore_auth_mode=True)
    assert ray_access.prepare_local_token(None) is None  # there already: kept, never rewritten
    assert ray_access.prepare_local_token("ray://head:10001") is None  # an existing cluster's: the operator's
    loader.reset_cache()


def test_ray_is_not_refused_where_the_jail_has_its_own_network(monkeypatch):
    monkeypatch.setattr(ray_access, "choose_mode", lambda: "bwrap")
    monkeypatch.setattr(ray_access, "slot_reaches", lambda endpoints=(): ["127.0.0.1:1"])
    assert ray_access.ray_refusal() is None


@needs_root
def test_a_local_instance_keeps_its_session_folders_where_no_sandbox_uid_can_enter(tmp_path, monkeypatch, home):
    """Ray makes its session folders writable by everyone (/tmp/ray 0777: logs, runtime resources): a local
    instance of the grader's gets a folder of its own, 0700, removed after the batch."""
    import ray

    seen = {}

    def init(**kwargs):
        temp = Path(kwargs["_temp_dir"])
        seen.update(temp=temp, mode=stat.S_IMODE(temp.stat().st_mode), owner=temp.stat().st_uid,
                    enterable=ray_access._as_slot(lease, lambda: os.listdir(os.fsencode(temp))))
        raise RuntimeError("no cluster in this test")

    monkeypatch.setattr(ray_access, "slot_reaches", lambda endpoints=(): [])
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    lease = jail.SlotLease()
    try:
        with pytest.raises(RuntimeError, match="no cluster"):
            list(batch._run_ray([], {}, tmp_path, batch.BatchOptions(ray=True)))
    finally:
        lease.release()
    assert seen["mode"] == 0o700 and seen["owner"] == os.geteuid() and not seen["enterable"]
    assert not seen["temp"].exists()
