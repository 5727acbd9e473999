"""Every ``CNN_GRADER_*`` environment variable, with its default and meaning, in one place; and the one object,
:class:`GraderConfig`, that the grader's processes read them through.

Modules read the environment through :func:`current` (``settings.current().probe_threads``) and change it
through the table (``settings.ISOLATION.set("bwrap")``, which worker processes inherit); none spells a name out
or reads ``os.environ`` for one.  A worker that does not inherit the environment gets the object itself: the
batch hands it to each worker (:func:`install` there: a Ray node included), the retraining worker receives it
in its job.  ``tests/test_docs.py`` checks that every ``CNN_GRADER_*`` name found anywhere in the code is listed
here, and the documentation's configuration reference (``docs/reference/configuration.md``) is generated from
this table at build time, so the two cannot drift apart.

The environment the grader gives its own subprocesses to keep TensorFlow, XLA, absl and gRPC
quiet (:data:`QUIET_LOGGING_ENV`) is defined here too.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, its default (as the reader sees it unset), what it does."""

    name: str
    default: str
    help: str
    read_by: str  # the module that reads it

    def get(self) -> str:
        """The value in this process's environment, else the default."""
        return os.environ.get(self.name, self.default)

    def set(self, value) -> None:
        """Set it for this process and every worker process it starts from now on."""
        os.environ[self.name] = str(value)


CACHE = Setting(
    "CNN_GRADER_CACHE", "~/.cache/cnn-grader",
    "Folder of the verified datasets (`mnist.npz`) and the retraining cache (`retrain/`, with its HMAC key).",
    "autograder.data, assignments.cnn_mnist.data, autograder.verifier.signed_cache")
MNIST = Setting(
    "CNN_GRADER_MNIST", "",
    "A Keras-format `mnist.npz` to verify and use before any other source (same as `data --mnist PATH`).",
    "assignments.cnn_mnist.data")
ISOLATION = Setting(
    "CNN_GRADER_ISOLATION", "auto",
    "How submissions are jailed: `auto`, `bwrap` or `permissions` (`grade --isolation` sets it).",
    "autograder.probe.jail")
UNSAFE_NO_ISOLATION = Setting(
    "CNN_GRADER_UNSAFE_NO_ISOLATION", "",
    "`1`: where no jail is possible, grade without one; every result says 'not isolated' "
    "(`grade --unsafe-no-isolation` sets it).",
    "autograder.probe.jail")
PRIVATE_PATHS = Setting(
    "CNN_GRADER_PRIVATE_PATHS", "",
    "Extra paths (separated by `:`) that every jail masks and its self-test proves unreadable; the batch and the "
    "Gradescope runner add their inputs and outputs.",
    "autograder.probe.jail, autograder.lms.gradescope")
WARM = Setting(
    "CNN_GRADER_WARM", "0",
    "How many jails and judges wait started ahead, per kind (a library call: 0; the batch sets `grade --warm`, "
    "default 1).",
    "autograder.warm")
PROBE_THREADS = Setting(
    "CNN_GRADER_PROBE_THREADS", "0",
    "CPU threads a probe's TensorFlow and BLAS may use (0: their defaults); the batch sets 1.",
    "autograder.probe.sandbox")
RETRAIN_THREADS = Setting(
    "CNN_GRADER_RETRAIN_THREADS", "0",
    "CPU threads one retrain may use (0: every core). Set it where other work shares the cores.",
    "autograder.verifier.training")
RETRAIN_SLOTS = Setting(
    "CNN_GRADER_RETRAIN_SLOTS", "",
    "How many retrains run at once on this machine (unset: 1 on CPU, 4 on a GPU).",
    "autograder.verifier.worker")
DETERMINISTIC = Setting(
    "CNN_GRADER_DETERMINISTIC", "",
    "TensorFlow's op determinism during retraining: `1` on, `0` off (unset: on a GPU only).",
    "autograder.verifier.training")
GRADESCOPE_ROOT = Setting(
    "CNN_GRADER_GRADESCOPE_ROOT", "/autograder",
    "Gradescope's root folder, as `run_autograder` sees it; another folder to try the zip on your own machine "
    "(see Gradescope in the instructors' pages).",
    "autograder/lms/templates/run_autograder.j2")
NO_CGROUP = Setting(
    "CNN_GRADER_NO_CGROUP", "",
    "`1`: make no control group per jail, as on a host that forbids them; every result and the self-test then "
    "say 'no cgroup' and limits are sampled by the watchdog only.",
    "autograder.metering.cgroup")
RAY_AUTHENTICATED = Setting(
    "CNN_GRADER_RAY_AUTHENTICATED", "",
    "`1`: the operator vouches that the Ray cluster requires authentication, so `--ray` is allowed in a "
    "permission jail whose uids reach the network (where no sandbox uid can read or replace its credentials).",
    "autograder.probe.ray_access")
PYTHON = Setting(
    "CNN_GRADER_PYTHON", "/root/miniforge3/envs/otter-env/bin/python",
    "The interpreter Gradescope's `run_autograder` grades with; your own to try the zip on your machine.",
    "autograder/lms/templates/run_autograder.j2")
VERBOSE = Setting(
    "CNN_GRADER_VERBOSE", "",
    "`1`: `grade` leaves the log of the grader and its subprocesses (TensorFlow's start-up lines, warnings) on "
    "the console instead of writing it to `<out>/logs/grader.log` (same as `grade --verbose`).",
    "autograder.logs")
CALIBRATION = Setting(
    "CNN_GRADER_CALIBRATION", "",
    "The file of this host's calibration: its reference speed, measured and kept per host (unset: "
    "`host-calibration.json` in the cache folder). A limit reached while the host runs measurably slower than "
    "this is the host's fault, not the submission's.",
    "autograder.metering.calibration")
FORKSERVER = Setting(
    "CNN_GRADER_FORKSERVER", "0",
    "`1`: a root grader's bubblewrap jails are forked from a template that has imported NumPy, TensorFlow/Keras "
    "and IPython once (see Isolation); `0` (the default for now): every jail starts a fresh interpreter.",
    "autograder.probe.forkserver")
FORKSERVER_ON = ("1", "on", "yes", "true", "auto")  # the values of CNN_GRADER_FORKSERVER that turn it on
SETTINGS: tuple[Setting, ...] = (CACHE, MNIST, ISOLATION, UNSAFE_NO_ISOLATION, PRIVATE_PATHS, WARM, PROBE_THREADS,
                                 RETRAIN_THREADS, RETRAIN_SLOTS, DETERMINISTIC, NO_CGROUP, RAY_AUTHENTICATED,
                                 CALIBRATION, GRADESCOPE_ROOT, PYTHON, VERBOSE, FORKSERVER)

# The variables TensorFlow and BLAS read at start-up for their thread pools: set for a probe
# (CNN_GRADER_PROBE_THREADS) and a retrain (CNN_GRADER_RETRAIN_THREADS).
THREAD_VARIABLES: tuple[str, ...] = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                                     "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# What the grader's own subprocesses (batch workers, jails, judges, retrains) start with: TensorFlow's C++
# log (oneDNN, CUDA, cuDNN/cuBLAS factory lines), XLA, absl and gRPC at errors only.  A student's cells
# can still print what they like: that output is theirs and stays in the results.
QUIET_LOGGING_ENV: dict[str, str] = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_CPP_MAX_VLOG_LEVEL": "-1",
    "ABSL_MIN_LOG_LEVEL": "3",
    "ABSL_STDERRTHRESHOLD": "3",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
}


def by_name() -> dict[str, Setting]:
    return {s.name: s for s in SETTINGS}


def _int(text: str, default: int) -> int:
    try:
        return max(int(text), 0)
    except ValueError:
        return default


def _private(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(os.pathsep) if p)


@dataclass(frozen=True)
class GraderConfig:
    """What the grader's processes read from the ``CNN_GRADER_*`` variables, in one documented object: built by
    :func:`current` from the environment, handed to a worker that does not inherit it (:meth:`to_dict`,
    :meth:`from_dict`, :func:`install`).  Each field is the variable of the same meaning in the table above."""

    cache: str  # CNN_GRADER_CACHE, as given ("" : the default folder; see cache_dir)
    mnist: str  # CNN_GRADER_MNIST
    isolation: str  # CNN_GRADER_ISOLATION (checked by autograder.probe.jail)
    unsafe_no_isolation: bool  # CNN_GRADER_UNSAFE_NO_ISOLATION=1
    private_paths: tuple[str, ...]  # CNN_GRADER_PRIVATE_PATHS
    warm: int  # CNN_GRADER_WARM
    probe_threads: int  # CNN_GRADER_PROBE_THREADS (0: TensorFlow's default)
    retrain_threads: int  # CNN_GRADER_RETRAIN_THREADS (0: every core)
    retrain_slots: int | None  # CNN_GRADER_RETRAIN_SLOTS (None: 1 on CPU, 4 on a GPU)
    deterministic: bool | None  # CNN_GRADER_DETERMINISTIC (None: on a GPU only)
    no_cgroup: bool  # CNN_GRADER_NO_CGROUP=1
    ray_authenticated: bool  # CNN_GRADER_RAY_AUTHENTICATED=1
    calibration: str  # CNN_GRADER_CALIBRATION ("": in the cache folder; see calibration_file)
    verbose: bool  # CNN_GRADER_VERBOSE=1
    forkserver: bool = False  # CNN_GRADER_FORKSERVER=1 (jails forked from a template; see autograder.probe.forkserver)

    @classmethod
    def from_environment(cls, env=None) -> "GraderConfig":
        env = os.environ if env is None else env

        def get(setting: Setting) -> str:
            return env.get(setting.name, setting.default)

        slots, determinism = get(RETRAIN_SLOTS).strip(), get(DETERMINISTIC).strip()
        return cls(cache=get(CACHE) if CACHE.name in env else "", mnist=get(MNIST),
                   isolation=get(ISOLATION).strip().lower() or ISOLATION.default,
                   unsafe_no_isolation=get(UNSAFE_NO_ISOLATION) == "1", private_paths=_private(get(PRIVATE_PATHS)),
                   warm=_int(get(WARM), 0), probe_threads=_int(get(PROBE_THREADS), 0),
                   retrain_threads=_int(get(RETRAIN_THREADS), 0),
                   retrain_slots=max(_int(slots, 1), 1) if slots else None,
                   deterministic=None if determinism == "" else determinism != "0",
                   no_cgroup=get(NO_CGROUP) == "1", ray_authenticated=get(RAY_AUTHENTICATED) == "1",
                   calibration=get(CALIBRATION), verbose=get(VERBOSE) == "1",
                   forkserver=get(FORKSERVER).strip().lower() in FORKSERVER_ON)

    @property
    def cache_dir(self) -> Path:
        """The grader's cache folder: verified datasets, the retraining cache, the host's calibration."""
        return Path(self.cache or CACHE.default).expanduser()

    @property
    def calibration_file(self) -> Path:
        return Path(self.calibration).expanduser() if self.calibration else self.cache_dir / "host-calibration.json"

    def environment(self) -> dict[str, str]:
        """The ``CNN_GRADER_*`` variables that give this configuration (what :func:`install` sets)."""
        flag = {True: "1", False: ""}
        out = {MNIST.name: self.mnist, ISOLATION.name: self.isolation,
               UNSAFE_NO_ISOLATION.name: flag[self.unsafe_no_isolation],
               PRIVATE_PATHS.name: os.pathsep.join(self.private_paths), WARM.name: str(self.warm),
               PROBE_THREADS.name: str(self.probe_threads), RETRAIN_THREADS.name: str(self.retrain_threads),
               RETRAIN_SLOTS.name: "" if self.retrain_slots is None else str(self.retrain_slots),
               DETERMINISTIC.name: "" if self.deterministic is None else flag[self.deterministic] or "0",
               NO_CGROUP.name: flag[self.no_cgroup], RAY_AUTHENTICATED.name: flag[self.ray_authenticated],
               CALIBRATION.name: self.calibration, VERBOSE.name: flag[self.verbose],
               FORKSERVER.name: flag[self.forkserver] or "0"}
        if self.cache:
            out[CACHE.name] = self.cache
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GraderConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["private_paths"] = tuple(kw.get("private_paths") or ())
        return cls(**kw)


def current() -> "GraderConfig":
    """This process's configuration, read from its environment now (the command line and the batch set
    variables at run time; a worker that did not inherit them had them installed, see :func:`install`)."""
    return GraderConfig.from_environment()


def install(config: GraderConfig) -> None:
    """Make ``config`` this process's configuration (a batch or retraining worker: before any work)."""
    os.environ.update(config.environment())
    if not config.cache:
        os.environ.pop(CACHE.name, None)  # the default folder, as where the configuration was built
