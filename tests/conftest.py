"""Fixtures shared by the test modules."""

import pytest


class _Builds:
    """Each assignment built by Otter Assign at most once per test session, on first use."""

    def __init__(self, tmp_path_factory):
        self._factory, self._built = tmp_path_factory, {}

    def __getitem__(self, name: str):
        if name not in self._built:
            from autograder import build

            (self._built[name],) = build.build_all(self._factory.mktemp(f"dist-{name}"), [name])
        return self._built[name]


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
