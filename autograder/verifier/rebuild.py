"""Canonical rebuild: turn a submitted (untrusted) Keras config into a recipe of plain numbers.

Nothing the student's notebook produced is ever deserialized.  The model config, the compile
config and the recorded ``fit`` calls are read as JSON and reduced to a *recipe*: per layer a
whitelist of scalar fields (filters, kernel size, strides, padding, activation from a named set,
units, rate, augmentation factors, ...), named initializers, regularizers and constraints with
scalar arguments, the ``trainable`` flag, one optimizer from a list with scalar hyperparameters
(learning-rate schedules from a list with scalar parameters), a loss (name, ``from_logits``,
``label_smoothing``), and the fit settings, including a ``tf.data`` pipeline
(:mod:`autograder.verifier.pipeline`) and the callbacks that are replayed.

A recipe is replayed as written or refused, never approximated.  Only what cannot change
training is normalised, and listed in ``notes``: a ``seed`` (the grader's seed decides), an
initializer holding an array (it carries weights: the grader trains from scratch), a dtype
policy, logging callbacks, validation data no callback reads.  Any other setting the grader
cannot rebuild raises :class:`RefusedModel` with a message saying what to write instead.

:func:`build_model` and :func:`build_optimizer` construct Keras objects from a recipe by calling
the layer and optimizer constructors with those validated scalars only.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable


class RefusedModel(ValueError):
    """The submission cannot be retrained as written; the message says why and what to do."""


ACTIVATIONS = {"relu", "softmax", "sigmoid", "tanh", "linear", "elu", "selu", "gelu", "swish", "silu", "softplus",
               "softsign", "leaky_relu", "relu6", "hard_sigmoid", "hard_swish", "mish", "log_softmax", "exponential"}
SUBCLASSED_HELP = (
    "a subclassed model (a class with its own call method) cannot be rebuilt from its description. "
    "Write the same layers as keras.Sequential([keras.Input(shape), layers.Conv2D(32, 3, activation='relu'), "
    "layers.MaxPooling2D(), layers.Flatten(), layers.Dense(10, activation='softmax')]) "
    "or with the functional API (inputs = keras.Input(shape); x = layers.Conv2D(32, 3, activation='relu')(inputs); "
    "x = layers.MaxPooling2D()(x); x = layers.Flatten()(x); outputs = layers.Dense(10, activation='softmax')(x); "
    "model = keras.Model(inputs, outputs))"
)
MAX_NAME = 60


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_NAME else text[:MAX_NAME] + "..."


# --- validators: each returns the canonical value or raises ValueError -----------------------

def _int(lo: int, hi: int) -> Callable:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"must be an integer from {lo} to {hi}")
        return v
    return check


def _float(lo: float, hi: float) -> Callable:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"must be a number from {lo:g} to {hi:g}")
        return float(v)
    return check


def _pair(lo: int, hi: int) -> Callable:
    one = _int(lo, hi)

    def check(v):
        v = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
        if not isinstance(v, list) or len(v) != 2:
            raise ValueError("must be an integer or a pair of integers")
        return [one(x) for x in v]
    return check


def _optional(inner: Callable) -> Callable:
    return lambda v: None if v is None else inner(v)


def _choice(*allowed) -> Callable:
    def check(v):
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(map(repr, allowed))}")
        return v
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("must be True or False")
    return v


def _activation(v):
    if v is None:
        return "linear"
    if isinstance(v, str) and v in ACTIVATIONS:
        return v
    raise ValueError(f"must be one of the named activations ({', '.join(sorted(ACTIVATIONS))})")


def _shape(v):
    if not isinstance(v, list) or not 1 <= len(v) <= 3:
        raise ValueError("must be a list of 1 to 3 sizes")
    return [_int(-1, 100_000)(x) for x in v]


class _Drop(ValueError):
    """A field that carries weights (an array): dropped, as the grader trains from scratch."""


INITIALIZERS = {"GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform", "Zeros",
                "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
                "Orthogonal"}  # not Identity: its config leaves out its gain
REGULARIZERS = {"L1", "L2", "L1L2", "OrthogonalRegularizer"}
CONSTRAINTS = {"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"}
OBJECT_NAMES = {"glorot_uniform": "GlorotUniform", "glorot_normal": "GlorotNormal", "he_normal": "HeNormal",
                "he_uniform": "HeUniform", "lecun_normal": "LecunNormal", "lecun_uniform": "LecunUniform",
                "zeros": "Zeros", "ones": "Ones", "orthogonal": "Orthogonal",
                "random_normal": "RandomNormal", "random_uniform": "RandomUniform",
                "truncated_normal": "TruncatedNormal", "variance_scaling": "VarianceScaling",
                "l1": "L1", "l2": "L2", "l1_l2": "L1L2", "max_norm": "MaxNorm", "min_max_norm": "MinMaxNorm",
                "non_neg": "NonNeg", "unit_norm": "UnitNorm"}
OBJECT_STRINGS = {"fan_in", "fan_out", "fan_avg", "normal", "uniform", "truncated_normal", "untruncated_normal",
                  "rows", "columns"}
SEED_NOTES: list[str] = []  # filled per field while a model is read (see canonical_model)


def _keras_object(module: str, allowed: set[str]) -> Callable:
    """A named initializer, regularizer or constraint: ``{"class": name, "config": {scalar arguments}}``, rebuilt
    by class name; a seed is left out (noted), arrays are dropped (they carry weights), anything else refuses."""

    def check(v):
        if v is None:
            return None
        if isinstance(v, str):
            v = {"class_name": OBJECT_NAMES.get(v, v), "config": {}}
        if not isinstance(v, dict) or not str(v.get("module") or "keras").startswith("keras") \
                or v.get("registered_name") not in (None, v.get("class_name")) or v.get("class_name") not in allowed:
            name = v.get("class_name") if isinstance(v, dict) else v
            raise ValueError(f"is not one the grader can rebuild ({_short(name)}); use one of "
                             f"{', '.join(sorted(allowed))} with number arguments")
        import keras

        cls = v["class_name"]
        known = getattr(getattr(keras, module), cls)().get_config()  # trusted: Keras's own defaults
        given = v.get("config") if isinstance(v.get("config"), dict) else {}
        out = {}
        for key, value in given.items():
            if key == "seed":
                if value is not None:
                    SEED_NOTES.append(f"{cls} seed={_short(value)}")
                continue
            if key not in known:
                raise ValueError(f"{cls}: unknown argument {_short(key)}")
            axes = key in ("axis", "input_axes", "output_axes") and isinstance(value, list) and len(value) <= 4 \
                and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
            if isinstance(value, (list, dict)) and not axes:
                raise _Drop(cls)  # an array (e.g. Constant([...])): it carries weights
            ok = value is None or axes or (isinstance(value, str) and value in OBJECT_STRINGS) \
                or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
            if not ok:
                if cls == "Constant":
                    raise _Drop(cls)
                raise ValueError(f"{cls}: {key}={_short(value)} is not a number")
            out[key] = value
        return {"class": cls, "config": out}
    return check


INITIALIZER = _keras_object("initializers", INITIALIZERS)
REGULARIZER = _keras_object("regularizers", REGULARIZERS)
CONSTRAINT = _keras_object("constraints", CONSTRAINTS)
WEIGHTS = {"kernel_initializer": INITIALIZER, "bias_initializer": INITIALIZER, "kernel_regularizer": REGULARIZER,
           "bias_regularizer": REGULARIZER, "activity_regularizer": REGULARIZER, "kernel_constraint": CONSTRAINT,
           "bias_constraint": CONSTRAINT}
BN_WEIGHTS = {f"{w}_{kind}": check for w in ("beta", "gamma") for kind, check in
              (("initializer", INITIALIZER), ("regularizer", REGULARIZER), ("constraint", CONSTRAINT))}
BN_WEIGHTS.update(moving_mean_initializer=INITIALIZER, moving_variance_initializer=INITIALIZER)


def _factor(lo: float, hi: float) -> Callable:
    one = _float(lo, hi)

    def check(v):
        if isinstance(v, list) and len(v) == 2:
            return [one(x) for x in v]
        return one(v)
    return check


FILL = {"fill_mode": _choice("reflect", "wrap", "constant", "nearest"),
        "interpolation": _choice("bilinear", "nearest"), "fill_value": _float(-1e6, 1e6)}
VALUE_RANGE = lambda v: _factor(-1e6, 1e6)(v) if isinstance(v, list) else _fail("must be a pair of numbers")  # noqa: E731


def _fail(message: str):
    raise ValueError(message)


SIZE = _pair(1, 64)
LAYER_FIELDS: dict[str, dict[str, Callable]] = {
    "Conv2D": {"filters": _int(1, 4096), "kernel_size": SIZE, "strides": SIZE, "padding": _choice("valid", "same"),
               "dilation_rate": SIZE, "activation": _activation, "use_bias": _bool},
    "Dense": {"units": _int(1, 1_000_000), "activation": _activation, "use_bias": _bool},
    # augmentation and noise: no weights, active in training only
    "RandomFlip": {"mode": _choice("horizontal", "vertical", "horizontal_and_vertical")},
    "RandomRotation": {"factor": _factor(-1.0, 1.0), **FILL},
    "RandomTranslation": {"height_factor": _factor(-1.0, 1.0), "width_factor": _factor(-1.0, 1.0), **FILL},
    "RandomZoom": {"height_factor": _factor(-1.0, 1.0), "width_factor": _optional(_factor(-1.0, 1.0)), **FILL},
    "RandomContrast": {"factor": _factor(0.0, 1.0), "value_range": VALUE_RANGE},
    "RandomBrightness": {"factor": _factor(-1.0, 1.0), "value_range": VALUE_RANGE},
    "RandomCrop": {"height": _int(1, 100_000), "width": _int(1, 100_000)},
    "GaussianNoise": {"stddev": _float(0.0, 1e3)},
    "GaussianDropout": {"rate": _float(0.0, 0.99)},
    "AlphaDropout": {"rate": _float(0.0, 0.99)},
    "SpatialDropout1D": {"rate": _float(0.0, 0.99)},
    "SpatialDropout3D": {"rate": _float(0.0, 0.99)},
    "MaxPooling2D": {"pool_size": SIZE, "strides": _optional(SIZE), "padding": _choice("valid", "same")},
    "AveragePooling2D": {"pool_size": SIZE, "strides": _optional(SIZE), "padding": _choice("valid", "same")},
    "GlobalAveragePooling2D": {"keepdims": _bool},
    "GlobalMaxPooling2D": {"keepdims": _bool},
    "Flatten": {},
    "Dropout": {"rate": _float(0.0, 0.99)},
    "SpatialDropout2D": {"rate": _float(0.0, 0.99)},
    "Activation": {"activation": _activation},
    "ReLU": {"max_value": _optional(_float(0.0, 1e6)), "negative_slope": _float(0.0, 1.0), "threshold": _float(-1e6, 1e6)},
    "LeakyReLU": {"negative_slope": _float(0.0, 1.0)},
    "Softmax": {"axis": _choice(-1)},
    "BatchNormalization": {"axis": _choice(-1, 3), "momentum": _float(0.0, 1.0), "epsilon": _float(1e-12, 1.0),
                           "center": _bool, "scale": _bool},
    "Reshape": {"target_shape": _shape},
    "Rescaling": {"scale": _float(-1e6, 1e6), "offset": _float(-1e6, 1e6)},
}
ALIASES = {"MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D", "AveragePooling2D": "AveragePooling2D",
           "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D"}
# fields that never change training and are not worth a note
SILENT_FIELDS = {"name", "dtype", "data_format", "build_config", "registered_name", "module", "synchronized",
                 "quantization_config", "autocast"}
for _cls in ("Conv2D", "Dense"):
    LAYER_FIELDS[_cls].update(WEIGHTS)
LAYER_FIELDS["BatchNormalization"].update(BN_WEIGHTS)
MODEL_CLASSES = {"Sequential", "Functional", "Model"}

OPTIMIZERS = {"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam", "Lion", "Ftrl"}
OPTIMIZER_ALIASES = {o.lower(): o for o in OPTIMIZERS}
SCHEDULES = {"ExponentialDecay", "PiecewiseConstantDecay", "InverseTimeDecay", "PolynomialDecay", "CosineDecay",
             "CosineDecayRestarts"}
LOSSES = {"sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
          "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
          "categorical_crossentropy": "categorical_crossentropy",
          "CategoricalCrossentropy": "categorical_crossentropy"}
CALLBACK_FIELDS = {
    "EarlyStopping": {"monitor": _choice("loss", "val_loss", "accuracy", "val_accuracy"), "patience": _int(0, 1000),
                      "min_delta": _float(0.0, 1e3), "restore_best_weights": _bool,
                      "mode": _choice("auto", "min", "max"), "start_from_epoch": _int(0, 1000)},
    "ReduceLROnPlateau": {"monitor": _choice("loss", "val_loss", "accuracy", "val_accuracy"), "patience": _int(0, 1000),
                          "factor": _float(0.0, 0.999), "min_delta": _float(0.0, 1e3), "min_lr": _float(0.0, 1.0),
                          "cooldown": _int(0, 1000), "mode": _choice("auto", "min", "max")},
}
SILENT_CALLBACKS = {"History", "ProgbarLogger", "ModelCheckpoint", "TensorBoard", "CSVLogger", "TqdmCallback",
                    "BackupAndRestore"}


def _default_layer_config(cls: str) -> dict:
    """Keras's own defaults for a layer class (trusted: built here from constants)."""
    from keras import layers

    required = {"Conv2D": (1, 1), "Dense": (1,), "Dropout": (0.5,), "SpatialDropout2D": (0.5,), "Reshape": ((1,),),
                "Rescaling": (1.0,), "Activation": ("linear",), "AveragePooling2D": (2,), "RandomRotation": (0.1,),
                "RandomTranslation": (0.1, 0.1), "RandomZoom": (0.1,), "RandomContrast": (0.1,),
                "RandomBrightness": (0.1,), "RandomCrop": (1, 1), "GaussianNoise": (0.1,), "GaussianDropout": (0.1,),
                "AlphaDropout": (0.1,), "SpatialDropout1D": (0.5,), "SpatialDropout3D": (0.5,)}
    layer = getattr(layers, cls)(*required.get(cls, ()))
    return json.loads(json.dumps(layer.get_config(), default=str))


_DEFAULTS: dict[str, dict] = {}


def _defaults(cls: str) -> dict:
    if cls not in _DEFAULTS:
        _DEFAULTS[cls] = _default_layer_config(cls)
    return _DEFAULTS[cls]


def _describe_dropped(value) -> str:
    if isinstance(value, dict) and isinstance(value.get("class_name"), str):
        return _short(value["class_name"])
    return _short(value)


# --- the model ------------------------------------------------------------------------------

def _input_shape(layer_config: dict) -> list[int]:
    shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
    if isinstance(shape, list) and shape:
        shape = shape[1:]
    else:
        shape = layer_config.get("shape")
    try:
        return _shape(shape)
    except ValueError:
        raise RefusedModel(f"the input shape {_short(shape)} is not a list of sizes") from None


def _chain(config: dict) -> list[dict]:
    """The layers of a Sequential model, or of a functional model that is a single chain."""
    cls = config.get("class_name")
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    layers = inner.get("layers")
    if cls not in MODEL_CLASSES or config.get("registered_name") not in (None, cls, "Functional") \
            or not str(config.get("module") or "keras").startswith("keras"):
        raise RefusedModel(f"the model is of class {_short(cls)}, {SUBCLASSED_HELP}")
    if not isinstance(layers, list) or not all(isinstance(l, dict) for l in layers):
        raise RefusedModel(f"the model has no list of layers; {SUBCLASSED_HELP}")
    if cls == "Sequential":
        return layers
    # functional: every layer must take exactly the previous layer's output
    names = [l.get("name") or (l.get("config") or {}).get("name") for l in layers]
    for i, layer in enumerate(layers[1:], start=1):
        nodes = layer.get("inbound_nodes")
        history = None
        try:
            (node,) = nodes
            (arg,) = node["args"]
            history = arg["config"]["keras_history"][0]
            extra = node.get("kwargs") or {}
        except (TypeError, ValueError, KeyError, IndexError):
            extra = {"?": 1}
        if history != names[i - 1] or any(k not in ("training", "mask") for k in extra):
            raise RefusedModel(
                "the functional model is not a single chain of layers (layer "
                f"{_short(names[i])!r} does not take exactly the previous layer's output); branches, skip "
                "connections and several inputs or outputs cannot be retrained: write one layer after another")
    if layers[0].get("class_name") != "InputLayer" or inner.get("output_layers") not in (
            [names[-1], 0, 0], [[names[-1], 0, 0]]):
        raise RefusedModel("the functional model must have one Input and the last layer as its only output")
    return layers


def canonical_model(config: Any, input_shape: Any = None) -> tuple[dict, list[str]]:
    """``{"input_shape": [...], "layers": [{"type": ..., field: value}]}`` and notes."""
    # ``input_shape``: the dataset's (one example, e.g. (28, 28, 1)); the model's own input must hold as
    # many values, and it is assumed when the config names none
    expected = list(input_shape) if input_shape is not None else None
    try:
        if not isinstance(config, dict):
            raise RefusedModel(f"the model description is not a Keras model config; {SUBCLASSED_HELP}")
        raw_layers = _chain(config)
    except RefusedModel as exc:  # the guidance names the assignment's input shape
        shape = f"keras.Input({tuple(expected)})" if expected is not None else "keras.Input(shape)"
        raise RefusedModel(str(exc).replace("keras.Input(shape)", shape)) from None
    notes: list[str] = []
    input_shape, out = None, []
    for i, layer in enumerate(raw_layers):
        cls = layer.get("class_name")
        lc = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        label = f"layer {i + (0 if raw_layers and raw_layers[0].get('class_name') == 'InputLayer' else 1)}"
        if cls == "InputLayer":
            if i != 0:
                raise RefusedModel("an InputLayer may only come first")
            input_shape = _input_shape(lc)
            continue
        cls = ALIASES.get(cls, cls)
        if cls not in LAYER_FIELDS:
            raise RefusedModel(
                f"{label} ({_short(cls)}) is not a layer the grader can rebuild; allowed: "
                f"{', '.join(sorted(LAYER_FIELDS))} (and an Input)")
        if not str(layer.get("module") or "keras").startswith("keras") or layer.get("registered_name") not in (None, cls):
            raise RefusedModel(f"{label} ({_short(cls)}) is a custom class ({_short(layer.get('registered_name'))})")
        if i == 0 and input_shape is None and isinstance(lc.get("batch_shape") or lc.get("batch_input_shape"), list):
            input_shape = _input_shape(lc)  # Keras 2 style input_shape= on the first layer
        spec: dict[str, Any] = {"type": cls}
        fields = LAYER_FIELDS[cls]
        defaults = _defaults(cls)
        dropped, seeds = [], []
        for key, check in fields.items():
            value = lc.get(key, defaults.get(key))
            if cls == "LeakyReLU" and key == "negative_slope" and "alpha" in lc:
                value = lc["alpha"]
            if key in WEIGHTS or key in BN_WEIGHTS:
                if json.dumps(value, sort_keys=True) == json.dumps(defaults.get(key), sort_keys=True):
                    continue  # Keras's default: the recipe stays as it was (and so does its cache key)
            SEED_NOTES.clear()
            try:
                spec[key] = check(value)
            except _Drop:
                dropped.append(f"{key}={_describe_dropped(value)} (an array: it carries weights)")
            except ValueError as exc:
                raise RefusedModel(f"{label} ({cls}): {key}={_describe_dropped(value)} {exc}") from None
            seeds += SEED_NOTES
        for key, value in lc.items():
            if key in fields or key in SILENT_FIELDS or key in ("batch_shape", "batch_input_shape", "alpha"):
                continue
            if key == "trainable":
                if value is not True:
                    spec["trainable"] = False  # replayed: the layer keeps its fresh weights
                continue
            if key == "seed":
                if value is not None:
                    seeds.append(f"seed={_short(value)}")
                continue
            if key not in defaults or json.dumps(value, sort_keys=True) != json.dumps(defaults[key], sort_keys=True):
                raise RefusedModel(f"{label} ({cls}): the setting {_short(key)}={_describe_dropped(value)} cannot be "
                                   f"replayed; the grader rebuilds {cls} from {', '.join(fields) or 'no settings'}: "
                                   "leave it at Keras's default")
        if seeds:
            notes.append(f"{label} ({cls}): {', '.join(seeds)} not replayed (the grader's seed decides)")
        if isinstance(lc.get("dtype"), (str, dict)) and "float32" not in json.dumps(lc.get("dtype")):
            dropped.append(f"dtype={_describe_dropped(lc['dtype'])} (float32 is used)")
        if dropped:
            notes.append(f"{label} ({cls}): dropped {', '.join(dropped)}; the grader uses Keras's defaults")
        out.append(spec)
    if input_shape is None:
        build = (config.get("config") or {}).get("build_input_shape")
        input_shape = _input_shape({"batch_shape": build}) if isinstance(build, list) else expected
    if input_shape is None:
        raise RefusedModel("the model does not say what input it takes: start it with keras.Input(shape)")
    if any(s < 1 for s in input_shape) or (expected is not None and math.prod(input_shape) != math.prod(expected)):
        raise RefusedModel(f"the model's input shape {tuple(input_shape)} does not hold one "
                           f"{'x'.join(map(str, expected or []))} image of the assignment's data")
    if not out:
        raise RefusedModel("the model has no layers")
    return {"input_shape": input_shape, "layers": out}, notes


# --- optimizer, loss, fit -------------------------------------------------------------------

def _scalar_fields(given: dict, defaults: dict, what: str, notes: list[str]) -> dict:
    out = {}
    for key, value in given.items():
        if key == "name":
            continue
        if key not in defaults:
            notes.append(f"{what}: dropped unknown setting {_short(key)}")
            continue
        if value is None or isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)):
            if value is not None and defaults[key] is not None and isinstance(defaults[key], bool) != isinstance(value, bool):
                notes.append(f"{what}: dropped {key}={_short(value)}")
                continue
            out[key] = value
        elif isinstance(value, list) and len(value) <= 100 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value):
            out[key] = value
        else:
            notes.append(f"{what}: dropped {key}={_describe_dropped(value)} (only numbers are kept)")
    return out


def _schedule(value: dict, notes: list[str]) -> dict:
    import keras

    cls = value.get("class_name")
    if cls not in SCHEDULES or not str(value.get("module") or "keras").startswith("keras"):
        raise RefusedModel(f"the learning-rate schedule {_short(cls)} is not one the grader can rebuild; "
                           f"allowed: {', '.join(sorted(SCHEDULES))} (or a fixed learning rate)")
    given = value.get("config") if isinstance(value.get("config"), dict) else {}
    required = {"ExponentialDecay": (0.1, 10, 0.9), "PiecewiseConstantDecay": ([1], [0.1, 0.01]),
                "InverseTimeDecay": (0.1, 10, 0.5), "PolynomialDecay": (0.1, 10), "CosineDecay": (0.1, 10),
                "CosineDecayRestarts": (0.1, 10)}[cls]
    defaults = getattr(keras.optimizers.schedules, cls)(*required).get_config()
    return {"class": cls, "config": _scalar_fields(given, defaults, f"schedule {cls}", notes)}


def canonical_optimizer(value: Any, notes: list[str]) -> dict:
    import keras

    if isinstance(value, str):
        cls = OPTIMIZER_ALIASES.get(value.lower())
        if cls is None:
            raise RefusedModel(f"optimizer {_short(value)!r} is not allowed; use one of {', '.join(sorted(OPTIMIZERS))}")
        return {"class": cls, "config": {}}
    if value is None:
        return {"class": "RMSprop", "config": {}}
    if not isinstance(value, dict) or value.get("class_name") not in OPTIMIZERS \
            or not str(value.get("module") or "keras").startswith("keras"):
        cls = value.get("class_name") if isinstance(value, dict) else type(value).__name__
        raise RefusedModel(f"optimizer {_short(cls)!r} is not allowed; use one of {', '.join(sorted(OPTIMIZERS))}")
    cls = value["class_name"]
    given = dict(value.get("config") if isinstance(value.get("config"), dict) else {})
    defaults = getattr(keras.optimizers, cls)().get_config()
    lr = given.pop("learning_rate", None)
    config = _scalar_fields(given, defaults, f"optimizer {cls}", notes)
    if isinstance(lr, dict):
        config["learning_rate"] = _schedule(lr, notes)
    elif lr is not None:
        config["learning_rate"] = _float(0.0, 100.0)(lr) if isinstance(lr, (int, float)) else None
        if config["learning_rate"] is None:
            raise RefusedModel(f"the learning rate {_short(lr)} is not a number")
    return {"class": cls, "config": config}


def canonical_loss(value: Any, notes: list[str]) -> dict:
    config: dict = {}
    if isinstance(value, dict):
        name = value.get("class_name")
        config = value.get("config") if isinstance(value.get("config"), dict) else {}
        if name == "function" and isinstance(value.get("config"), str):
            name, config = value["config"], {}
        elif not str(value.get("module") or "keras").startswith("keras"):
            name = f"custom {name}"
    else:
        name = value
    canonical = LOSSES.get(name) if isinstance(name, str) else None
    if canonical is None:
        raise RefusedModel(f"the loss {_short(name)} is not supported: for ten classes use "
                           "'sparse_categorical_crossentropy' (integer labels) or 'categorical_crossentropy' (one-hot)")
    out = {"name": canonical, "from_logits": False, "label_smoothing": 0.0}
    if config.get("from_logits") is not None:
        out["from_logits"] = _bool(config["from_logits"]) if isinstance(config["from_logits"], bool) else False
    smoothing = config.get("label_smoothing")
    if smoothing:
        if canonical != "categorical_crossentropy":
            notes.append("loss: label_smoothing applies to categorical_crossentropy only; dropped")
        else:
            out["label_smoothing"] = _float(0.0, 0.5)(smoothing)
    for key in config:
        if key not in ("name", "reduction", "from_logits", "label_smoothing", "ignore_class", "axis", "dtype"):
            notes.append(f"loss: dropped {_short(key)}")
    return out


def _count(value, default: int, lo: int, hi: int, what: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RefusedModel(f"{what}={_short(value)} is not an integer")
    if not lo <= value <= hi:
        raise RefusedModel(f"{what}={value} is outside {lo} to {hi}")
    return value


def canonical_fits(fits: Any, model_compile_config: Any, notes: list[str]) -> list[dict]:
    """One entry per recorded ``fit`` call, with its optimizer, loss and training settings."""
    if not isinstance(fits, list) or not fits:
        raise RefusedModel("the notebook never called model.fit, so there is no training recipe to verify")
    out = []
    for i, fit in enumerate(fits[:20]):
        if not isinstance(fit, dict):
            continue
        where = f"fit call {i + 1}"
        cc = fit.get("compile_config") or model_compile_config
        if not isinstance(cc, dict) or not cc:
            raise RefusedModel(f"{where}: the model was not compiled")
        epochs = _count(fit.get("epochs"), 1, 0, 10_000, f"{where}: epochs")
        initial = _count(fit.get("initial_epoch"), 0, 0, 10_000, f"{where}: initial_epoch")
        split = fit.get("validation_split") or 0.0
        split = _float(0.0, 0.5)(split) if isinstance(split, (int, float)) and not isinstance(split, bool) else 0.0
        steps = fit.get("steps_per_epoch")
        steps = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None
        x, pipeline, batch_size = fit.get("x"), None, fit.get("batch_size")
        if isinstance(x, dict) and x.get("kind") == "dataset":
            from autograder.verifier.pipeline import canonical_pipeline

            pipeline = _pipeline(canonical_pipeline, x, where, notes)
            x, batch_size = dict(pipeline["source"]), pipeline["batch_size"]
            if pipeline["endless"] and steps is None:
                raise RefusedModel(f"{where}: the tf.data pipeline repeats forever (.repeat()) and fit has no "
                                   "steps_per_epoch, so training never ends; leave out .repeat() or pass steps_per_epoch")
            if pipeline["take_batches"] is not None:
                steps = min(steps or pipeline["take_batches"], pipeline["take_batches"])
            if pipeline["take_batches"] == 0:
                raise RefusedModel(f"{where}: the tf.data pipeline takes 0 batches")
        callbacks = []
        for cb in fit.get("callbacks") or []:
            cls = cb.get("class") if isinstance(cb, dict) else None
            if cls in CALLBACK_FIELDS:
                kept = {}
                for key, check in CALLBACK_FIELDS[cls].items():
                    if key in cb:
                        try:
                            kept[key] = check(cb[key])
                        except ValueError as exc:
                            notes.append(f"{where}: {cls} {key} {exc}; Keras's default used")
                callbacks.append({"class": cls, **kept})
            elif cls == "TerminateOnNaN":
                callbacks.append({"class": cls})
            elif cls == "LearningRateScheduler":
                raise RefusedModel(
                    f"{where}: the LearningRateScheduler callback runs a Python function, which the grader cannot "
                    "replay; use a schedule instead, e.g. keras.optimizers.Adam(learning_rate=keras.optimizers."
                    "schedules.ExponentialDecay(1e-3, decay_steps=469, decay_rate=0.9)), or ReduceLROnPlateau")
            elif cls not in SILENT_CALLBACKS:
                raise RefusedModel(
                    f"{where}: the callback {_short(cls)} may change training and the grader cannot replay it; the "
                    "callbacks replayed are EarlyStopping, ReduceLROnPlateau and TerminateOnNaN (logging callbacks "
                    f"such as {', '.join(sorted(SILENT_CALLBACKS - {'BackupAndRestore'}))} are fine): leave it out")
        if fit.get("class_weight") or fit.get("sample_weight"):
            raise RefusedModel(f"{where}: class_weight and sample_weight cannot be replayed; leave them out")
        validation = _validation(fit, split, callbacks, where, notes)
        out.append({
            "optimizer": canonical_optimizer(cc.get("optimizer"), notes),
            "loss": canonical_loss(cc.get("loss"), notes),
            "epochs": max(epochs - initial, 0),
            "batch_size": _count(batch_size, 32, 1, 10_000_000, f"{where}: batch_size"),
            "validation_split": split,
            "shuffle": fit.get("shuffle") is not False,
            "steps_per_epoch": steps,
            "callbacks": [cb for cb in callbacks if validation is not None or split or not _watches_val(cb)],
            "x": _data_description(x),
            "pipeline": pipeline,
            "validation": validation,
        })
        if epochs and initial:
            notes.append(f"{where}: initial_epoch={initial} trains {epochs - initial} epochs")
    out = [f for f in out if f["epochs"] > 0] or _no_epochs()
    from autograder.verifier.pipeline import image_transform

    if len({json.dumps(image_transform(f["pipeline"])) for f in out}) > 1:
        raise RefusedModel("the fit calls feed the model images scaled in different ways; scale them the same way "
                           "in every fit call")
    return out


def _pipeline(canonical_pipeline: Callable, *args) -> dict:
    from autograder.verifier.pipeline import RefusedModel as RefusedPipeline

    try:
        return canonical_pipeline(*args)
    except RefusedPipeline as exc:
        raise RefusedModel(str(exc)) from None


def _watches_val(cb: dict) -> bool:
    return cb.get("class") in CALLBACK_FIELDS and str(cb.get("monitor", "val_loss")).startswith("val_")


def _validation(fit: dict, split: float, callbacks: list[dict], where: str, notes: list[str]) -> dict | None:
    """How the validation data is replayed: ``None`` (no callback reads it, so it never changes training) or the
    description of its images, which the verifier must recognise as the assignment's test images."""
    watching = [cb["class"] for cb in callbacks if _watches_val(cb)]
    desc = fit.get("validation_data")
    if watching and (split or fit.get("has_validation_data")) and fit.get("validation_freq") not in (None, 1):
        raise RefusedModel(f"{where}: validation_freq={_short(fit['validation_freq'])} changes when "
                           f"{', '.join(watching)} see{'s' if len(watching) == 1 else ''} the validation metrics and is "
                           "not replayed; leave it at 1")
    if split:
        if fit.get("has_validation_data"):
            notes.append(f"{where}: validation_data is given, so Keras ignores validation_split")
        else:
            return None
    if not fit.get("has_validation_data"):
        if watching:
            notes.append(f"{where}: {', '.join(watching)} watch{'es' if len(watching) == 1 else ''} a validation "
                         "metric but the fit call has no validation data, so Keras never triggers "
                         f"{'it' if len(watching) == 1 else 'them'}; not replayed")
        return None
    if not watching:
        notes.append(f"{where}: validation_data is only measured (no callback watches it), so it does not change "
                     "training and is not replayed")
        return None
    help_text = (f"{', '.join(watching)} watch{'es' if len(watching) == 1 else ''} the validation data, which the "
                 "grader replays only when it is the assignment's test set, validation_data=(test_images, "
                 "test_labels) scaled as the training images, or validation_split=0.1")
    pipeline = None
    if isinstance(desc, dict) and desc.get("kind") == "dataset":
        from autograder.verifier.pipeline import canonical_pipeline

        pipeline = _pipeline(canonical_pipeline, desc, f"{where}: validation_data", [])
        images = pipeline["source"]
    elif isinstance(desc, dict) and desc.get("kind") == "tuple" and len(desc.get("items") or []) == 2:
        images = desc["items"][0]
    else:
        raise RefusedModel(f"{where}: the validation data could not be read; {help_text}")
    if not isinstance(images, dict) or images.get("kind") != "array":
        raise RefusedModel(f"{where}: the validation images are not an array; {help_text}")
    from autograder.verifier.pipeline import image_transform

    return {"x": _data_description(images), "transform": image_transform(pipeline), "help": help_text}


def _no_epochs():
    raise RefusedModel("the recorded fit calls train for 0 epochs")


def _data_description(x: Any) -> dict:
    """The parts of the recorder's description of the fit data that the verifier uses."""
    if not isinstance(x, dict):
        return {"kind": "unknown"}
    out = {"kind": x.get("kind") if x.get("kind") == "array" else "other"}
    if out["kind"] == "other":
        out["what"] = _short(str(x.get("kind")))[:40]
    shape = x.get("shape")
    if isinstance(shape, list) and shape and isinstance(shape[0], int):
        out["rows"] = shape[0]
    if isinstance(x.get("max"), (int, float)):
        out["raw_pixels"] = x["max"] > 1.5
    if isinstance(x.get("fingerprint"), str):
        out["fingerprint"] = x["fingerprint"][:64]
    return out


def canonical_recipe(config: Any, fits: Any, input_shape: Any = None) -> tuple[dict, list[str]]:
    """Model, compile and fit settings as plain validated numbers, plus notes on what was dropped."""
    model, notes = canonical_model(config, input_shape)
    compile_config = config.get("compile_config") if isinstance(config, dict) else None
    return {"model": model, "fits": canonical_fits(fits, compile_config, notes)}, notes


# --- building Keras objects from a recipe (trusted values only) -----------------------------

def build_model(model: dict):
    import keras
    from keras import layers

    built = [keras.Input(tuple(model["input_shape"]))]
    for spec in model["layers"]:
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        if spec["type"] in ("Conv2D", "MaxPooling2D", "AveragePooling2D"):
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        if spec["type"] == "Reshape":
            kwargs["target_shape"] = tuple(kwargs["target_shape"])
        for key, module in (("initializer", keras.initializers), ("regularizer", keras.regularizers),
                            ("constraint", keras.constraints)):
            for name in [k for k in kwargs if k.endswith(key) and isinstance(kwargs[k], dict)]:
                kwargs[name] = getattr(module, kwargs[name]["class"])(**kwargs[name]["config"])
        for name in ("factor", "height_factor", "width_factor", "value_range"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        built.append(getattr(layers, spec["type"])(**kwargs))
    return keras.Sequential(built)


def build_optimizer(spec: dict):
    import keras

    config = dict(spec["config"])
    lr = config.pop("learning_rate", None)
    if isinstance(lr, dict):
        config["learning_rate"] = getattr(keras.optimizers.schedules, lr["class"])(**lr["config"])
    elif lr is not None:
        config["learning_rate"] = lr
    return getattr(keras.optimizers, spec["class"])(**config)


def build_loss(spec: dict):
    import keras

    if spec["name"] == "categorical_crossentropy":
        return keras.losses.CategoricalCrossentropy(from_logits=spec["from_logits"], label_smoothing=spec["label_smoothing"])
    return keras.losses.SparseCategoricalCrossentropy(from_logits=spec["from_logits"])


def describe_optimizer(spec: dict) -> str:
    lr = spec["config"].get("learning_rate")
    lr_text = "default" if lr is None else (f"{lr:g}" if isinstance(lr, float) else f"{lr['class']} schedule")
    return f"{spec['class']} (learning rate {lr_text})"


def learning_rates(spec: dict) -> tuple[float | None, float | None]:
    """The optimizer's learning rate as trained (a schedule's first rate; None: Keras's default) and Keras's
    default rate for that optimizer (None if unknown)."""
    import keras

    lr = spec["config"].get("learning_rate")
    if isinstance(lr, dict):
        config = lr.get("config") or {}
        first = config.get("initial_learning_rate", (config.get("values") or [None])[0])
        lr = float(first) if isinstance(first, (int, float)) and not isinstance(first, bool) else None
    try:
        default = float(f'{float(getattr(keras.optimizers, spec["class"])().get_config()["learning_rate"]):.6g}')
    except (AttributeError, KeyError, TypeError, ValueError):
        default = None
    return (float(lr) if isinstance(lr, (int, float)) else None), default
