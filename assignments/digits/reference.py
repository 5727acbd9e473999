"""The digits unit's givens, seed model and the two functions students implement.

The math (convolution as cross-correlation with Keras' channels-last layouts, TensorFlow's "same"
padding with the odd extra zero *after*, an int padding that many zeros on each side, valid
pooling that drops windows that do not fit, sizes, parameter counts, layer tables) is the CNN
units' shared reference, :mod:`assignments.cnn_common.reference`, re-exported here.  Numpy only,
cheap to import; the tests check it against Keras layers.
"""

from __future__ import annotations

import numpy as np

from assignments.cnn_common.reference import *  # noqa: F401,F403  (re-exported)
from assignments.cnn_common.reference import (Conv2DSpec, DenseSpec, FlattenSpec, LayerSpec, MaxPool2DSpec, conv2d,
                                              frozen, max_pool2d)


# --- the two functions students implement ---------------------------------------------------------

def conv_layer(x, kernels, bias) -> np.ndarray:
    """Forward pass of ``Conv2D(F, (kh, kw), activation='relu')`` (valid, stride 1): x (H, W, C),
    kernels (kh, kw, C, F) (Keras' layout), bias (F,) -> (oh, ow, F). Every filter spans all
    input channels; its bias is added before the ReLU."""
    return np.maximum(conv2d(x, kernels, bias=bias), 0.0)


def max_pool(x, size=2, stride=None) -> np.ndarray:
    """``MaxPooling2D(size, strides=stride)`` on x (H, W, C), per channel; windows may overlap."""
    return max_pool2d(x, pool_size=size, stride=stride)


# --- the unit's givens -------------------------------------------------------------------------

INPUT_SHAPE = (8, 8, 1)

#: The unit's CNN for 8x8 digits: a "same" convolution keeps 8x8, pooling halves it, a "valid"
#: convolution shrinks 4x4 to 2x2.
SEED_MODEL: tuple[LayerSpec, ...] = (
    Conv2DSpec(16, (3, 3), padding="same", activation="relu"),
    MaxPool2DSpec((2, 2)),
    Conv2DSpec(32, (3, 3), activation="relu"),
    FlattenSpec(),
    DenseSpec(32, activation="relu"),
    DenseSpec(10, activation="softmax"),
)

#: A 4x4 patch of a handwritten "1" (pixel values 0..16, as in the data set).
PATCH = frozen([[0, 2, 13, 4],
                 [0, 7, 16, 1],
                 [1, 12, 15, 0],
                 [0, 10, 14, 3]])

#: The Sobel filter for vertical edges (left column minus right column).
SOBEL_X = frozen([[1, 0, -1],
                   [2, 0, -2],
                   [1, 0, -1]])

#: Output-size questions: an 8x8 digit and a 3x3 filter.
SIZE_N, SIZE_K = 8, 3

#: Overlapping max pooling: 3x3 windows moved by 2 over a 5x5 feature map.
POOL_INPUT = frozen([[1, 4, 0, 2, 6],
                      [3, 9, 5, 1, 0],
                      [7, 2, 1, 3, 4],
                      [0, 6, 1, 7, 2],
                      [5, 3, 2, 4, 8]])
POOL_SIZE, POOL_STRIDE = 3, 2
