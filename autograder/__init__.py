"""A generic grading engine for notebook assignments, built on Otter-Grader; no course content.

Each assignment is a package in ``assignments/`` with a spec (:mod:`autograder.spec`), found by
name (:mod:`autograder.registry`).  Modules, one responsibility each:

- ``engine``: probe -> retrain -> judge: one typed result per submission.
- ``probe/``: the untrusted side: ``jail`` (bubblewrap or permission jail), ``sandbox`` (run a
  notebook in a jail and collect its messages), ``runtime`` (inside the jail: run, extract data).
- ``judge/``: the trusted side: ``judge`` (Otter's tests on extracted data, clean process) and
  ``runner`` (that process, started ahead and limited).
- ``verifier/``: ``rebuild``, ``budget``, ``pipeline``, ``recipe``, ``training``, ``worker``,
  ``signed_cache``, ``retrain``: rebuild and retrain the submitted model.
- ``metering/``: what every process uses, counted and capped: ``cgroup``, ``clocks``, ``calibration``,
  ``processes``, ``watchdog``; imported by the probe, the judge and the verifier, importing none of them.
- ``faults`` (whose fault and why, typed), ``jail_messages`` (what a jail sends, checked), ``protocol``
  (probe <-> judge messages), ``result`` (the typed result), ``settings`` (every ``CNN_GRADER_*``
  variable and the one configuration object), ``spec``, ``registry``.
- ``lms/``: ``gradescope`` (+ templates), ``reports`` (grade sheets, Canvas, feedback), ``sheets``,
  ``insight``, ``submissions``; ``manual`` and ``misconceptions``: hand-graded questions, named mistakes.
- ``build`` / ``otter_plugin``: Otter Assign; offline MNIST under ``otter run``.
- ``data``: the cache folder and the provisioning of every assignment's dataset.
- ``batch``: whole-class grading; ``cli``: the ``cnn-grader`` / ``python -m autograder`` command line.
"""

__version__ = "0.1.0"
