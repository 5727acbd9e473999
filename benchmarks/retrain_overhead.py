"""The verifier against a plain Keras script with the same settings, in one run.

    python benchmarks/retrain_overhead.py [EPOCHS] [BATCH]

Prints both times and their ratio (the verifier's overhead: safe rebuild, determinism,
wall-clock callback, evaluation), the cache-hit time for the same recipe, and peak memory.
On a GPU it also prints seconds per epoch against the floating-point floor of the seed model
(about 1 TFLOP per epoch: 60,000 images x ~5.8 MFLOP forward, x3 for the backward pass).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measured  # noqa: E402

FLOPS_PER_EPOCH = 1.0e12


def seed_model():
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2), layers.Conv2D(64, 3, activation="relu"),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    from autograder import retrain

    retrain.select_backend()
    import keras
    import numpy as np

    from autograder.data import load_mnist

    (x_train, y_train), (x_test, y_test) = load_mnist()
    x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255
    x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255
    results: dict = {}
    with measured("plain Keras fit + evaluate", results):
        keras.utils.set_random_seed(0)
        model = seed_model()
        model.fit(x_train, y_train, epochs=epochs, batch_size=batch, verbose=0)
        plain_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    model = seed_model()
    config = json.loads(model.to_json())
    fits = [{"epochs": epochs, "batch_size": batch, "compile_config": model.get_compile_config(), "callbacks": []}]
    with tempfile.TemporaryDirectory() as cache:
        with measured("verifier (fresh)", results):
            report = retrain.verify(config, fits, cache_dir=cache)
        started = time.perf_counter()
        hit = retrain.verify(config, fits, cache_dir=cache)
        hit_ms = (time.perf_counter() - started) * 1000
        import os

        os.environ["CNN_GRADER_DETERMINISTIC"] = "0"
        with measured("verifier (no op determinism)", results):
            retrain.verify(config, fits, cache_dir=cache)
    for label, r in results.items():
        print(f"{label:30s} {r['seconds']:8.2f} s   peak {r['peak_mib']:7.0f} MiB")
    print(f"accuracy: plain {plain_acc:.4f}, verifier {report.accuracy:.4f} ({report.device}, {report.backend})")
    overhead = results["verifier (fresh)"]["seconds"] / results["plain Keras fit + evaluate"]["seconds"]
    print(f"ratio verifier / plain: {overhead:.3f}  (overhead {100 * (overhead - 1):+.1f}%)")
    loose = results["verifier (no op determinism)"]["seconds"] / results["plain Keras fit + evaluate"]["seconds"]
    print(f"ratio verifier without op determinism / plain: {loose:.3f}  (overhead {100 * (loose - 1):+.1f}%)")
    print(f"cache hit: {hit_ms:.1f} ms (cache_hit={hit.cache_hit})")
    if report.device.startswith("GPU"):
        per_epoch = results["verifier (fresh)"]["seconds"] / epochs
        print(f"GPU: {per_epoch:.2f} s/epoch; floor at 1 TFLOP/epoch on a ~50 TFLOP/s card ~ 0.02 s")


if __name__ == "__main__":
    main()
