"""One training run, as the retraining worker process runs it: build the canonical model, train it on the
assignment's data at a fixed seed, time its steps, return numbers only.

Its first real steps (one warm-up, then up to ``TIMED_STEPS``) are timed; a run whose measured projection
exceeds the allowance, or that later overruns its own projection, is stopped and refused as the submission's
(a :class:`autograder.faults.FaultError` of cause ``recipe_too_slow``), with the figures; whatever Keras raises is
the recipe's too (``recipe_refused``), unless the host ran short (:func:`host_fault`).  A run's outcome crosses
back to the grader as numbers, or as a fault (``{"fault": Fault.to_dict()}``).  The process itself is started, limited and watched by :mod:`autograder.verifier.worker`.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time

from autograder import settings
from autograder.faults import Fault, FaultError
from autograder.metering import calibration
from autograder.verifier import pipeline

OVERRUN_FACTOR, OVERRUN_SLACK_S = 3.0, 60.0  # a run past max(3 x its projection, projection + 60 s) overran it
OVERRUN_SHARE = 0.9  # ... or past this share of max_seconds (the grader's safety net comes after)
TIMED_STEPS, TIMING_WALL_S = 3, 20.0  # steps measured after one warm-up step, and the wall bound on measuring


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
    return settings.current().deterministic


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
        missing = Fault("dataset_missing", f"the assignment's data could not be loaded: {type(exc).__name__}: {exc}")
        return lambda: {"fault": missing.to_dict()}
    shape = tuple(job["model"]["input_shape"])
    x_train, x_test = x_train.reshape((-1, *shape)), x_test.reshape((-1, *shape))
    # the test images as the model sees them: scaled by the notebook's tf.data map, if any (the same in every fit)
    x_test_seen = pipeline.transform_images(x_test, pipeline.image_transform(job["plan"][0].get("pipeline")))

    def train() -> dict:
        started = time.monotonic()
        keras.utils.set_random_seed(job["seed"])
        clock = _clock(keras, job, len(x_train), len(x_test))
        try:
            return _train_recipe(keras, np, job, clock, started, (x_train, y_train, x_test_seen, y_test),
                                 (build_model, build_optimizer, build_loss))
        except FaultError as exc:  # the recipe failed to build, failed its first step, or overran its projection
            return {"fault": exc.fault.to_dict(), "projection": clock.projection}
        except Exception as exc:
            if host_fault(exc):
                return {"fault": Fault("host_limit", f"the host ran short while training: {keras_message(exc)}").to_dict()}
            # Keras raised while training a recipe the rebuild accepted (e.g. a callback that sets the learning
            # rate of a schedule at the end of an epoch): the recipe's own fault, before or after its first step
            when = ("" if clock.steps_done == 0 else
                    f" (it stopped after {clock.steps_done:,} training step{'s' if clock.steps_done > 1 else ''})")
            return {"fault": Fault("recipe_refused", f"Keras could not train the recipe{when}: {keras_message(exc)}"
                                   ).to_dict(), "projection": clock.projection}

    return train


def _recipe(what: str, make):
    """``make()``, with any exception but the host's turned into the submission's fault with Keras's message."""
    try:
        return make()
    except Exception as exc:
        if host_fault(exc):
            raise
        raise FaultError.of("recipe_refused", f"Keras could not build the recipe's {what}: {keras_message(exc)}") from None


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
                                steps_per_epoch=steps, callbacks=callbacks, validation_data=validation,
                                validation_batch_size=fit["batch_size"], verbose=0)
        else:
            history = model.fit(x_train, labels, epochs=fit["epochs"], batch_size=fit["batch_size"],
                                shuffle=fit["shuffle"], validation_split=fit["validation_split"],
                                validation_data=validation, validation_batch_size=fit["batch_size"],
                                steps_per_epoch=steps, callbacks=callbacks, verbose=0)
        epochs_run += len(history.epoch)
    # every batch the worker evaluates or predicts with is one the budget checked (its memory, at training size)
    probs = np.asarray(model.predict(x_test, batch_size=evaluation_batch(job["plan"]), verbose=0, callbacks=[clock]))
    accuracy = float(np.mean(np.argmax(probs, axis=-1) == y_test))
    return {"accuracy": accuracy, "epochs": epochs_run, "seconds": round(time.monotonic() - started, 2),
            "projection": clock.projection}


def fit_steps(plan: list[dict], rows: int) -> list[int]:
    """The optimizer steps each fit call trains on ``rows`` training images (what ``model.fit`` will do)."""
    steps = []
    for fit in plan:
        full_epoch = -(-int(rows * (1 - fit["validation_split"])) // fit["batch_size"])
        steps.append(fit["epochs"] * min(fit["steps_per_epoch"] or full_epoch, full_epoch))
    return steps


def run_steps(plan: list[dict], rows: int) -> int:
    """The optimizer steps this run trains on ``rows`` training images."""
    return sum(fit_steps(plan, rows))


def evaluation_batch(plan: list[dict]) -> int:
    """The batch size the worker predicts with: the largest the recipe trains with, whose memory the budget
    checked (forward and backward; a prediction needs the forward pass only)."""
    return max(fit["batch_size"] for fit in plan)


def overrun_limit(projected: float, max_seconds: float) -> float:
    """When a run with this projection has overrun it: past max(3 x its projection, projection + 60 s), and at
    most ``OVERRUN_SHARE`` of ``max_seconds`` (the grader's safety net comes after)."""
    return min(max(OVERRUN_FACTOR * projected, projected + OVERRUN_SLACK_S), OVERRUN_SHARE * max_seconds)


def build_callbacks(fit: dict) -> list:
    import keras

    return [getattr(keras.callbacks, cb["class"])(**{k: v for k, v in cb.items() if k != "class"})
            for cb in fit["callbacks"]]


def _progress(fd: int | None):
    """What the clock tells the worker's parent (:mod:`autograder.verifier.worker`): each new deadline, which the
    parent enforces by a timer, also during a step that never ends.  In-process (tests): nothing."""
    if fd is None:
        return lambda **fields: None
    stream = os.fdopen(fd, "w", buffering=1)

    def send(**fields) -> None:
        try:
            stream.write(json.dumps(fields) + "\n")
        except (OSError, ValueError):
            pass

    return send


def _clock(keras, job: dict, rows: int, test_rows: int):
    """A callback that times every fit call's first real steps (one warm-up step, then up to ``TIMED_STEPS``
    within ``TIMING_WALL_S``; a fit too short for that: what it has), projects the whole run from them (what is
    done, the rest of this fit, the later fits at the same time per image, and the evaluations and the prediction
    at a third of that) and refuses it (``recipe_too_slow``) when the projection exceeds ``job["allowed_seconds"]``
    on this host running normally; later it stops a run that overruns its own projection (:func:`overrun_limit`),
    checked at batch ends, and sends each deadline to the parent, whose timer stops a step that never ends.

    Steps are timed in wall time; a limit reached is the recipe's unless the host is measurably slower than its
    calibration (:mod:`autograder.metering.calibration`), whose slowdown then comes off the measured time."""
    plan = job["plan"]
    per_fit, batches = fit_steps(plan, rows), [fit["batch_size"] for fit in plan]
    total = sum(per_fit)
    evaluated = [fit["epochs"] * (test_rows if fit.get("validation") is not None else int(rows * fit["validation_split"]))
                 for fit in plan]
    allowed, max_seconds = job.get("allowed_seconds"), float(job.get("max_seconds") or 0)
    threads = retrain_threads() or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    send = _progress(job.get("progress_fd"))

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps_done, self.fit, self.projection = 0, -1, None
            self.begun = time.monotonic()
            self.step_start = self.begun
            self.checked = 0.0
            send(deadline=self.begun + (allowed or max_seconds or float("inf")))  # training starts: the allowance

        def on_train_begin(self, logs=None):  # each fit call is timed on its own
            self.fit += 1
            self.fit_done, self.measured, self.warm_up, self.measuring_since, self.timed = 0, [], None, None, False

        def on_train_batch_begin(self, batch, logs=None):
            if not self.timed:
                self.step_start = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            if not self.timed:  # wait for the step itself (a GPU runs ahead of Python)
                for value in (logs or {}).values():
                    try:
                        float(value)
                    except (TypeError, ValueError):
                        pass
            now = time.monotonic()
            self.steps_done += 1
            self.fit_done += 1
            if self.fit_done == 1:  # the warm-up step: tracing and first allocations
                self.warm_up, self.measuring_since = now - self.step_start, now
            elif not self.timed:
                self.measured.append(now - self.step_start)
                if len(self.measured) >= TIMED_STEPS or now - self.measuring_since > TIMING_WALL_S:
                    self._project()
            self._check_overrun()

        def on_train_end(self, logs=None):
            if not self.timed and self.fit_done:  # a fit too short to time fully: what it has
                self._project()

        def on_test_batch_end(self, batch, logs=None):
            self._check_overrun()

        def on_predict_batch_end(self, batch, logs=None):
            self._check_overrun()

        def _project(self):
            self.timed = True
            i = self.fit
            step = statistics.median(self.measured) if self.measured else (self.warm_up or 0.0)
            per_image = step / batches[i]
            rest = max(per_fit[i] - self.fit_done, 0) * step + sum(
                per_fit[j] * batches[j] for j in range(i + 1, len(plan))) * per_image
            evaluation = (sum(evaluated[i:]) + test_rows) * per_image / 3  # forward passes only
            projected = (time.monotonic() - self.begun) + rest + evaluation
            speed = calibration.host_speed(threads)
            self.projection = {"step_seconds": round(step, 4), "steps": total, "measured_steps": len(self.measured),
                               "fit": i + 1, "projected_seconds": round(projected, 1), "allowed_seconds": allowed,
                               "host_slowdown": round(speed.slowdown, 2)}
            if allowed and calibration.normal_seconds(projected, projected, speed) > allowed:
                raise FaultError.of("recipe_too_slow",
                    f"training would take about {projected:,.0f} s: {total:,} steps, fit call {i + 1} at "
                    f"{step * 1000:,.0f} ms per step (measured on {len(self.measured)} real training steps after a "
                    f"warm-up step){_host_note(speed)}; the assignment allows {allowed:,.0f} s per training run: use "
                    "fewer epochs, a larger batch size, smaller pooling windows or a smaller model")
            if max_seconds:
                send(deadline=self.begun + overrun_limit(projected, max_seconds), projection=self.projection)

        def _check_overrun(self):
            if self.projection is None or not max_seconds or time.monotonic() - self.checked < 1.0:
                return
            self.checked = time.monotonic()
            projected = self.projection["projected_seconds"]
            limit, used = overrun_limit(projected, max_seconds), time.monotonic() - self.begun
            if used <= limit:
                return
            speed = calibration.host_speed(threads)
            if calibration.normal_seconds(used, used, speed) > limit:  # else: the host is slow, the parent decides
                raise FaultError.of("recipe_too_slow",
                    f"your recipe took longer than its own measured estimate: {used:,.0f} s after {self.steps_done:,} of "
                    f"{total:,} steps, against a projection of {projected:,.0f} s "
                    f"({self.projection['step_seconds'] * 1000:,.0f} ms per step){_host_note(speed)}; the grader stops a "
                    f"run at {limit:,.0f} s")

    return Clock()


def _host_note(speed) -> str:
    """How a measurement was counted on a host slower than its calibration (nothing where it ran normally)."""
    return f"; counted at the host's normal speed: {speed.describe()}" if speed.slow else ""


def train_run(job: dict) -> dict:
    """Build the canonical model, train it at ``seed``, return numbers only (``seconds``: the training
    and the measuring, not the start-up)."""
    return prepare_run(job)()


GO = "go"  # the line that tells a prepared retrain process its slot is free


def worker_main() -> None:
    """A retrain process: reads its job (one line), installs the grader's configuration it carries, prepares,
    waits for the go line, trains."""
    job = json.loads(sys.stdin.readline())
    if job.get("config"):
        settings.install(settings.GraderConfig.from_dict(job["config"]))
    train = prepare_run(job)
    if sys.stdin.readline().strip() != GO:
        sys.exit(3)  # the grader gave up on it before its slot came
    out = train()
    sys.stdout.write("\n@@RETRAIN@@" + json.dumps(out) + "\n")


ENV_RETRAIN_THREADS = settings.RETRAIN_THREADS.name
THREAD_VARIABLES = settings.THREAD_VARIABLES  # what TensorFlow and BLAS read at start-up


def retrain_threads() -> int:
    """CPU threads one retrain may use (``CNN_GRADER_RETRAIN_THREADS``; 0 or unset: every core).  Set it
    where other work shares the cores (two graders on one machine, a parallel test run): TensorFlow's
    thread pools spin while they wait, and two of them on the same cores stall each other many times over."""
    return settings.current().retrain_threads
