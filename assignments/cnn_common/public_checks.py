"""Checks that students run with ``grader.check``: helpful, without holding the answers.

The student-side check machinery of the CNN units.  Each unit ships it next to its student
notebook as one self-contained file (``cnn_checks.py``, ``digits_checks.py``): this module's
source, then the unit's own part (``assignments/<unit>/public_checks.py``: its wording, helpers of
its own), with the tables below filled by the build (:func:`assignments.cnn_common.judging.render_public_module`).
Otter prints the source of a failing test, so public tests only call these functions; and the file
holds no expected values, only SHA-256 digests of canonical answers (and of the answers that
typical mistakes produce, so feedback can name the mistake).

It imports only the standard library and numpy, so it works wherever the notebook runs (the
training check, given the notebook's live Keras model, also uses Keras).  The trusted graders
(``assignments.<unit>.checks``) reuse :func:`canonical` and :func:`digest` so both sides agree on
what "the same answer" means.

The training check (:func:`check_training`) applies the grader's public rules (:func:`check_recipe`):
the build ships the verifier's own ``rebuild`` and ``budget`` modules in ``GRADER_RULES``
(:mod:`autograder.student_rules`), so a recipe the grader refuses fails here with the grader's message;
it then measures the notebook's model on the unit's test images and says where it stands against the
threshold.  Rules and policy, never answers.

A failed check raises :class:`CheckFailed` (an ``AssertionError``, as Otter expects) whose ``reasons``
name, as data, the mistakes it recognised (ids of the unit's misconception catalogue); an answer that
is not there yet raises :class:`NotAnswered`, which names none.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers

__all__ = [
    "AnswerFormatError",
    "CheckFailed",
    "NotAnswered",
    "ShapeMismatch",
    "reasons_of",
    "canonical",
    "digest",
    "check_answer",
    "check_function",
    "check_model",
    "check_training",
    "check_recipe",
    "training_rules",
    "evaluate_model",
    "grader_rules",
    "is_stub",
    "model_layers",
    "not_implemented_message",
    "normalize_identity",
    "variant_index",
    "use_student",
    "my_numbers",
]

# --- filled by the build (the unit's checks.render_public_module) ---------------------------
ANSWER_DIGESTS: dict = {}
EXPECTED_LAYERS: list = []
EXPECTED_INPUT_SHAPE: list = []
PUBLIC_CASES: dict = {}
# per-student variants (empty when the assignment has none): {"assignment", "pool_size", "salt",
# "variants": [{"givens": ..., "answers": <like ANSWER_DIGESTS>, "cases": <like PUBLIC_CASES>}, ...]}
VARIANTS: dict = {}
# the verifier's public rules (autograder.student_rules): [[module, source], ...] of
# autograder.verifier's rebuild and budget modules, unchanged but for their imports of one another
GRADER_RULES: list = []
# the training policy: {"assignment", "threshold", "seed_margin", "seeds", "budget", "data": {"name",
# "input_shape", "num_classes", "train_size", "test_size", "pixel_scale", ...}}
TRAINING: dict = {}
# ------------------------------------------------------------------------------------------

_ACTIVE: dict = {}  # the variant chosen by use_student (student side) or by the grader

# --- the unit's words (its part of the file, which follows this one, sets them) --------------
UNIT_MODEL = "the unit's"  # whose CNN the model check compares with ("the lesson's")
INPUT_NAME = "the images"  # what the model's inputs are, e.g. "MNIST images"
SHAPE_EXAMPLE = "(26, 26, 32)"  # an output shape in this unit's notation
PADDING_HINTS: dict = {}  # a layer's expected padding -> why, when a student's differs


def normalize_identity(identity) -> str:
    """The form of an LMS id or e-mail that picks a variant: Unicode NFKC, case-folded, without
    any whitespace (so ' Ada@Uni.EDU ' and 'ada@uni.edu' are one student)."""
    import unicodedata

    text = unicodedata.normalize("NFKC", str(identity)).casefold()
    return "".join(text.split())


def variant_index(assignment: str, identity, pool_size: int, salt: str = "") -> int:
    """Which of ``pool_size`` variants the student with this identity gets (SHA-256, public)."""
    ident = normalize_identity(identity)
    if not ident:
        raise ValueError("the student id is empty")
    h = hashlib.sha256(f"{assignment}\x1f{salt}\x1f{ident}".encode()).digest()
    return int.from_bytes(h[:8], "big") % pool_size


def use_student(identity) -> dict:
    """Select this student's numbers for the checks; returns them (the notebook's first cell)."""
    if not VARIANTS:
        return {}
    if isinstance(identity, bool) or not isinstance(identity, (str, int)) or not str(identity).strip():
        raise ValueError("Enter your id first: STUDENT_ID = \"...\" (in quotes) in the first cell.")
    index = variant_index(VARIANTS["assignment"], identity, VARIANTS["pool_size"], VARIANTS.get("salt", ""))
    _ACTIVE.clear()
    _ACTIVE.update(VARIANTS["variants"][index], index=index)
    return my_numbers()


def my_numbers() -> dict:
    """The selected variant's givens as numpy arrays and ints (empty without variants)."""
    if not _ACTIVE:
        return {}
    import numpy as np

    return {k: (np.array(v) if isinstance(v, list) and v and isinstance(v[0], list) else
                tuple(v) if isinstance(v, list) else v) for k, v in _ACTIVE["givens"].items()}


def _tables() -> tuple[dict, dict]:
    if not VARIANTS:
        return ANSWER_DIGESTS, PUBLIC_CASES
    if not _ACTIVE:
        raise AssertionError("Run the notebook's first cell with your student id first: your numbers, and "
                             "the checks for them, depend on it.")
    return _ACTIVE["answers"], _ACTIVE["cases"]

ROUND_DECIMALS = 6


class CheckFailed(AssertionError):
    """A failed check, with what it recognised as data: ``reasons`` are the ids of the mistakes it
    named (the unit's misconception catalogue, e.g. ``"flipped_filter"``), which the grader records
    for the instructor's class insight; the message is for the student and is never read back."""

    answered = True  # the student gave an answer (a wrong one)

    def __init__(self, message: str, reasons=()):
        super().__init__(message)
        self.reasons = tuple(dict.fromkeys(r for r in reasons if isinstance(r, str) and r))


class NotAnswered(CheckFailed):
    """Nothing to judge yet: still ``...``, a stub, a model without layers, not compiled or not trained.
    Not a mistake: it names none, and the class insight does not count the question as answered."""

    answered = False


class ShapeMismatch(CheckFailed):
    """A function's output has the wrong shape (the hidden checks count these apart from wrong values)."""


class AnswerFormatError(CheckFailed):
    """The answer has the wrong type or shape to be compared at all."""


def reasons_of(*failures) -> list:
    """The mistake ids of several failed checks, each once, in order."""
    return list(dict.fromkeys(r for f in failures for r in getattr(f, "reasons", ())))


def _as_number(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise AnswerFormatError(f"{what} should be a number, got {type(x).__name__}")
    value = float(x)
    if not math.isfinite(value):
        raise AnswerFormatError(f"{what} is {value}; expected a finite number")
    return value


def _as_int(x, what: str) -> int:
    value = _as_number(x, what)
    if value != int(value):
        raise AnswerFormatError(f"{what} should be a whole number, got {value}")
    return int(value)


def _as_shape(x, what: str) -> list:
    if not isinstance(x, (tuple, list)):
        raise AnswerFormatError(f"{what} should be a tuple of ints such as {SHAPE_EXAMPLE}, got {type(x).__name__}")
    dims = list(x)
    if dims and dims[0] is None:  # Keras prints (None, 26, 26, 32): the batch axis is not asked for
        dims = dims[1:]
    return [_as_int(d, what) for d in dims]


def _as_array(x, what: str) -> dict:
    import numpy as np

    try:
        arr = np.array(x, dtype=np.float64)  # a copy: never trust the caller's object
    except (TypeError, ValueError) as exc:
        raise AnswerFormatError(f"{what} should be a numeric array: {exc}") from None
    if not np.all(np.isfinite(arr)):
        raise AnswerFormatError(f"{what} contains NaN or infinity")
    values = np.round(arr, ROUND_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    return {"shape": list(arr.shape), "values": values.ravel().tolist()}


def canonical(kind: str, value, what: str = "your answer"):
    """Plain JSON data that two equal answers share, whatever Python types they came in."""
    if kind == "array":
        return _as_array(value, what)
    if kind == "int":
        return _as_int(value, what)
    if kind == "shape":
        return _as_shape(value, what)
    if kind in ("int_list", "shape_list"):
        if not isinstance(value, (list, tuple)):
            raise AnswerFormatError(f"{what} should be a list, got {type(value).__name__}")
        item = "int" if kind == "int_list" else "shape"
        return [canonical(item, v, f"{what}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"unknown answer kind {kind!r}")


def digest(data, salt: str = "") -> str:
    """SHA-256 of canonical data (salted with the question key so equal answers differ per question)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{salt}|{text}".encode()).hexdigest()


def _text(x) -> str:
    """A message: the text itself, or (variant tables) its index in the shared ``VARIANTS["texts"]``."""
    return VARIANTS["texts"][x] if isinstance(x, int) and not isinstance(x, bool) and VARIANTS else (x or "")


def _named(entry) -> tuple:
    """A named mistake of the tables, ``[reason, text]`` (``reason`` an id or a list of ids; ids and text may
    be ``VARIANTS["texts"]`` indexes), as ``(reasons, text)``; ``((), "")`` for none."""
    if not entry:
        return (), ""
    reason, text = entry
    return tuple(_text(r) for r in (reason if isinstance(reason, list) else [reason])), _text(text)


def _judge(entry: dict, data, salt: str, label: str) -> None:
    h = digest(data, salt)
    if h[:len(entry["answer"])] == entry["answer"]:
        return
    mistakes = entry["mistakes"]
    named = next((m for d, m in mistakes.items() if h[:len(d)] == d), None) if VARIANTS else mistakes.get(h)
    reasons, text = _named(named)
    if text:
        raise CheckFailed(f"{label} is not right yet. Likely mistake: {text}", reasons)
    raise CheckFailed(f"{label} is not right yet. {_text(entry.get('hint', ''))}".strip())


def check_answer(key: str, value) -> None:
    """Raise :class:`CheckFailed` with feedback unless ``value`` is the right answer for ``key``."""
    spec = _tables()[0][key]
    if value is None or value is Ellipsis:
        raise NotAnswered(f"`{key}` is not answered yet: replace the ... with {_text(spec['describe'])}.")
    data = canonical(spec["kind"], value, f"`{key}`")
    if spec["kind"] in ("int_list", "shape_list"):
        items = spec["items"]
        if len(data) != len(items):
            raise CheckFailed(
                f"`{key}` should have {len(items)} entries, one per layer, got {len(data)}."
            )
        problems = []
        for i, (item, entry) in enumerate(zip(data, items)):
            try:
                _judge(entry, item, f"{key}[{i}]", f"entry {i} ({_text(entry['label'])})")
            except CheckFailed as exc:
                problems.append(exc)
        if problems:
            raise CheckFailed(f"`{key}`:\n  " + "\n  ".join(map(str, problems)), reasons_of(*problems))
        return
    if spec["kind"] == "array" and data["shape"] != spec["shape"]:
        reasons, hint = _named(spec.get("shape_hints", {}).get(json.dumps(data["shape"])))
        msg = f"`{key}` has shape {tuple(data['shape'])}, expected {tuple(spec['shape'])}."
        raise CheckFailed(msg + (f" Likely mistake: {hint}" if hint else ""), reasons)
    _judge(spec, data, key, f"`{key}`")


def is_stub(output=None, error: BaseException | None = None) -> bool:
    """Whether a function's result says "not written yet" rather than "wrong".

    A stub returns ``None`` (the template's ``...`` body) or ``...``, or raises
    ``NotImplementedError``.  Seen through the grading engine, which records outputs as float
    arrays, ``None`` arrives as a 0-d NaN and the other two as the recorded error's text.
    """
    if error is not None:
        text = str(error)
        return (isinstance(error, NotImplementedError) or text.startswith("NotImplementedError")
                or "'ellipsis'" in text or "'NoneType'" in text)
    if output is None or output is Ellipsis:
        return True
    import numpy as np

    try:
        arr = np.asarray(output, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return arr.ndim == 0 and bool(np.isnan(arr))


def not_implemented_message(name: str) -> str:
    return f"`{name}` is not implemented yet: replace the `...` in its body with your code."


def check_callable(name: str, func) -> None:
    """A function students write must be there and be a function (missing: not answered)."""
    if func is None or func is Ellipsis:
        raise NotAnswered(f"`{name}` is not defined yet; define it with `def {name}(...)`.")
    if not callable(func):
        raise CheckFailed(f"`{name}` should be a function; define it with `def {name}(...)`.")


def check_function(name: str, func) -> None:
    """Run the student's function on the public cases (inputs shown in the notebook)."""
    check_callable(name, func)
    for case in _tables()[1][name]:
        import numpy as np

        args = [np.array(a, dtype=np.float64) for a in case["args"]]
        try:
            out = func(*args, **case["kwargs"])
        except Exception as exc:
            if is_stub(error=exc):
                raise NotAnswered(not_implemented_message(name)) from None
            raise CheckFailed(f"{name} raised {type(exc).__name__}: {exc} on {case['label']}") from None
        if is_stub(out):
            raise NotAnswered(not_implemented_message(name))
        data = canonical("array", out, f"{name}(...) on {case['label']}")
        if data["shape"] != case["shape"]:
            reasons, hint = _named(case.get("shape_hints", {}).get(json.dumps(data["shape"])))
            raise ShapeMismatch(
                f"{name} on {case['label']} returned shape {tuple(data['shape'])}, "
                f"expected {tuple(case['shape'])}." + (f" Likely mistake: {hint}" if hint else ""), reasons
            )
        _judge(case, data, f"{name}:{case['label']}", f"{name} on {case['label']}")


# --- the Keras model ------------------------------------------------------------------------

_FOLDED = {"Activation", "ReLU", "Softmax"}  # standalone activations fold into the layer before
# No parameters and no change of shape: input scaling inside the model, and every layer that is active
# in training only (dropout, noise, augmentation: the identity at test time), which the grader's
# retraining replays, so a model that uses them is still the unit's CNN (tests/test_verifier_variants.py keeps
# this set in step with the verifier's rebuild rules).
TRAINING_ONLY_LAYERS = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                        "GaussianDropout", "AlphaDropout", "RandomFlip", "RandomRotation", "RandomTranslation",
                        "RandomZoom", "RandomContrast", "RandomBrightness"}
_IGNORED = {"InputLayer", "Rescaling", *TRAINING_ONLY_LAYERS}
# the mistake a layer setting that differs from the unit's names (ids of the unit's misconception catalogue)
_SETTING_REASONS = {"padding": "padding_mixup", "pool_size": "pool_window_size"}


def _model_config(model) -> dict:
    if isinstance(model, dict):
        return model
    if isinstance(model, str):
        return json.loads(model)
    to_json = getattr(model, "to_json", None)
    if to_json is None:
        raise CheckFailed(f"`model` should be a Keras model, got {type(model).__name__}.")
    return json.loads(to_json())


def _pair(v):
    return list(v) if isinstance(v, (list, tuple)) else [v, v]


def model_layers(model) -> tuple[list, list | None]:
    """Summarize a Keras model (live or its JSON config) as ``(layers, input_shape)``.

    Each layer is a small dict of what the assignment grades: kind, width, kernel, stride,
    padding and activation.
    """
    config = _model_config(model)
    layers, input_shape = [], None
    inner = config.get("config", {})
    if isinstance(inner, dict) and "build_input_shape" in inner and inner["build_input_shape"]:
        input_shape = list(inner["build_input_shape"])[1:]
    for layer in inner.get("layers", []) if isinstance(inner, dict) else []:
        cls, cfg = layer.get("class_name"), layer.get("config", {})
        if cls == "InputLayer":
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            if shape:
                input_shape = list(shape)[1:]
        if cls in _IGNORED:
            continue
        if cls in _FOLDED and layers:
            act = cfg.get("activation") or {"ReLU": "relu", "Softmax": "softmax"}.get(cls)
            if layers[-1].get("activation") in (None, "linear"):
                layers[-1]["activation"] = act
                continue
        entry = {"kind": cls}
        if cls == "Conv2D":
            entry.update(filters=cfg.get("filters"), kernel_size=_pair(cfg.get("kernel_size")),
                         strides=_pair(cfg.get("strides", 1)), padding=cfg.get("padding"),
                         activation=cfg.get("activation"), use_bias=cfg.get("use_bias", True))
        elif cls in ("MaxPooling2D", "MaxPool2D"):
            entry["kind"] = "MaxPooling2D"
            entry.update(pool_size=_pair(cfg.get("pool_size")),
                         strides=_pair(cfg.get("strides") or cfg.get("pool_size")),
                         padding=cfg.get("padding"))
        elif cls == "Dense":
            entry.update(units=cfg.get("units"), activation=cfg.get("activation"),
                         use_bias=cfg.get("use_bias", True))
        if isinstance(entry.get("activation"), dict):  # activation given as a serialized object
            entry["activation"] = entry["activation"].get("config", {}).get("name", "custom")
        layers.append(entry)
    return layers, input_shape


_DESCRIBE = {
    "Conv2D": lambda l: (f"Conv2D({l['filters']}, {tuple(l['kernel_size'])}, "
                         + (f"padding='{l['padding']}', " if l.get("padding") not in (None, "valid") else "")
                         + f"activation='{l['activation']}')"),
    "MaxPooling2D": lambda l: f"MaxPooling2D({tuple(l['pool_size'])})",
    "Flatten": lambda l: "Flatten()",
    "Dense": lambda l: f"Dense({l['units']}, activation='{l['activation']}')",
}


def _describe(layer: dict) -> str:
    return _DESCRIBE.get(layer["kind"], lambda l: l["kind"])(layer)


def check_model(model, expected: list | None = None, input_shape: list | None = None) -> None:
    """Compare the model's layers, one by one, with the unit's CNN (and its input shape)."""
    expected = EXPECTED_LAYERS if expected is None else expected
    want_shape = list(EXPECTED_INPUT_SHAPE if input_shape is None else input_shape)
    if model is None or model is Ellipsis:
        raise NotAnswered("`model` is not defined yet: build it with keras.models.Sequential().")
    got, input_shape = model_layers(model)
    if not got and expected:
        raise NotAnswered(f"The model has no layers yet: Layer 1 is missing, expected {_describe(expected[0])} there.")
    if input_shape is not None and want_shape and list(input_shape) != want_shape:
        swapped = sorted(input_shape) == sorted(want_shape)  # the right sizes in another order
        raise CheckFailed(
            f"The model's input shape is {tuple(input_shape)}; {INPUT_NAME} reshaped for Conv2D are "
            f"{tuple(want_shape)} (height, width, channels).", ["swapped_axes"] if swapped else []
        )
    for i, want in enumerate(expected):
        if i >= len(got):
            raise CheckFailed(f"Layer {i + 1} is missing: expected {_describe(want)} there.")
        have = got[i]
        if have["kind"] != want["kind"]:
            raise CheckFailed(f"Layer {i + 1} is {have['kind']}, expected {_describe(want)}.")
        for key, value in want.items():
            if have.get(key) != value:
                hint = PADDING_HINTS.get(value, "") if key == "padding" else ""
                reason = _SETTING_REASONS.get(key, "")
                if key == "activation" and value == "relu" and have.get(key) in (None, "linear"):
                    reason = "forgot_relu"
                raise CheckFailed(
                    f"Layer {i + 1} ({have['kind']}): {key} is {have.get(key)!r}, expected {value!r}{hint}.", [reason]
                )
    if len(got) > len(expected):
        raise CheckFailed(
            f"The model has {len(got)} layers with parameters or shape changes; {UNIT_MODEL} has "
            f"{len(expected)}. Extra: {', '.join(_describe(l) for l in got[len(expected):])}."
        )


def grader_rules() -> dict:
    """The grader's own rule modules (``{"rebuild": module, "budget": module, ...}``), loaded once from
    ``GRADER_RULES`` (empty without them)."""
    if _RULES or not GRADER_RULES:
        return _RULES
    import sys
    import types

    for name, source in GRADER_RULES:
        full = f"_grader_rules_{name}"
        module = types.ModuleType(full)
        module.__file__ = f"<the grader's {name} rules>"
        sys.modules[full] = module  # dataclasses and the other rule modules look it up there
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        _RULES[name] = module
    return _RULES


_RULES: dict = {}


def _live_model_config(model) -> dict:
    """The model's description as the grader reads it; a model Keras cannot describe (a subclassed
    model whose ``__init__`` takes arguments) is described by its class alone, as the grader sees it."""
    try:
        return _model_config(model)
    except AssertionError:
        raise
    except Exception:
        cls = type(model)
        try:
            compile_config = model.get_compile_config()
        except Exception:
            compile_config = None
        return {"class_name": cls.__name__, "module": cls.__module__, "config": {}, "compile_config": compile_config}


def _fits_of(model) -> list | None:
    """The model's ``fit`` calls as the grader records them (epochs, batch size...).  The grader's
    extracted model carries them; a live model only keeps its last call's epochs and steps per epoch
    (``model.history.params``), from which the batch size is worked out on the training images.  A
    batch size larger than the budget allows says the call trained on fewer images (a quick trial on a
    slice): it counts as the largest allowed, so only a real excess of steps is refused."""
    fits = getattr(model, "fits", None)
    if isinstance(fits, list):
        return fits
    params = getattr(getattr(model, "history", None), "params", None) or {}
    epochs, steps = params.get("epochs"), params.get("steps")
    if not isinstance(epochs, int) or not isinstance(steps, int) or steps < 1 or not TRAINING:
        return None
    batch_size = min(-(-TRAINING["data"]["train_size"] // steps), TRAINING["budget"]["max_batch_size"])
    return [{"epochs": epochs, "batch_size": batch_size, "steps_seen": steps}]


def check_recipe(model, fits: list | None = None) -> list:
    """Apply the grader's public rules to the model and its fit calls (default: the model's own), before
    any training: allowed layers and fields, a model it can rebuild (no subclassed model), the step and
    cost budget.  Raises :class:`CheckFailed` with the grader's own message if it would refuse the recipe;
    returns the grader's notes (what it drops or caps) otherwise."""
    rules = grader_rules()
    if not rules or not TRAINING:
        return []
    rebuild, budget = rules["rebuild"], rules["budget"]
    config = _live_model_config(model)
    fits = _fits_of(model) if fits is None else fits
    if fits is None:
        return []  # nothing says how it was trained: the compile-and-fit check has said what it can
    limits = budget.Budget(**TRAINING["budget"])
    data = TRAINING["data"]
    try:
        budget.check_config_size(len(json.dumps(config, default=str)) + len(json.dumps(fits, default=str)), limits)
        recipe, notes = rebuild.canonical_recipe(config, fits, data["input_shape"])
        cost, _plan, cap_notes = budget.recipe_cost(recipe, limits, data)
        budget.check(cost, recipe, limits, TRAINING["seeds"])
    except rebuild.RefusedModel as exc:
        message = f"The model was not retrained: {exc}."
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        message = f"The model was not retrained: its description could not be read ({type(exc).__name__})."
    else:
        return notes + cap_notes
    seen = [f for f in fits if isinstance(f, dict) and "steps_seen" in f]
    how = (f" Your last model.fit call is read from model.history: {seen[0]['epochs']} epochs of {seen[0]['steps_seen']} "
           f"steps, which on the {data['train_size']:,} training images is a batch size of {seen[0]['batch_size']:,}; "
           "the grader reads the call itself.") if seen else ""
    raise CheckFailed(f"{message}\n(This is the grader's own rule: it will refuse this recipe and retrain nothing, "
                      f"and a recipe it cannot retrain gets neither this check's point nor the accuracy's, so fix it "
                      f"before you submit.{how})")


def training_rules() -> None:
    """Print how the grader retrains the training question's model, from the rules and figures this module
    ships (the verifier's own rule modules and the assignment's budget): what is replayed, what is refused,
    the budget and the seed rule."""
    rules = grader_rules()
    if not rules or not TRAINING:
        print("This check module does not carry the grader's rules.")
        return
    rebuild, pipeline, budget = rules["rebuild"], rules.get("pipeline"), TRAINING["budget"]
    data = TRAINING["data"]
    n = data["train_size"]

    def names(items) -> str:
        return ", ".join(sorted(items))

    lines = [
        f"How the grader retrains your model ({data['name']}, {n:,} training images, {data['test_size']:,} test images):",
        "- It rebuilds your layers from their settings with fresh weights: " + names(rebuild.LAYER_FIELDS)
        + " (and an Input). Named initializers, regularizers and constraints with number arguments are rebuilt too; "
        "a seed is not replayed (the grader's seed decides) and weights given as arrays are dropped, each listed in "
        "your feedback. Write the model as keras.Sequential or with the functional API as one chain of layers: a "
        "subclassed model, a Lambda or custom layer cannot be rebuilt and is refused.",
        "- It trains with your optimizer (" + names(rebuild.OPTIMIZERS) + ") and its learning rate or one of these "
        "schedules (" + names(rebuild.SCHEDULES) + "), your loss, batch size and epochs, and replays the callbacks "
        + names([*rebuild.CALLBACK_FIELDS, "TerminateOnNaN"]) + " (logging callbacks are left out); other callbacks "
        "(such as LearningRateScheduler with a Python function), class_weight and sample_weight are refused.",
        "- Data: the training images as the notebook prepares them, passed to model.fit as arrays or as a tf.data "
        "pipeline " + (pipeline.SUPPORTED_FORM if pipeline else "from_tensor_slices((train_images, train_labels))")
        + " (casts and scalings in .map only: put other preprocessing in the model as Keras layers).",
        f"- Budget, checked before any training: at most {budget['max_epochs']} epochs (more are capped), at most "
        f"{budget['max_steps']:,} training steps (epochs x {n:,} / batch size) and a batch size from "
        f"{budget['min_batch_size']:,} to {budget['max_batch_size']:,}; a recipe over budget is refused, with its cost.",
        f"- Seed rule: if the first retrained accuracy is within {TRAINING['seed_margin']} of {TRAINING['threshold']}, "
        f"the grader trains more seeds, {TRAINING['seeds']} in all, and scores their median; your feedback lists "
        "each seed's accuracy and epochs.",
        "- A refused recipe gets no point for the training question: the public check fails with the grader's "
        "reason, and the hidden check has no accuracy to score.",
    ]
    print("\n".join(lines))


def _otter_grading() -> bool:
    """Whether Otter is grading the notebook (``otter run``, ``otter grade``): its hidden check then scores
    the accuracy, and the public check does not measure it."""
    import sys

    notebook = getattr(sys.modules.get("otter.check.notebook"), "Notebook", None)
    return bool(getattr(notebook, "_grading_mode", False))


def _test_split():
    """The test images and labels as the notebook prepares them (the unit's part says how to load them)."""
    raise AssertionError("this check module does not know the test images")


def _takes_raw_pixels(model) -> bool:
    try:
        return "Rescaling" in json.dumps(_model_config(model))
    except Exception:
        return False


def evaluate_model(model, data=None) -> float:
    """Accuracy of the notebook's trained model on the test images (``data``: ``(images, labels)``,
    default the unit's test split scaled as the notebook scales it; raw pixels for a model that
    rescales its inputs itself)."""
    import numpy as np

    images, labels = _test_split() if data is None else data
    images = np.asarray(images, dtype="float32")
    if data is None and _takes_raw_pixels(model):
        images = images * float(TRAINING["data"]["pixel_scale"])
    probs = np.asarray(model.predict(images, batch_size=1000, verbose=0))
    return float(np.mean(np.argmax(probs.reshape(len(images), -1), axis=-1) == np.asarray(labels).ravel()))


def check_training(model, data=None) -> None:
    """Public check for the training question, worth the same wherever it runs: the model is compiled for
    the labels, trained, and a recipe the grader can retrain.

    * The notebook's own model (the student's ``grader.check``, ``otter run``): the grader's public rules
      decide (:func:`check_recipe`, the grader's own message).  Then, in the student's notebook, the
      accuracy on the test images (``data``: ``(images, labels)`` instead of the unit's test split) is
      measured and printed against the threshold.  It does not decide this check: the hidden check
      scores the accuracy of the grader's own retraining.
    * Under the grader (a description of the model whose recipe the verifier has retrained or refused):
      a refused recipe fails with the verifier's reason (``model.retrain_refusal()``).

    The architecture is the structure question's business unless the assignment requires it."""
    if getattr(model, "require_lesson_model", False):
        check_model(model)
    elif model is None or model is Ellipsis:
        raise NotAnswered("`model` is not defined yet: build it with keras.models.Sequential().")
    live = hasattr(model, "predict") and not hasattr(model, "measured_accuracy")  # the notebook's Keras model
    rules = live and bool(TRAINING) and bool(grader_rules())  # then the grader's rules judge the loss too
    compile_config = _live_model_config(model).get("compile_config") or {}
    if not compile_config:
        raise NotAnswered("`model` is not compiled yet: call model.compile(optimizer=..., loss=..., metrics=['accuracy']).")
    loss = compile_config.get("loss")
    name = (loss if isinstance(loss, str) else json.dumps(loss)).lower().replace(" ", "_")
    if not rules and "categorical_crossentropy" not in name and "categoricalcrossentropy" not in name:
        raise CheckFailed(
            f"The loss is {loss}. For ten classes use 'sparse_categorical_crossentropy' with the integer "
            "labels (or 'categorical_crossentropy' with one-hot labels)."
        )
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is not None and int(iterations.numpy() if hasattr(iterations, "numpy") else iterations) == 0:
        raise NotAnswered("The model has not been trained yet: call model.fit(...).")
    if not live:
        refusal = getattr(model, "retrain_refusal", None)
        reason = refusal() if callable(refusal) else None
        if reason:
            raise CheckFailed(f"{reason}\n(The grader retrains your recipe from scratch; a recipe it cannot retrain "
                              "has not shown that it trains, so it gets neither this check's point nor the accuracy's.)")
        return
    notes = check_recipe(model)
    if not TRAINING or _otter_grading():
        return  # otter run: its hidden check scores the accuracy
    accuracy = evaluate_model(model, data)
    threshold, margin = TRAINING["threshold"], TRAINING["seed_margin"]
    standing = (f"Your model scores {accuracy:.4f} on the {TRAINING['data']['name']} test images; the hidden check "
                f"needs more than {threshold:.2f}. The grader retrains your recipe from scratch and scores the "
                "accuracy it measures, so a lucky run may not repeat")
    if not accuracy > threshold:
        print(f"Warning: {standing}. This check passes (your model is compiled, trained and one the grader can "
              "retrain), but below the threshold the hidden check will fail: try another optimizer, learning rate, "
              "batch size or number of epochs." + "".join(f"\nThe grader's note: {n}." for n in notes))
        return
    print(standing + (f": within {margin} of the threshold it trains up to {TRAINING['seeds']} seeds and scores "
                      "their median, so aim a little higher." if accuracy - threshold < margin else ".")
          + "".join(f"\nThe grader's note: {n}." for n in notes))
