"""A quiet console: while ``grade`` runs, the stderr of the grader and of the workers it forks goes to
``<out>/logs/grader.log`` (what TensorFlow prints at start-up lands there), ``--verbose`` keeps it on
the console, and subprocesses start with TensorFlow's and absl's logging quieted."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from autograder import settings

SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from autograder import logs
    out, verbose = Path(sys.argv[1]), sys.argv[2] == "1"
    with logs.to_file(out, verbose=verbose):
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\\n")  # TensorFlow, in the grader
        pid = os.fork()
        if pid == 0:  # a batch worker
            os.write(2, b"W0000 cudart_stub.cc:29] Could not find cuda drivers\\n")
            os._exit(0)
        os.waitpid(pid, 0)
        logs.say("said on purpose")
        print("grading 2/2", flush=True)
        child = os.environ.get("TF_CPP_MIN_LOG_LEVEL"), os.environ.get("ABSL_MIN_LOG_LEVEL")
    print("child env", child, flush=True)
    print("after", file=sys.stderr, flush=True)
""")


def _run(tmp_path, verbose: bool):
    env = {k: v for k, v in __import__("os").environ.items() if k not in settings.QUIET_LOGGING_ENV
           and k != settings.VERBOSE.name}
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "1" if verbose else "0"],
                          capture_output=True, text=True, timeout=60, env=env)


def test_grader_and_worker_stderr_go_to_the_log_not_the_console(tmp_path):
    done = _run(tmp_path, verbose=False)
    assert done.returncode == 0, done.stderr
    assert "grading 2/2" in done.stdout
    assert "child env ('3', '3')" in done.stdout
    for noise in ("oneDNN", "cuda"):
        assert noise not in done.stdout + done.stderr
    assert "said on purpose" in done.stderr and "after" in done.stderr  # the console is back afterwards
    log = tmp_path / "logs" / "grader.log"
    assert "oneDNN" in log.read_text() and "cuda drivers" in log.read_text()
    assert log.stat().st_mode & 0o077 == 0 and log.parent.stat().st_mode & 0o077 == 0


def test_verbose_keeps_the_log_on_the_console(tmp_path):
    done = _run(tmp_path, verbose=True)
    assert done.returncode == 0, done.stderr
    assert "oneDNN" in done.stderr and "cuda drivers" in done.stderr
    assert not (tmp_path / "logs" / "grader.log").exists() or "oneDNN" not in (tmp_path / "logs" / "grader.log").read_text()
