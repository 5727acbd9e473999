"""The digits unit's math, givens and reference answers (expected values are computed, never pasted).

Self-contained on purpose (numpy only, cheap to import): the grader bundles each assignment's
package on its own, so this unit does not import another unit's modules.  The conventions are
Keras' (the tests check them against Keras layers):

- "convolution" is cross-correlation (the kernel is not flipped);
- arrays are channels-last: images (H, W) or (H, W, C), kernels (kh, kw), (kh, kw, C) or
  (kh, kw, C, F);
- "same" padding is TensorFlow's rule: the output has ceil(n / s) entries and, when the total
  padding is odd, the extra zero goes *after* (bottom/right); an int pads that many zeros on
  each side (as PyTorch's ``padding=1``);
- pooling is "valid": windows that do not fit are dropped (floor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Padding = Union[str, int]


# --- sizes ---------------------------------------------------------------------------------

def _pads(n: int, k: int, s: int, padding: Padding) -> tuple[int, int]:
    if padding == "valid":
        return 0, 0
    if padding == "same":
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and padding >= 0:
        return int(padding), int(padding)
    raise ValueError(f"padding must be 'valid', 'same' or a non-negative int, got {padding!r}")


def conv_output_size(n: int, k: int, *, stride: int = 1, padding: Padding = "valid") -> int:
    """Output length along one axis: floor((n + pads - k) / s) + 1 ("same": ceil(n / s))."""
    before, after = _pads(n, k, stride, padding)
    if n + before + after < k:
        raise ValueError(f"kernel size {k} is larger than the padded input {n + before + after}")
    return (n + before + after - k) // stride + 1


def pool_output_size(n: int, pool: int, *, stride: int | None = None) -> int:
    """Valid max pooling: floor((n - p) / s) + 1, stride defaulting to the pool size."""
    return conv_output_size(n, pool, stride=pool if stride is None else stride)


# --- convolution and pooling -------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv2d(image, kernel, *, stride=1, padding: Padding = "valid", bias=None) -> np.ndarray:
    """Cross-correlation of image (H, W) or (H, W, C) with kernel (kh, kw), (kh, kw, C) or
    (kh, kw, C, F); float64 (oh, ow), or (oh, ow, F) for a 4-D kernel; ``bias`` per filter."""
    img = np.asarray(image, dtype=np.float64)
    ker = np.asarray(kernel, dtype=np.float64)
    img = img[:, :, None] if img.ndim == 2 else img
    has_filters = ker.ndim == 4
    ker4 = {2: lambda k: k[:, :, None, None], 3: lambda k: k[:, :, :, None], 4: lambda k: k}[ker.ndim](ker)
    kh, kw, kc, _ = ker4.shape
    if img.ndim != 3 or kc != img.shape[2]:
        raise ValueError(f"image {np.shape(image)} and kernel {np.shape(kernel)} do not match")
    sh, sw = _pair(stride)
    (pt, pb), (pl, pr) = _pads(img.shape[0], kh, sh, padding), _pads(img.shape[1], kw, sw, padding)
    conv_output_size(img.shape[0], kh, stride=sh, padding=padding)
    conv_output_size(img.shape[1], kw, stride=sw, padding=padding)
    img = np.pad(img, ((pt, pb), (pl, pr), (0, 0)))
    windows = sliding_window_view(img, (kh, kw), axis=(0, 1))[::sh, ::sw]  # (oh, ow, C, kh, kw)
    out = np.tensordot(windows, ker4, axes=([2, 3, 4], [2, 0, 1]))  # (oh, ow, F)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)
    return out if has_filters else out[:, :, 0]


def max_pool2d(x, *, pool_size=2, stride=None) -> np.ndarray:
    """Valid max pooling of x (H, W) or (H, W, C) per channel; stride defaults to pool_size."""
    arr = np.asarray(x, dtype=np.float64)
    squeeze = arr.ndim == 2
    arr = arr[:, :, None] if squeeze else arr
    ph, pw = _pair(pool_size)
    sh, sw = (ph, pw) if stride is None else _pair(stride)
    pool_output_size(arr.shape[0], ph, stride=sh)
    pool_output_size(arr.shape[1], pw, stride=sw)
    out = sliding_window_view(arr, (ph, pw), axis=(0, 1))[::sh, ::sw].max(axis=(-2, -1))
    return out[:, :, 0] if squeeze else out


# --- the two functions students implement ---------------------------------------------------------

def conv_layer(x, kernels, bias) -> np.ndarray:
    """Forward pass of ``Conv2D(F, (kh, kw), activation='relu')`` (valid, stride 1): x (H, W, C),
    kernels (kh, kw, C, F) (Keras' layout), bias (F,) -> (oh, ow, F). Every filter spans all
    input channels; its bias is added before the ReLU."""
    return np.maximum(conv2d(x, kernels, bias=bias), 0.0)


def max_pool(x, size=2, stride=None) -> np.ndarray:
    """``MaxPooling2D(size, strides=stride)`` on x (H, W, C), per channel; windows may overlap."""
    return max_pool2d(x, pool_size=size, stride=stride)


# --- parameter counts and the layer table ---------------------------------------------------

def conv2d_params(kernel_size, in_channels: int, filters: int, *, use_bias: bool = True) -> int:
    kh, kw = _pair(kernel_size)
    return kh * kw * in_channels * filters + (filters if use_bias else 0)


def dense_params(in_features: int, units: int, *, use_bias: bool = True) -> int:
    return in_features * units + (units if use_bias else 0)


@dataclass(frozen=True)
class Conv2DSpec:
    filters: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: str = "valid"
    use_bias: bool = True
    activation: str | None = None


@dataclass(frozen=True)
class MaxPool2DSpec:
    pool_size: tuple[int, int] = (2, 2)
    padding: str = "valid"


@dataclass(frozen=True)
class FlattenSpec:
    pass


@dataclass(frozen=True)
class DenseSpec:
    units: int
    use_bias: bool = True
    activation: str | None = None


LayerSpec = Union[Conv2DSpec, MaxPool2DSpec, FlattenSpec, DenseSpec]


@dataclass(frozen=True)
class LayerRow:
    kind: str
    output_shape: tuple[int, ...]
    params: int


def layer_table(input_shape: Sequence[int], specs: Iterable[LayerSpec]) -> list[LayerRow]:
    """Each layer's output shape (no batch axis) and parameter count, as ``model.summary()``."""
    shape, rows = tuple(input_shape), []
    for spec in specs:
        if isinstance(spec, Conv2DSpec):
            (h, w, c), (kh, kw) = shape, _pair(spec.kernel_size)
            shape = (conv_output_size(h, kh, stride=spec.strides, padding=spec.padding),
                     conv_output_size(w, kw, stride=spec.strides, padding=spec.padding), spec.filters)
            rows.append(LayerRow("Conv2D", shape, conv2d_params((kh, kw), c, spec.filters, use_bias=spec.use_bias)))
        elif isinstance(spec, MaxPool2DSpec):
            (h, w, c), (ph, pw) = shape, _pair(spec.pool_size)
            if spec.padding == "same":
                shape = (-(-h // ph), -(-w // pw), c)
            else:
                shape = (pool_output_size(h, ph), pool_output_size(w, pw), c)
            rows.append(LayerRow("MaxPooling2D", shape, 0))
        elif isinstance(spec, FlattenSpec):
            shape = (math.prod(shape),)
            rows.append(LayerRow("Flatten", shape, 0))
        elif isinstance(spec, DenseSpec):
            params = dense_params(shape[-1], spec.units, use_bias=spec.use_bias)
            shape = shape[:-1] + (spec.units,)
            rows.append(LayerRow("Dense", shape, params))
        else:
            raise TypeError(f"unsupported layer spec {spec!r}")
    return rows


def total_params(rows: Iterable[LayerRow]) -> int:
    return sum(r.params for r in rows)


# --- the unit's givens -------------------------------------------------------------------------

def _frozen(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


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
PATCH = _frozen([[0, 2, 13, 4],
                 [0, 7, 16, 1],
                 [1, 12, 15, 0],
                 [0, 10, 14, 3]])

#: The Sobel filter for vertical edges (left column minus right column).
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
