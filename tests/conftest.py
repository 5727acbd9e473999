"""Fixtures shared by the test modules, and the suite's share of the cores.

Under ``pytest -n N`` (the default: ``-n 2``) each worker process gets ``cores // N`` CPU threads for
every TensorFlow and BLAS it starts: its own, a notebook's kernel under ``otter run``, a jail's probe,
the verifier's retraining process.  TensorFlow's thread pools spin while they wait, so two workers
each training with every core stall each other many times over (a full-MNIST training measured
about 14 times slower that way in a CI run).  Set before anything imports TensorFlow; a variable
already set in the environment wins.
"""

import os

import pytest


def _share_the_cores() -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers <= 1:
        return
    from autograder.settings import THREAD_VARIABLES
    from autograder.verifier.training import ENV_RETRAIN_THREADS
    from autograder.probe.sandbox import ENV_PROBE_THREADS

    share = str(max((os.cpu_count() or 1) // workers, 1))
    for name in (*THREAD_VARIABLES, ENV_RETRAIN_THREADS, ENV_PROBE_THREADS):
        os.environ.setdefault(name, share)


_share_the_cores()


class _Builds:
    """Each assignment built by Otter Assign at most once per test session, on first use."""

    def __init__(self, tmp_path_factory):
        self._factory, self._built = tmp_path_factory, {}

    def __getitem__(self, name: str):
        if name not in self._built:
            from autograder import build

            (self._built[name],) = build.build_all(self._factory.mktemp(f"dist-{name}"), [name])
        return self._built[name]


@pytest.fixture(autouse=True)
def _grader_environment_restored():
    """The command line sets CNN_GRADER_* variables for its worker processes (``grade --isolation`` ...); a
    test that calls it in-process must not leave them to the next test of the same pytest worker."""
    before = {k: v for k, v in os.environ.items() if k.startswith("CNN_GRADER_")}
    yield
    for key in [k for k in os.environ if k.startswith("CNN_GRADER_") and k not in before]:
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """``builds["<assignment>"]``: that assignment's BuiltAssignment (built once per session)."""
    return _Builds(tmp_path_factory)


@pytest.fixture(scope="session")
def built(builds):
    """The CNN-on-MNIST assignment, built once per session."""
    return builds["cnn_mnist"]


@pytest.fixture(scope="session")
def autograder(built):
    """The CNN-on-MNIST autograder zip."""
    return built.autograder_zip
