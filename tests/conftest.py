"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The assignment built by Otter Assign from solutions/ (once per test module)."""
    from autograder import build

    (b,) = build.build_all(tmp_path_factory.mktemp("dist"))
    return b
