"""The CNN-on-MNIST answer key as a function of the numbers the questions use.

:class:`Givens` is one set of numbers (the lesson's, :data:`LESSON`, or one student's variant) and
:func:`answers_for` computes every plain-answer question's expected value and typical mistakes from
it.  Both :mod:`assignments.cnn_mnist.checks` (the hidden checks, judging with the active variant's
answers) and :mod:`assignments.cnn_mnist.variants` (which draws the pool and rejects ill-posed
candidates by their answers) build on this module, which imports neither of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import numpy as np

from assignments.cnn_common import judging
from assignments.cnn_common import misconceptions as M
from assignments.cnn_common.judging import Answer, Mistake
from assignments.cnn_mnist import reference

def _t(rows) -> tuple:
    return tuple(tuple(int(v) for v in row) for row in np.asarray(rows))


@dataclass(frozen=True)
class Givens:
    """The numbers one variant's questions use (plain ints and tuples: hashable, JSON-able)."""

    image_3x3: tuple
    filter_2x2: tuple
    edge_high: int  # the edge image's top three rows (the bottom three are edge_low)
    edge_low: int
    edge_weight: int  # the edge filter's rows are (w, 0, -w)
    pool_input: tuple  # 5x5
    size_n: int
    size_k: int
    size_stride: int
    rgb_size: int
    rgb_k: int
    rgb_filters: int
    rgb_channels: int
    table_filters: tuple  # the three Conv2D layers' filter counts of the model to analyse
    table_dense: int  # the hidden Dense layer's width

    # --- arrays and models derived from the numbers ---------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """What the notebook's first cells define (the names of :data:`assignments.cnn_mnist.checks.GIVENS`)."""
        edge_image = np.repeat(np.array([self.edge_high, self.edge_low]), 3)[:, None] * np.ones((1, 5), int)
        edge_filter = np.array([self.edge_weight, 0, -self.edge_weight])[:, None] * np.ones((1, 3), int)
        return {"image_3x3": np.array(self.image_3x3), "filter_2x2": np.array(self.filter_2x2),
                "edge_image": edge_image, "edge_filter": edge_filter, "pool_input": np.array(self.pool_input)}

    def table_model(self) -> tuple:
        f1, f2, f3 = self.table_filters
        return (reference.Conv2DSpec(f1, (3, 3), activation="relu"), reference.MaxPool2DSpec((2, 2)),
                reference.Conv2DSpec(f2, (3, 3), activation="relu"), reference.MaxPool2DSpec((2, 2)),
                reference.Conv2DSpec(f3, (3, 3), activation="relu"), reference.FlattenSpec(),
                reference.DenseSpec(self.table_dense, activation="relu"),
                reference.DenseSpec(10, activation="softmax"))

    def to_json(self) -> dict:
        return {k: (list(map(list, v)) if isinstance(v, tuple) and v and isinstance(v[0], tuple) else
                    list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "Givens":
        return cls(**{k: (_t(v) if k in ("image_3x3", "filter_2x2", "pool_input") else
                          tuple(v) if k == "table_filters" else int(v)) for k, v in data.items()})


# The lesson's numbers: what every student gets when variants are off.
LESSON = Givens(
    image_3x3=((3, 1, 2), (0, 4, 1), (2, 5, 3)),
    filter_2x2=((1, 2), (0, -1)),
    edge_high=200, edge_low=0, edge_weight=10,
    pool_input=((1, 3, 2, 0, 7), (4, 6, 1, 5, 2), (0, 2, 9, 1, 3), (8, 1, 3, 4, 6), (5, 7, 2, 8, 1)),
    size_n=28, size_k=5, size_stride=2,
    rgb_size=32, rgb_k=3, rgb_filters=16, rgb_channels=3,
    table_filters=(32, 64, 64), table_dense=64,
)


def _conv(image, kernel, **kw):
    return reference.conv2d(np.asarray(image, float), np.asarray(kernel, float), **kw)


def _size_answers(g: Givens = LESSON) -> list[Answer]:
    n, k, s = g.size_n, g.size_k, g.size_stride
    size = reference.conv_output_size
    same, valid, full = size(n, k, padding="same"), size(n, k), size(n, k, padding="full")
    stride2 = size(n, k, stride=s)
    return [
        Answer("size_valid", "int", "an int", valid,
               [Mistake(same, M.PADDING_MIXUP, "that is the size with 'same' padding; 'valid' means no padding, so "
                                               "the filter only fits n - k + 1 times"),
                Mistake(full, M.PADDING_MIXUP, "that is 'full' padding"),
                Mistake(n - k, M.FORGOT_PLUS_ONE, "forgot the + 1 (the first position counts too)")],
               hint="Valid: output = n - k + 1."),
        Answer("size_same", "int", "an int", same,
               [Mistake(valid, M.PADDING_MIXUP, "that is 'valid' padding; 'same' pads so the output keeps the input size"),
                Mistake(full, M.PADDING_MIXUP, "that is 'full' padding")],
               hint="Same padding keeps the input size at stride 1."),
        Answer("size_full", "int", "an int", full,
               [Mistake(n + 2 * (k - 1), M.PADDING_MIXUP, "that is the padded input size; the filter then fits "
                                                          "(n + 2(k-1)) - k + 1 times"),
                Mistake(valid, M.PADDING_MIXUP, "that is 'valid' padding"),
                Mistake(same, M.PADDING_MIXUP, "that is 'same' padding")],
               hint="Full padding adds k - 1 zeros on each side."),
        Answer("size_stride2", "int", "an int", stride2,
               [Mistake(-(-(n - k) // s) + 1, M.POOLING_FLOOR, "rounded up: a window that does not fit is dropped, "
                                                              "so use floor((n - k) / s) + 1"),
                Mistake(valid, M.IGNORED_STRIDE, f"ignored the stride of {s}"),
                Mistake((n - k) // s, M.FORGOT_PLUS_ONE, "forgot the + 1")],
               hint="With stride s: floor((n - k) / s) + 1."),
    ]


def _rgb_answers(g: Givens = LESSON) -> list[Answer]:
    n, k, f, c = g.rgb_size, g.rgb_k, g.rgb_filters, g.rgb_channels
    out = reference.conv_output_size(n, k)
    return [
        Answer("rgb_output_shape", "shape", "a tuple (height, width, channels)", (out, out, f),
               [Mistake((out, out, c), M.FORGOT_INPUT_CHANNELS,
                        "the output depth is the number of filters, not the number of input channels"),
                Mistake((n, n, f), M.PADDING_MIXUP, "that is 'same' padding; this layer uses 'valid'"),
                Mistake((f, out, out), M.SWAPPED_AXES, "Keras puts channels last: (height, width, channels)")]),
        Answer("rgb_params", "int", "an int", reference.conv2d_params(k, c, f),
               [Mistake(reference.conv2d_params(k, 1, f), M.FORGOT_INPUT_CHANNELS,
                        f"forgot the {c} input channels: each filter is {k}x{k}x{c}"),
                Mistake(reference.conv2d_params(k, c, f, use_bias=False), M.FORGOT_BIAS,
                        "forgot the biases (one per filter)"),
                Mistake(reference.conv2d_params(k, 1, f, use_bias=False), (M.FORGOT_INPUT_CHANNELS, M.FORGOT_BIAS),
                        "forgot both the input channels and the biases")],
               hint="Each filter has k*k*channels weights plus one bias."),
    ]


def _variant(specs, **changes):
    """The seed model with every layer of a kind changed (used to predict typical mistakes)."""
    return tuple(dataclasses.replace(s, **changes[type(s).__name__]) if type(s).__name__ in changes else s
                 for s in specs)


def _table_answers(g: Givens = LESSON) -> list[Answer]:
    seed, shape = g.table_model(), reference.SEED_INPUT_SHAPE
    shape_variants = [
        Mistake(reference.layer_table(shape, _variant(seed, Conv2DSpec={"padding": "same"})), M.PADDING_MIXUP,
                "used 'same' padding; the lesson's Conv2D layers use 'valid', which shrinks each side by k - 1"),
        Mistake(reference.layer_table(shape, _variant(seed, MaxPool2DSpec={"padding": "same"})), M.POOLING_FLOOR,
                "rounded up after pooling; max pooling drops the incomplete last window (floor)"),
    ]
    param_variants = [
        Mistake(reference.layer_table(shape, _variant(seed, Conv2DSpec={"use_bias": False},
                                                      DenseSpec={"use_bias": False})),
                M.FORGOT_BIAS, "forgot the bias terms (one per filter or unit)"),
    ]
    return judging.layer_table_answers(
        shape, seed, shape_variants, param_variants,
        "Work layer by layer: valid conv shrinks by k - 1, pooling halves (floor).",
        lambda in_ch: "forgot the input channels: each filter spans all channels of the previous layer")


def answers_for(g: Givens = LESSON) -> dict[str, Answer]:
    """Every plain-answer question's expected value and typical mistakes, for these numbers."""
    arrays = g.arrays()
    image, filt, edge_image, edge_filter, pool_input = (
        arrays[k] for k in ("image_3x3", "filter_2x2", "edge_image", "edge_filter", "pool_input"))
    small = _conv(image, filt)
    edge = _conv(edge_image, edge_filter)
    answers = [
        Answer("conv_small", "array", "a 2x2 numpy array", small,
               [Mistake(_conv(image, np.flip(filt)), M.FLIPPED_FILTER,
                        "flipped the filter; in deep learning the filter slides over the image as is (cross-correlation)"),
                Mistake(_conv(image, filt.T), M.SWAPPED_AXES, "transposed the filter (rows and columns swapped)"),
                Mistake(small.T, M.SWAPPED_AXES, "rows and columns of the result are swapped")],
               hint="Top-left entry: f1*a + f2*b + f3*d + f4*e.",
               shape_hints=[Mistake((3, 3), M.PADDING_MIXUP,
                                    "a 3x3 result is what 'same' padding gives; the example uses no padding"),
                            Mistake((4, 4), M.PADDING_MIXUP, "a 4x4 result is 'full' padding; the example uses no padding")]),
        Answer("edge_output", "array", "a 4x3 numpy array", edge,
               [Mistake(_conv(edge_image, np.flip(edge_filter)), M.FLIPPED_FILTER,
                        "flipped the filter (the signs come out reversed)")],
               hint="Slide the 3x3 filter down the 6 rows and across the 5 columns.",
               shape_hints=[Mistake((6, 5), M.PADDING_MIXUP, "that is 'same' padding; the example uses no padding"),
                            Mistake((3, 4), M.SWAPPED_AXES,
                                    "rows and columns are swapped: 6 rows give 4 output rows, 5 columns give 3"),
                            Mistake((8, 7), M.PADDING_MIXUP, "that is 'full' padding")]),
        *_size_answers(g),
        *_rgb_answers(g),
        Answer("pooled", "array", "a 2x2 numpy array", reference.max_pool2d(pool_input.astype(float)),
               [Mistake(reference.max_pool2d(-pool_input.astype(float)) * -1, M.NOT_MAX_POOLING,
                        "took the minimum instead of the maximum"),
                Mistake(pool_input[:4, :4].reshape(2, 2, 2, 2).mean(axis=(1, 3)), M.NOT_MAX_POOLING,
                        "took the average instead of the maximum")],
               hint="Split into 2x2 blocks and keep the largest value of each.",
               shape_hints=[Mistake((3, 3), M.POOLING_FLOOR, "pooled the incomplete blocks at the edge; 'valid' max "
                                                             "pooling drops them (floor(5 / 2) = 2)")]),
        *_table_answers(g),
    ]
    return {a.key: a for a in answers}
