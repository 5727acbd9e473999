"""The digits unit's givens and reference answers, computed (never pasted) from the math.

The convolution, pooling, size and parameter formulas are the same Keras conventions as the
MNIST unit's (cross-correlation, channels last, TensorFlow's "same" rule), so they are reused
from there; what is specific to this unit lives here: its 8x8 inputs, its small CNN, its
by-hand examples and the two functions students implement (a whole Conv2D layer forward pass
with bias and ReLU, and max pooling with a stride, both on channels-last arrays).
"""

from __future__ import annotations

import numpy as np

from autograder.reference import (  # the generic math: Keras' conventions
    Conv2DSpec,
    DenseSpec,
    FlattenSpec,
    LayerSpec,
    MaxPool2DSpec,
    conv2d,
    conv2d_params,
    conv_output_size,
    layer_table,
    max_pool2d,
    pool_output_size,
    total_params,
)

__all__ = [
    "INPUT_SHAPE",
    "SEED_MODEL",
    "PATCH",
    "SOBEL_X",
    "POOL_INPUT",
    "POOL_SIZE",
    "POOL_STRIDE",
    "SIZE_N",
    "SIZE_K",
    "conv_layer",
    "max_pool2d_strided",
    "conv2d",
    "conv2d_params",
    "conv_output_size",
    "layer_table",
    "max_pool2d",
    "pool_output_size",
    "total_params",
    "Conv2DSpec",
    "DenseSpec",
    "FlattenSpec",
    "MaxPool2DSpec",
]


def _frozen(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


INPUT_SHAPE = (8, 8, 1)

#: The unit's CNN for 8x8 digits: one "same" convolution keeps 8x8, pooling halves it, a
#: "valid" convolution shrinks 4x4 to 2x2.
SEED_MODEL: tuple[LayerSpec, ...] = (
    Conv2DSpec(16, (3, 3), padding="same", activation="relu"),
    MaxPool2DSpec((2, 2)),
    Conv2DSpec(32, (3, 3), activation="relu"),
    FlattenSpec(),
    DenseSpec(32, activation="relu"),
    DenseSpec(10, activation="softmax"),
)

#: A 4x4 patch of a handwritten "1" (pixel values 0..16, as in the data set).
PATCH = _frozen([[0, 2, 13, 4],
                 [0, 7, 16, 1],
                 [1, 12, 15, 0],
                 [0, 10, 14, 3]])

#: The Sobel filter for vertical edges (left minus right).
SOBEL_X = _frozen([[1, 0, -1],
                   [2, 0, -2],
                   [1, 0, -1]])

#: Output-size questions: an 8x8 digit and a 3x3 filter.
SIZE_N, SIZE_K = 8, 3

#: Overlapping max pooling: 3x3 windows moved by 2 over a 5x5 feature map.
POOL_INPUT = _frozen([[1, 4, 0, 2, 6],
                      [3, 9, 5, 1, 0],
                      [7, 2, 1, 3, 4],
                      [0, 6, 1, 7, 2],
                      [5, 3, 2, 4, 8]])
POOL_SIZE, POOL_STRIDE = 3, 2


def conv_layer(x, kernels, bias) -> np.ndarray:
    """Forward pass of ``Conv2D(F, (kh, kw), activation='relu')`` (valid, stride 1).

    x: (H, W, C); kernels: (kh, kw, C, F) (Keras' layout); bias: (F,). Returns (oh, ow, F):
    each filter spans all input channels, its bias is added, then ReLU.
    """
    return np.maximum(conv2d(np.asarray(x, float), np.asarray(kernels, float), bias=np.asarray(bias, float)), 0.0)


def max_pool2d_strided(x, size=2, stride=None) -> np.ndarray:
    """``MaxPooling2D(size, strides=stride)`` (valid) on x (H, W, C), per channel."""
    return max_pool2d(np.asarray(x, float), pool_size=size, stride=stride)
