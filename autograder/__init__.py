"""Autograder for the CNN-on-MNIST course unit.

Modules, one responsibility each:

- ``reference``: the math students compute by hand (convolution, pooling, shapes, parameters).
- ``checks`` / ``public_checks``: what each question expects and how answers are judged.
- ``data``: MNIST, provisioned offline and verified by content hash.
- ``build`` / ``otter_plugin`` / ``samples``: Otter Assign, offline MNIST under ``otter run``, samples.
- ``sandbox`` / ``probe_runtime``: run an untrusted submission under limits and extract its answers.
- ``judge`` / ``engine``: run the Otter tests on extracted data in a clean process.
- ``retrain``: rebuild and retrain the submitted model from scratch to verify its accuracy.
- ``submissions`` / ``batch`` / ``reports``: whole-class grading, grade sheets and feedback.
- ``gradescope``: the Gradescope entry point.
- ``cli``: the ``cnn-grader`` / ``python -m autograder`` command line.
"""

__version__ = "0.1.0"
