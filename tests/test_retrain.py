"""Retraining verifier: safe rebuild, faithful recipe, determinism, caching."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from autograder import retrain


def _seed_model(**conv_kwargs):
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu", **conv_kwargs), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.Flatten(),
        layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _fit(model, epochs, batch_size, **extra):
    return {"epochs": epochs, "batch_size": batch_size, "initial_epoch": 0, "validation_split": 0.0, "shuffle": True,
            "callbacks": [], "compile_config": model.get_compile_config(),
            "x": {"kind": "array", "shape": [60000, 28, 28, 1], "max": 1.0}, **extra}


def _config(model) -> dict:
    return json.loads(model.to_json())


@pytest.mark.slow
def test_seed_recipe_10_epochs_batch_1000_scores_below_threshold(tmp_path):
    from autograder import checks
    from autograder.judge import ExtractedModel

    model = _seed_model()
    extracted = ExtractedModel(model.to_json(), [_fit(model, 10, 1000)],
                               {"max_epochs": 15, "max_seconds": 1800, "seeds": 1, "cache_dir": str(tmp_path)})
    with pytest.raises(AssertionError) as err:
        checks.check_accuracy(extracted)
    message = str(err.value)
    assert "is not above 0.99" in message and "10 epochs, batch size 1000" in message
    assert 0.97 < extracted.last_report["accuracy"] < 0.99


def test_lambda_layer_is_refused_by_name():
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Lambda(lambda x: x * 2, name="doubler"),
                              layers.Flatten(), layers.Dense(10, activation="softmax")])
    with pytest.raises(retrain.RefusedModel, match="'Lambda' \\(doubler\\)"):
        retrain.rebuild_model(_config(model))
    report = retrain.verify(_config(model), [{"epochs": 1, "batch_size": 128}], cache_dir=None)
    assert report.accuracy is None and "Lambda" in report.error


def test_custom_classes_are_refused():
    config = _config(_seed_model())
    config["class_name"] = "Confident"
    with pytest.raises(retrain.RefusedModel, match="Confident"):
        retrain.rebuild_model(config)
    config = _config(_seed_model())
    config["config"]["layers"][1]["registered_name"] = "my_pkg>MyConv"
    with pytest.raises(retrain.RefusedModel, match="custom"):
        retrain.rebuild_model(config)


def test_rebuild_never_uses_submitted_weights():
    model = _seed_model()
    model.set_weights([np.full(w.shape, 0.5, w.dtype) for w in model.get_weights()])
    rebuilt = retrain.rebuild_model(_config(model))
    assert [w.shape for w in rebuilt.get_weights()] == [w.shape for w in model.get_weights()]
    assert not np.allclose(rebuilt.get_weights()[0], 0.5)


def test_recipe_caps_and_notes():
    model = _seed_model()
    plan, notes = retrain._plan([_fit(model, 12, 64), _fit(model, 8, 64, callbacks=[{"class": "TensorBoard"}])], 15)
    assert [p["epochs"] for p in plan] == [12, 3]
    assert any("capped to 3" in n for n in notes) and any("TensorBoard" in n for n in notes)
    _, notes = retrain._plan([_fit(model, 1, 64, x={"kind": "array", "shape": [10000, 28, 28, 1], "max": 255.0})], 15)
    assert any("10000 images" in n for n in notes) and any("unscaled" in n for n in notes)


def _tiny_data():
    from autograder.data import load_mnist

    (x_train, y_train), (x_test, y_test) = load_mnist()
    scale = lambda x: x.reshape(-1, 28, 28, 1).astype("float32") / 255.0  # noqa: E731
    return (scale(x_train[:2000]), y_train[:2000]), (scale(x_test[:1000]), y_test[:1000])


def test_fixed_seed_is_reproducible_and_optimizer_config_is_used():
    import keras

    model = _seed_model()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fits = [_fit(model, 1, 100)]
    data = _tiny_data()
    a = retrain._train_result(_config(model), fits, 7, 15, 600, data)
    b = retrain._train_result(_config(model), fits, 7, 15, 600, data)
    assert a["accuracy"] == b["accuracy"]
    assert a["optimizer"] == "SGD (learning rate 0.05)" and a["epochs"] == 1


def test_cache_hits_share_across_layer_names_and_corrupt_entries_are_redone(tmp_path, monkeypatch):
    calls = []

    def fake_train(config, fits, seed, max_epochs, max_seconds, data):
        calls.append(seed)
        return {"accuracy": 0.5 + seed / 100, "epochs": 1, "batch_size": 32, "optimizer": "Adam", "loss": "x",
                "notes": [], "seconds": 1.0}

    monkeypatch.setattr(retrain, "_train_result", fake_train)
    config_a, config_b = _config(_seed_model()), _config(_seed_model())  # auto names differ: conv2d_3 vs conv2d_6
    assert config_a != config_b
    fits = [{"epochs": 1, "batch_size": 32}]
    first = retrain.train_seed_cached(config_a, fits, 1, 15, 60, tmp_path, data_loader=lambda: None)
    started = time.perf_counter()
    second = retrain.train_seed_cached(config_b, fits, 1, 15, 60, tmp_path, data_loader=lambda: None)
    assert time.perf_counter() - started < 1.0
    assert not first["cache_hit"] and second["cache_hit"] and calls == [1]
    entry = next(tmp_path.glob("*.json"))
    entry.write_text(entry.read_text().replace("0.51", "0.99"))  # tampered: checksum no longer matches
    third = retrain.train_seed_cached(config_a, fits, 1, 15, 60, tmp_path, data_loader=lambda: None)
    assert not third["cache_hit"] and third["accuracy"] == 0.51 and calls == [1, 1]
    entry.write_text("{partial")
    assert not retrain.train_seed_cached(config_a, fits, 1, 15, 60, tmp_path, data_loader=lambda: None)["cache_hit"]


def test_k_seeds_score_the_median(tmp_path, monkeypatch):
    monkeypatch.setattr(retrain, "_train_result", lambda c, f, seed, *a: {
        "accuracy": {10: 0.991, 11: 0.985, 12: 0.993}[seed], "epochs": 1, "batch_size": 32, "optimizer": "Adam",
        "loss": "x", "notes": [], "seconds": 1.0})
    monkeypatch.setattr(retrain, "_load_data", lambda: None)
    report = retrain.verify(_config(_seed_model()), [{"epochs": 1}], seeds=3, seed=10, cache_dir=None)
    assert report.seeds == [10, 11, 12] and report.accuracy == 0.991


def test_jax_backend_trains_the_same_config(tmp_path):
    """The path a GPU machine without TensorFlow takes: the same JSON config, Keras on JAX."""
    import subprocess
    import sys

    import jax  # noqa: F401  (installed with the test extras)
    config = _config(_seed_model())
    fits = [_fit(_seed_model(), 1, 256)]
    (tmp_path / "job.json").write_text(json.dumps({"config": config, "fits": fits}))
    code = (
        "import json, sys; from autograder import retrain\n"
        f"job = json.load(open({str(tmp_path / 'job.json')!r}))\n"
        "r = retrain.verify(job['config'], job['fits'], max_seconds=6, cache_dir=None)\n"
        "print(json.dumps(r.as_dict()))\n"
    )
    env = {**__import__("os").environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["device"].startswith("CPU") and report["error"] is None
    assert 0.1 < report["accuracy"] <= 1.0
    assert any("wall-time cap" in n for n in report["notes"])
