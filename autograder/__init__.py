"""A generic grading engine for notebook assignments, built on Otter-Grader; no course content.

Each assignment is a package in ``assignments/`` with a spec (:mod:`autograder.spec`), found by
name (:mod:`autograder.registry`).  Modules, one responsibility each:

- ``probe/``: the untrusted side: ``jail`` (bubblewrap or permission jail), ``sandbox`` (run a
  submission under limits, check its messages), ``runtime`` (inside the jail: run, extract data).
- ``judge/``: the trusted side: ``judge`` (Otter's tests on extracted data, clean process) and
  ``pipeline`` (probe -> retrain -> judge: one result per submission).
- ``verifier/``: ``rebuild``, ``budget``, ``retrain``: rebuild and retrain the submitted model.
- ``lms/``: ``gradescope`` (+ templates), ``reports`` (grade sheets, Canvas, feedback), ``submissions``.
- ``protocol`` (probe <-> judge messages), ``result`` (the typed result), ``spec``, ``registry``.
- ``build`` / ``otter_plugin``: Otter Assign; offline MNIST under ``otter run``.
- ``data``: MNIST, provisioned offline and verified by content hash.
- ``batch``: whole-class grading; ``cli``: the ``cnn-grader`` / ``python -m autograder`` command line.
"""

__version__ = "0.1.0"
