"""Autograder for the CNN-on-MNIST course unit.

Modules, one responsibility each:

- ``reference``: the math students compute by hand (convolution, pooling, shapes, parameters).
- ``data``: MNIST, provisioned offline and verified by content hash.
- ``cli``: the ``cnn-grader`` / ``python -m autograder`` command line.
"""

__version__ = "0.1.0"
