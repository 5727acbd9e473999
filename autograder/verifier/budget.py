"""Limits a recipe must meet before any training starts, computed from the recipe alone.

The cost of a retrain is counted in optimizer steps and in estimated multiply-adds, never in
seconds, so the verdict is the same on a laptop, in CI and on Gradescope.  Shapes, parameters,
multiply-adds per image and activation memory are worked out from the canonical layers of
:mod:`autograder.verifier.rebuild` without building anything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from autograder.verifier.rebuild import RefusedModel

@dataclass(frozen=True)
class Budget:
    """The assignment's limits (one place; ``RetrainOptions`` carries them to the verifier)."""

    max_config_chars: int = 200_000
    max_params: int = 5_000_000
    min_batch_size: int = 16
    max_batch_size: int = 4096
    max_epochs: int = 15  # more epochs are capped to this, with a note
    max_steps: int = 30_000  # per training run; 15 epochs at batch size 32 is 28,125
    max_macs: float = 4e13  # multiply-adds per training run (forward + backward, estimated); the lesson: 7.6e12
    max_batch_memory_mb: int = 3072  # activations of one batch (forward + backward, estimated)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Cost:
    params: int
    macs_per_image: int
    activations_per_image: int
    steps: int  # one training run (one seed)
    images: int
    largest_batch: int

    @property
    def training_macs(self) -> float:
        return 3.0 * self.macs_per_image * self.images  # backward pass ~ twice the forward

    def batch_memory_mb(self) -> float:
        return 3 * 4 * self.activations_per_image * self.largest_batch / 2**20


def _same(n: int, k: int, s: int) -> int:
    return -(-n // s)


def _valid(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1 if n >= k else 0


def model_cost(model: dict, num_classes: int | None = None, data_name: str = "the data") -> tuple[int, int, int]:
    """(parameters, multiply-adds per image, activation values per image); refuses impossible shapes and,
    given ``num_classes``, a model whose output is not one value per class."""
    shape = list(model["input_shape"])
    params = macs = acts = 0
    for i, spec in enumerate(model["layers"], start=1):
        kind = spec["type"]
        where = f"layer {i} ({kind})"
        if kind in ("Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
                    "SpatialDropout2D") and len(shape) != 3:
            raise RefusedModel(f"{where} needs images of shape (height, width, channels), got {tuple(shape)}; "
                               f"add keras.layers.Reshape({tuple(model['input_shape'])}) first")
        if kind == "Conv2D":
            (kh, kw), (sh, sw), (dh, dw) = spec["kernel_size"], spec["strides"], spec["dilation_rate"]
            ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
            size = _same if spec["padding"] == "same" else _valid
            h, w, c = shape
            shape = [size(h, ekh, sh), size(w, ekw, sw), spec["filters"]]
            params += kh * kw * c * spec["filters"] + (spec["filters"] if spec["use_bias"] else 0)
            macs += shape[0] * shape[1] * kh * kw * c * spec["filters"]
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            (ph, pw) = spec["pool_size"]
            (sh, sw) = spec["strides"] or spec["pool_size"]
            size = _same if spec["padding"] == "same" else _valid
            shape = [size(shape[0], ph, sh), size(shape[1], pw, sw), shape[2]]
        elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            shape = [1, 1, shape[2]] if spec["keepdims"] else [shape[2]]
        elif kind == "RandomCrop":  # the one augmentation layer that changes the shape
            shape = [min(spec["height"], shape[0]), min(spec["width"], shape[1]), *shape[2:]]
        elif kind == "Flatten":
            shape = [math.prod(shape)]
        elif kind == "Dense":
            inputs = shape[-1]
            params += inputs * spec["units"] + (spec["units"] if spec["use_bias"] else 0)
            macs += math.prod(shape[:-1]) * inputs * spec["units"]
            shape = shape[:-1] + [spec["units"]]
        elif kind == "BatchNormalization":
            params += 4 * shape[-1]
        elif kind == "Reshape":
            target = list(spec["target_shape"])
            total = math.prod(shape)
            if target.count(-1) == 1:
                known = math.prod(t for t in target if t != -1)
                target[target.index(-1)] = total // known if known and total % known == 0 else -1
            if -1 in target or math.prod(target) != total or min(target) < 1:
                raise RefusedModel(f"{where}: cannot reshape {tuple(shape)} to {tuple(spec['target_shape'])}")
            shape = target
        if min(shape) < 1:
            raise RefusedModel(f"{where}: the output shape {tuple(shape)} is empty (the image shrank to nothing)")
        acts += math.prod(shape)
        if params > 10**12:
            break
    if num_classes is not None and shape != [num_classes]:
        raise RefusedModel(f"the model outputs shape {tuple(shape)}; {data_name} has {num_classes} classes, so the "
                           f"last layer must give {num_classes} values per image (e.g. Dense({num_classes}, "
                           "activation='softmax'))")
    return params, macs, acts


def recipe_cost(recipe: dict, budget: Budget, data: dict) -> tuple[Cost, list[dict], list[str]]:
    """Cost of one training run, the fit plan with epochs capped, and notes about the capping.
    ``data`` describes the dataset (:meth:`autograder.spec.Dataset.describe`): its training size and classes."""
    params, macs, acts = model_cost(recipe["model"], data["num_classes"], data["name"])
    train_images = data["train_size"]
    notes, plan, left = [], [], budget.max_epochs
    steps = images = largest = 0
    for i, fit in enumerate(recipe["fits"]):
        epochs = fit["epochs"]
        if epochs > left:
            notes.append(f"fit call {i + 1}: {epochs} epochs capped to {left} (the assignment allows "
                         f"{budget.max_epochs} in total)")
            epochs = left
        left -= epochs
        if not epochs:
            continue
        split = fit["validation_split"] or (0.1 if _watches_validation(fit) and not fit.get("validation") else 0.0)
        rows = train_images - int(train_images * split)
        per_epoch = math.ceil(rows / fit["batch_size"])
        if fit["steps_per_epoch"] and fit["steps_per_epoch"] < per_epoch:
            per_epoch = fit["steps_per_epoch"]
        steps += epochs * per_epoch
        images += epochs * min(rows, per_epoch * fit["batch_size"])
        largest = max(largest, fit["batch_size"])
        plan.append({**fit, "epochs": epochs, "validation_split": split, "steps_per_epoch": per_epoch})
    return Cost(params, macs, acts, steps, images, largest), plan, notes


def _watches_validation(fit: dict) -> bool:
    return any(str(cb.get("monitor", "val_loss")).startswith("val_") for cb in fit["callbacks"]
               if cb.get("class") != "TerminateOnNaN")


def check_config_size(config_chars: int, budget: Budget) -> None:
    if config_chars > budget.max_config_chars:
        raise RefusedModel(f"the model's description is {config_chars:,} characters; the assignment allows "
                           f"{budget.max_config_chars:,} (arrays do not belong in a model config)")


def check(cost: Cost, recipe: dict, budget: Budget, seeds: int) -> None:
    """Refuse, with the cost and the limit, anything over the assignment's limits."""
    if cost.params > budget.max_params:
        raise RefusedModel(f"the model has {cost.params:,} parameters; the assignment allows {budget.max_params:,}")
    runs = f" per training run (up to {seeds} runs near the threshold)" if seeds > 1 else ""
    if cost.steps > budget.max_steps:
        raise RefusedModel(f"the recipe trains {cost.steps:,} steps; the assignment allows {budget.max_steps:,}{runs}: "
                           "use fewer epochs or a larger batch size")
    for i, fit in enumerate(recipe["fits"]):
        if not budget.min_batch_size <= fit["batch_size"] <= budget.max_batch_size:
            raise RefusedModel(f"fit call {i + 1}: batch_size={fit['batch_size']:,} is outside the allowed range "
                               f"{budget.min_batch_size} to {budget.max_batch_size:,}")
    if cost.training_macs > budget.max_macs:
        raise RefusedModel(f"the recipe needs about {cost.training_macs:.2g} multiply-adds to train; the assignment "
                           f"allows {budget.max_macs:.2g}{runs}: use fewer filters, units or epochs")
    if cost.batch_memory_mb() > budget.max_batch_memory_mb:
        raise RefusedModel(f"one batch of {cost.largest_batch:,} images needs about {cost.batch_memory_mb():,.0f} MB "
                           f"of activations; the assignment allows {budget.max_batch_memory_mb:,} MB: use a "
                           "smaller batch size")
