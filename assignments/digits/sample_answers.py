"""Sample submissions for the digits unit: the student notebook filled as real students fill it.

``assignments/digits/samples/`` is generated from the built student notebook (``python -m
autograder build --update-assignments``) and committed.  Each mistaken sample records in its
metadata which test cases it is designed to fail and what the feedback must say; the tests
derive the expected score from the assignment's own point values.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from assignments.cnn_common import samples as _samples
from assignments.cnn_common.samples import Sample

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
METADATA_KEY = "cnn_grader_sample"

SEED_MODEL_CODE = """\
model.add(layers.Input(shape=(8, 8, 1)))
model.add(layers.Conv2D(16, (3, 3), padding='same', activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(32, (3, 3), activation='relu'))
model.add(layers.Flatten())
model.add(layers.Dense(32, activation='relu'))
model.add(layers.Dense(10, activation='softmax'))"""

CONV_LAYER_LOOP = """\
    kh, kw, channels, filters = kernels.shape
    out = np.zeros((x.shape[0] - kh + 1, x.shape[1] - kw + 1, filters))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for f in range(filters):
                out[i, j, f] = np.sum(x[i:i + kh, j:j + kw, :] * kernels[:, :, :, f]) + bias[f]
    return out"""

MAX_POOL_LOOP = """\
    rows, cols = (x.shape[0] - size) // stride + 1, (x.shape[1] - size) // stride + 1
    out = np.zeros((rows, cols, x.shape[2]))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = x[i * stride:i * stride + size, j * stride:j * stride + size].max(axis=(0, 1))
    return out"""

#: Another student's conv_layer (right): one tensordot per kernel position instead of loops over pixels.  Each
#: sample is written as its own student would write it, so the copied-code check has nothing to flag.
CONV_LAYER_SHIFTS = """\
    kh, kw, _, n_filters = kernels.shape
    rows, cols = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    result = np.zeros((rows, cols, n_filters))
    for a in range(kh):
        for b in range(kw):
            result += np.tensordot(x[a:a + rows, b:b + cols, :], kernels[a, b], axes=([2], [0]))
    return np.maximum(result + bias, 0)"""

#: Another student's max_pool that moves its windows by `size` whatever `stride` says (a slip)
MAX_POOL_BY_SIZE = """\
    rows = (x.shape[0] - size) // size + 1
    cols = (x.shape[1] - size) // size + 1
    pooled = np.empty((rows, cols, x.shape[2]))
    for r in range(rows):
        for c in range(cols):
            window = x[r * size:(r + 1) * size, c * size:(c + 1) * size, :]
            pooled[r, c, :] = window.reshape(-1, x.shape[2]).max(axis=0)
    return pooled"""

#: The naive recipe: the lesson's compile settings, one epoch.
NAIVE_TRAINING = ("model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
                  "history = model.fit(train_images, train_labels, epochs=1, batch_size=32)")


SAMPLES = [
    Sample(
        "by_hand_mistakes",
        "Typical slips: flipped filter, 'same' padding taken as one zero on every side, stride-2 size rounded up, "
        "pooling windows that do not overlap, the second Conv2D's 16 input channels forgotten; conv_layer without "
        "ReLU; the naive recipe (one epoch) trained.",
        answers={"conv_patch": "np.array([[59, -22], [58, -37]])",
                 "conv_same_stride2": "np.array([[-11, 2], [-41, 37]])",
                 "size_valid": "6", "size_same": "8", "size_stride2": "4", "size_same_stride2": "4",
                 "pooled": "np.array([[9, 5], [7, 7]])",
                 "layer_output_shapes": "[(8, 8, 16), (4, 4, 16), (2, 2, 32), (128,), (32,), (10,)]",
                 "layer_params": "[160, 0, 320, 0, 4128, 330]",
                 "total_params": "4938"},
        functions={"conv_layer": CONV_LAYER_LOOP, "max_pool": MAX_POOL_LOOP},
        model=SEED_MODEL_CODE,
        training=NAIVE_TRAINING,
        expected_failures={
            "conv_patch": ["test_conv_patch", "test_conv_patch_hidden"],
            "conv_same_stride2": ["test_conv_same_stride2", "test_conv_same_stride2_hidden"],
            "output_sizes": ["test_size_stride2", "test_size_stride2_hidden"],
            "max_pooling": ["test_pooled", "test_pooled_hidden"],
            "layer_table": ["test_layer_params", "test_layer_params_hidden", "test_total_params",
                            "test_total_params_hidden"],
            "conv_layer_impl": ["test_conv_layer", "test_conv_layer_hidden"],
            "training": ["test_accuracy_hidden"],
        },
        expected_feedback={
            "conv_patch": "flipped the filter",
            "conv_same_stride2": "puts them after",
            "output_sizes": "rounded up",
            "max_pooling": "used 2x2 windows",
            "layer_table": "forgot the input channels",
            "conv_layer_impl": "forgot the ReLU",
            "training": "is not above 0.90",
        },
        expected_misconceptions={
            "conv_patch": ["flipped_filter"],
            "conv_same_stride2": ["padding_mixup"],
            "output_sizes": ["pooling_floor"],
            "max_pooling": ["pool_window_size"],
            "layer_table": ["forgot_input_channels"],
            "conv_layer_impl": ["forgot_relu"],
        },
    ),
    Sample(
        "shape_mistakes",
        "Shape slips: 'valid' padding everywhere in the layer table and the model, stride ignored in 'same' sizes "
        "and in max_pool; the model is never compiled or trained.",
        answers={"conv_patch": "np.array([[-59, 22], [-58, 37]])",
                 "conv_same_stride2": "np.array([[-59, 60], [-42, 43]])",
                 "size_valid": "6", "size_same": "8", "size_stride2": "3", "size_same_stride2": "8",
                 "pooled": "np.array([[9, 6], [7, 8]])",
                 "layer_output_shapes": "[(6, 6, 16), (3, 3, 16), (1, 1, 32), (32,), (32,), (10,)]",
                 "layer_params": "[160, 0, 4640, 0, 4128, 330]",
                 "total_params": "9258"},
        functions={"conv_layer": CONV_LAYER_SHIFTS, "max_pool": MAX_POOL_BY_SIZE},
        model=SEED_MODEL_CODE.replace("padding='same', ", ""),
        training=None,
        expected_failures={
            "output_sizes": ["test_size_same_stride2", "test_size_same_stride2_hidden"],
            "layer_table": ["test_layer_output_shapes", "test_layer_output_shapes_hidden"],
            "max_pool_impl": ["test_max_pool", "test_max_pool_hidden"],
            "model_structure": ["test_model", "test_model_hidden"],
            "training": ["test_training", "test_accuracy_hidden"],
        },
        expected_feedback={
            "output_sizes": "ignored the stride",
            "layer_table": "padding='same'",
            "max_pool_impl": "ignored the stride",
            "model_structure": "padding is 'valid'",
            "training": "",
        },
        expected_misconceptions={
            "output_sizes": ["ignored_stride"],
            "layer_table": ["padding_mixup"],
            "max_pool_impl": ["ignored_stride"],
            "model_structure": ["padding_mixup"],
        },
    ),
]


def fill(student_nb: nbformat.NotebookNode, sample: Sample) -> nbformat.NotebookNode:
    """Fill the student notebook's ``...`` placeholders as this sample's student did."""
    return _samples.fill(student_nb, sample, METADATA_KEY)


def write_samples(student_notebook: Path, solution_notebook: Path, out_dir: Path = SAMPLES_DIR) -> list[Path]:
    """Write the solution, the untouched notebook and every mistaken sample into ``out_dir``."""
    return _samples.write_samples(student_notebook, solution_notebook, out_dir, SAMPLES, METADATA_KEY)
