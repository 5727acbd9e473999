"""Reference math of the CNN units: convolution, pooling, output sizes, parameter counts, layer tables.

Shared by every CNN assignment (each unit's ``reference.py`` adds its givens and seed model).
Everything here is pure numpy on purpose: the grader imports it for every submission, so it must
stay cheap to import (no TensorFlow/Keras) and easy to audit against the lessons' formulas.
Keras is only used in the tests, as an independent oracle that these definitions match what
students' models do.

Conventions (all chosen to match Keras, which the lesson uses):

- "Convolution" is cross-correlation: the kernel is *not* flipped, exactly as in
  the lesson's 3x3 * 2x2 worked example (top-left = f1*a + f2*b + f3*d + f4*e).
- Arrays are channels-last: images are (H, W) or (H, W, C) and conv kernels
  are (kh, kw), (kh, kw, C) or (kh, kw, C, F).
- "same" padding uses TensorFlow's rule (the extra pad goes after), not the
  lesson's simplified ``k // 2`` on each side, so grades agree with Keras for
  even kernels and strides > 1 too.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "conv2d",
    "max_pool2d",
    "conv_output_size",
    "pool_output_size",
    "conv2d_params",
    "dense_params",
    "Conv2DSpec",
    "MaxPool2DSpec",
    "FlattenSpec",
    "DenseSpec",
    "LayerSpec",
    "LayerRow",
    "layer_table",
    "total_params",
    "frozen",
]

IntOrPair = Union[int, Sequence[int]]
Padding = Union[str, int]

_CONV_PADDINGS = ("valid", "same", "full")
_POOL_PADDINGS = ("valid", "same")


# --------------------------------------------------------------------------
# argument normalisation (one place, so every entry point rejects the same junk)
# --------------------------------------------------------------------------


def _as_int(value: object, name: str) -> int:
    """Accept Python/numpy integers only; bools and floats are almost always bugs."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _pair(value: IntOrPair, name: str, *, positive: bool = True) -> tuple[int, int]:
    """Normalise ``k`` or ``(kh, kw)`` to a pair of (positive) ints."""
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (_as_int(value[0], name), _as_int(value[1], name))
    else:
        v = _as_int(value, name)
        pair = (v, v)
    if positive and min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def _positive(value: object, name: str) -> int:
    v = _as_int(value, name)
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return v


def _norm_padding(padding: Padding, allowed: tuple[str, ...], *, allow_int: bool) -> str | int:
    """Return a lower-case padding name, or a non-negative int pad width."""
    if isinstance(padding, str):
        name = padding.lower()
        if name not in allowed:
            raise ValueError(
                f"unknown padding {padding!r}; expected one of {', '.join(allowed)}"
                + (" or a non-negative int" if allow_int else "")
            )
        return name
    if not allow_int:
        raise ValueError(f"padding must be one of {', '.join(allowed)}, got {padding!r}")
    p = _as_int(padding, "padding")
    if p < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return p


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow "SAME": output ceil(n/s); odd total pad puts the extra zero after."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pads(n: int, k: int, s: int, padding: str | int) -> tuple[int, int]:
    if padding == "valid":
        return 0, 0
    if padding == "same":
        return _same_pads(n, k, s)
    if padding == "full":
        return k - 1, k - 1
    return padding, padding  # int, already validated


def _out_size(n: int, k: int, s: int, before: int, after: int, what: str) -> int:
    padded = n + before + after
    if padded < k:
        raise ValueError(
            f"{what} ({k}) is larger than the padded input ({padded} = "
            f"{n} + {before} + {after} padding)"
        )
    return (padded - k) // s + 1


# --------------------------------------------------------------------------
# shape formulas
# --------------------------------------------------------------------------


def conv_output_size(n: int, k: int, *, stride: int = 1, padding: Padding = "valid") -> int:
    """Output length along one axis of a convolution.

    valid: floor((n-k)/s)+1, same: ceil(n/s), full: floor((n+k-2)/s)+1,
    int p: floor((n+2p-k)/s)+1. Raises ValueError when the kernel does not fit.
    """
    n = _positive(n, "input size")
    k = _positive(k, "kernel size")
    s = _positive(stride, "stride")
    pad = _norm_padding(padding, _CONV_PADDINGS, allow_int=True)
    before, after = _pads(n, k, s, pad)
    return _out_size(n, k, s, before, after, "kernel size")


def pool_output_size(
    n: int, pool: int, *, stride: int | None = None, padding: str = "valid"
) -> int:
    """Output length along one axis of max pooling (stride defaults to the pool size).

    valid: floor((n-p)/s)+1 (incomplete windows are dropped, as in Keras),
    same: ceil(n/s).
    """
    n = _positive(n, "input size")
    p = _positive(pool, "pool size")
    s = p if stride is None else _positive(stride, "stride")
    pad = _norm_padding(padding, _POOL_PADDINGS, allow_int=False)
    before, after = _pads(n, p, s, pad)
    return _out_size(n, p, s, before, after, "pool size")


# --------------------------------------------------------------------------
# convolution and pooling
# --------------------------------------------------------------------------


def conv2d(
    image: np.ndarray,
    kernel: np.ndarray,
    *,
    stride: IntOrPair = 1,
    padding: Padding = "valid",
    bias: float | np.ndarray | None = None,
) -> np.ndarray:
    """2-D convolution as deep learning defines it (cross-correlation, no kernel flip).

    image: (H, W) or (H, W, C). kernel: (kh, kw), (kh, kw, C) or (kh, kw, C, F)
    (Keras layout). Returns float64 (oh, ow) when the kernel has no F axis,
    else (oh, ow, F). ``bias`` is a scalar or shape (F,), added per filter.
    """
    img = np.asarray(image, dtype=np.float64)
    ker = np.asarray(kernel, dtype=np.float64)
    if img.ndim == 2:
        img = img[:, :, None]
    elif img.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {np.shape(image)}")
    if ker.ndim == 2:
        ker4, has_filters = ker[:, :, None, None], False
    elif ker.ndim == 3:
        ker4, has_filters = ker[:, :, :, None], False
    elif ker.ndim == 4:
        ker4, has_filters = ker, True
    else:
        raise ValueError(
            "kernel must be (kh, kw), (kh, kw, C) or (kh, kw, C, F), "
            f"got shape {np.shape(kernel)}"
        )
    kh, kw, kc, nf = ker4.shape
    h, w, c = img.shape
    if kc != c:
        raise ValueError(
            f"channel mismatch: image has {c} channel(s) but kernel expects {kc} "
            f"(image shape {np.shape(image)}, kernel shape {np.shape(kernel)})"
        )
    if min(h, w, c, kh, kw, nf) < 1:
        raise ValueError(
            f"empty image or kernel (image shape {np.shape(image)}, "
            f"kernel shape {np.shape(kernel)})"
        )
    sh, sw = _pair(stride, "stride")
    pad = _norm_padding(padding, _CONV_PADDINGS, allow_int=True)
    (pt, pb), (pl, pr) = _pads(h, kh, sh, pad), _pads(w, kw, sw, pad)
    _out_size(h, kh, sh, pt, pb, "kernel height")
    _out_size(w, kw, sw, pl, pr, "kernel width")

    if pt or pb or pl or pr:
        img = np.pad(img, ((pt, pb), (pl, pr), (0, 0)))
    # windows: (oh, ow, C, kh, kw); contract (C, kh, kw) against kernel axes (2, 0, 1).
    windows = sliding_window_view(img, (kh, kw), axis=(0, 1))[::sh, ::sw]
    out = np.tensordot(windows, ker4, axes=([2, 3, 4], [2, 0, 1]))  # (oh, ow, F)

    if bias is not None:
        b = np.asarray(bias, dtype=np.float64)
        if b.ndim == 0 or b.shape == (nf,):
            out = out + b
        else:
            raise ValueError(f"bias must be a scalar or shape ({nf},), got shape {b.shape}")
    return out if has_filters else out[:, :, 0]


def max_pool2d(
    x: np.ndarray,
    *,
    pool_size: IntOrPair = 2,
    stride: IntOrPair | None = None,
    padding: str = "valid",
) -> np.ndarray:
    """Max pooling over (H, W) of x (H, W) or (H, W, C), per channel; float64 result.

    ``stride`` defaults to ``pool_size``. "valid" drops incomplete windows (Keras
    floors); "same" pads with -inf so padding can never win the max, as in Keras.
    """
    arr = np.asarray(x, dtype=np.float64)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[:, :, None]
    elif arr.ndim != 3:
        raise ValueError(f"x must be (H, W) or (H, W, C), got shape {np.shape(x)}")
    h, w, c = arr.shape
    if min(h, w, c) < 1:
        raise ValueError(f"x must be non-empty, got shape {np.shape(x)}")
    ph, pw = _pair(pool_size, "pool_size")
    sh, sw = (ph, pw) if stride is None else _pair(stride, "stride")
    pad = _norm_padding(padding, _POOL_PADDINGS, allow_int=False)
    (pt, pb), (pl, pr) = _pads(h, ph, sh, pad), _pads(w, pw, sw, pad)
    _out_size(h, ph, sh, pt, pb, "pool height")
    _out_size(w, pw, sw, pl, pr, "pool width")

    if pt or pb or pl or pr:
        arr = np.pad(arr, ((pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
    windows = sliding_window_view(arr, (ph, pw), axis=(0, 1))[::sh, ::sw]
    out = windows.max(axis=(-2, -1))  # (oh, ow, C)
    return out[:, :, 0] if squeeze else out


# --------------------------------------------------------------------------
# parameter counts
# --------------------------------------------------------------------------


def conv2d_params(
    kernel_size: IntOrPair, in_channels: int, filters: int, *, use_bias: bool = True
) -> int:
    """kh*kw*C_in weights per filter, times filters, plus one bias per filter."""
    kh, kw = _pair(kernel_size, "kernel_size")
    c = _positive(in_channels, "in_channels")
    f = _positive(filters, "filters")
    return kh * kw * c * f + (f if use_bias else 0)


def dense_params(in_features: int, units: int, *, use_bias: bool = True) -> int:
    """One weight per (input, unit) pair plus one bias per unit."""
    n = _positive(in_features, "in_features")
    u = _positive(units, "units")
    return n * u + (u if use_bias else 0)


# --------------------------------------------------------------------------
# layer-spec vocabulary and model summary table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv2DSpec:
    """Keras ``Conv2D`` hyperparameters that determine shapes and parameter counts."""

    filters: int
    kernel_size: IntOrPair
    strides: IntOrPair = 1
    padding: Padding = "valid"
    use_bias: bool = True
    activation: str | None = None


@dataclass(frozen=True)
class MaxPool2DSpec:
    """Keras ``MaxPooling2D`` hyperparameters (strides default to pool_size)."""

    pool_size: IntOrPair = 2
    strides: IntOrPair | None = None
    padding: str = "valid"


@dataclass(frozen=True)
class FlattenSpec:
    """Keras ``Flatten``: no hyperparameters, no parameters."""


@dataclass(frozen=True)
class DenseSpec:
    """Keras ``Dense`` hyperparameters (acts on the last axis)."""

    units: int
    use_bias: bool = True
    activation: str | None = None


LayerSpec = Union[Conv2DSpec, MaxPool2DSpec, FlattenSpec, DenseSpec]


@dataclass(frozen=True)
class LayerRow:
    """One row of ``model.summary()``: Keras class name, output shape (no batch axis), params."""

    kind: str
    output_shape: tuple[int, ...]
    params: int


def _spatial(shape: tuple[int, ...], kind: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"{kind} needs a (H, W, C) input, got shape {shape}")
    return shape  # type: ignore[return-value]


def layer_table(input_shape: Sequence[int], specs: Iterable[LayerSpec]) -> list[LayerRow]:
    """Propagate shapes through ``specs`` and count parameters, like ``model.summary()``."""
    shape = tuple(_positive(d, "input_shape entry") for d in input_shape)
    if not shape:
        raise ValueError("input_shape must have at least one axis")
    rows: list[LayerRow] = []
    for spec in specs:
        if isinstance(spec, Conv2DSpec):
            h, w, c = _spatial(shape, "Conv2D")
            kh, kw = _pair(spec.kernel_size, "kernel_size")
            sh, sw = _pair(spec.strides, "strides")
            shape = (
                conv_output_size(h, kh, stride=sh, padding=spec.padding),
                conv_output_size(w, kw, stride=sw, padding=spec.padding),
                _positive(spec.filters, "filters"),
            )
            rows.append(LayerRow("Conv2D", shape, conv2d_params(
                (kh, kw), c, spec.filters, use_bias=spec.use_bias)))
        elif isinstance(spec, MaxPool2DSpec):
            h, w, c = _spatial(shape, "MaxPooling2D")
            ph, pw = _pair(spec.pool_size, "pool_size")
            sh, sw = (ph, pw) if spec.strides is None else _pair(spec.strides, "strides")
            shape = (
                pool_output_size(h, ph, stride=sh, padding=spec.padding),
                pool_output_size(w, pw, stride=sw, padding=spec.padding),
                c,
            )
            rows.append(LayerRow("MaxPooling2D", shape, 0))
        elif isinstance(spec, FlattenSpec):
            shape = (math.prod(shape),)
            rows.append(LayerRow("Flatten", shape, 0))
        elif isinstance(spec, DenseSpec):
            params = dense_params(shape[-1], spec.units, use_bias=spec.use_bias)
            shape = shape[:-1] + (_positive(spec.units, "units"),)
            rows.append(LayerRow("Dense", shape, params))
        else:
            raise TypeError(f"unsupported layer spec {spec!r}")
    return rows


def total_params(rows: Iterable[LayerRow]) -> int:
    """Sum of the per-layer parameter counts ("Total params" in ``model.summary()``)."""
    return sum(row.params for row in rows)


# --------------------------------------------------------------------------
# givens
# --------------------------------------------------------------------------


def frozen(values) -> np.ndarray:
    """A float64 copy of ``values``, read-only: module constants are shared by every importer."""
    a = np.array(values, dtype=np.float64)
    a.setflags(write=False)
    return a
