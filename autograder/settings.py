"""Every ``CNN_GRADER_*`` environment variable, with its default and meaning, in one place.

Modules name a variable through this table (``settings.CACHE.name``); the jail, the sandbox and the
verifier still spell theirs out (``jail.ENV_MODE``, ...).  ``tests/test_docs.py`` checks that every
``CNN_GRADER_*`` name found anywhere in the code is listed here, and the documentation's
configuration reference (``docs/reference/configuration.md``) is generated from this table at
build time, so the two cannot drift apart.

The environment the grader gives its own subprocesses to keep TensorFlow, XLA, absl and gRPC
quiet (:data:`QUIET_LOGGING_ENV`) is defined here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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


CACHE = Setting(
    "CNN_GRADER_CACHE", "~/.cache/cnn-grader",
    "Folder of the verified datasets (`mnist.npz`) and the retraining cache (`retrain/`, with its HMAC key).",
    "autograder.data, assignments.cnn_mnist.data, autograder.verifier.retrain")
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
    "autograder.verifier.retrain")
RETRAIN_SLOTS = Setting(
    "CNN_GRADER_RETRAIN_SLOTS", "",
    "How many retrains run at once on this machine (unset: 1 on CPU, 4 on a GPU).",
    "autograder.verifier.retrain")
DETERMINISTIC = Setting(
    "CNN_GRADER_DETERMINISTIC", "",
    "TensorFlow's op determinism during retraining: `1` on, `0` off (unset: on a GPU only).",
    "autograder.verifier.retrain")
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
FORKSERVER = Setting(
    "CNN_GRADER_FORKSERVER", "auto",
    "`auto`: a root grader's bubblewrap jails are forked from a template that has imported NumPy, TensorFlow/Keras "
    "and IPython once (see Isolation); `0`: every jail starts a fresh interpreter.",
    "autograder.probe.forkserver")
SETTINGS: tuple[Setting, ...] = (CACHE, MNIST, ISOLATION, UNSAFE_NO_ISOLATION, PRIVATE_PATHS, WARM, PROBE_THREADS,
                                 RETRAIN_THREADS, RETRAIN_SLOTS, DETERMINISTIC, NO_CGROUP, RAY_AUTHENTICATED,
                                 GRADESCOPE_ROOT, PYTHON, VERBOSE, FORKSERVER)

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
