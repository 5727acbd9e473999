"""Tests for assignments.cnn_mnist.reference: the lesson's hand-worked values, and Keras as an oracle.

Keras is the framework the lesson (and students' models) use, so every convention
in the reference (no kernel flip, TF "same" padding, floor in "valid" pooling,
parameter counts) is checked against a real Keras layer on random inputs.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's startup chatter out of test output
import keras  # noqa: E402

from assignments.cnn_mnist import reference as ref  # noqa: E402
from assignments.cnn_mnist.reference import (  # noqa: E402
    EDGE_IMAGE,
    EDGE_KERNEL,
    SEED_INPUT_SHAPE,
    SEED_MODEL,
    Conv2DSpec,
    DenseSpec,
    FlattenSpec,
    LayerRow,
    MaxPool2DSpec,
    conv2d,
    conv2d_params,
    conv_output_size,
    dense_params,
    layer_table,
    max_pool2d,
    pool_output_size,
    total_params,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-4, atol=1e-4)  # Keras computes in float32


def rng(*key: object) -> np.random.Generator:
    """Deterministic generator per test case (str hashing is salted per process)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# --------------------------------------------------------------------------
# Keras oracles
# --------------------------------------------------------------------------


def keras_conv(image, kernel, bias, *, stride, padding):
    """Run a Keras Conv2D with the given weights on one (H, W, C) image."""
    kh, kw, _, f = kernel.shape
    layer = keras.layers.Conv2D(f, (kh, kw), strides=stride, padding=padding, use_bias=True)
    layer.build((1,) + image.shape)
    layer.set_weights([kernel.astype("float32"), np.asarray(bias, dtype="float32")])
    return np.asarray(layer(image[None].astype("float32")))[0]


def keras_pool(x, *, pool_size, stride, padding):
    layer = keras.layers.MaxPooling2D(pool_size=pool_size, strides=stride, padding=padding)
    return np.asarray(layer(x[None].astype("float32")))[0]


def to_keras(spec):
    if isinstance(spec, Conv2DSpec):
        return keras.layers.Conv2D(
            spec.filters, spec.kernel_size, strides=spec.strides, padding=spec.padding,
            use_bias=spec.use_bias, activation=spec.activation,
        )
    if isinstance(spec, MaxPool2DSpec):
        return keras.layers.MaxPooling2D(spec.pool_size, strides=spec.strides, padding=spec.padding)
    if isinstance(spec, FlattenSpec):
        return keras.layers.Flatten()
    if isinstance(spec, DenseSpec):
        return keras.layers.Dense(spec.units, use_bias=spec.use_bias, activation=spec.activation)
    raise TypeError(spec)


# --------------------------------------------------------------------------
# hand-worked seed values from "The Math"
# --------------------------------------------------------------------------


def test_symbolic_3x3_by_2x2_matches_lesson_formula():
    # Distinct primes: any misplaced, flipped or doubled term changes the sums.
    a, b, c, d, e, g, h, j, k = 2, 3, 5, 7, 11, 13, 17, 19, 23
    f1, f2, f3, f4 = 29, 31, 37, 41
    image = np.array([[a, b, c], [d, e, g], [h, j, k]])
    kernel = np.array([[f1, f2], [f3, f4]])
    expected = np.array(
        [
            [f1 * a + f2 * b + f3 * d + f4 * e, f1 * b + f2 * c + f3 * e + f4 * g],
            [f1 * d + f2 * e + f3 * h + f4 * j, f1 * e + f2 * g + f3 * j + f4 * k],
        ]
    )
    out = conv2d(image, kernel)
    assert out.shape == (2, 2)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, expected)


def test_kernel_is_not_flipped():
    # A true (flipped) convolution would pick out image[0, 0] here, cross-correlation image[1, 1].
    image = np.arange(4.0).reshape(2, 2)
    kernel = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert conv2d(image, kernel)[0, 0] == 3.0


def test_edge_constants_are_the_lesson_givens():
    np.testing.assert_array_equal(EDGE_IMAGE, [[200] * 5] * 3 + [[0] * 5] * 3)
    np.testing.assert_array_equal(EDGE_KERNEL, [[10, 10, 10], [0, 0, 0], [-10, -10, -10]])
    assert not EDGE_IMAGE.flags.writeable and not EDGE_KERNEL.flags.writeable


def test_edge_detection_example():
    out = conv2d(EDGE_IMAGE, EDGE_KERNEL)
    np.testing.assert_array_equal(out, [[0, 0, 0], [6000] * 3, [6000] * 3, [0, 0, 0]])


def test_seed_model_table():
    rows = layer_table(SEED_INPUT_SHAPE, SEED_MODEL)
    assert [r.kind for r in rows] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense", "Dense",
    ]
    assert [r.output_shape for r in rows] == [
        (26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (3, 3, 64), (576,), (64,), (10,),
    ]
    assert [r.params for r in rows] == [320, 0, 18496, 0, 36928, 0, 36928, 650]
    assert total_params(rows) == 93322
    assert all(isinstance(r, LayerRow) for r in rows)


def test_seed_model_spec_hyperparameters():
    assert SEED_INPUT_SHAPE == (28, 28, 1)
    assert [type(s).__name__ for s in SEED_MODEL] == [
        "Conv2DSpec", "MaxPool2DSpec", "Conv2DSpec", "MaxPool2DSpec", "Conv2DSpec",
        "FlattenSpec", "DenseSpec", "DenseSpec",
    ]
    assert [s.activation for s in SEED_MODEL if isinstance(s, (Conv2DSpec, DenseSpec))] == [
        "relu", "relu", "relu", "relu", "softmax",
    ]


# --------------------------------------------------------------------------
# conv2d vs Keras
# --------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2, (1, 2)])
@pytest.mark.parametrize("kernel_size", [(3, 3), (4, 4), (2, 3)])
def test_conv2d_matches_keras_rgb_multi_filter(padding, stride, kernel_size):
    r = rng(padding, stride, kernel_size)
    image = r.normal(size=(9, 8, 3))  # odd x even, RGB
    kernel = r.normal(size=kernel_size + (3, 4))  # 4 filters
    bias = r.normal(size=4)
    out = conv2d(image, kernel, stride=stride, padding=padding, bias=bias)
    expected = keras_conv(image, kernel, bias, stride=stride, padding=padding)
    assert out.shape == expected.shape
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected, **TOL)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_grayscale_2d_kernel_matches_keras(padding, stride):
    r = rng(7 + stride)
    image = r.normal(size=(7, 10))
    kernel = r.normal(size=(3, 2))
    out = conv2d(image, kernel, stride=stride, padding=padding, bias=0.5)
    expected = keras_conv(image[:, :, None], kernel[:, :, None, None], [0.5],
                          stride=stride, padding=padding)[:, :, 0]
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, **TOL)


def test_conv2d_3d_kernel_without_filter_axis_sums_over_channels():
    r = rng(3)
    image = r.normal(size=(6, 6, 3))
    kernel = r.normal(size=(3, 3, 3))
    out = conv2d(image, kernel)
    assert out.shape == (4, 4)
    expected = keras_conv(image, kernel[..., None], [0.0], stride=1, padding="valid")[:, :, 0]
    np.testing.assert_allclose(out, expected, **TOL)
    # ... and it equals the sum of the per-channel 2-D convolutions.
    per_channel = sum(conv2d(image[:, :, ch], kernel[:, :, ch]) for ch in range(3))
    np.testing.assert_allclose(out, per_channel, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel_size", [(3, 3), (2, 4)])
def test_conv2d_full_padding_equals_keras_valid_on_zero_padded_input(stride, kernel_size):
    r = rng(11 * stride + kernel_size[1])
    kh, kw = kernel_size
    image = r.normal(size=(5, 7, 2))
    kernel = r.normal(size=(kh, kw, 2, 3))
    bias = r.normal(size=3)
    padded = np.pad(image, ((kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    out = conv2d(image, kernel, stride=stride, padding="full", bias=bias)
    expected = keras_conv(padded, kernel, bias, stride=stride, padding="valid")
    assert out.shape == expected.shape
    assert out.shape[:2] == (
        conv_output_size(5, kh, stride=stride, padding="full"),
        conv_output_size(7, kw, stride=stride, padding="full"),
    )
    np.testing.assert_allclose(out, expected, **TOL)


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_conv2d_int_padding_equals_keras_valid_on_zero_padded_input(pad):
    r = rng(100 + pad)
    image = r.normal(size=(6, 5, 3))
    kernel = r.normal(size=(3, 3, 3, 2))
    bias = r.normal(size=2)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = conv2d(image, kernel, stride=2, padding=pad, bias=bias)
    expected = keras_conv(padded, kernel, bias, stride=2, padding="valid")
    np.testing.assert_allclose(out, expected, **TOL)


def test_conv2d_padding_name_is_case_insensitive_and_inputs_untouched():
    r = rng(5)
    image = r.normal(size=(5, 5, 1))
    kernel = r.normal(size=(2, 2, 1, 1))
    image_copy, kernel_copy = image.copy(), kernel.copy()
    np.testing.assert_array_equal(
        conv2d(image, kernel, padding="SAME"), conv2d(image, kernel, padding="same")
    )
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(kernel, kernel_copy)


def test_conv2d_scalar_bias_added_to_every_filter():
    r = rng(6)
    image = r.normal(size=(4, 4, 2))
    kernel = r.normal(size=(2, 2, 2, 3))
    np.testing.assert_allclose(
        conv2d(image, kernel, bias=1.5), conv2d(image, kernel) + 1.5, rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        conv2d(image, kernel, bias=[1.0, 2.0, 3.0]),
        conv2d(image, kernel) + np.array([1.0, 2.0, 3.0]),
        rtol=0, atol=1e-12,
    )


# --------------------------------------------------------------------------
# max_pool2d vs Keras
# --------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("pool_size", [2, 3, (2, 3)])
@pytest.mark.parametrize("stride", [None, 1, 2, (2, 1)])
def test_max_pool2d_matches_keras(padding, pool_size, stride):
    r = rng(padding, pool_size, stride)
    x = r.normal(size=(7, 9, 2))  # odd sizes: "valid" must floor
    out = max_pool2d(x, pool_size=pool_size, stride=stride, padding=padding)
    expected = keras_pool(x, pool_size=pool_size, stride=stride, padding=padding)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, **TOL)


@pytest.mark.parametrize("pool_size,stride", [(2, None), (3, None), (3, 2), (2, 1)])
def test_max_pool2d_same_never_picks_padding_on_negative_input(pool_size, stride):
    # If "same" padded with zeros, an all-negative input would leak 0.0 into the output.
    x = -1.0 - rng(9).random(size=(5, 7, 2))
    out = max_pool2d(x, pool_size=pool_size, stride=stride, padding="same")
    expected = keras_pool(x, pool_size=pool_size, stride=stride, padding="same")
    np.testing.assert_allclose(out, expected, **TOL)
    assert (out < 0).all()


def test_max_pool2d_2d_input_and_valid_floor():
    x = np.arange(25.0).reshape(5, 5)
    out = max_pool2d(x)  # 5 -> floor(5/2) = 2: last row/column dropped
    np.testing.assert_array_equal(out, [[6, 8], [16, 18]])
    assert out.dtype == np.float64


# --------------------------------------------------------------------------
# output-size formulas
# --------------------------------------------------------------------------

SIZE_GRID = list(itertools.product(range(1, 11), range(1, 6), range(1, 4)))


def _formula_conv(n, k, s, padding):
    if padding == "valid":
        return (n - k) // s + 1
    if padding == "same":
        return -(-n // s)
    if padding == "full":
        return (n + k - 2) // s + 1
    return (n + 2 * padding - k) // s + 1


def _padded_size(n, k, padding):
    """Padded input length, for the modes where it does not depend on the stride."""
    if padding == "valid":
        return n
    if padding == "full":
        return n + 2 * (k - 1)
    if padding == "same":
        return max(n, k)  # "same" always pads enough for at least one window
    return n + 2 * padding


@pytest.mark.parametrize("padding", ["valid", "same", "full", 0, 1, 2])
def test_conv_output_size_formula_and_actual_output(padding):
    for n, k, s in SIZE_GRID:
        if _padded_size(n, k, padding) < k:
            with pytest.raises(ValueError, match="larger than the padded input"):
                conv_output_size(n, k, stride=s, padding=padding)
            with pytest.raises(ValueError, match="larger than the padded input"):
                conv2d(np.zeros((n, n)), np.zeros((k, k)), stride=s, padding=padding)
            continue
        size = conv_output_size(n, k, stride=s, padding=padding)
        assert isinstance(size, int)
        assert size == _formula_conv(n, k, s, padding), (n, k, s, padding)
        actual = conv2d(np.ones((n, n + 1)), np.ones((k, 1)), stride=(s, 1), padding=padding)
        assert actual.shape[0] == size, (n, k, s, padding)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv_output_size_matches_keras_compute_output_shape(padding):
    for n, k, s in SIZE_GRID:
        layer = keras.layers.Conv2D(1, (k, 1), strides=(s, 1), padding=padding)
        try:
            expected = layer.compute_output_shape((None, n, 4, 1))[1]
        except ValueError:
            with pytest.raises(ValueError):
                conv_output_size(n, k, stride=s, padding=padding)
            continue
        assert conv_output_size(n, k, stride=s, padding=padding) == expected, (n, k, s)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("default_stride", [True, False])
def test_pool_output_size_formula_keras_and_actual_output(padding, default_stride):
    for n, p, s in SIZE_GRID:
        stride = None if default_stride else s
        eff = p if stride is None else s
        layer = keras.layers.MaxPooling2D((p, 1), strides=(eff, 1), padding=padding)
        try:
            expected = layer.compute_output_shape((None, n, 3, 1))[1]
        except ValueError:
            with pytest.raises(ValueError, match="larger than the padded input"):
                pool_output_size(n, p, stride=stride, padding=padding)
            with pytest.raises(ValueError, match="larger than the padded input"):
                max_pool2d(np.zeros((n, 3)), pool_size=(p, 1), stride=(eff, 1), padding=padding)
            continue
        size = pool_output_size(n, p, stride=stride, padding=padding)
        formula = (n - p) // eff + 1 if padding == "valid" else -(-n // eff)
        assert size == formula == expected, (n, p, s, padding)
        actual = max_pool2d(np.zeros((n, 3)), pool_size=(p, 1), stride=(eff, 1), padding=padding)
        assert actual.shape[0] == size


# --------------------------------------------------------------------------
# parameter counts and layer tables vs Keras
# --------------------------------------------------------------------------


def test_param_formulas():
    assert conv2d_params(3, 1, 32) == 320
    assert conv2d_params((3, 3), 32, 64) == 18496
    assert conv2d_params((3, 3), 64, 64) == 36928
    assert conv2d_params((3, 3), 64, 64, use_bias=False) == 36864
    assert conv2d_params((2, 5), 3, 7) == 2 * 5 * 3 * 7 + 7
    assert dense_params(576, 64) == 36928
    assert dense_params(64, 10) == 650
    assert dense_params(64, 10, use_bias=False) == 640


OTHER_MODEL = (
    Conv2DSpec(8, (5, 3), strides=2, padding="same", use_bias=False, activation="relu"),
    MaxPool2DSpec(3, strides=2, padding="same"),
    Conv2DSpec(16, 2, strides=(1, 2), padding="valid"),
    MaxPool2DSpec((2, 1), padding="valid"),
    DenseSpec(5),  # Dense on a 3-D tensor acts on the last axis
    FlattenSpec(),
    DenseSpec(3, use_bias=False, activation="softmax"),
)


@pytest.mark.parametrize(
    "input_shape,specs",
    [(SEED_INPUT_SHAPE, SEED_MODEL), ((33, 30, 3), OTHER_MODEL)],
    ids=["seed", "other"],
)
def test_layer_table_matches_keras_model(input_shape, specs):
    model = keras.Sequential([keras.Input(shape=input_shape)] + [to_keras(s) for s in specs])
    rows = layer_table(input_shape, specs)
    assert len(rows) == len(model.layers)
    for row, layer in zip(rows, model.layers):
        assert row.kind == type(layer).__name__
        assert row.output_shape == tuple(layer.output.shape[1:]), layer.name
        assert row.params == layer.count_params(), layer.name
    assert total_params(rows) == model.count_params()


def test_specs_are_frozen():
    spec = Conv2DSpec(4, 3)
    with pytest.raises(AttributeError):
        spec.filters = 5  # type: ignore[misc]
    row = LayerRow("Flatten", (4,), 0)
    with pytest.raises(AttributeError):
        row.params = 1  # type: ignore[misc]


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: conv2d(np.zeros((5, 5, 3)), np.zeros((3, 3, 1, 2))), r"channel mismatch.*3.*1"),
        (lambda: conv2d(np.zeros((5, 5, 3)), np.zeros((3, 3))), r"channel mismatch"),
        (lambda: conv2d(np.zeros((5, 5)), np.zeros((3, 3, 2))), r"channel mismatch"),
        (lambda: conv2d(np.zeros((2, 5)), np.zeros((3, 3))), r"kernel height \(3\) is larger"),
        (lambda: conv2d(np.zeros((5, 2)), np.zeros((3, 3))), r"kernel width \(3\) is larger"),
        (lambda: conv2d(np.zeros((5, 5)), np.zeros((3, 3)), padding="nope"), r"unknown padding 'nope'"),
        (lambda: conv2d(np.zeros((5, 5)), np.zeros((3, 3)), padding=-1), r"non-negative"),
        (lambda: conv2d(np.zeros((5, 5)), np.zeros((3, 3)), stride=0), r"stride must be positive"),
        (lambda: conv2d(np.zeros((5, 5)), np.zeros((3, 3)), stride=(1, -2)), r"stride must be positive"),
        (lambda: conv2d(np.zeros((5, 5)), np.zeros((3, 3)), stride=1.5), r"stride must be an integer"),
        (lambda: conv2d(np.zeros((1, 5, 5, 1)), np.zeros((3, 3))), r"image must be"),
        (lambda: conv2d(np.zeros((5, 5)), np.zeros(3)), r"kernel must be"),
        (lambda: conv2d(np.zeros((5, 5)), np.zeros((3, 3, 1, 2)), bias=[1, 2, 3]), r"bias must be"),
        (lambda: max_pool2d(np.zeros((5, 5)), pool_size=0), r"pool_size must be positive"),
        (lambda: max_pool2d(np.zeros((5, 5)), stride=0), r"stride must be positive"),
        (lambda: max_pool2d(np.zeros((5, 5)), padding="full"), r"unknown padding 'full'"),
        (lambda: max_pool2d(np.zeros((1, 5)), pool_size=2), r"pool height \(2\) is larger"),
        (lambda: conv_output_size(5, 7), r"larger than the padded input"),
        (lambda: conv_output_size(5, 3, stride=0), r"stride must be a positive"),
        (lambda: conv_output_size(5, 3, padding="bogus"), r"unknown padding"),
        (lambda: pool_output_size(5, 2, padding=1), r"padding must be one of"),
        (lambda: conv2d_params(3, 0, 4), r"in_channels must be a positive"),
        (lambda: dense_params(10, 0), r"units must be a positive"),
        (lambda: layer_table((28, 28), [Conv2DSpec(4, 3)]), r"Conv2D needs a \(H, W, C\) input"),
        (lambda: layer_table((4, 4, 1), [Conv2DSpec(4, 5)]), r"larger than the padded input"),
    ],
)
def test_errors_raise_value_error_with_helpful_message(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_layer_table_rejects_unknown_spec():
    with pytest.raises(TypeError, match="unsupported layer spec"):
        layer_table((4, 4, 1), ["Conv2D"])


# --------------------------------------------------------------------------
# import cost
# --------------------------------------------------------------------------


def test_reference_does_not_import_tensorflow_or_keras():
    code = (
        "import sys, assignments.cnn_mnist.reference; "
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert set(ref.__all__) <= set(dir(ref))
