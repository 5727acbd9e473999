"""Datasets, provisioned ahead of grading: the engine's part (the data itself is each assignment's).

Each assignment's :class:`autograder.spec.Dataset` knows how to fetch and verify its own data
(``provision``), how to load it (``load``), which file a probe gets (``probe_file``, ``probe_setup``)
and how a notebook's own loading call is made to work offline under ``otter run``
(``install_offline``).  This module only keeps the shared cache folder and asks every installed
assignment to provision itself (``python -m autograder data``).
"""

from __future__ import annotations

import os
from pathlib import Path

from autograder import settings

ENV_CACHE = settings.CACHE.name


def cache_dir() -> Path:
    """The grader's cache folder: verified datasets, the retraining cache (``CNN_GRADER_CACHE``)."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "cnn-grader")


def provision(spec, *, allow_network: bool = True):
    """Fetch and verify ``spec``'s dataset ahead of grading; returns what its ``provision`` returns (a path,
    or None where the data ships inside a package)."""
    if spec.dataset.provision is None:
        return None
    return spec.dataset.provision(allow_network=allow_network)


def install_offline(assignment: str | None) -> None:
    """Make the notebook's own loading call read the verified local copy of ``assignment``'s dataset (the
    Otter plugin inserts a call to this before the student's first cell); a notebook that names no
    assignment known here gets every installed assignment's."""
    from autograder import registry

    specs = registry.all_assignments()
    if assignment in {s.name for s in specs}:
        specs = [registry.get(assignment)]
    for spec in specs:
        if spec.dataset.install_offline is not None:
            spec.dataset.install_offline()
