"""Retraining verifier: rebuild the submitted architecture and train it from scratch on MNIST.

The accuracy a notebook prints proves nothing (lucky seed, test-set training, loaded weights,
a print statement).  From the extracted model JSON and recorded ``fit`` calls this module:

1. rebuilds the model with Keras safe deserialization, refusing anything outside an
   allow-list of standard layers (``Lambda``, custom objects) with a message naming it;
   weights are always fresh;
2. compiles with the submission's optimizer (class and config, schedules included) and loss,
   and replays its ``fit`` calls (epochs, batch size, shuffle, validation split, the
   EarlyStopping / ReduceLROnPlateau callbacks) under instructor caps on epochs and wall time,
   on the 60,000 training images scaled by 1/255; then measures accuracy on the 10,000 test
   images;
3. fixes the seed (and TensorFlow's op determinism), so a rerun on the same machine gives the
   same accuracy; ``seeds=k`` trains k seeds and scores the median;
4. uses whatever device Keras sees (GPU if present) and the JAX backend where TensorFlow is
   missing;
5. caches results by content (architecture, compile and fit settings, seed, data set hash,
   framework versions, device kind), with a file lock so parallel graders train once, and
   checksums so a corrupt or partial entry is redone.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

VERIFIER_VERSION = 1
DEFAULT_SEED = 1234

ALLOWED_LAYERS = {
    "InputLayer", "Conv2D", "MaxPooling2D", "MaxPool2D", "AveragePooling2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "Flatten", "Dense", "Dropout", "SpatialDropout2D", "Activation", "ReLU",
    "Softmax", "LeakyReLU", "BatchNormalization", "Reshape", "Rescaling",
}
ALLOWED_MODELS = {"Sequential", "Functional", "Model"}
ALLOWED_OPTIMIZERS = {"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam", "Lion", "Ftrl"}
ALLOWED_LOSSES = {"sparse_categorical_crossentropy", "categorical_crossentropy",
                  "SparseCategoricalCrossentropy", "CategoricalCrossentropy"}
ALLOWED_CALLBACKS = {"EarlyStopping", "ReduceLROnPlateau", "History", "ProgbarLogger"}


class RefusedModel(ValueError):
    """The submitted configuration uses something the verifier will not deserialize."""


@dataclass
class RetrainReport:
    accuracy: float | None = None
    accuracies: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    epochs: int = 0
    batch_size: int | None = None
    optimizer: str = ""
    loss: str = ""
    device: str = ""
    backend: str = ""
    seconds: float = 0.0
    cache_hit: bool = False
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        how = "cached result" if self.cache_hit else f"{self.seconds:.0f} s"
        seeds = f", median of {len(self.seeds)} seeds" if len(self.seeds) > 1 else ""
        return (f"retrained from scratch: {self.epochs} epochs, batch size {self.batch_size}, {self.optimizer}, "
                f"on {self.device} ({self.backend}), {how}{seeds}")

    def as_dict(self) -> dict:
        return asdict(self)


# --- backend and device --------------------------------------------------------------------

def select_backend() -> str:
    """TensorFlow when installed, else JAX (e.g. a GPU machine without TensorFlow); env wins."""
    if "KERAS_BACKEND" not in os.environ:
        import importlib.util

        if importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("jax") is not None:
            os.environ["KERAS_BACKEND"] = "jax"
    import keras

    return keras.backend.backend()


def device_description() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"GPU ({len(gpus)}x {gpus[0].name})" if gpus else "CPU"
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform.upper()} ({getattr(d, 'device_kind', d.platform)})"
    return "CPU"


# --- safe rebuild ------------------------------------------------------------------------------

def _check_allowed(config: dict) -> None:
    cls = config.get("class_name")
    if cls not in ALLOWED_MODELS:
        raise RefusedModel(f"model class {cls!r} is not a standard Keras Sequential/Functional model")
    if config.get("registered_name") not in (None, cls) or not str(config.get("module", "keras")).startswith("keras"):
        raise RefusedModel(f"model class {cls!r} is a custom object")
    for layer in config.get("config", {}).get("layers", []):
        name = layer.get("class_name")
        if name not in ALLOWED_LAYERS:
            raise RefusedModel(
                f"layer {name!r} ({layer.get('config', {}).get('name', '?')}) is not allowed: the grader rebuilds "
                f"models only from standard layers ({', '.join(sorted(ALLOWED_LAYERS))})"
            )
        if layer.get("registered_name") not in (None, name) or not str(layer.get("module", "keras")).startswith("keras"):
            raise RefusedModel(f"layer {name!r} is a custom object (registered as {layer.get('registered_name')!r})")
        act = layer.get("config", {}).get("activation")
        if isinstance(act, dict) and act.get("module") not in ("keras.activations", "keras.layers"):
            raise RefusedModel(f"layer {name!r} uses a custom activation")


def rebuild_model(config: dict):
    """Fresh, untrained model from a config; raises :class:`RefusedModel` for anything non-standard."""
    import keras

    _check_allowed(config)
    clean = copy.deepcopy(config)
    clean.pop("compile_config", None)
    try:
        model = keras.saving.deserialize_keras_object(clean, safe_mode=True)
    except Exception as exc:
        raise RefusedModel(f"the model config could not be rebuilt safely: {type(exc).__name__}: {exc}") from None
    if not getattr(model, "built", False):
        model.build((None, 28, 28, 1))
    return model


def _compile(model, compile_config: dict | None) -> tuple[str, str]:
    import keras

    cc = compile_config or {}
    opt = cc.get("optimizer") or "rmsprop"
    opt_name = opt if isinstance(opt, str) else opt.get("class_name", "?")
    if isinstance(opt, str):
        optimizer = keras.optimizers.get(opt)
    else:
        if opt.get("class_name") not in ALLOWED_OPTIMIZERS:
            raise RefusedModel(f"optimizer {opt.get('class_name')!r} is not allowed")
        optimizer = keras.saving.deserialize_keras_object(opt, safe_mode=True)
    if type(optimizer).__name__ not in ALLOWED_OPTIMIZERS:
        raise RefusedModel(f"optimizer {type(optimizer).__name__!r} is not allowed")
    loss = cc.get("loss")
    loss_name = loss if isinstance(loss, str) else (loss or {}).get("class_name") if isinstance(loss, dict) else str(loss)
    if loss_name not in ALLOWED_LOSSES:
        raise RefusedModel(f"loss {loss_name!r} is not supported: MNIST labels need (sparse_)categorical_crossentropy")
    loss_obj = loss if isinstance(loss, str) else keras.saving.deserialize_keras_object(loss, safe_mode=True)
    model.compile(optimizer=optimizer, loss=loss_obj, metrics=["accuracy"])
    lr = optimizer.get_config().get("learning_rate")
    lr_text = f"{lr:g}" if isinstance(lr, float) else "schedule"
    return f"{opt_name} (learning rate {lr_text})", loss_name


# --- training --------------------------------------------------------------------------------

def _plan(fits: list[dict], max_epochs: int) -> tuple[list[dict], list[str]]:
    """The fit calls to replay, with epochs capped in total; notes say what was changed."""
    notes, plan, budget = [], [], max_epochs
    for i, fit in enumerate(fits):
        epochs = fit.get("epochs") if isinstance(fit.get("epochs"), int) else 1
        epochs = max(epochs - int(fit.get("initial_epoch") or 0), 0)
        if epochs > budget:
            notes.append(f"fit call {i + 1}: {epochs} epochs capped to {budget} (the assignment allows {max_epochs} in total)")
            epochs = budget
        budget -= epochs
        if epochs:
            plan.append({**fit, "epochs": epochs})
        ignored = [cb["class"] for cb in fit.get("callbacks", []) if cb.get("class") not in ALLOWED_CALLBACKS]
        if ignored:
            notes.append(f"fit call {i + 1}: callbacks not replayed: {', '.join(ignored)}")
        x = fit.get("x") or {}
        if x.get("kind") == "array" and x.get("shape") and x["shape"][0] != 60000:
            notes.append(f"fit call {i + 1} trained on {x['shape'][0]} images; the grader trains on the 60,000 training images")
        if x.get("kind") == "array" and x.get("max", 0) > 1.5:
            notes.append("the notebook trained on unscaled pixels (0-255)")
    return plan, notes


class _WallClock:
    """Stops training at the instructor's wall-time cap (the report says so)."""

    def __init__(self, seconds: float):
        import keras

        deadline = time.monotonic() + seconds
        outer = self

        class StopAtDeadline(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if time.monotonic() > deadline:
                    self.model.stop_training = True
                    outer.hit = True

        self.hit = False
        self.callback = StopAtDeadline()


def _callbacks(fit: dict):
    import keras

    out = []
    for cb in fit.get("callbacks", []):
        kw = {k: v for k, v in cb.items() if k != "class"}
        if cb.get("class") == "EarlyStopping":
            out.append(keras.callbacks.EarlyStopping(**{k: kw[k] for k in ("monitor", "patience", "min_delta", "restore_best_weights") if k in kw}))
        elif cb.get("class") == "ReduceLROnPlateau":
            out.append(keras.callbacks.ReduceLROnPlateau(**{k: kw[k] for k in ("monitor", "patience", "factor", "min_delta", "min_lr") if k in kw}))
    return out


def deterministic() -> bool:
    """Op determinism on TensorFlow (default on; ``CNN_GRADER_DETERMINISTIC=0`` turns it off)."""
    return os.environ.get("CNN_GRADER_DETERMINISTIC", "1") != "0"


def _scales_inside(config: dict) -> bool:
    return any(l.get("class_name") == "Rescaling" for l in config.get("config", {}).get("layers", []))


def _train_once(config, fits, seed, max_epochs, max_seconds, data) -> tuple[float, int, int | None, str, str, list[str]]:
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow" and deterministic():
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    (x_train, y_train), (x_test, y_test) = data
    model = rebuild_model(config)
    plan, notes = _plan(fits, max_epochs)
    if _scales_inside(config) and any((f.get("x") or {}).get("max", 0) > 1.5 for f in plan):
        x_train, x_test = x_train * 255.0, x_test * 255.0  # the model rescales its own input
        notes.append("the model scales its input itself (Rescaling layer), so it gets raw pixel values")
    if not plan:
        raise RefusedModel("the notebook never called model.fit, so there is no training recipe to verify")
    clock = _WallClock(max_seconds)
    epochs_run, batch_size, opt_text, loss_name, compiled_with = 0, None, "", "", object()
    for fit in plan:
        cc = fit.get("compile_config") or config.get("compile_config")
        if cc != compiled_with:
            opt_text, loss_name = _compile(model, cc)
            compiled_with = cc
        labels = y_train
        if loss_name in ("categorical_crossentropy", "CategoricalCrossentropy"):
            labels = keras.utils.to_categorical(y_train, 10)
        batch_size = fit.get("batch_size") if isinstance(fit.get("batch_size"), int) else None
        split = fit.get("validation_split") or 0.0
        monitors_val = any(str(cb.get("monitor", "val_loss")).startswith("val_") for cb in fit.get("callbacks", [])
                           if cb.get("class") in ("EarlyStopping", "ReduceLROnPlateau"))
        if monitors_val and not split:
            split = 0.1
            notes.append("validation-based callbacks monitor the last 10% of the training images (never the test set)")
        history = model.fit(x_train, labels, epochs=fit["epochs"], batch_size=batch_size, shuffle=bool(fit.get("shuffle", True)),
                            validation_split=float(split), callbacks=[clock.callback, *_callbacks(fit)], verbose=0)
        epochs_run += len(history.epoch)
        if clock.hit:
            notes.append(f"training stopped at the {max_seconds:.0f} s wall-time cap")
            break
    probs = np.asarray(model.predict(x_test, batch_size=1000, verbose=0))
    accuracy = float(np.mean(np.argmax(probs, axis=-1) == y_test))
    return accuracy, epochs_run, batch_size or 32, opt_text, loss_name, notes


def _load_data():
    from autograder.data import load_mnist

    (x_train, y_train), (x_test, y_test) = load_mnist()
    scale = lambda x: (x.reshape(-1, 28, 28, 1).astype("float32") / 255.0)  # noqa: E731
    return (scale(x_train), y_train), (scale(x_test), y_test)


# --- cache ----------------------------------------------------------------------------------

def _strip_names(obj):
    """Layer and model names differ between identical submissions; they do not change training."""
    if isinstance(obj, dict):
        return {k: _strip_names(v) for k, v in obj.items() if k not in ("name", "keras_history")}
    if isinstance(obj, list):
        return [_strip_names(v) for v in obj]
    return obj


def cache_key(config: dict, fits: list[dict], seed: int, max_epochs: int, max_seconds: float) -> str:
    from importlib.metadata import version

    import keras

    from autograder.data import DATASET_SHA256

    backend = keras.backend.backend()
    relevant_fits = [{k: f.get(k) for k in ("epochs", "batch_size", "initial_epoch", "validation_split", "shuffle",
                                              "callbacks", "compile_config")} for f in fits]
    payload = {
        "verifier": VERIFIER_VERSION, "config": _strip_names(config), "fits": _strip_names(relevant_fits),
        "seed": seed, "max_epochs": max_epochs, "max_seconds": max_seconds, "data": DATASET_SHA256,
        "keras": keras.__version__, "backend": backend, "backend_version": version(backend if backend != "tensorflow" else "tensorflow"),
        "device": device_description(), "deterministic": deterministic(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> Path:
    from autograder.data import cache_dir

    return cache_dir() / "retrain"


def _read_entry(path: Path) -> dict | None:
    try:
        entry = json.loads(path.read_text())
        body = json.dumps(entry["result"], sort_keys=True)
        if hashlib.sha256(body.encode()).hexdigest() != entry["checksum"]:
            return None
        return entry["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_entry(path: Path, result: dict) -> None:
    body = json.dumps(result, sort_keys=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"checksum": hashlib.sha256(body.encode()).hexdigest(), "result": result}))
    os.replace(tmp, path)


def retrain_slots() -> int:
    """How many retrains may run at once on this machine: one CPU retrain uses every core;
    several small retrains share a GPU.  ``CNN_GRADER_RETRAIN_SLOTS`` overrides."""
    if os.environ.get("CNN_GRADER_RETRAIN_SLOTS"):
        return max(int(os.environ["CNN_GRADER_RETRAIN_SLOTS"]), 1)
    return 4 if device_description().startswith("GPU") else 1


class _Slot:
    """A cross-process semaphore made of lock files: the retraining queue shared by all workers."""

    def __init__(self, folder: Path, slots: int):
        self.folder, self.slots, self.handle = folder, slots, None

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            for i in range(self.slots):
                handle = open(self.folder / f"slot-{i}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.handle = handle
                    return self
                except BlockingIOError:
                    handle.close()
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.handle.close()  # closing releases the lock, also when the process dies


def train_seed_cached(config, fits, seed, max_epochs, max_seconds, cache_dir: Path | None, data_loader=_load_data):
    """One seed's training, through the content-addressed cache (locked, checksummed)."""
    key = cache_key(config, fits, seed, max_epochs, max_seconds)
    if cache_dir is None:
        with _Slot(Path(os.environ.get("TMPDIR", "/tmp")) / "cnn-grader-slots", retrain_slots()):
            return {**_train_result(config, fits, seed, max_epochs, max_seconds, data_loader()), "cache_hit": False}
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry, lock = cache_dir / f"{key}.json", cache_dir / f"{key}.lock"
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)  # a second grader with the same key waits, then reads
        cached = _read_entry(entry)
        if cached is not None:
            return {**cached, "cache_hit": True}
        with _Slot(cache_dir / "slots", retrain_slots()):
            result = _train_result(config, fits, seed, max_epochs, max_seconds, data_loader())
        _write_entry(entry, result)
        return {**result, "cache_hit": False}


def _train_result(config, fits, seed, max_epochs, max_seconds, data) -> dict:
    started = time.monotonic()
    accuracy, epochs, batch_size, opt_text, loss_name, notes = _train_once(config, fits, seed, max_epochs, max_seconds, data)
    return {"accuracy": accuracy, "epochs": epochs, "batch_size": batch_size, "optimizer": opt_text,
            "loss": loss_name, "notes": notes, "seconds": round(time.monotonic() - started, 2)}


def verify(config: dict, fits: list[dict], *, max_epochs: int = 15, max_seconds: float = 1800.0, seeds: int = 1,
           cache_dir: str | os.PathLike | None = "default", seed: int = DEFAULT_SEED) -> RetrainReport:
    """Retrain the submission's recipe from scratch and measure test accuracy (median over seeds)."""
    report = RetrainReport()
    try:
        report.backend = select_backend()
        report.device = device_description()
        cdir = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        runs = []
        for s in range(seed, seed + max(seeds, 1)):
            runs.append(train_seed_cached(config, fits, s, max_epochs, max_seconds, cdir))
            report.seeds.append(s)
        report.accuracies = [r["accuracy"] for r in runs]
        report.accuracy = float(statistics.median(report.accuracies))
        first = runs[0]
        report.epochs, report.batch_size = first["epochs"], first["batch_size"]
        report.optimizer, report.loss, report.notes = first["optimizer"], first["loss"], first["notes"]
        report.seconds = round(sum(r["seconds"] for r in runs if not r["cache_hit"]), 2)
        report.cache_hit = all(r["cache_hit"] for r in runs)
    except RefusedModel as exc:
        report.error = f"The model was not retrained: {exc}."
    return report
