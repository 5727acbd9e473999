"""The trusted side's answer judging, shared by the CNN units' answer keys (``assignments.<unit>.checks``).

Each unit's ``checks`` module says what its questions ask (:class:`Answer`: expected value computed
from the reference, typical mistakes with their messages), which functions students implement
and on which cases; this module judges answers against them (tolerance :data:`ATOL`, naming the
likely mistake), runs the hidden checks with general messages, builds the digest tables of the
student-side module and renders that module (:func:`render_public_module`).
"""

from __future__ import annotations

import ast
import inspect
import json
import pprint
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from assignments.cnn_common import public_checks
from assignments.cnn_common.misconceptions import FORGOT_INPUT_CHANNELS, SWAPPED_AXES
from assignments.cnn_common.public_checks import CheckFailed, NotAnswered, ShapeMismatch, canonical, digest
from assignments.cnn_common.reference import Conv2DSpec, DenseSpec, FlattenSpec, MaxPool2DSpec


class Mistake(NamedTuple):
    """A typical mistake: the answer it gives (a value, a table, an output, or a wrong shape), its id in
    the unit's misconception catalogue (:mod:`assignments.cnn_common.misconceptions`; a tuple of ids for
    a slip that makes two mistakes at once) and what the feedback tells the student."""

    value: Any
    reason: str | tuple[str, ...]
    text: str

    @property
    def reasons(self) -> list[str]:
        return [self.reason] if isinstance(self.reason, str) else list(self.reason)


@dataclass
class Answer:
    """One value a student assigns to a named variable."""

    key: str
    kind: str  # see public_checks.canonical
    describe: str
    expected: Any
    mistakes: list[Mistake] = field(default_factory=list)
    hint: str = ""  # what to look at when no listed mistake matches (names none)
    labels: list[str] = field(default_factory=list)  # per-entry labels for list answers
    item_mistakes: list[list[Mistake]] = field(default_factory=list)
    shape_hints: list[Mistake] = field(default_factory=list)  # arrays: wrong shapes (tuples) and their mistakes


def layer_table_answers(input_shape, seed, shape_variants: list, param_variants: list, shapes_hint: str,
                        channels_message: Callable[[int], str]) -> list[Answer]:
    """The three layer-table questions (``layer_output_shapes``, ``layer_params``, ``total_params``)
    for a seed model (reference layer specs) on ``input_shape``.  ``shape_variants`` and
    ``param_variants`` are :class:`Mistake` s whose values are the layer tables typical mistakes give;
    every unit also gets the channels-first shape and the forgotten input channels of a Conv2D
    (``channels_message(in_channels)``) as mistakes."""
    from assignments.cnn_common import reference

    rows = reference.layer_table(input_shape, seed)
    labels = [r.kind for r in rows]
    shape_items, param_items = [], []
    for i, row in enumerate(rows):
        sm = [Mistake(v[i].output_shape, reason, text) for v, reason, text in shape_variants
              if v[i].output_shape != row.output_shape]
        if len(row.output_shape) == 3:
            h, w, c = row.output_shape
            sm.append(Mistake((c, h, w), SWAPPED_AXES, "Keras puts channels last: (height, width, channels)"))
        shape_items.append(sm)
        pm = [Mistake(v[i].params, reason, text) for v, reason, text in param_variants if v[i].params != row.params]
        spec = seed[i]
        in_ch = rows[i - 1].output_shape[-1] if i else input_shape[-1]
        if isinstance(spec, Conv2DSpec) and in_ch != 1:
            one_channel = reference.conv2d_params(spec.kernel_size, 1, spec.filters)
            if all(m.value != one_channel for m in pm):
                pm.append(Mistake(one_channel, FORGOT_INPUT_CHANNELS, channels_message(in_ch)))
        param_items.append(pm)
    return [
        Answer("layer_output_shapes", "shape_list", f"a list of {len(rows)} tuples", [r.output_shape for r in rows],
               labels=labels, item_mistakes=shape_items, hint=shapes_hint),
        Answer("layer_params", "int_list", f"a list of {len(rows)} ints", [r.params for r in rows],
               labels=labels, item_mistakes=param_items,
               hint="Conv2D: (k*k*in_channels + 1) * filters; Dense: (inputs + 1) * units; pooling and Flatten: 0."),
        Answer("total_params", "int", "an int", reference.total_params(rows),
               [Mistake(reference.total_params(v), reason, text) for v, reason, text in param_variants],
               hint="Add up the parameters of every layer."),
    ]


# --- judging plain answers --------------------------------------------------------------------

ATOL = 1e-6


def close(kind: str, a, b) -> bool:
    """Whether two canonical answers agree (arrays: same shape, values within 1e-6)."""
    if kind == "array":
        return a["shape"] == b["shape"] and np.allclose(a["values"], b["values"], rtol=1e-6, atol=ATOL)
    return a == b


def mistaken(kind: str, data, mistakes: Iterable[Mistake], label: str, hint: str) -> CheckFailed:
    """The failure for a wrong canonical answer: the first listed mistake it matches (its text, and its
    id as the failure's reason), else the hint (no reason)."""
    for m in mistakes:
        if close(kind, data, canonical(kind, m.value)):
            return CheckFailed(f"{label} is not right. Likely mistake: {m.text}", m.reasons)
    return CheckFailed(f"{label} is not right. {hint}".strip())


def explain_answer_in(answers: dict[str, Answer], key: str, value) -> None:
    """Compare with the reference value (tolerance 1e-6) and name the likely mistake: the detail the
    public check already tells the student (hidden tests use :func:`check_answer_with`)."""
    spec = answers[key]
    if value is None or value is Ellipsis:
        raise NotAnswered(f"`{key}` is not answered: expected {spec.describe}.")
    data = canonical(spec.kind, value, f"`{key}`")
    want = canonical(spec.kind, spec.expected)
    if spec.kind in ("int_list", "shape_list"):
        if len(data) != len(want):
            raise CheckFailed(f"`{key}` should have {len(want)} entries, one per layer, got {len(data)}.")
        item_kind = "int" if spec.kind == "int_list" else "shape"
        problems = [mistaken(item_kind, d, spec.item_mistakes[i], f"entry {i} ({spec.labels[i]})", "")
                    for i, (d, w) in enumerate(zip(data, want)) if d != w]
        if problems:
            raise CheckFailed(f"`{key}`: " + "; ".join(map(str, problems)) + f" {spec.hint}",
                              public_checks.reasons_of(*problems))
        return
    if spec.kind == "array" and data["shape"] != want["shape"]:
        named = next((m for m in spec.shape_hints if list(m.value) == data["shape"]), None)
        raise CheckFailed(f"`{key}` has shape {tuple(data['shape'])}, expected {tuple(want['shape'])}."
                          + (f" Likely mistake: {named.text}" if named else ""), named.reasons if named else [])
    if not close(spec.kind, data, want):
        raise mistaken(spec.kind, data, spec.mistakes, f"`{key}`", spec.hint)


def check_answer_with(explain_answer: Callable[[str, Any], None], key: str, value) -> None:
    """Hidden test: pass or fail with a general message (no expected value, no repeat of the public
    check's detail, which ``explain_answer`` gives); the mistake it recognised stays data (its reasons)."""
    if value is None or value is Ellipsis:
        raise NotAnswered(f"`{key}` is not answered yet.")
    try:
        explain_answer(key, value)
    except AssertionError as exc:
        raise CheckFailed(f"`{key}` does not match the grader's answer; the public check for this "
                          "question says what to look at.", public_checks.reasons_of(exc)) from None


# --- functions students implement -------------------------------------------------------------

@dataclass(frozen=True)
class FunctionCase:
    """One call of a function students implement: a label (may be shown), numpy arrays, keyword
    arguments.  A unit subclasses it with ``expected(name)``: its reference function's output."""

    label: str
    args: tuple  # numpy arrays
    kwargs: dict

    def expected(self, name: str) -> np.ndarray:
        raise NotImplementedError


def check_function_on(name: str, func, cases: list, judge_output: Callable, differs: str) -> None:
    """Hidden test: run the student's function on the grader's cases (objects with ``args`` and
    ``kwargs``); ``judge_output(name, case, output)`` raises on a wrong output.

    ``func`` may be the live function (Otter in the student's kernel) or the engine's replay of the
    outputs it recorded in the sandbox.  The message counts the failing cases and how, never their
    inputs or expected outputs; ``differs`` says how the hidden inputs differ from the notebook's
    examples ("other sizes and strides").
    """
    public_checks.check_callable(name, func)
    raised = shape = values = 0
    failures = []
    for case in cases:
        try:
            out = func(*[a.copy() for a in case.args], **case.kwargs)
        except Exception as exc:
            if public_checks.is_stub(error=exc):
                raise NotAnswered(public_checks.not_implemented_message(name)) from None
            raised += 1
            continue
        if public_checks.is_stub(out):
            raise NotAnswered(public_checks.not_implemented_message(name))
        try:
            judge_output(name, case, out)
        except AssertionError as exc:
            failures.append(exc)
            if isinstance(exc, ShapeMismatch):
                shape += 1
            else:
                values += 1
    wrong = raised + shape + values
    if wrong:
        how = [f"{n} {what}" for n, what in ((raised, "raised an error"), (shape, "with the wrong output shape"),
                                             (values, "with wrong values")) if n]
        raise CheckFailed(f"`{name}` is wrong on {wrong} of {len(cases)} hidden inputs ({', '.join(how)}). "
                          f"They use {differs} than the notebook's examples.", public_checks.reasons_of(*failures))


def probe_calls(cases: Iterable) -> list[dict]:
    """The probe's calls for these cases (plain JSON), each distinct call once, in order."""
    calls, seen = [], set()
    for case in cases:
        call = {"args": [np.asarray(a, dtype=np.float64).tolist() for a in case.args], "kwargs": dict(case.kwargs)}
        key = json.dumps(call, sort_keys=True)
        if key not in seen:
            seen.add(key)
            calls.append(call)
    return calls


# --- the model --------------------------------------------------------------------------------

def _two(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def expected_layers(seed_model: Iterable) -> list[dict]:
    """A seed model (reference layer specs), layer by layer, in the summary form of
    :func:`public_checks.model_layers`."""
    out = []
    for spec in seed_model:
        if isinstance(spec, Conv2DSpec):
            out.append({"kind": "Conv2D", "filters": spec.filters, "kernel_size": _two(spec.kernel_size),
                        "strides": _two(spec.strides), "padding": spec.padding, "activation": spec.activation})
        elif isinstance(spec, MaxPool2DSpec):
            out.append({"kind": "MaxPooling2D", "pool_size": _two(spec.pool_size), "padding": spec.padding})
        elif isinstance(spec, FlattenSpec):
            out.append({"kind": "Flatten"})
        elif isinstance(spec, DenseSpec):
            out.append({"kind": "Dense", "units": spec.units, "activation": spec.activation})
    return out


def check_model_against(model, expected: list[dict], input_shape, owner: str) -> None:
    """Hidden test: the public structural check, from trusted code; its message does not repeat the
    public check's detail (``owner``: whose CNN, e.g. "the lesson's")."""
    try:
        public_checks.check_model(model, expected, list(input_shape))
    except NotAnswered:
        raise
    except AssertionError as exc:
        raise CheckFailed(f"The model's layers do not match {owner} CNN; the public check says where.",
                          public_checks.reasons_of(exc)) from None


# --- training -----------------------------------------------------------------------------------

def training_policy(require_lesson_model: bool, owner: str) -> str:
    """The sentence the feedback shows so students know what the training question scores
    (``owner``: whose architecture, e.g. "the lesson's")."""
    if require_lesson_model:
        return (f"Training policy: this assignment gives training credit only to {owner} architecture "
                "(the structure question must pass).")
    return ("Training policy: the training question scores the retrained accuracy of whatever model you built "
            f"from the allowed layers within the training budget; the structure question checks {owner} architecture.")


@dataclass(frozen=True)
class TrainingFigures:
    """A unit's figures that the training advice compares a student's recipe with."""

    baseline: str  # what the naive recipe reaches, e.g. "The lesson's recipe (10 epochs at batch size 1000) reaches about 0.988."
    steps: int  # the optimizer steps (all epochs) of a recipe measured above the threshold
    epochs: int  # ... its epochs
    batch_size: int  # ... and batch size
    train_size: int  # the training images
    pixel_scale: float  # the notebook's data cell divides the pixels by this
    num_classes: int = 10


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def training_advice(report: dict, figures: TrainingFigures, owner: str = "the lesson's") -> list[str]:
    """What to change, from the retrained recipe's figures (``report``: the verifier's report as JSON) rather
    than a general hint: pixels scaled twice or not at all, a learning rate far from the optimizer's default,
    EarlyStopping that stopped early, too few optimizer steps (a large batch size, or few epochs at an
    already small one), an accuracy within the seed margin (the seeds' spread); a recipe none of these
    fits is pointed at its model and optimizer."""
    advice: list[str] = []
    accuracy = report.get("accuracy")
    top = report.get("input_max")
    scale = figures.pixel_scale
    scaled = isinstance(top, (int, float)) and 0.2 <= top <= 10
    if isinstance(top, (int, float)) and top < 0.2:
        twice = abs(top * scale - 1) < 0.01
        advice.append(f"Your images reach the model's first layer with values of at most {top:.3g}, not about 1"
                      + (f": they are divided by {scale:g} twice (the notebook's data cell already divides the "
                         f"images by {scale:g}, and your tf.data map or Rescaling layer divides them again)"
                         if twice else "") + ". Inputs that small make the first layer learn very slowly: scale "
                      "the pixels to [0, 1] once.")
    elif isinstance(top, (int, float)) and top > 10:
        advice.append(f"Your model trains on unscaled pixels (up to {top:g}): divide them by {scale:g} once, as the "
                      f"notebook's data cell does, or start the model with Rescaling(1/{scale:g}).")
    if isinstance(accuracy, (int, float)) and accuracy <= 1.5 / figures.num_classes:
        advice.append(f"An accuracy of {accuracy:.4f} is what guessing gives ({figures.num_classes} classes): the "
                      "model did not learn at all.")
    lr, default = report.get("learning_rate"), report.get("default_learning_rate")
    optimizer = str(report.get("optimizer") or "the optimizer").split(" (")[0]
    fast = slow = False
    if isinstance(lr, (int, float)) and isinstance(default, (int, float)) and lr > 0 and default > 0:
        ratio = lr / default
        if ratio >= 10:
            fast = True
            advice.append(f"Your learning rate, {lr:g}, is {ratio:.0f} times {optimizer}'s default ({default:g}): "
                          "steps that large make training jump around or diverge. Try the default, or a schedule "
                          "that starts near it and decays.")
        elif ratio <= 0.1:
            slow = True
            advice.append(f"Your learning rate, {lr:g}, is {1 / ratio:.0f} times smaller than {optimizer}'s default "
                          f"({default:g}): training moves slowly. Try the default, or a schedule that starts near it "
                          "and decays.")
    requested = int(report.get("epochs_requested") or 0)
    stopped = [e for e in report.get("seed_epochs") or [report.get("epochs")] if isinstance(e, int) and e < requested]
    if requested and stopped:
        advice.append(f"EarlyStopping stopped training after {min(stopped)} of the {requested} requested epochs: "
                      "a larger patience (or no EarlyStopping) lets the model train longer.")
    steps, batch = int(report.get("steps") or 0), int(report.get("batch_size") or 0)
    reference = (f"a recipe measured above the threshold trains {figures.steps:,} ({figures.epochs} epochs at batch "
                 f"size {figures.batch_size:,})")
    if steps and steps < 0.75 * figures.steps and not fast:
        per_epoch = -(-steps // requested) if requested else -(-figures.train_size // max(batch, 1))
        if batch > 2 * figures.batch_size:
            advice.append(f"Your recipe trains {steps:,} optimizer steps ({_count(requested, 'epoch')} of {per_epoch:,} "
                          f"steps at batch size {batch:,}); {reference}. A smaller batch size gives more steps per epoch "
                          f"(batch size {figures.batch_size:,}: {-(-figures.train_size // figures.batch_size):,} "
                          f"per epoch). {figures.baseline}")
        else:
            advice.append(f"Your recipe trains {steps:,} optimizer steps ({_count(requested, 'epoch')} of {per_epoch:,} "
                          f"steps at batch size {batch:,}); {reference}. At that batch size, more epochs give the model the "
                          "steps it needs.")
    accuracies = [a for a in report.get("accuracies") or [] if isinstance(a, (int, float))]
    if len(accuracies) > 1:
        advice.append(f"Your first accuracy was close to the threshold, so the grader trained {len(accuracies)} seeds "
                      f"and scored the median: from one seed to another the accuracy varied by "
                      f"{max(accuracies) - min(accuracies):.4f} here. A recipe that clears the threshold by more than "
                      "that passes whatever the seed: a few more epochs, or a learning rate that decays over the run.")
    if not advice and scaled and not slow:
        advice.append(f"Your recipe trains {steps:,} optimizer steps on pixels scaled to [0, 1] at a usual learning "
                      f"rate: compare your layers with {owner} CNN (the structure question) and try another "
                      "optimizer or a learning-rate schedule that decays.")
    return advice or [figures.baseline]


def check_accuracy_with(model, threshold: float, *, require_default: bool, check_model: Callable,
                        evaluate: Callable, figures: TrainingFigures, owner: str) -> None:
    """Hidden test: test-set accuracy of the trained model must exceed ``threshold``.

    With Otter alone this evaluates the model object in the notebook's kernel (``evaluate(model)``).
    Our engine passes a model *description* whose recipe the retraining verifier has already
    retrained (in its own process); the accuracy arrives here as a number, with the report the
    advice is written from (:func:`training_advice`; ``figures``: the unit's).
    """
    require = getattr(model, "require_lesson_model", require_default)
    policy = training_policy(require, owner)
    if require:
        try:
            check_model(model)
        except NotAnswered:
            raise
        except AssertionError as exc:
            raise CheckFailed(f"{exc} {policy}") from None
    if model is None or model is Ellipsis:
        raise NotAnswered("`model` is not defined yet.")
    if getattr(model, "fits", None) == []:  # the grader's description: no fit call was recorded
        raise NotAnswered("The model was never trained: call model.fit(...).")
    measure = getattr(model, "measured_accuracy", None)
    if callable(measure):  # a description from the grading engine: the verifier retrained it
        accuracy, summary = measure()
        report = getattr(model, "last_report", None) or {}
    else:
        accuracy, summary, report = evaluate(model), "evaluated the notebook's trained model", {}
    if not accuracy > threshold:  # one line each: the scored run, each piece of advice, the policy
        advice = training_advice(report, figures, owner) if report else [figures.baseline]
        raise CheckFailed("\n".join([f"Test accuracy {accuracy:.4f} is not above {threshold:.2f} ({summary}).",
                                     *advice, policy]))


# --- the student-side module ------------------------------------------------------------------

def _named(m: Mistake) -> list:
    """A mistake as the student-side tables hold it: ``[reason, text]`` (``reason`` a list for several)."""
    return [m.reason if isinstance(m.reason, str) else list(m.reason), m.text]


def public_digest_table(answers: dict[str, Answer]) -> dict:
    """What the student-side module knows of each answer: kind, wording, digests of the answer and
    of each listed mistake (salted with the question key) with the mistake's ``[reason, text]``, array
    shapes and the mistakes wrong shapes name."""
    table = {}
    for key, spec in answers.items():
        entry: dict[str, Any] = {"kind": spec.kind, "describe": spec.describe, "hint": spec.hint}
        if spec.kind in ("int_list", "shape_list"):
            item_kind = "int" if spec.kind == "int_list" else "shape"
            entry["items"] = [
                {"label": spec.labels[i],
                 "answer": digest(canonical(item_kind, want), f"{key}[{i}]"),
                 "mistakes": {digest(canonical(item_kind, m.value), f"{key}[{i}]"): _named(m)
                              for m in spec.item_mistakes[i]}}
                for i, want in enumerate(spec.expected)]
        else:
            entry["answer"] = digest(canonical(spec.kind, spec.expected), key)
            entry["mistakes"] = {digest(canonical(spec.kind, m.value), key): _named(m) for m in spec.mistakes}
            if spec.kind == "array":
                entry["shape"] = list(np.shape(spec.expected))
                entry["shape_hints"] = {json.dumps(list(m.value)): _named(m) for m in spec.shape_hints}
        table[key] = entry
    return table


def public_case_row(name: str, label: str, args, kwargs: dict, expected, mistakes: Iterable[Mistake],
                    shape_hints: Iterable[Mistake] | None = None) -> dict:
    """One public case of a function students implement, as the student-side module holds it: the
    inputs (shown in the notebook), the output's shape and digests of the output and of each mistake
    (with its ``[reason, text]``); ``shape_hints``: the mistakes whose value is a wrong output shape."""
    salt = f"{name}:{label}"
    row = {
        "label": label,
        "args": [np.asarray(a, dtype=np.float64).tolist() for a in args],
        "kwargs": kwargs,
        "shape": list(np.shape(expected)),
        "answer": digest(canonical("array", expected), salt),
        "mistakes": {digest(canonical("array", m.value), salt): _named(m) for m in mistakes},
    }
    if shape_hints is not None:
        row["shape_hints"] = {json.dumps(list(m.value)): _named(m) for m in shape_hints}
    row["hint"] = ""
    return row


def literal(table) -> str:
    return pprint.pformat(table, width=100)


def _unit_part(source: str) -> str:
    """A unit's ``public_checks.py`` without its docstring and its imports of ``__future__`` and of
    this package (the rendered file already holds them)."""
    tree = ast.parse(source)
    drop: set[int] = set()
    for i, node in enumerate(tree.body):
        doc = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
            and isinstance(node.value.value, str)
        ours = isinstance(node, ast.ImportFrom) and (node.module == "__future__"
                                                     or (node.module or "").startswith("assignments."))
        if doc or ours:
            drop.update(range(node.lineno, node.end_lineno + 1))
    lines = [line for n, line in enumerate(source.splitlines(keepends=True), 1) if n not in drop]
    return "".join(lines).strip("\n") + "\n"


def _training_fills(unit_public: ModuleType) -> dict[str, str]:
    """The training check's tables: the verifier's public rules (:mod:`autograder.student_rules`: its
    modules' source, never the answer key) and the assignment's threshold, budget and data facts."""
    from autograder import registry, student_rules

    package = unit_public.__name__.rpartition(".")[0]
    specs = [s for s in registry.all_assignments() if s.package == package]
    if len(specs) != 1:
        return {}  # not an installed assignment's unit: the training check judges compile and fit only
    return {"GRADER_RULES: list = []": literal(student_rules.bundled_sources()),
            "TRAINING: dict = {}": literal(student_rules.training_facts(specs[0]))}


def render_public_module(unit_public: ModuleType, fills: dict[str, str]) -> str:
    """The source of a unit's student-side module: :mod:`assignments.cnn_common.public_checks`, then
    the unit's part (``unit_public``, its imports dropped), with each placeholder line of ``fills``
    (e.g. ``"ANSWER_DIGESTS: dict = {}"``) given its value (Python literal text).  One self-contained
    file, digests only."""
    unit_path = unit_public.__name__.replace(".", "/") + ".py"
    source = (inspect.getsource(public_checks).rstrip("\n")
              + f"\n\n\n# --- the unit's part ({unit_path}) " + "-" * max(3, 70 - len(unit_path)) + "\n\n"
              + _unit_part(inspect.getsource(unit_public)))
    fills = {**_training_fills(unit_public), **fills}
    for placeholder, text in fills.items():
        assert source.count(placeholder) == 1, placeholder
        source = source.replace(placeholder, f"{placeholder[:-2]}{text}")
    header = ("# Generated by `python -m autograder build` from assignments/cnn_common/public_checks.py and "
              f"{unit_path}: do not edit.\n")
    return header + source
