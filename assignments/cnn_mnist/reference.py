"""The CNN-on-MNIST lesson's givens and seed model, over the shared reference math.

The math itself (convolution as cross-correlation, TensorFlow's "same" padding, pooling, output
sizes, parameter counts, layer tables) lives in :mod:`assignments.cnn_common.reference`, shared by
the CNN units, and is re-exported here so the unit's checks and tests have one module to import.
Pure numpy: cheap to import (no TensorFlow/Keras).
"""

from __future__ import annotations

import numpy as np

from assignments.cnn_common import reference as _shared
from assignments.cnn_common.reference import *  # noqa: F401,F403  (re-exported)
from assignments.cnn_common.reference import Conv2DSpec, DenseSpec, FlattenSpec, LayerSpec, MaxPool2DSpec, frozen

__all__ = [*_shared.__all__, "SEED_MODEL", "SEED_INPUT_SHAPE", "EDGE_IMAGE", "EDGE_KERNEL"]


SEED_INPUT_SHAPE = (28, 28, 1)

SEED_MODEL: tuple[LayerSpec, ...] = (
    Conv2DSpec(32, (3, 3), activation="relu"),
    MaxPool2DSpec((2, 2)),
    Conv2DSpec(64, (3, 3), activation="relu"),
    MaxPool2DSpec((2, 2)),
    Conv2DSpec(64, (3, 3), activation="relu"),
    FlattenSpec(),
    DenseSpec(64, activation="relu"),
    DenseSpec(10, activation="softmax"),
)


# Horizontal-edge image from "The Math": three rows of 200 above three rows of 0.
EDGE_IMAGE = frozen(np.repeat(np.array([200.0, 0.0]), 3)[:, None] * np.ones((1, 5)))

# Horizontal-edge detector from "The Math".
EDGE_KERNEL = frozen(np.array([10.0, 0.0, -10.0])[:, None] * np.ones((1, 3)))
