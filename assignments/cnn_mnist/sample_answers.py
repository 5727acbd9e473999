"""Sample submissions: the student notebook filled in the ways real students fill it.

``assignments/cnn_mnist/samples/`` is generated from the built student notebook (so it follows the
assignment when the assignment changes) and committed, so the README's main job and the
tests grade the same files.  Each mistaken sample records, in its metadata, which test cases
it is designed to fail and what the feedback must say; the tests derive the expected score
from the assignment's own point values.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from assignments.cnn_common import samples as _samples
from assignments.cnn_common.samples import Sample

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
METADATA_KEY = "cnn_grader_sample"

CORRECT = {
    "conv_small": "np.array([[1, 4], [3, 3]])",
    "edge_output": "np.array([[0, 0, 0], [6000, 6000, 6000], [6000, 6000, 6000], [0, 0, 0]])",
    "size_valid": "24",
    "size_same": "28",
    "size_full": "32",
    "size_stride2": "12",
    "rgb_output_shape": "(30, 30, 16)",
    "rgb_params": "448",
    "pooled": "np.array([[6, 5], [8, 9]])",
    "layer_output_shapes": "[(26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (3, 3, 64), (576,), (64,), (10,)]",
    "layer_params": "[320, 0, 18496, 0, 36928, 0, 36928, 650]",
    "total_params": "93322",
}

CONV2D_LOOP = """\
    kh, kw = kernel.shape
    if padding == "same":
        out_h, out_w = -(-image.shape[0] // stride), -(-image.shape[1] // stride)
        ph = max((out_h - 1) * stride + kh - image.shape[0], 0)
        pw = max((out_w - 1) * stride + kw - image.shape[1], 0)
        image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    elif padding == "full":
        image = np.pad(image, ((kh - 1, kh - 1), (kw - 1, kw - 1)))
    rows = (image.shape[0] - kh) // stride + 1
    cols = (image.shape[1] - kw) // stride + 1
    out = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = (image[i*stride:i*stride+kh, j*stride:j*stride+kw] * KERNEL).sum()
    return out"""

#: Another student's conv2d (right): sliding windows and einsum instead of loops.  Each sample is written as
#: its own student would write it, so the copied-code check (autograder.lms.similarity) has nothing to flag.
CONV2D_WINDOWS = """\
    from numpy.lib.stride_tricks import sliding_window_view
    k_rows, k_cols = kernel.shape
    if padding == "full":
        image = np.pad(image, [(k_rows - 1, k_rows - 1), (k_cols - 1, k_cols - 1)])
    elif padding == "same":
        pads = []
        for n, k in zip(image.shape, kernel.shape):
            total = max((int(np.ceil(n / stride)) - 1) * stride + k - n, 0)
            pads.append((total // 2, total - total // 2))
        image = np.pad(image, pads)
    windows = sliding_window_view(image, kernel.shape)[::stride, ::stride]
    return np.einsum("ijkl,kl->ij", windows, kernel)"""

MAX_POOL_FLOOR = """\
    h, w = x.shape[0] // size * size, x.shape[1] // size * size
    return x[:h, :w].reshape(h // size, size, w // size, size).max(axis=(1, 3))"""

MAX_POOL_CEIL = """\
    import math
    rows, cols = math.ceil(x.shape[0] / size), math.ceil(x.shape[1] / size)
    out = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = x[i*size:(i+1)*size, j*size:(j+1)*size].max()
    return out"""

SEED_MODEL_CODE = """\
model.add(layers.Conv2D(32, (3, 3), activation='relu', input_shape=(28, 28, 1)))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3, 3), activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3, 3), activation='relu'))
model.add(layers.Flatten())
model.add(layers.Dense(64, activation='relu'))
model.add(layers.Dense(10, activation='softmax'))"""

#: The same model built another way, with 'same' padding in the first layer (a shape slip)
SAME_PADDING_MODEL_CODE = """\
for layer in [layers.Input(shape=(28, 28, 1)),
              layers.Conv2D(32, (3, 3), padding='same', activation='relu'),
              layers.MaxPooling2D((2, 2)),
              layers.Conv2D(64, (3, 3), activation='relu'),
              layers.MaxPooling2D((2, 2)),
              layers.Conv2D(64, (3, 3), activation='relu'),
              layers.Flatten(),
              layers.Dense(64, activation='relu'),
              layers.Dense(10, activation='softmax')]:
    model.add(layer)"""


SAMPLES = [
    Sample(
        "by_hand_mistakes",
        "Typical hand-calculation slips: flipped kernel, valid for same, channels and biases forgotten; "
        "conv2d flips its kernel; trained for a single epoch (below 99%).",
        answers={**CORRECT, "conv_small": "np.array([[1, 8], [9, 9]])", "size_same": "24",
                 "rgb_params": "160", "layer_params": "[288, 0, 18432, 0, 36864, 0, 36864, 640]",
                 "total_params": "93088"},
        functions={"conv2d": CONV2D_LOOP.replace("KERNEL", "kernel[::-1, ::-1]"), "max_pool2d": MAX_POOL_FLOOR},
        model=SEED_MODEL_CODE,
        training="model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
                 "history = model.fit(train_images, train_labels, epochs=1, batch_size=256)",
        expected_failures={
            "conv_small": ["test_conv_small", "test_conv_small_hidden"],
            "output_sizes": ["test_size_same", "test_size_same_hidden"],
            "rgb_conv": ["test_rgb_params", "test_rgb_params_hidden"],
            "layer_table": ["test_layer_params", "test_layer_params_hidden",
                            "test_total_params", "test_total_params_hidden"],
            "conv2d_impl": ["test_conv2d", "test_conv2d_hidden"],
            "training": ["test_accuracy_hidden"],
        },
        expected_feedback={
            "conv_small": "flipped the filter",
            "output_sizes": "'valid' padding",
            "rgb_conv": "forgot the 3 input channels",
            "layer_table": "forgot the bias",
            "conv2d_impl": "flipped the kernel",
            "training": "is not above 0.99",
        },
        expected_misconceptions={
            "conv_small": ["flipped_filter"],
            "output_sizes": ["padding_mixup"],
            "rgb_conv": ["forgot_input_channels"],
            "layer_table": ["forgot_bias"],
            "conv2d_impl": ["flipped_filter"],
        },
    ),
    Sample(
        "shape_mistakes",
        "Shape slips: 'same' padding in the model, pooling that keeps incomplete blocks, swapped axes; "
        "the model is never compiled or trained.",
        answers={**CORRECT, "edge_output": "np.zeros((3, 4))", "pooled": "np.array([[6, 5, 7], [8, 9, 6], [7, 8, 1]])",
                 "layer_output_shapes": "[(28, 28, 32), (14, 14, 32), (14, 14, 64), (7, 7, 64), (7, 7, 64), (3136,), (64,), (10,)]"},
        functions={"conv2d": CONV2D_WINDOWS, "max_pool2d": MAX_POOL_CEIL},
        model=SAME_PADDING_MODEL_CODE,
        training=None,
        expected_failures={
            "edge_output": ["test_edge_output", "test_edge_output_hidden"],
            "max_pooling": ["test_pooled", "test_pooled_hidden"],
            "layer_table": ["test_layer_output_shapes", "test_layer_output_shapes_hidden"],
            "max_pool_impl": ["test_max_pool2d", "test_max_pool2d_hidden"],
            "model_structure": ["test_model", "test_model_hidden"],
            "training": ["test_training", "test_accuracy_hidden"],
        },
        expected_feedback={
            "edge_output": "rows and columns are swapped",
            "max_pooling": "incomplete blocks",
            "layer_table": "'same' padding",
            "max_pool_impl": "shape",
            "model_structure": "padding is 'same'",
            "training": "",
        },
        expected_misconceptions={
            "edge_output": ["swapped_axes"],
            "max_pooling": ["pooling_floor"],
            "layer_table": ["padding_mixup"],
            "max_pool_impl": ["pooling_floor"],
            "model_structure": ["padding_mixup"],
        },
    ),
]


def fill(student_nb: nbformat.NotebookNode, sample: Sample) -> nbformat.NotebookNode:
    """Fill the student notebook's ``...`` placeholders as this sample's student did."""
    return _samples.fill(student_nb, sample, METADATA_KEY)


#: The lesson's own training cell, as question 10 quotes it (about 98.8%: below the threshold, and within the seed
#: rule's margin, so three seeds are trained).
LESSON_TRAINING = ("model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
                   "history = model.fit(train_images, train_labels, epochs=10, batch_size=1000)")

#: The recipes many students submit exactly as the lesson writes them, which ``build`` pre-verifies besides the
#: solution's (the spec's ``common_recipes``): the lesson's model and training cell.  Its three seeds cost a build
#: several minutes on a CPU and save each such student as many on Gradescope, where every container starts with
#: an empty retraining cache.
COMMON_RECIPES = [
    Sample("lesson_recipe", "The lesson's own recipe as written: its CNN, Adam, 10 epochs at batch size 1000.",
           model=SEED_MODEL_CODE, training=LESSON_TRAINING),
]


def write_common_recipes(student_notebook: Path, out_dir: Path) -> list[Path]:
    """Notebooks of :data:`COMMON_RECIPES` (the student notebook with only the model and training cells filled)."""
    return _samples.write_filled(student_notebook, out_dir, COMMON_RECIPES, METADATA_KEY)


def write_samples(student_notebook: Path, solution_notebook: Path, out_dir: Path = SAMPLES_DIR) -> list[Path]:
    """Write the solution, the untouched notebook and every mistaken sample into ``out_dir``."""
    return _samples.write_samples(student_notebook, solution_notebook, out_dir, SAMPLES, METADATA_KEY)
