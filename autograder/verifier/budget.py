"""Limits a recipe must meet before any training starts, computed from the recipe alone.

The static cost of a retrain is counted in optimizer steps and in estimated operations, never in
seconds, so the verdict is the same on a laptop, in CI and on Gradescope.  Shapes, parameters,
operations per image and activation memory are worked out from the canonical layers of
:mod:`autograder.verifier.rebuild` without building any weights.

Every layer costs something: the multiply-adds of ``Conv2D`` and ``Dense``, the windows of pooling
(``pool_h * pool_w`` per output value), and per-value work for everything else (activations,
normalisation, dropout, resizing, augmentation, ...).  A layer type without a rule of its own gets the
generic per-value cost, :data:`GENERIC_OPS_PER_VALUE` per value it reads and writes, and its output
shape from Keras's ``compute_output_shape``: a layer added to the rebuild's whitelist later is costed
without a rule.  The timed projection in :mod:`autograder.verifier.retrain` backs this up with measured
seconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from autograder.verifier.rebuild import RefusedModel

@dataclass(frozen=True)
class Budget:
    """The assignment's limits (one place; ``RetrainOptions`` carries them to the verifier)."""

    max_config_chars: int = 200_000  # length of the model's JSON config (arrays do not belong in it)
    max_params: int = 5_000_000  # the model's parameters
    min_batch_size: int = 16  # the smallest batch size a fit call may use
    max_batch_size: int = 4096  # the largest batch size a fit call may use
    max_epochs: int = 15  # more epochs are capped to this, with a note
    max_steps: int = 30_000  # per training run; 15 epochs at batch size 32 is 28,125
    max_macs: float = 4e13  # multiply-adds per training run (forward + backward, estimated); the lesson: 7.6e12
    max_batch_memory_mb: int = 3072  # activations of one batch (forward + backward, estimated)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Cost:
    params: int
    macs_per_image: int  # operations per image, forward: multiply-adds, pooling windows and per-value work
    activations_per_image: int
    steps: int  # one training run (one seed)
    images: int
    largest_batch: int

    @property
    def training_macs(self) -> float:
        return 3.0 * self.macs_per_image * self.images  # backward pass ~ twice the forward

    def batch_memory_mb(self) -> float:
        return 3 * 4 * self.activations_per_image * self.largest_batch / 2**20


# per-value operations (forward) of layers without multiply-adds; a type not named here costs the generic rate
ELEMENT_OPS = {"Flatten": 0, "Activation": 0, "Reshape": 0, "InputLayer": 0, "Dropout": 2, "SpatialDropout2D": 2,
               "Rescaling": 2, "ReLU": 2, "LeakyReLU": 2, "Softmax": 8, "BatchNormalization": 8,
               "LayerNormalization": 10}
GENERIC_OPS_PER_VALUE = 16  # per value read and written: generous for resizing, interpolating augmentation, noise
ACTIVATION_OPS = {"linear": 0, "relu": 1, "relu6": 2, "leaky_relu": 2, "hard_sigmoid": 3, "hard_swish": 4}
ACTIVATION_DEFAULT_OPS = 8  # exp, tanh, erf ... per value


def _same(n: int, k: int, s: int) -> int:
    return -(-n // s)


def _valid(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1 if n >= k else 0


def _keras_output_shape(spec: dict, shape: list[int]) -> list[int]:
    """The output shape Keras gives a layer of a type without a rule here (the input's when it cannot say)."""
    try:
        from keras import layers

        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "type"}
        out = getattr(layers, spec["type"])(**kwargs).compute_output_shape((None, *shape))
        out = [int(d) for d in out[1:]]
        return out if out and all(d >= 0 for d in out) else list(shape)
    except Exception:  # noqa: BLE001 - a shape Keras cannot compute ahead is charged as unchanged
        return list(shape)


def model_cost(model: dict, num_classes: int | None = None, data_name: str = "the data") -> tuple[int, int, int]:
    """(parameters, operations per image, activation values per image); refuses impossible shapes and,
    given ``num_classes``, a model whose output is not one value per class.  Operations are forward
    multiply-adds, pooling windows and per-value work (see the module's docstring)."""
    shape = list(model["input_shape"])
    params = macs = acts = 0
    for i, spec in enumerate(model["layers"], start=1):
        kind = spec["type"]
        where = f"layer {i} ({kind})"
        before = math.prod(shape)
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
            macs += math.prod(shape) * ph * pw  # every output value reads its whole window
        elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            shape = [1, 1, shape[2]] if spec["keepdims"] else [shape[2]]
            macs += before  # every input value is read once
        elif kind == "Flatten":
            shape = [math.prod(shape)]
        elif kind == "Dense":
            inputs = shape[-1]
            params += inputs * spec["units"] + (spec["units"] if spec["use_bias"] else 0)
            macs += math.prod(shape[:-1]) * inputs * spec["units"]
            shape = shape[:-1] + [spec["units"]]
        elif kind == "BatchNormalization":
            params += 4 * shape[-1]
            macs += ELEMENT_OPS[kind] * before
        elif kind == "Reshape":
            target = list(spec["target_shape"])
            total = math.prod(shape)
            if target.count(-1) == 1:
                known = math.prod(t for t in target if t != -1)
                target[target.index(-1)] = total // known if known and total % known == 0 else -1
            if -1 in target or math.prod(target) != total or min(target) < 1:
                raise RefusedModel(f"{where}: cannot reshape {tuple(shape)} to {tuple(spec['target_shape'])}")
            shape = target
        elif kind in ELEMENT_OPS:
            macs += ELEMENT_OPS[kind] * before
        else:  # no rule of its own (activations, resizing, augmentation, noise, layers added later)
            shape = _keras_output_shape(spec, shape)
            macs += GENERIC_OPS_PER_VALUE * (before + math.prod(shape))
        if "activation" in spec:  # the activation of Conv2D, Dense or Activation, per output value
            macs += ACTIVATION_OPS.get(spec["activation"], ACTIVATION_DEFAULT_OPS) * math.prod(shape)
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
        raise RefusedModel(f"the recipe needs about {cost.training_macs:.2g} operations (multiply-adds, pooling windows "
                           f"and per-value work) to train; the assignment allows {budget.max_macs:.2g}{runs}: use "
                           "fewer filters, units, smaller pooling windows or fewer epochs")
    if cost.batch_memory_mb() > budget.max_batch_memory_mb:
        raise RefusedModel(f"one batch of {cost.largest_batch:,} images needs about {cost.batch_memory_mb():,.0f} MB "
                           f"of activations; the assignment allows {budget.max_batch_memory_mb:,} MB: use a "
                           "smaller batch size")
