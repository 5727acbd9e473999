"""Per-student variants: every student computes with their own numbers.

A *variant* is the set of numbers one student's questions use (:class:`Givens`): the 3x3 image and
2x2 filter, the edge example's intensities, the pooling matrix, the size question's n, k and stride,
the channel question's image and layer, and the filter counts and Dense width of the model whose
layer table is asked.  The model students *train* stays the lesson's, so the accuracy threshold is
equally fair for everyone.

Which variant a student gets is a deterministic function of (assignment, pool salt, identity):
:func:`autograder.public_checks.variant_index`, shared with the student-side module so the
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
from dataclasses import asdict, dataclass, field

import numpy as np

from autograder import reference
from autograder.public_checks import canonical, normalize_identity, variant_index

__all__ = ["Givens", "LESSON", "VariantConfig", "pool", "problems", "variant_for", "normalize_identity",
           "variant_index", "other_variant_matches"]

DEFAULT_POOL_SIZE = 64
INT16_MAX = 2**15 - 1  # a hand-computed answer fits any integer type a student may use


def _t(rows) -> tuple:
    return tuple(tuple(int(v) for v in row) for row in np.asarray(rows))


@dataclass(frozen=True)
class Givens:
    """The numbers one variant's questions use (plain ints and tuples: hashable, JSON-able)."""

    image_3x3: tuple
    filter_2x2: tuple
    edge_high: int  # the edge image's top three rows (the bottom three are edge_low)
    edge_low: int
    edge_weight: int  # the edge filter's rows are (w, 0, -w)
    pool_input: tuple  # 5x5
    size_n: int
    size_k: int
    size_stride: int
    rgb_size: int
    rgb_k: int
    rgb_filters: int
    rgb_channels: int
    table_filters: tuple  # the three Conv2D layers' filter counts of the model to analyse
    table_dense: int  # the hidden Dense layer's width

    # --- arrays and models derived from the numbers ---------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """What the notebook's first cells define (the names of :data:`autograder.checks.GIVENS`)."""
        edge_image = np.repeat(np.array([self.edge_high, self.edge_low]), 3)[:, None] * np.ones((1, 5), int)
        edge_filter = np.array([self.edge_weight, 0, -self.edge_weight])[:, None] * np.ones((1, 3), int)
        return {"image_3x3": np.array(self.image_3x3), "filter_2x2": np.array(self.filter_2x2),
                "edge_image": edge_image, "edge_filter": edge_filter, "pool_input": np.array(self.pool_input)}

    def table_model(self) -> tuple:
        f1, f2, f3 = self.table_filters
        return (reference.Conv2DSpec(f1, (3, 3), activation="relu"), reference.MaxPool2DSpec((2, 2)),
                reference.Conv2DSpec(f2, (3, 3), activation="relu"), reference.MaxPool2DSpec((2, 2)),
                reference.Conv2DSpec(f3, (3, 3), activation="relu"), reference.FlattenSpec(),
                reference.DenseSpec(self.table_dense, activation="relu"),
                reference.DenseSpec(10, activation="softmax"))

    def to_json(self) -> dict:
        return {k: (list(map(list, v)) if isinstance(v, tuple) and v and isinstance(v[0], tuple) else
                    list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "Givens":
        return cls(**{k: (_t(v) if k in ("image_3x3", "filter_2x2", "pool_input") else
                          tuple(v) if k == "table_filters" else int(v)) for k, v in data.items()})


# The lesson's numbers: what every student gets when variants are off.
LESSON = Givens(
    image_3x3=((3, 1, 2), (0, 4, 1), (2, 5, 3)),
    filter_2x2=((1, 2), (0, -1)),
    edge_high=200, edge_low=0, edge_weight=10,
    pool_input=((1, 3, 2, 0, 7), (4, 6, 1, 5, 2), (0, 2, 9, 1, 3), (8, 1, 3, 4, 6), (5, 7, 2, 8, 1)),
    size_n=28, size_k=5, size_stride=2,
    rgb_size=32, rgb_k=3, rgb_filters=16, rgb_channels=3,
    table_filters=(32, 64, 64), table_dense=64,
)


@dataclass(frozen=True)
class VariantConfig:
    """An assignment's variant settings.  ``enabled=False`` (the default) is today's behaviour."""

    enabled: bool = False
    pool_size: int = DEFAULT_POOL_SIZE
    salt: str = ""  # change it (e.g. per term) to draw a new pool; it is public, not a secret

    def __post_init__(self):
        if not 1 <= self.pool_size <= 4096:
            raise ValueError(f"pool_size must be from 1 to 4096, got {self.pool_size}")


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
    from autograder import checks  # checks builds on this module's Givens

    out = []
    arrays = givens.arrays()
    try:
        answers = checks.answers_for(givens)
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
        for value, msg in a.mistakes:
            got = canonical(a.kind, value)
            if got == want:
                out.append(f"{key}: the mistake '{msg[:40]}' gives the right answer")
            text = repr(got)
            if text in seen and seen[text] != msg:
                out.append(f"{key}: two mistakes give the same answer ('{seen[text][:30]}', '{msg[:30]}')")
            seen[text] = msg
        for i, items in enumerate(a.item_mistakes):
            item_kind = "int" if a.kind == "int_list" else "shape"
            vals = [repr(canonical(item_kind, v)) for v, _ in items]
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
    from autograder import checks

    chosen: list[Givens] = []
    # the lesson's answers are public (they are in the lesson): no variant repeats them either
    used: dict[str, set] = {q: {v} for q, v in _question_signature(checks.answers_for(LESSON)).items()}
    for index in range(pool_size):
        for attempt in range(10_000):
            cand = _draw(_rng(assignment, salt, index, attempt))
            if problems(cand):
                continue
            sig = _question_signature(checks.answers_for(cand))
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


def other_variant_matches(values: dict, own: int, variants: tuple[Givens, ...]) -> dict[int, list[str]]:
    """Variants (other than ``own``) for which answers in ``values`` are right although they are
    wrong for ``own``: {variant index: [answer keys]}.  Unanswered or unreadable values are skipped."""
    from autograder import checks

    def right(answers, key, value) -> bool:
        try:
            checks.explain_answer_in(answers, key, value)
            return True
        except (AssertionError, ValueError, TypeError):
            return False

    own_answers = checks.answers_for(variants[own])
    wrong = {k: v for k, v in values.items() if k in own_answers and v is not None and v is not Ellipsis
             and not right(own_answers, k, v)}
    matches: dict[int, list[str]] = {}
    if not wrong:
        return matches
    for i, givens in enumerate(variants):
        if i == own:
            continue
        answers = checks.answers_for(givens)
        keys = [k for k, v in wrong.items() if right(answers, k, v)]
        if keys:
            matches[i] = keys
    return matches
