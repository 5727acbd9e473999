"""Per-student variants of the CNN-on-MNIST assignment: every student computes with their own numbers.

A *variant* is the set of numbers one student's questions use (:class:`Givens`): the 3x3 image and
2x2 filter, the edge example's intensities, the pooling matrix, the size question's n, k and stride,
the channel question's image and layer, and the filter counts and Dense width of the model whose
layer table is asked.  The model students *train* stays the lesson's, so the accuracy threshold is
equally fair for everyone.

Which variant a student gets is a deterministic function of (assignment, pool salt, identity):
:func:`assignments.cnn_mnist.public_checks.variant_index`, shared with the student-side module so the
notebook shows the same numbers offline.  The mapping is public on purpose: it is not a secret that
protects anything.  What protects the grade is that the grader takes the identity from the LMS
(who submitted), never from the notebook, so typing a classmate's id only gets one's own variant
graded against a classmate's numbers, and a flag.

The pool is generated once per (assignment, salt, size) by seeded sampling with rejection of
ill-posed candidates (:func:`problems`): no degenerate output, every typical mistake gives an
answer different from the right one and from the other mistakes, no value that overflows a 16-bit
integer, and no candidate that repeats an earlier variant's answer to a whole question.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from assignments.cnn_common import judging
from assignments.cnn_mnist import reference
from assignments.cnn_mnist.answers import LESSON, Givens, _t, answers_for
from assignments.cnn_mnist.public_checks import canonical, normalize_identity, variant_index
from autograder.variants import DEFAULT_POOL_SIZE, VariantConfig

__all__ = ["Givens", "LESSON", "pool", "problems", "variant_for", "normalize_identity", "variant_index",
           "other_variant_matches", "variant_master", "set_student_id"]

INT16_MAX = 2**15 - 1  # a hand-computed answer fits any integer type a student may use


# --- sampling ------------------------------------------------------------------------------

def _rng(assignment: str, salt: str, index: int, attempt: int) -> np.random.Generator:
    seed = hashlib.sha256(f"cnn-variant|{assignment}|{salt}|{index}|{attempt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(seed[:16], "big"))


def _draw(rng: np.random.Generator) -> Givens:
    ints = lambda lo, hi, shape=None: rng.integers(lo, hi + 1, size=shape)  # noqa: E731 - inclusive
    filt = ints(-3, 3, (2, 2))
    return Givens(
        image_3x3=_t(ints(0, 9, (3, 3))),
        filter_2x2=_t(filt),
        edge_high=int(ints(100, 250)), edge_low=int(ints(0, 60)), edge_weight=int(ints(1, 9)),
        pool_input=_t(ints(0, 9, (5, 5))),
        size_n=int(ints(20, 99)), size_k=int(rng.choice([3, 5, 7, 9])), size_stride=int(rng.choice([2, 3])),
        rgb_size=int(ints(24, 96)), rgb_k=int(rng.choice([3, 5])),
        rgb_filters=int(rng.choice([8, 12, 16, 20, 24, 32, 40, 48, 64])), rgb_channels=int(rng.choice([3, 4])),
        table_filters=tuple(int(f) for f in rng.choice([16, 24, 32, 48, 64], size=3)),
        table_dense=int(rng.choice([32, 48, 64, 96, 128])),
    )


def _canon_all(answers) -> dict:
    return {key: canonical(a.kind, a.expected) for key, a in answers.items()}


def _values(data) -> list:
    """Every number in a canonical answer (for the overflow and degeneracy checks)."""
    if isinstance(data, dict):
        return list(data["values"])
    if isinstance(data, list):
        return [v for item in data for v in _values(item)]
    return [data]


def problems(givens: Givens) -> list[str]:
    """Why these numbers make an ill-posed assignment (empty: well-posed)."""

    out = []
    arrays = givens.arrays()
    try:
        answers = answers_for(givens)
    except ValueError as exc:  # a kernel that does not fit, ...
        return [f"not computable: {exc}"]
    for key, a in answers.items():
        want = canonical(a.kind, a.expected)
        if key not in ("total_params", "layer_params") and any(abs(v) > INT16_MAX for v in _values(want)):
            out.append(f"{key}: a value above {INT16_MAX} (overflows a 16-bit integer)")
        if a.kind == "array":
            values = want["values"]
            if sum(v != 0 for v in values) < min(len(values), 2) or len(set(values)) < 2:
                out.append(f"{key}: degenerate (mostly zero or constant) output")
        seen = {}
        for value, _reason, msg in a.mistakes:
            got = canonical(a.kind, value)
            if got == want:
                out.append(f"{key}: the mistake '{msg[:40]}' gives the right answer")
            text = repr(got)
            if text in seen and seen[text] != msg:
                out.append(f"{key}: two mistakes give the same answer ('{seen[text][:30]}', '{msg[:30]}')")
            seen[text] = msg
        for i, items in enumerate(a.item_mistakes):
            item_kind = "int" if a.kind == "int_list" else "shape"
            vals = [repr(canonical(item_kind, m.value)) for m in items]
            if repr(want[i]) in vals or len(set(vals)) != len(vals):
                out.append(f"{key}[{i}]: a mistake gives the right answer or two mistakes coincide")
    image, filt = arrays["image_3x3"], arrays["filter_2x2"]
    if np.array_equal(filt, np.flip(filt)) or np.array_equal(filt, filt.T) or np.count_nonzero(filt) < 3:
        out.append("filter_2x2: symmetric or mostly zero, so flipping or transposing it changes nothing")
    if len(np.unique(image)) < 6:
        out.append("image_3x3: too few distinct values")
    if np.max(np.abs(filt)) < 2:
        out.append("filter_2x2: only 0 and +-1 (every product is trivial)")
    pool = arrays["pool_input"].astype(float)
    for i in range(2):
        for j in range(2):
            block = pool[2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel()
            if np.sum(block == block.max()) > 1 or len(set(block)) < 3:
                out.append(f"pool_input: block ({i}, {j}) has a tied maximum or too few distinct values")
    n, k, s = givens.size_n, givens.size_k, givens.size_stride
    if (n - k) % s == 0:
        out.append("size: (n - k) divisible by the stride, so rounding up and down agree")
    if givens.rgb_filters in (givens.rgb_channels, reference.conv_output_size(givens.rgb_size, givens.rgb_k)):
        out.append("rgb: the filter count equals the channels or the output size (shape mistakes coincide)")
    return out


def _question_signature(answers) -> dict:
    """One key per question that a copied answer would repeat (whole questions, not single ints)."""
    c = _canon_all(answers)
    return {
        "conv_small": repr(c["conv_small"]), "edge_output": repr(c["edge_output"]), "pooled": repr(c["pooled"]),
        "sizes": repr([c[k] for k in ("size_valid", "size_same", "size_full", "size_stride2")]),
        "rgb": repr([c["rgb_output_shape"], c["rgb_params"]]),
        "table": repr([c["layer_output_shapes"], c["layer_params"]]),
    }


@functools.lru_cache(maxsize=8)
def pool(assignment: str, pool_size: int = DEFAULT_POOL_SIZE, salt: str = "") -> tuple[Givens, ...]:
    """The assignment's variants, in order; deterministic in (assignment, pool_size, salt).

    Variant i is the first well-posed candidate drawn from a generator seeded by (assignment,
    salt, i, attempt) whose answer to no whole question repeats the lesson's or an earlier variant's.
    """

    chosen: list[Givens] = []
    # the lesson's answers are public (they are in the lesson): no variant repeats them either
    used: dict[str, set] = {q: {v} for q, v in _question_signature(answers_for(LESSON)).items()}
    for index in range(pool_size):
        for attempt in range(10_000):
            cand = _draw(_rng(assignment, salt, index, attempt))
            if problems(cand):
                continue
            sig = _question_signature(answers_for(cand))
            if any(v in used.get(q, set()) for q, v in sig.items()):
                continue
            for q, v in sig.items():
                used.setdefault(q, set()).add(v)
            chosen.append(cand)
            break
        else:  # pragma: no cover - the ranges above leave thousands of candidates
            raise RuntimeError(f"no well-posed variant {index} for {assignment!r} after 10,000 draws")
    return tuple(chosen)


def variant_for(assignment: str, identity: str, config: VariantConfig) -> tuple[int, Givens]:
    """(index, numbers) of the student with this LMS identity; the lesson's numbers when off."""
    if not config.enabled:
        return -1, LESSON
    index = variant_index(assignment, identity, config.pool_size, config.salt)
    return index, pool(assignment, config.pool_size, config.salt)[index]


@functools.lru_cache(maxsize=4096)
def _answers(givens: Givens):

    return answers_for(givens)


#: answers that no two variants share (whole arrays and layer lists): one match is evidence
DISTINCTIVE = frozenset({"conv_small", "edge_output", "pooled", "layer_output_shapes", "layer_params"})


def other_variant_matches(values: dict, own: int, variants: tuple[Givens, ...],
                          min_keys: int = 3) -> dict[int, list[str]]:
    """Variants (other than ``own``) for which answers in ``values`` are right although they are
    wrong for ``own``: {variant index: [answer keys]}.  Unanswered or unreadable values are skipped.

    Single ints coincide across variants by chance (two students' n may be equal), so a variant is
    reported only when it matches one of the :data:`DISTINCTIVE` answers or at least ``min_keys``."""

    def right(answers, key, value) -> bool:
        try:
            judging.explain_answer_in(answers, key, value)
            return True
        except (AssertionError, ValueError, TypeError):
            return False

    own_answers = _answers(variants[own])
    wrong = {k: v for k, v in values.items() if k in own_answers and v is not None and v is not Ellipsis
             and not right(own_answers, k, v)}
    matches: dict[int, list[str]] = {}
    if not wrong:
        return matches
    for i, givens in enumerate(variants):
        if i == own:
            continue
        answers = _answers(givens)
        keys = [k for k, v in wrong.items() if right(answers, k, v)]
        if len(keys) >= min_keys or DISTINCTIVE.intersection(keys):
            matches[i] = keys
    return matches


# --- the variant master notebook ----------------------------------------------------------------

ID_HELP = ("# Your numbers depend on who you are. Enter your id exactly as the course's site knows you:\n"
           "# Gradescope: your e-mail; Canvas: your Canvas user id (the number at the end of the address of\n"
           "# your page under People); JupyterHub / nbgrader: your login. The grader uses the id of whoever\n"
           "# submits: another id only gets you someone else's numbers.\n")

SAMPLE_ID = "ada@example.edu"  # the built solution notebook's id
ID_LINE = 'STUDENT_ID = ...  # in quotes, e.g. "ada@uni.edu"'
GIVENS_CELL = ID_HELP + ID_LINE + '''

import numpy as np
import cnn_checks

numbers = cnn_checks.use_student(STUDENT_ID)
image_3x3, filter_2x2 = numbers["image_3x3"], numbers["filter_2x2"]
edge_image, edge_filter = numbers["edge_image"], numbers["edge_filter"]
pool_input = numbers["pool_input"]
cnn_checks.show_numbers()'''

#: question -> (prompt markdown, solution code) of the variant notebook
VARIANT_CELLS = {
    "conv_small": (
        "**Question 1: Convolution by hand.** Convolve your `image_3x3` with your `filter_2x2` (printed by the first cell; no padding, "
        "stride 1) **by hand** and assign the 2x2 result to `conv_small` as a NumPy array.",
        "conv_small = np.array([[np.sum(image_3x3[i:i + 2, j:j + 2] * filter_2x2) for j in range(2)] for i in range(2)])  # SOLUTION\n"
        "conv_small"),
    "edge_output": (
        "**Question 2: Edge detection.** A horizontal edge detector. Convolve your 6x5 `edge_image` (three bright rows above three "
        "darker rows) with your 3x3 `edge_filter` (rows w, 0, -w), no padding, stride 1; the first cell prints "
        "both. Assign the result to `edge_output` as a NumPy array. Which rows light up, and why?",
        "edge_output = np.array([[np.sum(edge_image[i:i + 3, j:j + 3] * edge_filter) for j in range(3)] for i in range(4)])  # SOLUTION\n"
        "edge_output"),
    "output_sizes": (
        "**Question 3: Output sizes.** An n x n image is convolved with a k x k filter; your n, k and stride s are printed by the "
        "first cell (and are in `numbers`). Give the output height (an `int`) for each case: `size_valid` (valid, "
        "stride 1), `size_same` (same, stride 1), `size_full` (full, stride 1), `size_stride2` (valid, stride s).",
        'n, k, s = numbers["size_n"], numbers["size_k"], numbers["size_stride"]\n'
        "size_valid = n - k + 1  # SOLUTION\nsize_same = n  # SOLUTION\nsize_full = n + k - 1  # SOLUTION\n"
        "size_stride2 = (n - k) // s + 1  # SOLUTION"),
    "rgb_conv": (
        "**Question 4: Channels and parameters.** An image with C channels makes a k x k filter really k x k x C. Your image size, number of "
        "channels C, filter size k and number of filters are printed by the first cell: a `Conv2D(filters, (k, k))` "
        "layer (valid padding, with biases) is applied to the image. Give the layer's output shape as a tuple "
        "`rgb_output_shape = (height, width, channels)` and its number of trainable parameters `rgb_params`.",
        'size, c, k, f = numbers["rgb_size"], numbers["rgb_channels"], numbers["rgb_k"], numbers["rgb_filters"]\n'
        "rgb_output_shape = (size - k + 1, size - k + 1, f)  # SOLUTION\nrgb_params = (k * k * c + 1) * f  # SOLUTION"),
    "max_pooling": (
        "## Part 3: max pooling\n\n**Question 5: Max pooling by hand.** Apply 2x2 max pooling (stride 2, valid: incomplete blocks at the "
        "edge are dropped, as in Keras) to your 5x5 `pool_input` by hand. Assign the result to `pooled` as a NumPy "
        "array.",
        "pooled = pool_input[:4, :4].reshape(2, 2, 2, 2).max(axis=(1, 3))  # SOLUTION\npooled"),
    "layer_table": (
        "## Part 4: shapes and parameters of a CNN like the lesson's\n\nThe lesson's architecture with your own "
        "filter counts f1, f2, f3 and Dense width d (printed by the first cell), on 28x28x1 inputs:\n\n```python\n"
        "Conv2D(f1, (3, 3), activation='relu')\nMaxPooling2D((2, 2))\nConv2D(f2, (3, 3), activation='relu')\n"
        "MaxPooling2D((2, 2))\nConv2D(f3, (3, 3), activation='relu')\nFlatten()\nDense(d, activation='relu')\n"
        "Dense(10, activation='softmax')\n```\n\n**Question 6: Shapes and parameters of the CNN.** Without running Keras, give "
        "`layer_output_shapes`, a list of the 8 output shapes (tuples without the batch axis, e.g. `(26, 26, f1)`), "
        "`layer_params`, a list of the 8 parameter counts, and `total_params`. (The model you train in Part 6 is "
        "the lesson's, for everyone.)",
        'f1, f2, f3 = numbers["table_filters"]\nd = numbers["table_dense"]\n'
        "layer_output_shapes = [(26, 26, f1), (13, 13, f1), (11, 11, f2), (5, 5, f2), (3, 3, f3), (9 * f3,), (d,), (10,)]  # SOLUTION\n"
        "layer_params = [(3*3*1 + 1) * f1, 0, (3*3*f1 + 1) * f2, 0, (3*3*f2 + 1) * f3, 0, (9*f3 + 1) * d, (d + 1) * 10]  # SOLUTION\n"
        "total_params = sum(layer_params)  # SOLUTION"),
}
GIVENS_MARKER = "# The numbers the questions use."
#: phrases of other markdown cells that would be wrong with one's own numbers (each occurs once)
TEXT_CHANGES = {
    "every layer's output shape and parameter count of the lesson's CNN,":
        "every layer's output shape and parameter count of a CNN like the lesson's (with your own numbers),",
    "The public check runs it on the lesson's examples;": "The public check runs it on your notebook's examples;",
}


def variant_master(nb) -> None:
    """Rewrite a master notebook (nbformat, in place) for variants: the first code cell asks for the
    student's id and shows their numbers; the by-hand questions' prompts and solutions use them."""
    import re

    done: dict[str, int] = {"givens": 0, **{f"{q}:prompt": 0 for q in VARIANT_CELLS},
                            **{f"{q}:solution": 0 for q in VARIANT_CELLS}}
    done.update({phrase: 0 for phrase in TEXT_CHANGES})
    question, in_solution, prompted = None, False, False
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == "markdown":
            for phrase, new in TEXT_CHANGES.items():
                if phrase in src:
                    cell.source = src = src.replace(phrase, new)
                    done[phrase] += 1
        if cell.cell_type == "code" and GIVENS_MARKER in src:
            cell.source = GIVENS_CELL
            done["givens"] += 1
            continue
        if cell.cell_type == "raw":
            m = re.match(r"#\s*BEGIN QUESTION\s*\nname:\s*(\S+)", src.strip())
            if m:
                question, prompted = m.group(1), False
            elif re.match(r"#\s*BEGIN SOLUTION", src.strip()):
                in_solution = True
            elif re.match(r"#\s*END SOLUTION", src.strip()):
                in_solution = False
            elif re.match(r"#\s*END QUESTION", src.strip()):
                question = None
            continue
        if question not in VARIANT_CELLS:
            continue
        prompt, solution = VARIANT_CELLS[question]
        if cell.cell_type == "markdown" and not prompted and not in_solution:
            cell.source, prompted = prompt, True
            done[f"{question}:prompt"] += 1
        elif cell.cell_type == "code" and in_solution:
            cell.source = solution
            done[f"{question}:solution"] += 1
    wrong = {k: n for k, n in done.items() if n != 1}
    if wrong:
        raise ValueError(f"the master notebook does not have the cells variants rewrite exactly once: {wrong}")


def set_student_id(nb, identity: str) -> None:
    """Fill the variant notebook's id line (nbformat, in place): the built solution's, tests'."""
    hits = [c for c in nb.cells if c.cell_type == "code" and ID_LINE in c.source]
    if len(hits) != 1:
        raise ValueError(f"expected one cell with the id line, found {len(hits)}")
    hits[0].source = hits[0].source.replace(ID_LINE, f"STUDENT_ID = {identity!r}")
