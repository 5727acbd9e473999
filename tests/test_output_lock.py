"""Two ``grade`` runs on one output folder: the second refuses (naming the first) or waits; a lock left by a
killed run is free; a worker process that outlives its run does not keep the folder locked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from autograder import batch, logs, output_lock

HOLDER = """
import sys
from pathlib import Path
from autograder import output_lock
with output_lock.hold(Path(sys.argv[1])):
    print("HELD", flush=True)
    sys.stdin.readline()  # holds the folder until told to let go (or killed)
"""


@pytest.fixture
def holder(tmp_path):
    """Another run (a process of its own) holding ``tmp_path / "out"`` until its stdin gets a line."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "out"), "--marker-of-this-run"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HELD"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _batch(out: Path, **options) -> list[dict]:
    return batch.run_batch([], {}, out, batch.BatchOptions(progress=False, **options))


def test_a_second_run_on_a_held_folder_is_refused_naming_the_holder_and_writes_nothing(tmp_path, holder):
    out = tmp_path / "out"
    with pytest.raises(output_lock.OutputFolderBusy) as refused:
        _batch(out)
    message = str(refused.value)
    assert f"pid {holder.pid} on host {socket.gethostname()}" in message
    assert "--marker-of-this-run" in message and "since 20" in message and "--wait" in message
    assert refused.value.holder["pid"] == str(holder.pid)
    assert sorted(p.name for p in out.iterdir()) == [output_lock.LOCK_NAME]  # no results, reports or batch.json


def test_the_command_line_refuses_a_held_folder_with_exit_2(tmp_path, holder, monkeypatch):
    from typer.testing import CliRunner

    from autograder import cli

    graded = []
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: graded.append(a) or [])
    (tmp_path / "subs").mkdir()
    (tmp_path / "ag.zip").write_bytes(b"")
    run = CliRunner().invoke(cli.app, ["grade", str(tmp_path / "subs"), "--autograder", str(tmp_path / "ag.zip"),
                                       "--out", str(tmp_path / "out")])
    assert run.exit_code == 2 and not graded, run.output
    assert f"pid {holder.pid}" in run.output and "--wait" in run.output
    assert not (tmp_path / "out" / "logs").exists()  # not even the log was opened


def test_a_run_asked_to_wait_starts_once_the_holder_is_done(tmp_path, holder, monkeypatch):
    out = tmp_path / "out"
    told = threading.Event()
    said = []
    monkeypatch.setattr(logs, "say", lambda m: (said.append(m), told.set()))
    done = []
    waiter = threading.Thread(target=lambda: done.append(_batch(out, wait=True)))
    waiter.start()
    assert told.wait(60), "the waiting run never said whom it waits for"
    assert f"pid {holder.pid}" in said[0] and "waiting" in said[0]
    waiter.join(1.0)
    assert waiter.is_alive() and not (out / "batch.json").exists()  # still waiting: nothing done yet
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.wait(60) == 0
    waiter.join(120)
    assert not waiter.is_alive() and done == [[]]
    assert json.loads((out / "batch.json").read_text())["submissions"] == 0


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, holder):
    out = tmp_path / "out"
    assert output_lock.read_holder(out)["pid"] == str(holder.pid)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert output_lock.read_holder(out)["pid"] == str(holder.pid)  # its description stays behind, stale
    seen = []
    original = batch._run_batch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch, "_run_batch", lambda *a: seen.append(output_lock.read_holder(out)) or original(*a))
        assert _batch(out) == []
    assert seen[0]["pid"] == str(os.getpid())  # this run's description replaced the dead one's
    assert output_lock.read_holder(out) is None  # and a finished run leaves none


def test_a_worker_that_outlives_its_run_does_not_keep_the_folder_locked(tmp_path):
    """A batch worker is forked with the run's descriptors; it closes its copy of the lock."""
    out = tmp_path / "out"
    with output_lock.hold(out):
        with output_lock.hold(out):  # reentrant within the run (the command line holds it around run_batch)
            pass
        r, w = os.pipe()
        worker = os.fork()
        if worker == 0:  # as batch._init_pool_worker does
            try:
                batch._init_pool_worker(None)
                os.close(w)
                os.read(r, 1)  # lives on until the test ends
            finally:
                os._exit(0)
        os.close(r)
    try:
        taker = subprocess.run([sys.executable, "-c", HOLDER, str(out)], input="\n", capture_output=True, text=True,
                               timeout=120)
        assert taker.returncode == 0 and "HELD" in taker.stdout, taker.stderr
    finally:
        os.close(w)
        os.waitpid(worker, 0)


def test_a_planted_link_is_never_followed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (out / output_lock.LOCK_NAME).symlink_to(victim)
    with pytest.raises(OSError):
        with output_lock.hold(out):
            pass
    assert victim.read_text() == "keep me"
