"""The MNIST unit's part of its student-side check module ``cnn_checks.py``.

The machinery (canonical answers, digests, the answer, function, model and training checks,
per-student variants) is :mod:`assignments.cnn_common.public_checks`, shared by the CNN units; the
build renders ``cnn_checks.py`` as that module's source followed by this file's (without the imports
below), with the digest tables filled from :mod:`assignments.cnn_mnist.checks`: one self-contained
file, digests only.  Here: the unit's words in the model checks, :func:`show_numbers` and how the training check loads
the test images.
"""

from __future__ import annotations

from assignments.cnn_common.public_checks import *  # noqa: F401,F403  (one file when rendered)
from assignments.cnn_common.public_checks import _ACTIVE, TRAINING, VARIANTS

UNIT_MODEL = "the lesson's"
INPUT_NAME = "MNIST images"
SHAPE_EXAMPLE = "(26, 26, 32)"
PADDING_HINTS = {p: " ('same' keeps the size; the lesson's layers use the default 'valid')" for p in ("valid", "same")}


def show_numbers() -> None:
    """Print the selected variant's numbers, question by question (the notebook's first cell)."""
    g = _ACTIVE.get("givens") if _ACTIVE else None
    if not g:
        return
    import numpy as np

    f1, f2, f3 = g["table_filters"]
    print(f"Your numbers (variant {_ACTIVE['index'] + 1} of {VARIANTS['pool_size']}):\n")
    print("Question 1: image_3x3 =\n" + str(np.array(g["image_3x3"])) + "\nfilter_2x2 =\n" + str(np.array(g["filter_2x2"])))
    print(f"Question 2: edge_image has three rows of {g['edge_image'][0][0]} above three rows of "
          f"{g['edge_image'][-1][0]}; edge_filter has rows {g['edge_filter'][0][0]}, 0, {g['edge_filter'][2][0]}")
    print(f"Question 3: n = {g['size_n']}, k = {g['size_k']}, stride s = {g['size_stride']} (for size_stride2)")
    print(f"Question 4: a {g['rgb_size']}x{g['rgb_size']} image with {g['rgb_channels']} channels, "
          f"Conv2D({g['rgb_filters']}, ({g['rgb_k']}, {g['rgb_k']})) with valid padding and biases")
    print("Question 5: pool_input =\n" + str(np.array(g["pool_input"])))
    print(f"Question 6: Conv2D({f1}, (3, 3)), MaxPooling2D((2, 2)), Conv2D({f2}, (3, 3)), MaxPooling2D((2, 2)), "
          f"Conv2D({f3}, (3, 3)), Flatten(), Dense({g['table_dense']}), Dense(10) on 28x28x1 inputs")


def _test_split():
    """The 10,000 MNIST test images as the notebook's data cell prepares them (reshaped, divided by 255),
    and their labels: Keras's own loader, as the notebook calls it."""
    from keras.datasets import mnist

    _, (images, labels) = mnist.load_data()
    data = TRAINING["data"]
    return images.reshape((-1, *data["input_shape"])) / data["pixel_scale"], labels
