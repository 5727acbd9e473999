"""Retraining verifier: train the submitted recipe from scratch and measure test accuracy.

The accuracy a notebook prints proves nothing (lucky seed, test-set training, loaded weights,
a print statement).  From the extracted model config and the recorded ``fit`` calls:

1. :mod:`autograder.verifier.rebuild` reduces them to a canonical recipe of validated numbers (nothing
   the student produced is deserialized; what cannot be replayed is refused, and what is
   normalised, such as a seed or an array initializer, is listed in the notes); a ``tf.data``
   pipeline is rebuilt on the assignment's data (:mod:`autograder.verifier.pipeline`), and
   validation data that a callback watches is replayed as the assignment's test images;
2. :mod:`autograder.verifier.budget` checks the recipe against the assignment's limits (config size,
   parameters, batch size, steps, operations of every layer, batch memory) before any training, and
   :func:`check_buildable` builds and compiles the whole recipe without data: whatever Keras raises there
   is the submission's error, with Keras's message;
3. a separate process (``python -I``, memory watched, wall time as a safety net only) builds
   the model from the recipe, trains it on the assignment's training images at a fixed seed with
   op determinism, and returns only numbers.  Its first real steps (one warm-up, then up to
   ``TIMED_STEPS``) are timed; a run whose measured projection exceeds ``PROJECTION_SHARE`` of
   ``max_seconds``, or that later overruns its own projection, is stopped and refused as the
   submission's, with the figures; a failure before the first step is the submission's too.  A
   ``grader_error`` is left for the grader's and the host's faults, each with its cause;
4. when the first accuracy lies within ``seed_margin`` of the threshold, more seeds are
   trained, up to ``seeds``, and the median is scored (every accuracy is reported);
5. results are cached by the canonical recipe, the data description, every option and the
   framework versions; entries are authenticated with an HMAC whose key only the grader can
   read, so neither a submission nor another user can forge one.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import secrets
import stat
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autograder import children, settings
from autograder.verifier.budget import Budget, check as check_budget, check_config_size, recipe_cost
from autograder.verifier import pipeline
from autograder.verifier.rebuild import RefusedModel, canonical_recipe, describe_optimizer

VERIFIER_VERSION = 5  # 5: tf.data pipelines, validation_data; 4: the timed projection may refuse (never cached);
# 3: the dataset comes from the spec
PROJECTION_SHARE = 0.75  # a recipe whose measured projection exceeds this share of max_seconds is refused
OVERRUN_FACTOR, OVERRUN_SLACK_S = 3.0, 60.0  # a run past max(3 x its projection, projection + 60 s) overran it
OVERRUN_SHARE = 0.9  # ... or past this share of max_seconds (the grader's safety net comes after)
TIMED_STEPS, TIMING_WALL_S = 3, 20.0  # steps measured after one warm-up step, and the wall bound on measuring
DEFAULT_SEED = 1234
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the grader package (autograder/)


class RetrainFailed(RuntimeError):
    """The grader could not retrain (worker crashed, safety-net time or memory hit): a grader error.
    ``cause`` is one of :data:`autograder.result.GRADER_ERROR_CAUSES`."""

    def __init__(self, message: str, cause: str = "grader_crash"):
        super().__init__(message)
        self.cause = cause


class RecipeFault(Exception):
    """Raised inside a training run: the recipe itself failed or overran (the submission's fault)."""


def keras_message(exc: BaseException, limit: int = 600) -> str:
    """Keras's own message for a recipe's exception, shortened (no traceback, no file paths of the grader)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}"


def host_fault(exc: BaseException) -> bool:
    """Whether an exception from building or training is the host's (memory, resources), not the recipe's."""
    names = {c.__name__ for c in type(exc).__mro__}
    return isinstance(exc, (MemoryError, OSError)) or bool(names & {"ResourceExhaustedError", "InternalError",
                                                                     "UnavailableError"})


@dataclass
class RetrainReport:
    accuracy: float | None = None
    accuracies: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    epochs: int = 0
    batch_size: int | None = None
    steps: int = 0
    optimizer: str = ""
    loss: str = ""
    device: str = ""
    backend: str = ""
    seconds: float = 0.0
    peak_mb: int = 0  # the largest memory (RSS) of a training process, as measured when it trained
    cache_hit: bool = False
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why there is no accuracy (a refused recipe, or the grader_error)
    grader_error: str | None = None  # the grader failed (never scored; the result is a grader_error)
    grader_error_cause: str | None = None  # with grader_error: autograder.result.GRADER_ERROR_CAUSES
    projection: dict | None = None  # the timed projection of the last run: step seconds, steps, projected seconds

    def summary(self) -> str:
        how = "cached result" if self.cache_hit else f"{self.seconds:.0f} s"
        seeds = ""
        if len(self.seeds) > 1:
            seeds = f", median of {len(self.seeds)} seeds ({', '.join(f'{a:.4f}' for a in self.accuracies)})"
        return (f"retrained from scratch: {self.epochs} epochs, batch size {self.batch_size}, {self.optimizer}, "
                f"on {self.device} ({self.backend}), {how}{seeds}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Settings:
    """Everything that decides how a recipe is retrained (all of it is in the cache key).

    ``assignment`` names the installed assignment (:mod:`autograder.registry`) whose dataset is
    trained on; the pipeline fills the rest from its :class:`autograder.spec.TrainingPolicy`."""

    assignment: str
    budget: Budget = Budget()
    max_seconds: float = 1800.0  # per run: a projection over PROJECTION_SHARE of it is refused; hitting it: grader error
    memory_mb: int = 6144  # the training process is killed above this (a grader error)
    seeds: int = 3  # at most this many seeds when the first accuracy is near the threshold
    seed_margin: float = 0.003
    threshold: float = 0.99
    seed: int = DEFAULT_SEED
    data_subset: tuple[int, int] | None = None  # (training images, test images): tests only

    def data(self) -> dict:
        """The dataset's plain description (shape, classes, sizes, pixel scale, hashes)."""
        from autograder import registry

        return registry.get(self.assignment).dataset.describe()

    def key_fields(self) -> dict:
        out = asdict(self)
        out.pop("max_seconds"), out.pop("memory_mb")
        return out


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


def deterministic() -> bool | None:
    """TensorFlow's op determinism: ``CNN_GRADER_DETERMINISTIC=1`` on, ``0`` off, unset: on a GPU only.

    On CPU the kernels these models use already give the same result run after run at a fixed
    seed (``tests/test_retrain.py::test_same_accuracy_with_the_cpu_loaded``), and the switch
    only costs time; GPUs reduce in nondeterministic orders unless it is on."""
    value = os.environ.get("CNN_GRADER_DETERMINISTIC", "").strip()
    return None if value == "" else value != "0"


# --- data ------------------------------------------------------------------------------------

def fingerprint(x) -> str | None:
    """Which pixels of the first three images are non-zero: the same for raw, scaled or reshaped copies.
    (The fit recorder in :mod:`autograder.probe.runtime` computes the same on the notebook's data.)"""
    import numpy as np

    try:
        rows = np.asarray(x[:3], dtype="float32").reshape(3, -1)
    except Exception:
        return None
    return hashlib.sha256(np.packbits(rows > 0).tobytes()).hexdigest()[:16]


def _dataset(assignment: str):
    from autograder import registry

    return registry.get(assignment).dataset


def load_data(assignment: str, subset: tuple[int, int] | None = None, raw: bool = False):
    """The assignment's data (verified by its loader) as float32 rows of shape (n, features), divided by the
    dataset's pixel scale unless ``raw``."""
    data = _dataset(assignment)
    (x_train, y_train), (x_test, y_test) = data.load()
    if subset:
        x_train, y_train, x_test, y_test = x_train[:subset[0]], y_train[:subset[0]], x_test[:subset[1]], y_test[:subset[1]]
    scale = 1.0 if raw else 1 / data.pixel_scale
    prep = lambda x: x.reshape(len(x), -1).astype("float32") * scale  # noqa: E731
    return (prep(x_train), y_train), (prep(x_test), y_test)


def _data_notes(recipe: dict, assignment: str, subset: tuple[int, int] | None = None) -> tuple[bool, list[str]]:
    """Whether to train on raw pixels (as the notebook did), and notes where the replay differs."""
    data = _dataset(assignment)
    notes, fits = [], recipe["fits"]
    (x_train, _), (x_test, _) = data.load()
    train_rows = subset[0] if subset else len(x_train)
    n_train, n_test, top = f"{len(x_train):,}", len(x_test), f"{data.pixel_scale:g}"
    test_print, train_print = fingerprint(x_test), fingerprint(x_train)
    raw = bool(fits[0]["x"].get("raw_pixels"))
    rescales = any(layer["type"] == "Rescaling" for layer in recipe["model"]["layers"])
    for i, fit in enumerate(fits, start=1):
        x = fit["x"]
        if x.get("fingerprint") == test_print or (x.get("rows") == n_test and x.get("fingerprint") != train_print):
            notes.append(f"fit call {i} trained on the test set; the grader trains on the {n_train} training images and "
                         "keeps the test images for measuring")
        elif x["kind"] != "array":
            raise RefusedModel(f"fit call {i} trained on {x.get('what', 'data')}, which the grader cannot read or "
                               f"replay; pass the arrays, model.fit(train_images, train_labels, batch_size=128), or "
                               f"a pipeline of this form: {pipeline.SUPPORTED_FORM}")
        elif x.get("rows") not in (None, train_rows):
            notes.append(f"fit call {i} trained on {x['rows']:,} images; the grader trains on the {train_rows:,} "
                         "training images")
        if bool(x.get("raw_pixels")) != raw:
            notes.append(f"fit call {i} used another pixel scale than fit call 1; the grader uses fit call 1's")
        spec = fit.get("pipeline")
        if spec and spec["endless"] and fit["steps_per_epoch"] > -(-train_rows // spec["batch_size"]):
            raise RefusedModel(f"fit call {i}: steps_per_epoch={fit['steps_per_epoch']} with an endless tf.data "
                               f"pipeline (.repeat()) is more than one pass over the {train_rows:,} training images; "
                               "leave out .repeat() and steps_per_epoch, and choose the number of epochs")
        val = fit.get("validation")
        if val is not None:  # a callback watches it: replayed only as the test set, scaled as the training images
            if val["x"].get("fingerprint") != test_print:
                raise RefusedModel(f"fit call {i}: {val['help']}")
            seen = _affine(bool(val["x"].get("raw_pixels")), val["transform"], data.pixel_scale)
            if not all(math.isclose(u, v, rel_tol=1e-5, abs_tol=1e-7) for u, v in zip(
                    seen, _affine(raw, pipeline.image_transform(fit["pipeline"]), data.pixel_scale))):
                raise RefusedModel(f"fit call {i}: the validation images are scaled differently from the training "
                                   f"images; {val['help']}")
    transform = pipeline.image_transform(fits[0]["pipeline"])
    if transform:
        notes.append("the notebook's tf.data pipeline scales the images (" + ", then ".join(
            f"x * {a:.6g}" + (f" + {b:.6g}" if b else "") for a, b in transform) + "); the grader replays it and "
            "measures on test images scaled the same way")
    elif raw:
        notes.append(f"the notebook trained on unscaled pixels (0-{top}); the grader trains and tests on unscaled "
                     "pixels too" + (" (the model's Rescaling layer scales them)" if rescales else
                                     f" (dividing by {top}, or a Rescaling(1/{top}) layer, usually trains better)"))
    return raw, notes


def _affine(raw: bool, transform: list[list[float]], pixel_scale: float) -> tuple[float, float]:
    """What the model sees of a raw pixel value p, as ``a * p + b``: the source scale, then the pipeline's maps."""
    a, b = (1.0 if raw else 1.0 / pixel_scale), 0.0
    for scale, offset in transform:
        a, b = a * scale, b * scale + offset
    return a, b


# --- one training run (in its own process) ---------------------------------------------------

def prepare_run(job: dict):
    """Everything before the model (imports, the device's settings, the data); returns the function
    that builds the canonical model at ``seed``, trains it and returns numbers only.  A retrain process
    does this while it waits for a retraining slot, so the slot is spent on training alone; it holds
    no device memory while it waits."""
    import keras
    import numpy as np

    from autograder.verifier.rebuild import build_loss, build_model, build_optimizer

    backend = select_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        wanted = job.get("deterministic")
        if wanted or (wanted is None and tf.config.list_physical_devices("GPU")):
            tf.config.experimental.enable_op_determinism()
    subset = tuple(job["subset"]) if job.get("subset") else None
    try:
        (x_train, y_train), (x_test, y_test) = load_data(job["assignment"], subset, raw=job["raw"])
    except Exception as exc:  # noqa: BLE001 - the grader's data, not the submission's
        missing = {"grader_error": f"the assignment's data could not be loaded: {type(exc).__name__}: {exc}",
                   "cause": "dataset_missing"}
        return lambda: missing
    shape = tuple(job["model"]["input_shape"])
    x_train, x_test = x_train.reshape((-1, *shape)), x_test.reshape((-1, *shape))
    # the test images as the model sees them: scaled by the notebook's tf.data map, if any (the same in every fit)
    x_test_seen = pipeline.transform_images(x_test, pipeline.image_transform(job["plan"][0].get("pipeline")))

    def train() -> dict:
        started = time.monotonic()
        keras.utils.set_random_seed(job["seed"])
        clock = _clock(keras, {**job, "steps": run_steps(job["plan"], len(x_train))})
        try:
            return _train_recipe(keras, np, job, clock, started, (x_train, y_train, x_test_seen, y_test),
                                 (build_model, build_optimizer, build_loss))
        except RecipeFault as exc:  # the recipe failed to build, failed its first step, or overran its projection
            return {"refused": str(exc), "projection": clock.projection}
        except Exception as exc:
            if host_fault(exc):
                return {"grader_error": f"the host ran short while training: {keras_message(exc)}",
                        "cause": "host_limit"}
            # Keras raised while training a recipe the rebuild accepted (e.g. a callback that sets the learning
            # rate of a schedule at the end of an epoch): the recipe's own fault, before or after its first step
            when = ("" if clock.steps_done == 0 else
                    f" (it stopped after {clock.steps_done:,} training step{'s' if clock.steps_done > 1 else ''})")
            return {"refused": f"Keras could not train the recipe{when}: {keras_message(exc)}",
                    "projection": clock.projection}

    return train


def _recipe(what: str, make):
    """``make()``, with any exception but the host's turned into the submission's fault with Keras's message."""
    try:
        return make()
    except Exception as exc:
        if host_fault(exc):
            raise
        raise RecipeFault(f"Keras could not build the recipe's {what}: {keras_message(exc)}") from None


def _train_recipe(keras, np, job: dict, clock, started: float, data, builders) -> dict:
    x_train, y_train, x_test, y_test = data
    build_model, build_optimizer, build_loss = builders
    # not before the slot: on a GPU its weights would take device memory while it waits
    model = _recipe("model", lambda: build_model(job["model"]))
    epochs_run, compiled_with = 0, None
    for fit in job["plan"]:
        settings = (fit["optimizer"], fit["loss"])
        if settings != compiled_with:
            optimizer = _recipe("optimizer", lambda: build_optimizer(fit["optimizer"]))
            loss = _recipe("loss", lambda: build_loss(fit["loss"]))
            _recipe("compiled model", lambda: model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"]))
            compiled_with = settings
        labels = (keras.utils.to_categorical(y_train, job["num_classes"])
                  if fit["loss"]["name"] == "categorical_crossentropy" else y_train)
        callbacks = [*_recipe("callbacks", lambda: build_callbacks(fit)), clock]  # the clock times and stops
        full_epoch = -(-int(len(x_train) * (1 - fit["validation_split"])) // fit["batch_size"])
        steps = fit["steps_per_epoch"] if fit["steps_per_epoch"] < full_epoch else None
        validation = None
        if fit.get("validation") is not None:  # the test images as the model sees them (checked before training)
            validation = (x_test, keras.utils.to_categorical(y_test, job["num_classes"])
                          if fit["loss"]["name"] == "categorical_crossentropy" else y_test)
        if fit.get("pipeline"):  # the notebook's tf.data pipeline, rebuilt on the assignment's data
            spec = fit["pipeline"]
            steps = fit["steps_per_epoch"] if spec["endless"] or spec["take_batches"] is not None or steps else None
            history = model.fit(pipeline.build_dataset(spec, x_train, labels), epochs=fit["epochs"],
                                steps_per_epoch=steps, callbacks=callbacks, validation_data=validation, verbose=0)
        else:
            history = model.fit(x_train, labels, epochs=fit["epochs"], batch_size=fit["batch_size"],
                                shuffle=fit["shuffle"], validation_split=fit["validation_split"],
                                validation_data=validation, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
        epochs_run += len(history.epoch)
    probs = np.asarray(model.predict(x_test, batch_size=1000, verbose=0, callbacks=[clock]))
    accuracy = float(np.mean(np.argmax(probs, axis=-1) == y_test))
    return {"accuracy": accuracy, "epochs": epochs_run, "seconds": round(time.monotonic() - started, 2),
            "projection": clock.projection}


def run_steps(plan: list[dict], rows: int) -> int:
    """The optimizer steps this run trains on ``rows`` training images (what ``model.fit`` will do)."""
    total = 0
    for fit in plan:
        full_epoch = -(-int(rows * (1 - fit["validation_split"])) // fit["batch_size"])
        total += fit["epochs"] * min(fit["steps_per_epoch"] or full_epoch, full_epoch)
    return total


def build_callbacks(fit: dict) -> list:
    import keras

    return [getattr(keras.callbacks, cb["class"])(**{k: v for k, v in cb.items() if k != "class"})
            for cb in fit["callbacks"]]


LOADED_SHARE = 0.1  # other processes using more than this share of the machine's CPU: the wall time is inflated


def _snapshot() -> tuple[float, float, float, float]:
    """(wall, this process's CPU seconds, the machine's busy and total CPU seconds from /proc/stat)."""
    busy = total = 0.0
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
        total, busy = sum(values) / hz, (sum(values) - values[3] - values[4]) / hz
    except (OSError, ValueError, IndexError):
        pass
    return time.monotonic(), time.process_time(), busy, total


def fair_seconds(start: tuple, end: tuple, threads: int) -> float:
    """What the span from ``start`` to ``end`` (:func:`_snapshot`) would have taken with the machine to itself.

    Idle machine: the wall time.  Loaded (other processes used more than ``LOADED_SHARE`` of its CPU): the wall
    time less the share the others took, kept between this process's CPU time spread over its threads (a
    lower bound) and the smaller of its wall and CPU times; so a classmate's load never makes a recipe look
    slower than it is (it may make it look faster: the safety net stays the backstop)."""
    wall, cpu = end[0] - start[0], end[1] - start[1]
    busy, total = end[2] - start[2], end[3] - start[3]
    if total <= 0 or wall <= 0:
        return min(wall, cpu) if cpu > 0 else wall
    others = max(busy - cpu, 0.0) / total
    if others < LOADED_SHARE:
        return wall
    low, high = cpu / max(threads, 1), min(wall, cpu)
    return min(max(wall * (1 - others), low), max(high, low))


def _clock(keras, job: dict):
    """A callback that times the first real training steps (one warm-up step, then up to ``TIMED_STEPS``
    within ``TIMING_WALL_S``), projects the whole run from them and refuses it (:class:`RecipeFault`) when the
    projection exceeds ``job["allowed_seconds"]``; later it stops a run that overruns its own projection.

    A step's cost is :func:`fair_seconds`: its wall time on an idle machine, less what other processes took on a
    loaded one, so a classmate's load does not refuse a recipe.  Overruns are checked at most once a second."""
    total, allowed = int(job.get("steps") or 0), job.get("allowed_seconds")
    max_seconds = float(job.get("max_seconds") or 0)
    threads = retrain_threads() or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps_done, self.measured, self.projection = 0, [], None
            self.begun = _snapshot()
            self.step_start = self.begun
            self.measuring_since = None
            self.checked = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            if self.projection is None:
                self.step_start = _snapshot()

        def on_train_batch_end(self, batch, logs=None):
            if self.projection is None:  # wait for the step itself (a GPU runs ahead of Python)
                for value in (logs or {}).values():
                    try:
                        float(value)
                    except (TypeError, ValueError):
                        pass
            self.steps_done += 1
            if self.steps_done == 1:  # the warm-up step: tracing and first allocations
                self.measuring_since = time.monotonic()
            elif self.projection is None:
                self.measured.append(fair_seconds(self.step_start, _snapshot(), threads))
                if len(self.measured) >= TIMED_STEPS or time.monotonic() - self.measuring_since > TIMING_WALL_S:
                    self._project()
            self._check_overrun()

        def on_test_batch_end(self, batch, logs=None):
            self._check_overrun()

        def on_predict_batch_end(self, batch, logs=None):
            self._check_overrun()

        def _project(self):
            step = statistics.median(self.measured)
            projected = step * max(total, self.steps_done)
            self.projection = {"step_seconds": round(step, 4), "steps": total, "measured_steps": len(self.measured),
                               "projected_seconds": round(projected, 1), "allowed_seconds": allowed}
            if allowed and projected > allowed:
                raise RecipeFault(
                    f"training would take about {projected:,.0f} s: {total:,} steps at {step * 1000:,.0f} ms per step "
                    f"(measured on {len(self.measured)} real training steps after a warm-up step); the assignment "
                    f"allows {allowed:,.0f} s per training run: use fewer epochs, a larger batch size, smaller pooling "
                    "windows or a smaller model")

        def _check_overrun(self):
            if self.projection is None or not max_seconds or time.monotonic() - self.checked < 1.0:
                return
            self.checked = time.monotonic()
            projected = self.projection["projected_seconds"]
            limit = min(max(OVERRUN_FACTOR * projected, projected + OVERRUN_SLACK_S), OVERRUN_SHARE * max_seconds)
            used = fair_seconds(self.begun, _snapshot(), threads)
            if used > limit:
                raise RecipeFault(
                    f"your recipe took longer than its own measured estimate: {used:,.0f} s after {self.steps_done:,} of "
                    f"{total:,} steps, against a projection of {projected:,.0f} s "
                    f"({self.projection['step_seconds'] * 1000:,.0f} ms per step); the grader stops a run at "
                    f"{limit:,.0f} s")

    return Clock()


def train_run(job: dict) -> dict:
    """Build the canonical model, train it at ``seed``, return numbers only (``seconds``: the training
    and the measuring, not the start-up)."""
    return prepare_run(job)()


GO = "go"  # the line that tells a prepared retrain process its slot is free


def worker_main() -> None:
    """A retrain process: reads its job (one line), prepares, waits for the go line, trains."""
    train = prepare_run(json.loads(sys.stdin.readline()))
    if sys.stdin.readline().strip() != GO:
        sys.exit(3)  # the grader gave up on it before its slot came
    out = train()
    sys.stdout.write("\n@@RETRAIN@@" + json.dumps(out) + "\n")


ENV_RETRAIN_THREADS = "CNN_GRADER_RETRAIN_THREADS"
THREAD_VARIABLES = settings.THREAD_VARIABLES  # what TensorFlow and BLAS read at start-up


def retrain_threads() -> int:
    """CPU threads one retrain may use (``CNN_GRADER_RETRAIN_THREADS``; 0 or unset: every core).  Set it
    where other work shares the cores (two graders on one machine, a parallel test run): TensorFlow's
    thread pools spin while they wait, and two of them on the same cores stall each other many times over."""
    try:
        return max(int(os.environ.get(ENV_RETRAIN_THREADS, "0")), 0)
    except ValueError:
        return 0


def _die_with(grader: int):
    """For the retrain process, before it starts: if the grader (pid ``grader``) dies, even by SIGKILL,
    so does it, and no training goes on unwatched, without its limits or its slot."""

    def arm() -> None:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != grader:  # the grader died before the line above
            os._exit(1)

    return arm


def _run_isolated(job: dict, max_seconds: float, memory_mb: int, slot) -> dict:
    """:func:`train_run` in a fresh ``python -I`` process; only its JSON numbers come back.  The process
    starts, imports and loads its data (:func:`prepare_run`) while this waits for ``slot`` (the
    retraining queue), and builds and trains its model once it has it: a slot is not spent on another
    retrain's start-up.  The ``max_seconds`` safety limit counts from the slot."""
    bootstrap = (f"import sys; sys.path.insert(0, {str(PACKAGE_DIR.parent)!r}); "
                 "from autograder.verifier.retrain import worker_main; worker_main()")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "KERAS_BACKEND", "CUDA_VISIBLE_DEVICES",
                                                         "CNN_GRADER_CACHE", "CNN_GRADER_MNIST", "TMPDIR", "LANG")}
    env.update(settings.QUIET_LOGGING_ENV)  # TensorFlow's and absl's start-up lines
    if retrain_threads():
        env.update({name: str(retrain_threads()) for name in THREAD_VARIABLES})
    from autograder.metering import cgroup

    try:  # kernel-metered: memory (kernel memory included) and pids; no CPU quota, a retrain has the cores
        group = cgroup.create("retrain", memory_bytes=cgroup.memory_ceiling(memory_mb), cpu_cores=None)
    except OSError:
        group = None
    arm = _die_with(os.getpid())

    def start() -> None:
        if group is not None:
            group.joiner()()
        arm()

    try:
        proc = children.popen([sys.executable, "-I", "-c", bootstrap], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, preexec_fn=start)
    except BaseException:
        if group is not None:
            group.remove()
        raise
    over_memory = threading.Event()
    peak = [0]

    def watch():
        import psutil

        try:
            p = psutil.Process(proc.pid)
            while proc.poll() is None:
                rss = sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
                if group is not None:
                    rss = max(rss, group.memory_bytes())
                peak[0] = max(peak[0], rss)
                if rss > memory_mb * 2**20 or (group is not None and group.oom_kills()):
                    over_memory.set()
                    proc.kill()
                    return
                time.sleep(0.25)
        except psutil.Error:
            pass

    threading.Thread(target=watch, daemon=True).start()
    try:
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died starting: its exit and stderr are reported below
        with slot:
            stdout, stderr = proc.communicate(GO + "\n", timeout=max_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RetrainFailed(f"retraining did not finish within the grader's {max_seconds:.0f} s safety limit "
                            "(the recipe is within the assignment's budget and its measured projection, so the machine "
                            "is too slow or overloaded)", "timeout_infrastructure")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        children.forget(proc)
        if group is not None:
            oom = group.oom_kills()
            group.remove()  # kills by group: nothing of the retrain outlives it
            if oom:
                over_memory.set()
    if over_memory.is_set():
        raise RetrainFailed(f"retraining used more than the grader's {memory_mb} MB memory limit", "host_limit")
    marker = stdout.rfind("\n@@RETRAIN@@")
    if proc.returncode != 0 or marker < 0:
        print(f"retraining process failed (exit {proc.returncode}):\n{stderr[-5000:]}", file=sys.stderr)  # the log
        last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
        raise RetrainFailed(f"the retraining process failed (exit {proc.returncode}): {last[:300]} "
                            "(the traceback is in the grader's log)")
    out = json.loads(stdout[marker + len("\n@@RETRAIN@@"):])
    if out.get("grader_error"):
        raise RetrainFailed(str(out["grader_error"]), str(out.get("cause") or "grader_crash"))
    if out.get("refused"):
        return out  # the recipe's own fault: the verifier reports it
    if not isinstance(out.get("accuracy"), float):
        raise RetrainFailed("the retraining process returned no accuracy")
    out["peak_mb"] = round(peak[0] / 2**20)  # sampled every 0.25 s: what a memory cap must leave room for
    return out


# --- cache (authenticated) -------------------------------------------------------------------

def default_cache_dir() -> Path:
    from autograder.data import cache_dir

    return cache_dir() / "retrain"


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _hmac_key(cache: Path) -> bytes:
    """The cache's signing key: 32 random bytes, readable only by the grader's user (0600 in 0700)."""
    key_file = cache / "hmac.key"
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    except FileExistsError:
        pass
    st = key_file.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RetrainFailed(f"the retraining cache key {key_file} must belong to the grader and be private (0600)")
    return key_file.read_bytes()


def cache_key(recipe: dict, raw: bool, settings: Settings, seed: int) -> str:
    from importlib.metadata import version

    import keras

    backend = keras.backend.backend()
    payload = {
        "verifier": VERIFIER_VERSION, "recipe": recipe, "raw_pixels": raw, "settings": settings.key_fields(),
        "seed": seed, "data": settings.data(), "keras": keras.__version__, "backend": backend,
        "backend_version": version(backend), "device": device_description(), "deterministic": deterministic(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_entry(path: Path, key: bytes) -> dict | None:
    try:
        entry = json.loads(path.read_text())
        body = json.dumps(entry["result"], sort_keys=True).encode()
        if not hmac.compare_digest(hmac.new(key, body, "sha256").hexdigest(), entry["hmac"]):
            return None
        return entry["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_entry(path: Path, result: dict, key: bytes) -> None:
    body = json.dumps(result, sort_keys=True).encode()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"hmac": hmac.new(key, body, "sha256").hexdigest(), "result": result}))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def retrain_slots() -> int:
    """How many retrains may run at once on this machine: one CPU retrain uses every core;
    several small retrains share a GPU.  ``CNN_GRADER_RETRAIN_SLOTS`` overrides."""
    if os.environ.get("CNN_GRADER_RETRAIN_SLOTS"):
        return max(int(os.environ["CNN_GRADER_RETRAIN_SLOTS"]), 1)
    return 4 if device_description().startswith("GPU") else 1


class _Slot:
    """A cross-process semaphore made of lock files: the retraining queue shared by all workers.
    Waiting here never counts against a submission: the training process starts once a slot is free."""

    def __init__(self, folder: Path, slots: int):
        self.folder, self.slots, self.handle = folder, slots, None

    def __enter__(self):
        folder = _owned_private_dir(self.folder)
        while True:
            for i in range(self.slots):
                dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:  # never follows a link planted as a lock file
                    fd = os.open(f"slot-{i}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                 dir_fd=dfd)
                finally:
                    os.close(dfd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.handle = fd
                    return self
                except BlockingIOError:
                    os.close(fd)
            time.sleep(0.2)

    def __exit__(self, *exc):
        os.close(self.handle)  # closing releases the lock, also when the process dies


def _owned_private_dir(folder: Path) -> Path:
    """``folder``, created 0700 if missing, and checked: a real folder (no link), owned by this user,
    with no group or other bits; so no other user can plant files or links in it."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        raise RetrainFailed(f"cannot create the retraining lock folder {folder}: {exc}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RetrainFailed(f"{folder} must be a folder of this user's own with mode 0700 (it holds the retraining "
                            "locks); remove it or fix its owner and mode")
    return folder


def default_slot_dir() -> Path:
    """Where the retraining queue lives without a cache: a root grader's is root-only, beside the jail's
    uid leases; any other grader's is in its own cache folder (never a world-writable TMPDIR)."""
    if os.geteuid() == 0:
        return Path("/run/cnn-grader-retrain-slots")
    from autograder.data import cache_dir

    return cache_dir() / "retrain-slots"


def _train(job: dict, settings: Settings, isolated: bool, slots: Path) -> dict:
    slot = _Slot(slots, retrain_slots())
    if isolated:
        return _run_isolated(job, settings.max_seconds, settings.memory_mb, slot)
    with slot:
        return train_run(job)


def train_seed_cached(job: dict, recipe: dict, settings: Settings, cache: Path | None, isolated: bool = True) -> dict:
    """One seed's training, through the authenticated cache (locked: parallel graders train once)."""
    if cache is None:
        result = _train(job, settings, isolated, default_slot_dir())
        if result.get("grader_error"):
            raise RetrainFailed(str(result["grader_error"]), str(result.get("cause") or "grader_crash"))
        return {**result, "cache_hit": False}
    _private_dir(cache)
    secret = _hmac_key(cache)
    key = cache_key(recipe, job["raw"], settings, job["seed"])
    entry, lock = cache / f"{key}.json", cache / f"{key}.lock"
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)  # a second grader with the same key waits, then reads
        cached = _read_entry(entry, secret)
        if cached is not None:
            return {**cached, "cache_hit": True}
        result = _train(job, settings, isolated, cache / "slots")
        if result.get("grader_error"):  # (not isolated: the run says so itself)
            raise RetrainFailed(str(result["grader_error"]), str(result.get("cause") or "grader_crash"))
        if not result.get("refused"):  # a refusal from measured time is not cached: it depends on the machine
            _write_entry(entry, result, secret)
        return {**result, "cache_hit": False}


# --- the verifier ----------------------------------------------------------------------------

def prepare(config, fits, settings: Settings):
    """Canonical recipe, the plan to train, its cost and notes; raises RefusedModel before any training."""
    text = config if isinstance(config, str) else json.dumps(config, default=str)
    check_config_size(len(text) + len(json.dumps(fits, default=str)), settings.budget)
    data = settings.data()
    recipe, notes = canonical_recipe(json.loads(text) if isinstance(config, str) else config, fits, data["input_shape"])
    cost, plan, cap_notes = recipe_cost(recipe, settings.budget, data)
    check_budget(cost, recipe, settings.budget, settings.seeds)
    check_buildable(recipe["model"], plan)
    return recipe, plan, cost, notes + cap_notes


def check_buildable(model: dict, plan: list[dict]) -> None:
    """Build and compile the whole recipe without data, on the CPU: the model, every fit's optimizer (with its
    schedule, its slots built for the model's weights), loss, metrics and callbacks.  Whatever Keras raises
    here is the submission's (:class:`RefusedModel`, with Keras's message); a fault of the host is not."""
    import keras

    from autograder.verifier.rebuild import build_loss, build_model, build_optimizer

    def step(what: str, make):
        try:
            return make()
        except Exception as exc:
            if host_fault(exc):
                raise RetrainFailed(f"the host ran short while building the recipe: {keras_message(exc)}",
                                    "host_limit") from None
            raise RefusedModel(f"Keras could not build the recipe's {what}: {keras_message(exc)}") from None

    with keras.device("cpu"):
        built = step("model", lambda: build_model(model))
        for fit in plan:
            optimizer = step("optimizer", lambda: build_optimizer(fit["optimizer"]))
            step("optimizer", lambda: optimizer.build(built.trainable_variables))
            loss = step("loss", lambda: build_loss(fit["loss"]))
            step("compiled model", lambda: built.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"]))
            step("callbacks", lambda: build_callbacks(fit))


def verify(config, fits, settings: Settings, *, cache_dir: str | os.PathLike | None = "default",
           isolated: bool = True) -> RetrainReport:
    """Retrain the submission's recipe from scratch and measure test accuracy (seed rule, cache)."""
    report = RetrainReport()
    try:
        recipe, plan, cost, notes = prepare(config, fits, settings)
    except RefusedModel as exc:
        report.error = f"The model was not retrained: {exc}."
        return report
    except RetrainFailed as exc:
        report.grader_error, report.grader_error_cause = str(exc), exc.cause
        report.error = f"The grader could not retrain the model (not your fault): {exc}."
        return report
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        report.error = f"The model was not retrained: its description could not be read ({type(exc).__name__})."
        return report
    try:
        raw, data_notes = _data_notes(recipe, settings.assignment, settings.data_subset)
    except RefusedModel as exc:
        report.error = f"The model was not retrained: {exc}."
        return report
    report.notes = notes + data_notes
    report.steps, report.batch_size = cost.steps, plan[0]["batch_size"]
    report.optimizer, report.loss = describe_optimizer(plan[0]["optimizer"]), plan[0]["loss"]["name"]
    try:
        report.backend = select_backend()
        report.device = device_description()
        cache = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        planned = {**recipe, "fits": plan}
        runs = []
        for seed in range(settings.seed, settings.seed + max(settings.seeds, 1)):
            job = {"assignment": settings.assignment, "num_classes": settings.data()["num_classes"],
                   "model": recipe["model"], "plan": plan, "seed": seed, "raw": raw,
                   "subset": list(settings.data_subset) if settings.data_subset else None,
                   "deterministic": deterministic(), "steps": cost.steps, "max_seconds": settings.max_seconds,
                   "allowed_seconds": round(PROJECTION_SHARE * settings.max_seconds, 1)}
            run = train_seed_cached(job, planned, settings, cache, isolated)
            report.projection = run.get("projection") or report.projection
            if run.get("refused"):  # failed to build, failed its first step, or too slow as measured: the recipe's
                report.error = f"The model was not retrained: {run['refused']}."
                return report
            runs.append(run)
            report.seeds.append(seed)
            if abs(runs[0]["accuracy"] - settings.threshold) >= settings.seed_margin:
                break  # clearly above or below: one seed decides
    except RetrainFailed as exc:  # error too, so every page that shows error shows why
        report.grader_error, report.grader_error_cause = str(exc), exc.cause
        report.error = f"The grader could not retrain the model (not your fault): {exc}."
        return report
    report.accuracies = [r["accuracy"] for r in runs]
    report.accuracy = float(statistics.median(report.accuracies))
    report.epochs = runs[0]["epochs"]
    report.seconds = round(sum(r["seconds"] for r in runs if not r["cache_hit"]), 2)
    report.cache_hit = all(r["cache_hit"] for r in runs)
    report.peak_mb = max(int(r.get("peak_mb") or 0) for r in runs)
    if len(runs) > 1:
        report.notes.append(f"the first accuracy, {report.accuracies[0]:.4f}, was within {settings.seed_margin} of the "
                            f"threshold {settings.threshold}, so {len(runs)} seeds were trained and the median counts")
    return report
