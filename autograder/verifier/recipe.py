"""Preparing a recipe, before any training: the canonical recipe and its plan (:mod:`autograder.verifier.rebuild`),
its cost against the assignment's budget (:mod:`autograder.verifier.budget`), a build and compile of the whole
recipe without data (whatever Keras raises there is the submission's), and the notes on how the replay differs
from the notebook's data (test-set training, pixel scale, a tf.data pipeline, validation data).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from autograder.verifier import pipeline
from autograder.verifier.budget import Budget, check as check_budget, check_config_size, recipe_cost
from autograder.verifier.rebuild import RefusedModel, canonical_recipe
from autograder.faults import FaultError
from autograder.verifier.training import _dataset, build_callbacks, fingerprint, host_fault, keras_message

DEFAULT_SEED = 1234


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
            pipeline.describe_scaling(a, b) for a, b in transform) + "); the grader replays it and "
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


def input_max(recipe: dict, raw: bool, pixel_scale: float) -> float:
    """The largest pixel value (in size) the model's first weighted layer sees: the notebook's scale, the
    pipeline's maps, then the model's own ``Rescaling`` layers before that layer."""
    a, b = _affine(raw, pipeline.image_transform(recipe["fits"][0]["pipeline"]), pixel_scale)
    for layer in recipe["model"]["layers"]:
        if layer["type"] in ("Conv2D", "Dense", "BatchNormalization"):
            break
        if layer["type"] == "Rescaling":
            a, b = a * layer["scale"], b * layer["scale"] + layer["offset"]
    return max(abs(b), abs(a * pixel_scale + b))


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
                raise FaultError.of("host_limit", f"the host ran short while building the recipe: {keras_message(exc)}"
                                    ) from None
            raise RefusedModel(f"Keras could not build the recipe's {what}: {keras_message(exc)}") from None

    with keras.device("cpu"):
        built = step("model", lambda: build_model(model))
        for fit in plan:
            optimizer = step("optimizer", lambda: build_optimizer(fit["optimizer"]))
            step("optimizer", lambda: optimizer.build(built.trainable_variables))
            loss = step("loss", lambda: build_loss(fit["loss"]))
            step("compiled model", lambda: built.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"]))
            step("callbacks", lambda: build_callbacks(fit))
