"""Gradescope and ``otter grade``: the zips' environments, and Gradescope emulated as closely as
this machine allows.

The emulation (tests marked ``container``) builds what Gradescope builds from our zip: a
root-owned ``/autograder``-like tree in a temporary root (``source/`` unpacked from the built
``gradescope_autograder.zip`` and made 0700 as ``setup.sh`` does, ``submission/``,
``results/``), an interpreter under a folder that starts 0700 like Gradescope's ``/root``
(a ``--copies`` venv in a ``mkdtemp`` folder whose ``.pth`` adds this interpreter's
site-packages; ``setup.sh``'s ``chmod o+x`` is applied to it), MNIST provisioned by the
``setup.sh`` command into a root-only cache.  Then ``run_autograder`` runs as Gradescope runs it:
as root, with no network (``unshare -n``), in a memory cgroup capped at 3 GiB when this machine
lets us create one (else the peak memory of the process tree is measured and reported).
Only the solution run retrains, on the second assignment (digits: seconds); the other runs pass
``--no-retrain``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from importlib.metadata import version
from pathlib import Path

import nbformat
import psutil
import pytest

from autograder import registry
from autograder.faults import Fault
from autograder.lms import gradescope
from autograder.result import GradeResult
from assignments.cnn_mnist import sample_answers as samples
from assignments.cnn_mnist.data import ensure_mnist_npz
from autograder.lms.gradescope import ContainerResources, container_resources, plan_limits

REPO = Path(__file__).resolve().parent.parent
CAP_BYTES = 3 << 30  # the Gradescope memory setting the docs recommend (docs/instructors/gradescope.md)


def _sample(name: str) -> Path:
    return samples.SAMPLES_DIR / f"{name}.ipynb"


def _zip_text(path: Path, member: str) -> str:
    with zipfile.ZipFile(path) as z:
        return z.read(member).decode()


# --- limits from the container's cgroup --------------------------------------------------------

def _fake_cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc").write_text(proc)
    for rel, text in files.items():
        (tmp_path / "cg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / rel).write_text(text)
    return tmp_path / "proc", tmp_path / "cg"


def test_limits_come_from_the_cgroup_v2_and_v1(tmp_path):
    v2 = _fake_cgroup(tmp_path / "v2", "0::/gradescope/job\n", {
        "cgroup.controllers": "cpu memory", "memory.max": "max", "cpu.max": "max 100000",
        "gradescope/memory.max": str(3 << 30), "gradescope/cpu.max": "200000 100000",
        "gradescope/job/memory.max": "max", "gradescope/job/cpu.max": "max 100000"})
    res = container_resources(*v2)
    assert res.memory_mb == 3072 and res.cpus <= 2.0 and "v2" in res.source
    v1 = _fake_cgroup(tmp_path / "v1", "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n", {
        "memory/memory.limit_in_bytes": str(1 << 62), "memory/docker/abc/memory.limit_in_bytes": str(768 << 20),
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"})
    res = container_resources(*v1)
    assert res.memory_mb == 768 and res.cpus == 0.5 and "v1" in res.source

    limits, retrain = plan_limits(ContainerResources(3072, 2.0, "test"), timeout_minutes=20)
    assert limits.memory_mb == 3072 - gradescope.MEMORY_HEADROOM_MB  # below the container's cap
    worst = limits.notebook_seconds + retrain.max_seconds * max(retrain.seeds, 1) + gradescope.TIME_HEADROOM_SECONDS
    assert worst <= 20 * 60 and retrain.max_seconds > 60
    small, _ = plan_limits(ContainerResources(768, 0.5, "test"), timeout_minutes=10)
    assert small.memory_mb < 768
    unbounded, _ = plan_limits(ContainerResources(None, None, "none"), timeout_minutes=40)
    assert unbounded.memory_mb == 6144  # never above the engine's own default


# --- results.json from the engine's result -----------------------------------------------------

def test_engine_grader_errors_and_pending_retraining_read_as_such():
    """The engine's ``grader_error`` status (jail or verifier faults) is never shown as the
    student's 0, and a partial result (``retrain: {"pending": True}``, before retraining) renders."""
    question = {"name": "training", "score": 1.0, "max_score": 6.0, "cases": [
        {"name": "test_training", "hidden": False, "points": 1, "passed": True, "message": "ok"},
        {"name": "test_accuracy_hidden", "hidden": True, "points": 5, "passed": False, "message": "pending"}]}
    faulty = gradescope.to_gradescope({"status": "grader_error", "error": "the jailed Python did not start",
                                       "score": 0.0, "questions": [question]}, 3.0)
    assert faulty["extra_data"] == {"status": "grader_error", "cause": "the jailed Python did not start",
                                   "cause_class": "unknown", "owner": "grader",  # a result written without a cause
                                   "fault": {"cause": "unknown", "owner": "grader",
                                             "message": "the jailed Python did not start"}}
    typed = gradescope.to_gradescope(GradeResult(assignment="cnn_mnist").fail(Fault(
        "host_slow", "the host was overloaded")).to_dict(), 3.0)  # the typed fault, from the result to Gradescope
    assert typed["extra_data"]["cause_class"] == "host_slow" and typed["extra_data"]["owner"] == "host"
    assert typed["output"] == gradescope.GRADER_ERROR_MESSAGE
    own = gradescope.to_gradescope(GradeResult(assignment="cnn_mnist").fail(Fault(
        "memory_limit", "the submission stopped before grading finished")).to_dict(), 3.0)  # the student's
    assert own["extra_data"] == {"status": "error", "fault": {"cause": "memory_limit", "owner": "submission",
                                                              "message": "the submission stopped before grading finished"}}
    assert own["output"].startswith("Problem with the submission: the submission stopped")
    assert faulty["output"] == gradescope.GRADER_ERROR_MESSAGE and faulty["tests"][0]["max_score"] == 0
    partial = gradescope.to_gradescope({"status": "graded", "score": 1.0, "questions": [question],
                                        "retrain": {"pending": True}}, 3.0, show_hidden=True)
    _assert_valid_results(partial)
    assert "being retrained" in partial["output"]
    assert [t["visibility"] for t in partial["tests"]] == ["visible", "after_published"]


def test_an_accuracy_not_decided_by_a_retrain_is_neither_failed_nor_explained_with_a_flag():
    """With retraining off (``--no-retrain``) or before it finished, the hidden accuracy check is undecided:
    its test has no status (neither passed nor failed) and the student reads why in plain words."""
    from autograder.result import STUDENT_PROVISIONAL

    undecided = {"name": "test_accuracy_hidden", "hidden": True, "points": 5, "passed": False,
                 "message": "Not decided (provisional): the model was not retrained in this run, so its accuracy "
                            "was not measured.", "undecided": "retraining_off"}
    question = {"name": "training", "score": 1.0, "max_score": 6.0, "cases": [
        {"name": "test_training", "hidden": False, "points": 1, "passed": True, "message": "ok"}, undecided]}
    payload = gradescope.to_gradescope({"status": "graded", "score": 1.0, "questions": [question]}, 3.0)
    _assert_valid_results(payload)
    hidden = next(t for t in payload["tests"] if t["name"] == "training (hidden checks)")
    assert "status" not in hidden and hidden["score"] == 0 and "Not decided" in hidden["output"]
    assert STUDENT_PROVISIONAL in payload["output"] and "--no-retrain" not in json.dumps(payload)
    failed = gradescope.to_gradescope({"status": "graded", "score": 1.0, "questions": [
        {**question, "cases": [question["cases"][0], {**undecided, "undecided": None, "message": "too low"}]}]}, 3.0)
    assert next(t for t in failed["tests"] if "hidden" in t["name"])["status"] == "failed"
    assert STUDENT_PROVISIONAL not in failed["output"]


TENSORFLOW_NOISE = ("absl::InitializeLog", "cudart_stub", "cpu_feature_guard", "cuda_platform", "I0000 ", "E0000 ",
                    "W0000 ")


def test_the_runners_own_process_is_as_quiet_as_the_batch(tmp_path):
    """TensorFlow imported by the runner's own process (as retraining's preparation does) prints nothing
    between the instructor's sections: its logging is at errors only, and absl's lines from before its
    logging starts go to the grader's log, which ends the output as its own section."""
    script = ("import sys\n"
              "from autograder.lms import gradescope\n"
              "def run(root, **kw):\n"
              "    gradescope._diagnostics('container and limits', {})\n"
              "    import tensorflow as tf\n"
              "    tf.constant([1.0]) + 1\n"  # device set-up: the CUDA probe's lines
              "    gradescope._diagnostics('result', {})\n"
              "gradescope.run = run\n"
              f"gradescope.main(['--root', {str(tmp_path)!r}])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "ABSL_", "GRPC_", "GLOG_"))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]
    sections = proc.stdout.split("=== grader log")[0]
    assert "=== container and limits ===" in sections and "=== result ===" in sections
    assert not [noise for noise in TENSORFLOW_NOISE if noise in sections], sections[-3000:]
    assert not [noise for noise in ("cpu_feature_guard", "cuda_platform") if noise in proc.stdout]  # errors only


# --- what the zips carry ----------------------------------------------------------------------

def test_gradescope_zip_pins_versions_provisions_mnist_and_fixes_permissions(built):
    env = _zip_text(built.gradescope_zip, "environment.yml")
    assert f"python={sys.version_info.major}.{sys.version_info.minor}\n" in env
    for pkg in ("tensorflow", "keras", "numpy"):
        assert f"- {pkg}=={version(pkg)}\n" in env, pkg
    assert f"- otter-grader[grading,plugins]=={version('otter-grader')}\n" in env
    setup = _zip_text(built.gradescope_zip, "setup.sh")
    assert "mamba env create -f /autograder/source/environment.yml" in setup  # Otter's install, kept
    assert setup.index("mamba env create") < setup.index('"$CNN_PYTHON" -m autograder data')
    assert "chmod o+x /root\n" in setup and 'chmod 0700 "$CNN_GRADER_CACHE" /autograder/source' in setup
    run = _zip_text(built.gradescope_zip, "run_autograder")
    assert run.startswith("#!/usr/bin/env bash") and "source/run_otter.py" in run
    assert f"--timeout-minutes {gradescope.DEFAULT_TIMEOUT_MINUTES}" in run
    # the fallback for a Python that cannot start is a valid grader-error results.json
    fallback = json.loads(run.split("<<'CNN_FALLBACK_RESULTS'\n")[1].split("\nCNN_FALLBACK_RESULTS")[0])
    assert fallback["extra_data"]["status"] == "grader_error" and "not a problem with your work" in fallback["output"]


def test_the_bundled_package_imports_every_module_from_the_zip_alone(built, tmp_path):
    """Everything the grader package needs at run time is in the zip's ``lib/`` (its templates
    included): every module of the bundled ``autograder`` imports from there, in a fresh ``python -I``."""
    with zipfile.ZipFile(built.gradescope_zip) as z:
        z.extractall(tmp_path / "source")
    lib = tmp_path / "source" / "lib"
    code = ("import importlib, pkgutil, sys; sys.path.insert(0, sys.argv[1]); import autograder; "
            "assert autograder.__file__.startswith(sys.argv[1]), autograder.__file__; "
            "names = [m.name for m in pkgutil.walk_packages(autograder.__path__, 'autograder.') "
            "         if not m.name.endswith('__main__')]; "
            "[importlib.import_module(n) for n in names]; print(len(names))")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(lib)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 20


def _otter_dockerfile_setup_files() -> list[str]:
    """What Otter's grading image holds when it runs setup.sh (``ADD ... /autograder/source/``
    lines before ``RUN ... setup.sh`` in otter/grade/Dockerfile)."""
    import otter.grade

    text = (Path(otter.grade.__file__).parent / "Dockerfile").read_text()
    before = text.split("setup.sh &&")[0]
    names = []
    for line in before.splitlines():
        if line.startswith("ADD ") and line.rstrip().endswith("/autograder/source/"):
            names += line.split()[1:-1]
    return names


def test_plain_zip_works_under_otter_grade(built, tmp_path):
    """Finding 11. Docker cannot run here, so the zip's environment files are checked instead:
    pins include TensorFlow; setup.sh, the only script Otter's Dockerfile runs, carries the
    package (its image holds nothing else of ours at that point); the unpacked package imports
    in a fresh isolated Python and the plugin's cell loads MNIST offline."""
    assert _otter_dockerfile_setup_files() == ["setup.sh", "environment.yml", "requirements.*"]
    env = _zip_text(built.autograder_zip, "environment.yml")
    assert f"- tensorflow=={version('tensorflow')}\n" in env and f"- keras=={version('keras')}\n" in env
    config = json.loads(_zip_text(built.autograder_zip, "otter_config.json"))
    assert config["plugins"] == ["autograder.otter_plugin.OfflineMNIST"]
    setup = _zip_text(built.autograder_zip, "setup.sh")
    payload = setup.split("<<'CNN_AUTOGRADER_PACKAGE'\n")[1].split("\nCNN_AUTOGRADER_PACKAGE")[0]
    archive = tmp_path / "pkg.tar.gz"
    subprocess.run(["base64", "-d"], input=payload.encode(), stdout=archive.open("wb"), check=True)
    lib = tmp_path / "lib"
    with tarfile.open(archive) as tar:
        tar.extractall(lib, filter="data")
    assert "tar -xzf /tmp/cnn_autograder.tar.gz -C /autograder/source/lib" in setup
    assert "echo /autograder/source/lib >" in setup and "cnn_autograder.pth" in setup

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from tensorflow.keras import datasets\n(x, y), _ = datasets.mnist.load_data()\nprint(x.shape, y[:3].tolist())")])
    script = (
        "import sys, nbformat\n"
        f"sys.path.insert(0, {str(lib)!r})\n"
        "import autograder.otter_plugin as plugin\n"
        f"assert plugin.__file__.startswith({str(lib)!r}), plugin.__file__\n"
        f"nb = plugin.OfflineMNIST(None, {{}}, {{}}).before_execution(nbformat.reads({nbformat.writes(notebook)!r}, 4))\n"
        "ns = {}\n"
        "for cell in nb.cells:\n"
        "    exec(cell.source, ns)\n"
    )
    env_vars = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CNN_GRADER_MNIST": str(ensure_mnist_npz()),
                "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(["unshare", "-n", sys.executable, "-I", "-c", script], capture_output=True, text=True,
                          env=env_vars, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(60000, 28, 28) [5, 0, 4]" in proc.stdout


# --- the entry point in a plain folder (moved from tests/test_batch.py) -------------------------

def _unpacked(built, tmp_path: Path) -> Path:
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    with zipfile.ZipFile(built.gradescope_zip) as z:
        z.extractall(root / "source")
        assert {"lib/autograder/engine.py", "lib/assignments/cnn_mnist/checks.py"} <= set(z.namelist())
        assert "autograder.lms.gradescope" in z.read("run_otter.py").decode()
    return root


def test_gradescope_layout_writes_a_valid_results_json(built, tmp_path):
    root = _unpacked(built, tmp_path)
    shutil.copy(_sample("shape_mistakes"), root / "submission" / "cnn_mnist.ipynb")
    proc = subprocess.run([sys.executable, "-I", str(root / "source" / "run_otter.py"), "--root", str(root),
                           "--no-retrain"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((root / "results" / "results.json").read_text())
    _assert_valid_results(results)
    assert any(t["visibility"] == "hidden" for t in results["tests"])  # show_hidden: false in the config
    edge = next(t for t in results["tests"] if t["name"] == "edge_output (public checks)")
    assert edge["score"] == 0 and "swapped" in edge["output"] and edge["status"] == "failed"
    (by_hand,) = [t for t in results["tests"] if "graded by hand" in t["name"]]  # staff only, pending, not scored
    assert by_hand["name"].startswith("written_pooling") and by_hand["visibility"] == "hidden"
    assert by_hand["max_score"] == 0 and "Type your answer here" not in by_hand["output"]
    assert "=== result ===" in proc.stdout  # the instructor's diagnostics


def test_gradescope_without_a_notebook_still_writes_results(built, tmp_path):
    root = _unpacked(built, tmp_path)
    payload = gradescope.run(root, retrain=False)
    assert payload["score"] == 0 and "found 0" in payload["output"] and payload["extra_data"]["status"] == "error"
    assert json.loads((root / "results" / "results.json").read_text()) == payload


# --- what the runner reads from the submission ------------------------------------------------

def _bare_root(tmp_path: Path) -> Path:
    """Gradescope's layout with just what the runner reads before grading (no build: fast)."""
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    (root / "source" / "tests").mkdir(parents=True)
    (root / "source" / "files").mkdir()
    (root / "source" / "otter_config.json").write_text(json.dumps({"assignment_name": "cnn_mnist"}))
    (root / "source" / "files" / registry.get("cnn_mnist").public_module_name).write_text("")
    return root


SECRET = "ROOT-ONLY-SECRET-7f3a"


@pytest.mark.parametrize("how", ["linked notebook", "linked folder", "not JSON"])
def test_the_runner_never_follows_a_link_nor_quotes_a_file(tmp_path, how):
    root = _bare_root(tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "cnn_mnist.ipynb").write_text(SECRET + " {not json")
    os.chmod(secret / "cnn_mnist.ipynb", 0o600)
    if how == "linked notebook":
        (root / "submission" / "cnn_mnist.ipynb").symlink_to(secret / "cnn_mnist.ipynb")
    elif how == "linked folder":
        (root / "submission" / "work").symlink_to(secret)
    else:
        shutil.copy(secret / "cnn_mnist.ipynb", root / "submission" / "cnn_mnist.ipynb")
    payload = gradescope.run(root, retrain=False)
    text = json.dumps(payload)
    assert SECRET[:4] not in text and "not json" not in text
    assert payload["extra_data"]["status"] == "error" and payload["score"] == 0
    expected = {"linked notebook": "cnn_mnist.ipynb is a symbolic link; not read",
                "linked folder": "found 0",  # a linked folder is never entered
                "not JSON": "cnn_mnist.ipynb is not a readable notebook: not JSON (Expecting value at line 1"}[how]
    assert expected in payload["output"], payload["output"]


def test_the_runner_reads_a_notebook_below_a_real_folder(tmp_path):
    root = _bare_root(tmp_path)
    (root / "submission" / "work").mkdir()
    shutil.copy(_sample("untouched"), root / "submission" / "work" / "cnn_mnist.ipynb")
    (root / "submission" / "other.ipynb").symlink_to(_sample("solution"))  # not chosen: not read
    notebook, problem = gradescope.find_notebook(root / "submission", "cnn_mnist")
    assert problem is None and notebook == root / "submission" / "work" / "cnn_mnist.ipynb"


# --- Gradescope, emulated ---------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="the Gradescope emulation runs as root, as Gradescope does")


class MemoryCap:
    """A memory cgroup below this process's own (v1 or v2), or None: then peak RSS is sampled."""

    def __init__(self, limit: int):
        self.dir, self.kind = None, "peak RSS of the process tree (no cgroup could be created here)"
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                base, files = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), ("memory.limit_in_bytes", "memory.max_usage_in_bytes")
            elif hid == "0" and (Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max").exists():
                base, files = Path("/sys/fs/cgroup") / path.lstrip("/"), ("memory.max", "memory.peak")
            else:
                continue
            try:
                d = Path(tempfile.mkdtemp(prefix="gradescope-emulation-", dir=base))
                (d / files[0]).write_text(str(limit))
            except OSError:
                continue
            self.dir, self.files, self.kind = d, files, f"cgroup memory limit {limit >> 20} MiB ({d})"
            break
        self.peak_sampled = 0

    def preexec(self):
        if self.dir is not None:
            (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def watch(self, proc: subprocess.Popen) -> threading.Thread:
        def sample():
            while proc.poll() is None:
                try:
                    root = psutil.Process(proc.pid)
                    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                    self.peak_sampled = max(self.peak_sampled, rss)
                except psutil.Error:
                    pass
                time.sleep(0.2)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        return t

    def peak(self) -> int:
        if self.dir is not None:
            try:
                return int((self.dir / self.files[1]).read_text())
            except (OSError, ValueError):
                pass
        return self.peak_sampled

    def close(self):
        if self.dir is not None:
            try:
                self.dir.rmdir()
            except OSError:
                pass


def _site_packages() -> list[str]:
    import site

    return [p for p in site.getsitepackages() if Path(p).is_dir()]


@pytest.fixture(scope="module")
def image(built):
    """What Gradescope's image holds after setup.sh: the interpreter, the unpacked zip, MNIST."""
    yield from _image(built)


@pytest.fixture(scope="module")
def digits_image(builds):
    """The same for the second assignment's Gradescope zip."""
    yield from _image(builds["digits"])


def _image(built):
    if os.geteuid() != 0:
        pytest.skip("the Gradescope emulation runs as root, as Gradescope does")
    # 0700, like Gradescope's /root; not under /tmp, which the jail replaces with a private tmpfs
    home = Path(tempfile.mkdtemp(prefix="fake-root-home-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    assert (home.stat().st_mode & 0o777) == 0o700
    env_dir = home / "miniforge3" / "envs" / "otter-env"
    subprocess.run([sys.executable, "-m", "venv", "--copies", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "test-interpreter.pth").write_text("\n".join(_site_packages()) + "\n")
    with zipfile.ZipFile(built.gradescope_zip) as z:  # /autograder/source at image build time
        z.extractall(home / "source")
    pth = Path(purelib) / "cnn_autograder.pth"  # as setup.sh does; each run points it at its own source/lib
    pth.write_text(str(home / "source" / "lib") + "\n")
    cache = home / ".cache" / "cnn-grader"
    cache.mkdir(parents=True)
    # setup.sh's steps after Otter's install: MNIST by the same command, then the permissions
    proc = subprocess.run([str(py), "-m", "autograder", "data", "--offline", "--mnist", str(ensure_mnist_npz())],
                          env={**os.environ, "CNN_GRADER_CACHE": str(cache)}, capture_output=True, text=True,
                          cwd=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.copy(ensure_mnist_npz(), cache / "mnist.npz")  # the verified copy, where grading reads it
    shutil.rmtree(home / "source")
    os.chmod(home, 0o701)  # chmod o+x /root
    os.chmod(cache, 0o700)
    yield {"python": py, "cache": cache, "home": home, "pth": pth}
    shutil.rmtree(home, ignore_errors=True)


def run_gradescope(image: dict, built, tmp_path: Path, notebook: Path | None, *args: str,
                   config: dict | None = None, cache: Path | None = None, timeout: float = 900,
                   extra: dict[str, Path] | None = None, remove: tuple[str, ...] = ()) -> dict:
    """``run_autograder`` on one submission, as Gradescope runs it; returns results, stdout, peak memory."""
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    (root / "results").mkdir()
    with zipfile.ZipFile(built.gradescope_zip) as z:
        z.extractall(root / "source")
    shutil.copy(root / "source" / "run_autograder", root / "run_autograder")
    image["pth"].write_text(str(root / "source" / "lib") + "\n")
    if config:
        cfg = root / "source" / "otter_config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **config}))
    for rel in remove:
        (root / "source" / rel).unlink()
    os.chmod(root / "source", 0o700)  # setup.sh: chmod 0700 /autograder/source
    if notebook is not None:
        shutil.copy(notebook, root / "submission" / f"{built.name}.ipynb")
    for rel, src in (extra or {}).items():
        (root / "submission" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / "submission" / rel)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(image["home"]), "LANG": "C.UTF-8",
           "CNN_GRADER_GRADESCOPE_ROOT": str(root), "CNN_GRADER_PYTHON": str(image["python"]),
           "CNN_GRADER_CACHE": str(cache or image["cache"])}
    cap = MemoryCap(CAP_BYTES)
    seen: list[str] = []
    try:
        proc = subprocess.Popen(["unshare", "-n", "bash", str(root / "run_autograder"), *args], env=env, cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=cap.preexec)
        cap.watch(proc)
        results = root / "results" / "results.json"

        def follow():  # every version of results.json written during the run
            while proc.poll() is None:
                try:
                    text = results.read_text()
                    if not seen or seen[-1] != text:
                        seen.append(text)
                except OSError:
                    pass
                time.sleep(0.2)

        threading.Thread(target=follow, daemon=True).start()
        stdout, _ = proc.communicate(timeout=timeout)
        peak = cap.peak()
    finally:
        cap.close()
    assert proc.returncode == 0, stdout[-3000:]
    payload = json.loads(results.read_text())
    for folder in (root / "source", root / "submission", root / "results"):  # nothing of the grader is readable by others
        assert folder.stat().st_uid == 0 and folder.stat().st_mode & 0o077 == 0, folder
    return {"results": payload, "stdout": stdout, "peak": peak, "memory": cap.kind, "versions": seen,
            "diagnostics": _diagnostics(stdout)}


def _diagnostics(stdout: str) -> dict:
    blocks = re.findall(r"=== (.+?) ===\n(\{.*?\n\})", stdout, re.S)
    return {title: json.loads(body) for title, body in blocks}


def _assert_valid_results(results: dict) -> None:
    """Gradescope's results.json format (see autograder.lms.gradescope's docstring)."""
    assert isinstance(results["score"], float) and isinstance(results["execution_time"], int)
    assert isinstance(results["output"], str) and results["stdout_visibility"] == "hidden"
    for t in results["tests"]:
        # a hand-graded question's pending entry has no status (Gradescope's status is optional)
        assert set(t) | {"status"} == {"name", "score", "max_score", "status", "output", "visibility"}
        assert t["visibility"] in {"visible", "hidden", "after_due_date", "after_published"}
        assert 0 <= t["score"] <= t["max_score"] and t.get("status", "pending") in {"passed", "failed", "pending"}
        # no status either: a check not decided in this run (no retrain measured the model), see to_gradescope
        assert "status" in t or (t["visibility"] == "hidden" and "graded by hand" in t["name"]) \
            or "Not decided" in t["output"]
    assert results["score"] == pytest.approx(sum(t["score"] for t in results["tests"]))


def _with_cells(tmp_path: Path, base: str, sources: list[str], position: int) -> Path:
    nb = nbformat.read(_sample(base), as_version=4)
    for i, src in enumerate(sources):
        nb.cells.insert(position + i, nbformat.v4.new_code_cell(src))
    path = tmp_path / f"{base}-modified.ipynb"
    nbformat.write(nb, path)
    return path


@needs_root
def test_grader_faults_are_grader_errors_not_zeros(image, built, tmp_path):
    """Finding 3: MNIST missing at grading time (no network) is the grader's fault, and so is any
    exception of the grader (here: a broken otter_config.json); results.json is written anyway."""
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir(mode=0o700)
    missing = run_gradescope(image, built, tmp_path / "a", _sample("solution"), "--no-retrain", cache=empty_cache)
    res = missing["results"]
    assert res["extra_data"]["status"] == "grader_error" and "MNIST" in res["extra_data"]["cause"]
    assert res["extra_data"]["cause_class"] == "dataset_missing" and res["extra_data"]["owner"] == "grader"
    assert "not a problem with your work" in res["output"] and res["tests"][0]["visibility"] == "visible"
    assert "MNIST is not provisioned" in missing["stdout"]  # the instructor's diagnostics
    _assert_valid_results(res)

    broken = run_gradescope(image, built, tmp_path / "b", _sample("solution"), "--no-retrain",
                            remove=("files/cnn_checks.py",))
    assert broken["results"]["extra_data"]["status"] == "grader_error"
    assert "Traceback" in broken["stdout"]


@needs_root
def test_blank_notebook_gets_zero_with_checkpoints_ignored_and_show_hidden(image, built, tmp_path):
    """A blank (untouched) notebook is graded, not an error; a checkpoint copy of the solution
    beside it is ignored (it would be "found 2", or graded instead); show_hidden is honoured.
    Depends on the jail merge: the sandbox user must start the interpreter (cells executed)."""
    run = run_gradescope(image, built, tmp_path, _sample("untouched"), "--no-retrain", config={"show_hidden": True},
                         extra={".ipynb_checkpoints/cnn_mnist-checkpoint.ipynb": _sample("solution"),
                                "__MACOSX/cnn_mnist.ipynb": _sample("solution")})
    res = run["results"]
    _assert_valid_results(res)
    assert res["score"] == 0 and res["extra_data"]["status"] == "graded", res["extra_data"]
    # the hand-graded question is the one staff-only entry, unscored and pending
    assert {t["visibility"] for t in res["tests"] if "graded by hand" not in t["name"]} == {"visible", "after_published"}
    assert [t["visibility"] for t in res["tests"] if "graded by hand" in t["name"]] == ["hidden"]
    cells = run["diagnostics"]["result"]["cells"]
    assert len(cells) > 10 and not cells[0]["error"], cells  # the notebook really ran, as the sandbox user
    isolation = run["diagnostics"]["result"]["isolation"]  # the jail's start-up self-test proved it
    assert isinstance(isolation, dict) and isolation["isolated"] and isolation["self_test"].startswith("passed"), \
        isolation  # (run here, or kept for this host and version)
    if run["memory"].startswith("cgroup"):  # the limits were read from the container's cgroup
        container = run["diagnostics"]["container and limits"]
        assert container["resources"]["memory_mb"] == CAP_BYTES >> 20
        assert container["limits"]["memory_mb"] == (CAP_BYTES >> 20) - gradescope.MEMORY_HEADROOM_MB


@needs_root
def test_crashing_notebook_is_the_students_error_with_the_reason(image, built, tmp_path):
    notebook = _with_cells(tmp_path, "untouched", ["import os\nos._exit(3)"], position=2)
    res = run_gradescope(image, built, tmp_path, notebook, "--no-retrain")["results"]
    _assert_valid_results(res)
    # the student's fault, with the reason (the jail helper's engine grades the rest without that cell)
    assert res["extra_data"]["status"] in {"graded", "error"} and res["score"] == 0, res["extra_data"]
    assert "exited with status 3" in res["output"]  # depends on the jail merge (the child must start)


@needs_root
def test_timeout_and_cell_errors_reach_the_student_and_the_rest_is_graded(image, built, tmp_path):
    notebook = _with_cells(tmp_path, "solution", ["raise ValueError('my own mistake')", "while True:\n    pass"],
                           position=20)
    run = run_gradescope(image, built, tmp_path, notebook, "--no-retrain", "--cell-seconds", "15")
    res = run["results"]
    _assert_valid_results(res)
    assert "Error in code cell 20: ValueError: my own mistake" in res["output"], res["extra_data"]
    assert "Limit reached: cell time limit (15 s) reached in cell 21" in res["output"]
    assert res["extra_data"]["status"] == "graded" and res["score"] > 0  # depends on the jail merge
    hidden = [t for t in res["tests"] if t["name"].endswith("(hidden checks)")]
    assert hidden and all(t["visibility"] == "hidden" for t in hidden)  # show_hidden: false in the config


@needs_root
def test_solution_gets_full_marks_retrained_under_a_3_gib_cap_with_no_network(digits_image, builds, tmp_path):
    """The whole Gradescope path with retraining, under a 3 GiB cap and no network: setup.sh's image,
    run_autograder, partial results first, the model retrained from scratch, full marks.  It runs on
    the second assignment, whose solution retrains in seconds; the CNN solution's full-MNIST retrain
    runs in tests/test_assignment.py, which checks its peak memory against this same cap."""
    built = builds["digits"]
    spec = registry.get("digits")
    started = time.monotonic()
    run = run_gradescope(digits_image, built, tmp_path, spec.samples_dir / "solution.ipynb", timeout=1800)
    seconds = time.monotonic() - started
    res = run["results"]
    print(f"\nsolution on emulated Gradescope: {seconds:.0f} s wall, peak memory {run['peak'] / 2**20:.0f} MiB "
          f"({run['memory']}), retrain {run['diagnostics']['result']['retrain']}")
    _assert_valid_results(res)
    assert res["extra_data"]["status"] == "graded", res["extra_data"]
    assert res["score"] == pytest.approx(sum(t["max_score"] for t in res["tests"])) and res["score"] > 0
    found = re.search(r"retrained from scratch: test accuracy (0\.\d+)", res["output"])
    assert found and float(found.group(1)) > spec.training.threshold, res["output"][-2000:]
    retrain = run["diagnostics"]["result"]["retrain"]
    assert not retrain["cache_hit"] and retrain["peak_mb"] > 0
    assert run["peak"] < CAP_BYTES
    # partial results (no retraining yet) were written before retraining started (on_partial)
    assert any("Partial results" in v for v in run["versions"]), "needs the engine's on_partial"
    # the runner's own output is as quiet as a batch's: no TensorFlow line between its sections
    sections = run["stdout"].split("=== grader log")[0]
    assert not [noise for noise in TENSORFLOW_NOISE if noise in sections], sections[-3000:]


@needs_root
def test_a_recipe_the_build_pre_verified_is_served_on_gradescope_with_an_empty_cache(digits_image, builds, tmp_path):
    """The whole pre-verified path, training for real once: the build grades the digits solution (its jail, its
    canonical recipe, a real retrain: seconds) and signs the verdict into Otter's zip, the Gradescope zip is made
    from it, and Gradescope, whose every container starts with an empty retraining cache, serves the verdict:
    full marks, the student told it was pre-verified, nothing trained (the cache stays empty)."""
    from autograder import build as builder
    from autograder.preverify import Preverify, preverify_built

    spec = registry.get("digits")
    shutil.copytree(builds["digits"].student_dir, tmp_path / "dist" / "digits")
    target = tmp_path / "dist" / "digits"
    built = builder.BuiltAssignment("digits", target, target / "autograder.zip", target / "solution" / "digits.ipynb")
    started = time.monotonic()
    outcome = preverify_built(built, Preverify(key_dir=tmp_path / "key", cache_dir=None, progress=False))
    builder.add_to_zip(built.autograder_zip, outcome.files)  # as the build does
    build_seconds = time.monotonic() - started
    assert [v["name"] for v in outcome.verdicts] == ["solution"] and not outcome.skipped, outcome
    built.gradescope_zip = builder.make_gradescope_zip(built.autograder_zip, target / "gradescope_autograder.zip", spec)
    with zipfile.ZipFile(built.gradescope_zip) as z:
        assert {"preverified.json", "preverified.pub"} <= set(z.namelist())
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir(mode=0o700)
    started = time.monotonic()
    run = run_gradescope(digits_image, built, tmp_path / "gs", spec.samples_dir / "solution.ipynb", cache=empty_cache)
    seconds = time.monotonic() - started
    res, retrain = run["results"], run["diagnostics"]["result"]["retrain"]
    print(f"\npre-verifying the digits solution at build: {build_seconds:.0f} s; served on emulated Gradescope: "
          f"{seconds:.0f} s wall ({retrain})")
    _assert_valid_results(res)
    assert res["extra_data"]["status"] == "graded" and res["score"] == pytest.approx(
        sum(t["max_score"] for t in res["tests"]))
    assert retrain["preverified"]["recipe"] == "solution" and retrain["seconds"] == 0
    assert retrain["accuracies"] == outcome.verdicts[0]["accuracies"]
    assert "recipe was pre-verified" in res["output"] and "not retrained again" in res["output"]
    assert not list(empty_cache.rglob("*.json")), "nothing was trained, so nothing was cached"
