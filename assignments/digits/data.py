"""scikit-learn's 8x8 handwritten digits, verified by content hash, with a fixed split.

The data set ships inside scikit-learn (``sklearn/datasets/data/digits.csv.gz``), so loading
it never touches the network.  :func:`load_digits_split` checks the arrays against SHA-256
hashes carried in this file and returns the assignment's fixed train/test split.

**The split** (documented in the master notebook): scikit-learn's order, the first 1,437
images for training and the last 360 for testing.  No shuffling and no random seed are
involved, so every machine and every scikit-learn version gives the same split; the last 360
images were written by other people than most of the first ones, which makes the test set a
fair check of generalisation (the classic scikit-learn example splits the same way).

Images are ``uint8`` arrays of shape (8, 8) with pixel values 0..16 (each pixel counts the
dark cells of a 4x4 block of the original 32x32 bitmap); labels are ``uint8`` 0..9.
"""

from __future__ import annotations

import hashlib

import numpy as np

from autograder.data import verify_arrays

__all__ = [
    "DigitsUnavailable",
    "ARRAY_SHA256",
    "SHAPES",
    "N_TRAIN",
    "N_TEST",
    "INPUT_SHAPE",
    "NUM_CLASSES",
    "PIXEL_MAX",
    "DATASET_SHA256",
    "load_digits_split",
    "verify",
]

N_TRAIN, N_TEST = 1437, 360
INPUT_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
PIXEL_MAX = 16  # pixels are counts 0..16; the notebook divides by 16

#: SHA-256 of the C-ordered bytes of each uint8 array of the split.
ARRAY_SHA256 = {
    "x_train": "b284d50d1ff250076877f9fa076dc54f7a48937f997c4571de6cae27017f4f99",
    "y_train": "00d355536cfe54c3c5aaa1bbc756008bcc5ba7030407f225954ebda1d1ca46c9",
    "x_test": "cfff6ae4478611800cb91b9d2c5ae329e83dec33ba4d539ec56620f0182f6b56",
    "y_test": "7a7a9acee298b8862700d7c2a0341a0ee3744e1369c9107a26149f5d0e61b304",
}
SHAPES = {
    "x_train": (N_TRAIN, 8, 8),
    "y_train": (N_TRAIN,),
    "x_test": (N_TEST, 8, 8),
    "y_test": (N_TEST,),
}
#: Combined fingerprint of the split, for cache keys.
DATASET_SHA256 = hashlib.sha256("".join(ARRAY_SHA256[k] for k in SHAPES).encode()).hexdigest()


class DigitsUnavailable(RuntimeError):
    """scikit-learn is missing, or its digits do not match the expected hashes."""


def verify(arrays: dict[str, np.ndarray]) -> None:
    """Raise ``ValueError`` naming the first array whose dtype, shape or content is wrong."""
    verify_arrays(arrays, SHAPES, ARRAY_SHA256)


def _raw_split() -> dict[str, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise DigitsUnavailable(f"scikit-learn is not installed: {exc}") from None
    bunch = load_digits()
    images, target = np.asarray(bunch.images), np.asarray(bunch.target)
    if images.shape != (N_TRAIN + N_TEST, 8, 8) or target.shape != (N_TRAIN + N_TEST,):
        raise DigitsUnavailable(f"unexpected digits shapes {images.shape}, {target.shape}")
    if not (np.all(images == np.rint(images)) and images.min() >= 0 and images.max() <= PIXEL_MAX):
        raise DigitsUnavailable("digits pixels are not whole numbers in 0..16")
    x = images.astype(np.uint8)
    y = target.astype(np.uint8)
    return {"x_train": x[:N_TRAIN], "y_train": y[:N_TRAIN], "x_test": x[N_TRAIN:], "y_test": y[N_TRAIN:]}


def load_digits_split() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(x_train, y_train), (x_test, y_test)``: uint8 (n, 8, 8) images 0..16 and uint8 labels,
    verified by hash, in the layout of ``keras.datasets.mnist.load_data()``."""
    arrays = _raw_split()
    try:
        verify(arrays)
    except ValueError as exc:
        raise DigitsUnavailable(f"scikit-learn's digits do not match this assignment's data: {exc}") from None
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
