"""The digits unit's answer key: what each question asks and how an answer is judged.

Every expected value is computed here from :mod:`assignments.digits.reference`; nothing is
pasted.  Each question lists the answers that typical mistakes produce (flipped filter,
TensorFlow's one-sided "same" padding at stride 2 taken as symmetric, stride ignored, windows
that do not overlap, forgotten bias, ReLU or input channels, channels-first shapes) so feedback
names the mistake instead of only saying "wrong".

Hidden tests call :func:`check_answer`, :func:`check_function`, :func:`check_model` and
:func:`check_accuracy`; their messages pass or fail in general terms and never show a hidden
input or an expected value.  Public tests call the same-named functions of the student-side
module ``digits_checks.py`` (:mod:`assignments.digits.public_checks` filled with digests by
:func:`render_public_module`).  The judging machinery is the CNN units' shared
:mod:`assignments.cnn_common.judging`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from assignments.cnn_common import judging
from assignments.cnn_common import misconceptions as M
from assignments.cnn_common.judging import Answer, Mistake
from assignments.digits import public_checks, reference
from assignments.digits.data import N_TRAIN, NUM_CLASSES, PIXEL_MAX
from assignments.digits.public_checks import canonical

#: Retrained test accuracy (on the last 360 images) must be above this; see the master notebook
#: for the measurements behind it.
ACCURACY_THRESHOLD = 0.90


def _conv(image, kernel, **kw):
    return reference.conv2d(image, kernel, **kw)


def _conv_answers() -> list[Answer]:
    patch, sobel = reference.PATCH, reference.SOBEL_X
    valid = _conv(patch, sobel)
    same2 = _conv(patch, sobel, stride=2, padding="same")
    return [
        Answer("conv_patch", "array", "a 2x2 numpy array", valid,
               [Mistake(_conv(patch, np.flip(sobel)), M.FLIPPED_FILTER,
                        "flipped the filter (the signs come out reversed); in deep learning "
                        "the filter slides over the image as is (cross-correlation)"),
                Mistake(_conv(patch, sobel.T), M.SWAPPED_AXES,
                        "transposed the filter: that is the horizontal-edge Sobel filter"),
                Mistake(valid.T, M.SWAPPED_AXES, "rows and columns of the result are swapped")],
               hint="Top-left entry: multiply the top-left 3x3 block of the patch by the filter entry by entry and add.",
               shape_hints=[Mistake((4, 4), M.PADDING_MIXUP,
                                    "a 4x4 result is what 'same' padding gives; this question uses no padding"),
                            Mistake((6, 6), M.PADDING_MIXUP, "a 6x6 result is 'full' padding; this question uses no padding")]),
        Answer("conv_same_stride2", "array", "a 2x2 numpy array", same2,
               [Mistake(_conv(patch, sobel, stride=2, padding=1), M.PADDING_MIXUP,
                        "padded zeros before the patch (top and left), as padding=1 on every side does; at stride 2 on "
                        "a 4x4 input TensorFlow's 'same' pads one row and one column in all, and puts them after "
                        "(bottom and right)"),
                Mistake(_conv(patch, np.flip(sobel), stride=2, padding="same"), M.FLIPPED_FILTER,
                        "flipped the filter (the signs come out reversed)")],
               hint="Output size ceil(4 / 2) = 2; pad max((2 - 1) * 2 + 3 - 4, 0) = 1 zero in total.",
               shape_hints=[Mistake((4, 4), M.IGNORED_STRIDE, "ignored the stride of 2: the filter moves two pixels at a time"),
                            Mistake((1, 1), M.PADDING_MIXUP,
                                    "that is 'valid' padding at stride 2; 'same' pads so the output has ceil(4 / 2) rows")]),
    ]


def _size_answers() -> list[Answer]:
    n, k = reference.SIZE_N, reference.SIZE_K
    size = reference.conv_output_size
    valid, same, full = size(n, k), size(n, k, padding="same"), size(n, k, padding=k - 1)
    stride2, same2 = size(n, k, stride=2), size(n, k, stride=2, padding="same")
    return [
        Answer("size_valid", "int", "an int", valid,
               [Mistake(same, M.PADDING_MIXUP, "that is the size with 'same' padding; 'valid' means no padding, so "
                                               "the filter fits n - k + 1 times"),
                Mistake(full, M.PADDING_MIXUP, "that is 'full' padding (k - 1 zeros on each side)"),
                Mistake(n - k, M.FORGOT_PLUS_ONE, "forgot the + 1 (the first position counts too)")],
               hint="Valid: output = n - k + 1."),
        Answer("size_same", "int", "an int", same,
               [Mistake(valid, M.PADDING_MIXUP, "that is 'valid' padding; 'same' pads so the output keeps the input "
                                                "size at stride 1"),
                Mistake(full, M.PADDING_MIXUP, "that is 'full' padding")],
               hint="'same' keeps the input size at stride 1."),
        Answer("size_stride2", "int", "an int", stride2,
               [Mistake(-(-(n - k) // 2) + 1, M.POOLING_FLOOR, "rounded up: a window that does not fit is dropped, so "
                                                              "use floor((n - k) / s) + 1"),
                Mistake(valid, M.IGNORED_STRIDE, "ignored the stride of 2"),
                Mistake((n - k) // 2, M.FORGOT_PLUS_ONE, "forgot the + 1")],
               hint="Valid with stride s: floor((n - k) / s) + 1."),
        Answer("size_same_stride2", "int", "an int", same2,
               [Mistake(n, M.IGNORED_STRIDE, "ignored the stride: 'same' keeps the size only at stride 1; at stride s "
                                             "it gives ceil(n / s)"),
                Mistake(stride2, M.PADDING_MIXUP, "that is 'valid' padding at stride 2")],
               hint="'same' at stride s: ceil(n / s)."),
    ]


def _pool_answers() -> list[Answer]:
    x, p, s = reference.POOL_INPUT, reference.POOL_SIZE, reference.POOL_STRIDE
    windows = np.lib.stride_tricks.sliding_window_view(x, (p, p))[::s, ::s]
    return [
        Answer("pooled", "array", "a 2x2 numpy array", reference.max_pool2d(x, pool_size=p, stride=s),
               [Mistake(windows.min(axis=(-2, -1)), M.NOT_MAX_POOLING, "took the minimum instead of the maximum"),
                Mistake(windows.mean(axis=(-2, -1)), M.NOT_MAX_POOLING, "took the average instead of the maximum"),
                Mistake(reference.max_pool2d(x, pool_size=2), M.POOL_WINDOW_SIZE,
                        "used 2x2 windows; this pooling uses 3x3 windows that overlap")],
               hint="The 3x3 windows start at rows and columns 0 and 2, so they share the middle row and column.",
               shape_hints=[Mistake((1, 1), M.IGNORED_STRIDE,
                                    "moved the window by 3 (its size); here it moves by 2, so neighbouring windows overlap"),
                            Mistake((3, 3), M.POOLING_FLOOR,
                                    "a 3x3 result means stride 1 or windows kept past the edge; the stride is 2 and "
                                    "'valid' pooling drops windows that do not fit: floor((5 - 3) / 2) + 1 = 2")])]


def _variant(specs, kind: str, index: int | None = None, **changes):
    """The unit's model with layers of one kind (or only the index-th of them) changed."""
    out, seen = [], 0
    for spec in specs:
        if type(spec).__name__ == kind:
            if index is None or seen == index:
                spec = dataclasses.replace(spec, **changes)
            seen += 1
        out.append(spec)
    return tuple(out)


def _table_answers() -> list[Answer]:
    seed, shape = reference.SEED_MODEL, reference.INPUT_SHAPE
    table = lambda specs: reference.layer_table(shape, specs)  # noqa: E731
    shape_variants = [
        Mistake(table(_variant(seed, "Conv2DSpec", 0, padding="valid")), M.PADDING_MIXUP,
                "the first Conv2D has padding='same', which keeps 8x8; only the second one is 'valid'"),
        Mistake(table(_variant(seed, "Conv2DSpec", 1, padding="same")), M.PADDING_MIXUP,
                "the second Conv2D uses the default 'valid' padding, which shrinks each side by k - 1"),
    ]
    one_channel = table(seed)
    one_channel[2] = dataclasses.replace(one_channel[2], params=reference.conv2d_params((3, 3), 1, 32))
    param_variants = [
        Mistake(table(_variant(_variant(seed, "Conv2DSpec", use_bias=False), "DenseSpec", use_bias=False)),
                M.FORGOT_BIAS, "forgot the bias terms (one per filter or unit)"),
        Mistake(one_channel, M.FORGOT_INPUT_CHANNELS,
                "forgot the input channels of the second Conv2D (each of its filters is 3x3x16)"),
        Mistake(table(_variant(seed, "Conv2DSpec", 1, padding="same")), M.PADDING_MIXUP,
                "the Flatten size: the second Conv2D is 'valid', so it gives 2x2x32 = 128 values"),
    ]
    return judging.layer_table_answers(
        shape, seed, shape_variants, param_variants,
        "Work layer by layer: 'same' keeps 8x8, pooling halves, a valid 3x3 convolution shrinks by 2.",
        lambda in_ch: f"forgot the input channels: each filter spans all {in_ch} channels of the previous layer")


def _answers() -> dict[str, Answer]:
    answers = [*_conv_answers(), *_size_answers(), *_pool_answers(), *_table_answers()]
    return {a.key: a for a in answers}


ANSWERS: dict[str, Answer] = _answers()


# --- judging plain answers -------------------------------------------------------------------

ATOL = judging.ATOL


def explain_answer(key: str, value) -> None:
    """Compare with the reference value (tolerance 1e-6) and name the likely mistake (what the
    public check already tells the student)."""
    judging.explain_answer_in(ANSWERS, key, value)


def check_answer(key: str, value) -> None:
    """Hidden test: pass or fail with a general message (no expected value)."""
    judging.check_answer_with(explain_answer, key, value)


# --- functions students implement ----------------------------------------------------------

class FunctionCase(judging.FunctionCase):
    def expected(self, name: str) -> np.ndarray:
        return REFERENCE_FUNCTIONS[name](*self.args, **self.kwargs)


REFERENCE_FUNCTIONS: dict[str, Callable] = {"conv_layer": reference.conv_layer, "max_pool": reference.max_pool}


def public_cases(name: str) -> list[FunctionCase]:
    """Cases shown to students (their inputs are in the notebook's text)."""
    patch = reference.PATCH[:, :, None]
    if name == "conv_layer":
        two_channels = np.stack([reference.PATCH, reference.PATCH.T], axis=-1)  # (4, 4, 2)
        kernels = np.stack([np.stack([reference.SOBEL_X, reference.SOBEL_X.T], axis=-1),
                            np.stack([reference.SOBEL_X.T, -reference.SOBEL_X], axis=-1)], axis=-1)  # (3, 3, 2, 2)
        return [
            FunctionCase("the patch, the Sobel filter and bias -20", (patch, reference.SOBEL_X[:, :, None, None],
                                                                      np.array([-20.0])), {}),
            FunctionCase("a 4x4x2 input with two 3x3x2 filters", (two_channels, kernels, np.array([1.0, -2.0])), {}),
        ]
    return [
        FunctionCase("pool_input, 3x3 windows, stride 2", (reference.POOL_INPUT[:, :, None],),
                     {"size": reference.POOL_SIZE, "stride": reference.POOL_STRIDE}),
        FunctionCase("the patch, 2x2 windows, default stride", (patch,), {"size": 2}),
    ]


def hidden_cases(name: str, seed: int = 2026) -> list[FunctionCase]:
    """Random cases the grader chooses: sizes, channels and strides the public cases do not show."""
    rng = np.random.default_rng(seed + (0 if name == "conv_layer" else 1))
    cases = []
    if name == "conv_layer":
        for kh, kw, c, f in [(3, 3, 1, 2), (2, 2, 3, 4), (3, 2, 2, 3), (1, 1, 3, 2), (3, 3, 4, 1), (2, 3, 1, 3)]:
            h, w = int(rng.integers(kh + 1, 9)), int(rng.integers(kw + 1, 9))
            x = rng.normal(size=(h, w, c)).round(3)
            kernels = rng.normal(size=(kh, kw, c, f)).round(3)
            bias = rng.normal(size=(f,)).round(3)
            cases.append(FunctionCase(f"random {h}x{w}x{c} input, {f} filters of {kh}x{kw}", (x, kernels, bias), {}))
    else:
        for size, stride, c in [(2, None, 1), (3, 2, 2), (2, 1, 3), (3, None, 2), (2, 3, 1)]:
            h, w = int(rng.integers(size + 2, 11)), int(rng.integers(size + 2, 11))
            x = rng.normal(size=(h, w, c)).round(3)
            kwargs = {"size": size} if stride is None else {"size": size, "stride": stride}
            cases.append(FunctionCase(f"random {h}x{w}x{c} input, size {size}, stride {stride or size}", (x,), kwargs))
    return cases


def _function_mistakes(name: str, case: FunctionCase) -> list[Mistake]:
    if name == "conv_layer":
        x, kernels, bias = case.args
        conv = reference.conv2d(x, kernels)
        return [
            Mistake(conv + bias, M.FORGOT_RELU, "forgot the ReLU (negative values must become 0)"),
            Mistake(np.maximum(conv, 0), M.FORGOT_BIAS, "forgot the bias (one per filter, added before the ReLU)"),
            Mistake(np.maximum(conv, 0) + bias, (M.FORGOT_RELU, M.FORGOT_BIAS),
                    "added the bias after the ReLU; add it before"),
            Mistake(np.maximum(reference.conv2d(x, kernels[::-1, ::-1]) + bias, 0), M.FLIPPED_FILTER,
                    "flipped the kernel (deep-learning convolution does not flip it)"),
            Mistake(np.maximum(reference.conv2d(x[:, :, :1], kernels[:, :, :1]) + bias, 0), M.FORGOT_INPUT_CHANNELS,
                    "used only the first input channel; each filter sums over all channels"),
        ]
    (x,) = case.args
    size, stride = case.kwargs["size"], case.kwargs.get("stride") or case.kwargs["size"]
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(0, 1))[::stride, ::stride]
    return [Mistake(windows.min(axis=(-2, -1)), M.NOT_MAX_POOLING, "took the minimum instead of the maximum"),
            Mistake(windows.mean(axis=(-2, -1)), M.NOT_MAX_POOLING, "took the average instead of the maximum")]


def _shape_mistake(name: str, case: FunctionCase, shape: list) -> Mistake | None:
    """The typical mistake a wrong output shape shows on this case (its value: the shape), None for none."""
    if name == "conv_layer":
        if len(shape) == 2:
            return Mistake(shape, M.DROPPED_AXIS, "dropped the filter axis; the result is (height, width, filters).")
        return None
    (x,) = case.args
    size = case.kwargs["size"]
    stride = case.kwargs.get("stride") or size
    if len(shape) == 2:
        return Mistake(shape, M.DROPPED_AXIS, "dropped the channel axis; pool each channel separately.")
    if stride != size and shape[:2] == [(n - size) // size + 1 for n in x.shape[:2]]:
        return Mistake(shape, M.IGNORED_STRIDE, "ignored the stride (windows move by `stride`, not by `size`).")
    if shape[:2] == [-(-(n - size) // stride) + 1 for n in x.shape[:2]]:
        return Mistake(shape, M.POOLING_FLOOR, "kept windows that do not fit; use floor((n - size) / stride) + 1.")
    return None


def _public_shape_hints(name: str, case: FunctionCase) -> list[Mistake]:
    """The wrong shapes typical mistakes give on a public case, with their mistakes (shapes are not secret)."""
    x = case.args[0]
    if name == "conv_layer":
        kh, kw, _, f = case.args[1].shape
        candidates = [[x.shape[0] - kh + 1, x.shape[1] - kw + 1], [x.shape[0], x.shape[1], f]]
    else:
        size = case.kwargs["size"]
        stride = case.kwargs.get("stride") or size
        candidates = [[(n - size) // stride + 1 for n in x.shape[:2]],
                      [(n - size) // size + 1 for n in x.shape[:2]] + [x.shape[2]],
                      [-(-(n - size) // stride) + 1 for n in x.shape[:2]] + [x.shape[2]]]
    want = list(case.expected(name).shape)
    return [m for m in (_shape_mistake(name, case, c) for c in candidates if c != want) if m is not None]


def judge_function_output(name: str, case: FunctionCase, output) -> None:
    """Compare one output of a student's function with the reference, naming the mistake."""
    want = canonical("array", case.expected(name))
    data = canonical("array", output, f"{name} on {case.label}")
    if data["shape"] != want["shape"]:
        named = _shape_mistake(name, case, data["shape"])
        hint = (f" Likely mistake: {named.text}" if named else
                " Valid padding, stride 1: (H - kh + 1, W - kw + 1, number of filters)." if name == "conv_layer" else "")
        raise public_checks.ShapeMismatch(f"{name} on {case.label}: shape {tuple(data['shape'])}, expected "
                                          f"{tuple(want['shape'])}.{hint}", named.reasons if named else [])
    if not judging.close("array", data, want):
        raise judging.mistaken("array", data, _function_mistakes(name, case), f"{name} on {case.label}",
                               "The values differ from the reference.")


def check_function(name: str, func) -> None:
    """Hidden test: run the student's function on hidden random cases.

    ``func`` may be the live function (Otter in the student's kernel) or the engine's replay of
    the outputs it recorded in the sandbox.  The message counts the failing cases and how, never
    their inputs or expected outputs.
    """
    judging.check_function_on(name, func, hidden_cases(name), judge_function_output,
                              "other sizes, channel counts and filter counts" if name == "conv_layer"
                              else "other sizes, strides and channel counts")


# --- the model -------------------------------------------------------------------------------

def expected_layers() -> list[dict]:
    """The unit's CNN, layer by layer, in the summary form of :func:`public_checks.model_layers`."""
    return judging.expected_layers(reference.SEED_MODEL)


def check_model(model) -> None:
    """Hidden test: the public structural check, from trusted code, with a general message."""
    judging.check_model_against(model, expected_layers(), reference.INPUT_SHAPE, "the unit's")


# --- training ---------------------------------------------------------------------------------

REQUIRE_LESSON_MODEL = False


def training_policy(require_lesson_model: bool = REQUIRE_LESSON_MODEL) -> str:
    return judging.training_policy(require_lesson_model, "the unit's")


# What the advice compares a failed recipe with: the training question's measured recipes (its table: Adam for
# 20 epochs at batch size 32 scored 0.914 to 0.931 over five seeds).
TRAINING_FIGURES = judging.TrainingFigures(
    baseline=("With 1,437 training images one epoch is only 45 steps at batch size 32 (the training question "
              "lists measured recipes)."),
    steps=20 * 45, epochs=20, batch_size=32, train_size=N_TRAIN, pixel_scale=float(PIXEL_MAX), num_classes=NUM_CLASSES)


def check_accuracy(model, threshold: float = ACCURACY_THRESHOLD) -> None:
    """Hidden test: accuracy on the 360 test digits (retrained by our engine's verifier, or evaluated
    live under Otter alone) must exceed the threshold."""
    judging.check_accuracy_with(
        model, threshold, require_default=REQUIRE_LESSON_MODEL, check_model=check_model, evaluate=evaluate_live_model,
        figures=TRAINING_FIGURES, owner="the unit's")


def evaluate_live_model(model) -> float:
    """Accuracy of a live Keras model on the 360 test digits, pixels divided by 16."""
    from assignments.digits.data import load_digits_split

    _, (x_test, y_test) = load_digits_split()
    x = x_test.reshape(-1, 8, 8, 1).astype("float32") / PIXEL_MAX
    probs = np.asarray(model.predict(x, batch_size=360, verbose=0))
    return float(np.mean(np.argmax(probs, axis=-1) == y_test))


# --- the student-side module --------------------------------------------------------------------

def _public_case_table() -> dict:
    return {name: [judging.public_case_row(name, case.label, case.args, case.kwargs, case.expected(name),
                                           _function_mistakes(name, case), _public_shape_hints(name, case))
                   for case in public_cases(name)]
            for name in REFERENCE_FUNCTIONS}


def render_public_module() -> str:
    """Source of ``digits_checks.py``: the shared student-side module and :mod:`assignments.digits.public_checks`,
    with the tables filled in."""
    lit = judging.literal
    return judging.render_public_module(public_checks, {
        "ANSWER_DIGESTS: dict = {}": lit(judging.public_digest_table(ANSWERS)),
        "EXPECTED_LAYERS: list = []": lit(expected_layers()),
        "EXPECTED_INPUT_SHAPE: list = []": lit(list(reference.INPUT_SHAPE)),
        "PUBLIC_CASES: dict = {}": lit(_public_case_table()),
        "VARIANTS: dict = {}": lit({}),
    })


def probe_plan() -> dict[str, list[dict]]:
    """Every call the grading engine makes on each student function in the sandbox (public + hidden)."""
    return {name: judging.probe_calls(public_cases(name) + hidden_cases(name)) for name in REFERENCE_FUNCTIONS}
