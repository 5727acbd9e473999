"""Datasets, provisioned ahead of grading: the engine's part (the data itself is each assignment's).

Each assignment's :class:`autograder.spec.Dataset` knows how to fetch and verify its own data
(``provision``), how to load it (``load``), which file a probe gets (``probe_file``, ``probe_setup``)
and how a notebook's own loading call is made to work offline under ``otter run``
(``install_offline``).  This module only keeps the shared cache folder and asks every installed
assignment to provision itself (``python -m autograder data``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from autograder import settings

ENV_CACHE = settings.CACHE.name


def cache_dir() -> Path:
    """The grader's cache folder: verified datasets, the retraining cache (``CNN_GRADER_CACHE``)."""
    return settings.current().cache_dir


def array_sha256(arr: np.ndarray) -> str:
    """The SHA-256 of an array's bytes (C order), as datasets pin their content."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def verify_arrays(arrays: dict, shapes: dict[str, tuple], digests: dict[str, str]) -> None:
    """Raise ``ValueError`` naming the first array of a dataset whose dtype (uint8), shape or content
    (``digests``: SHA-256 per array) is not the pinned one."""
    for name, shape in shapes.items():
        if name not in arrays:
            raise ValueError(f"missing array {name!r}")
        arr = arrays[name]
        if arr.dtype != np.uint8 or arr.shape != shape:
            raise ValueError(f"{name} is {arr.dtype}{arr.shape}, expected uint8{shape}")
        digest = array_sha256(arr)
        if digest != digests[name]:
            raise ValueError(f"{name} content hash {digest[:12]}... does not match")


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
