"""Per-student variants (issue 13): identity -> variant, and every variant of the pool well-posed.

The pool tests run over the whole default pool (64 variants); Keras is the independent oracle
for every number it can compute (convolution, pooling, output shapes, parameter counts).
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from assignments.cnn_mnist import checks, public_checks, variants
from assignments.cnn_mnist.public_checks import canonical
from assignments.cnn_mnist.variants import LESSON
from autograder.variants import VariantConfig

ASSIGNMENT = "cnn_mnist"
CONFIG = VariantConfig(enabled=True)
POOL = variants.pool(ASSIGNMENT, CONFIG.pool_size, CONFIG.salt)


def _public_module(config=CONFIG):
    spec = importlib.util.spec_from_loader("cnn_checks_variants_test", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(checks.render_public_module(variants=config), "cnn_checks.py", "exec"), mod.__dict__)
    return mod


@pytest.fixture(scope="module")
def public():
    return _public_module()


def _select(mod, index: int) -> None:
    """The student-side module with variant ``index`` chosen (as use_student would for its ids)."""
    mod._ACTIVE.clear()
    mod._ACTIVE.update(mod.VARIANTS["variants"][index], index=index)


# --- identity -> variant ------------------------------------------------------------------------

def test_identity_is_normalised_case_whitespace_and_unicode():
    same = ["ada@uni.edu", " Ada@Uni.EDU ", "ADA@UNI.EDU\n", "ada@uni.edu\t", "ａｄａ@uni.edu"]  # full-width letters
    assert {variants.variant_index(ASSIGNMENT, s, 64) for s in same} == {variants.variant_index(ASSIGNMENT, same[0], 64)}
    assert public_checks.normalize_identity(" 12 345 ") == "12345"
    with pytest.raises(ValueError):
        variants.variant_index(ASSIGNMENT, "   ", 64)


def test_variant_index_is_deterministic_spread_and_depends_on_assignment_and_salt():
    ids = [f"student{i}@uni.edu" for i in range(2000)]
    idx = [variants.variant_index(ASSIGNMENT, s, 64) for s in ids]
    assert idx == [variants.variant_index(ASSIGNMENT, s, 64) for s in ids]
    counts = np.bincount(idx, minlength=64)
    assert counts.min() >= 10 and counts.max() <= 60  # about 31 each: no variant is rare or crowded
    other = [variants.variant_index("digits", s, 64) for s in ids]
    salted = [variants.variant_index(ASSIGNMENT, s, 64, "fall-2027") for s in ids]
    assert sum(a == b for a, b in zip(idx, other)) < 100 and sum(a == b for a, b in zip(idx, salted)) < 100


def test_the_pool_is_deterministic_and_the_salt_draws_another():
    variants.pool.cache_clear()
    again = variants.pool(ASSIGNMENT, 64, "")
    assert again == POOL and len(POOL) == 64 and len(set(POOL)) == 64
    assert variants.pool(ASSIGNMENT, 8, "fall-2027")[:8] != POOL[:8]
    assert variants.pool(ASSIGNMENT, 8, "") == POOL[:8]  # a smaller pool is a prefix: sizes can grow
    assert variants.Givens.from_json(POOL[5].to_json()) == POOL[5]


def test_off_gives_everyone_the_lessons_numbers():
    assert variants.variant_for(ASSIGNMENT, "ada@uni.edu", VariantConfig()) == (-1, LESSON)
    assert checks.ANSWERS["total_params"].expected == 93322
    assert checks.answers_for(LESSON)["conv_small"].expected.tolist() == [[1.0, 4.0], [3.0, 3.0]]


# --- well-posed, for every variant of the pool ---------------------------------------------------

def test_every_variant_is_well_posed():
    assert variants.problems(LESSON) == []
    bad = {i: variants.problems(g) for i, g in enumerate(POOL) if variants.problems(g)}
    assert bad == {}


def test_the_well_posedness_rules_reject_degenerate_numbers():
    def with_(**kw):
        import dataclasses
        return dataclasses.replace(LESSON, **kw)

    assert any("symmetric" in p for p in variants.problems(with_(filter_2x2=((1, 2), (2, 1)))))  # flip == itself
    assert any("tied maximum" in p for p in variants.problems(with_(pool_input=((9, 9, 2, 0, 7),) + LESSON.pool_input[1:])))
    assert any("divisible by the stride" in p for p in variants.problems(with_(size_n=29)))
    assert any("16-bit" in p for p in variants.problems(with_(edge_high=9000)))
    assert any("degenerate" in p for p in variants.problems(with_(image_3x3=((0, 0, 0), (0, 0, 0), (0, 0, 1)))))
    assert any("filter count" in p for p in variants.problems(with_(rgb_filters=3)))


def test_no_two_variants_and_no_variant_and_the_lesson_share_a_whole_answer():
    sigs = [variants._question_signature(checks.answers_for(g)) for g in (LESSON, *POOL)]
    for question in sigs[0]:
        values = [s[question] for s in sigs]
        assert len(set(values)) == len(values), question


@pytest.mark.parametrize("index", range(len(POOL)))
def test_public_checks_pass_the_right_answer_and_name_every_listed_mistake(public, index):
    _select(public, index)
    answers = checks.answers_for(POOL[index])
    for key, answer in answers.items():
        public.check_answer(key, answer.expected)
        checks.explain_answer_in(answers, key, answer.expected)
        for wrong, _reason, hint in answer.mistakes:
            for judge in (public.check_answer, lambda k, v: checks.explain_answer_in(answers, k, v)):
                with pytest.raises(AssertionError, match="Likely mistake") as err:
                    judge(key, wrong)
                assert hint in str(err.value)
        for i, items in enumerate(answer.item_mistakes):  # per-layer mistakes of the table
            for wrong, _reason, hint in items:
                value = list(answer.expected)
                value[i] = wrong
                with pytest.raises(AssertionError, match="Likely mistake") as err:
                    public.check_answer(key, value)
                assert hint in str(err.value)
    # the functions: the reference passes the notebook's examples, a flipped kernel is named
    g = POOL[index]
    public.check_function("conv2d", checks._ref_conv2d)
    public.check_function("max_pool2d", checks._ref_max_pool2d)
    with pytest.raises(AssertionError, match="flipped the kernel"):
        public.check_function("conv2d", lambda im, k, stride=1, padding="valid": checks._ref_conv2d(im, np.flip(k), stride=stride, padding=padding))
    assert public.my_numbers()["image_3x3"].tolist() == [list(r) for r in g.image_3x3]


def test_a_variants_answers_are_wrong_for_the_others(public):
    """A classmate's right answers fail one's own checks (whole questions differ across the pool)."""
    _select(public, 0)
    other = checks.answers_for(POOL[1])
    for key in ("conv_small", "edge_output", "pooled", "layer_params", "total_params"):
        with pytest.raises(AssertionError):
            public.check_answer(key, other[key].expected)


def test_without_an_id_the_variant_checks_ask_for_it():
    mod = _public_module()
    with pytest.raises(AssertionError, match="first cell with your student id"):
        mod.check_answer("conv_small", [[1, 2], [3, 4]])
    numbers = mod.use_student("Ada@Uni.edu ")
    assert numbers["size_n"] == POOL[variants.variant_index(ASSIGNMENT, "ada@uni.edu", 64)].size_n


def test_two_students_see_different_numbers(public):
    a, b = public.use_student("ada@uni.edu"), public.use_student("grace@uni.edu")
    assert variants.variant_index(ASSIGNMENT, "ada@uni.edu", 64) != variants.variant_index(ASSIGNMENT, "grace@uni.edu", 64)
    assert not np.array_equal(a["image_3x3"], b["image_3x3"]) and not np.array_equal(a["pool_input"], b["pool_input"])


def test_the_student_module_holds_no_plain_answer():
    """Only digests: no variant's array answer (as the list the module would hold) appears in it."""
    source = checks.render_public_module(variants=CONFIG)
    assert len(source.encode()) < 1_000_000  # 64 variants: shared messages, 128-bit digests
    assert "answers_for" not in source and not re.search(r"^\s*(from|import) autograder", source, re.M)
    for g in POOL:
        answers = checks.answers_for(g)
        for key in ("conv_small", "pooled", "edge_output"):
            values = canonical("array", answers[key].expected)["values"]
            assert str(values) not in source
        assert not re.search(rf"\b{answers['total_params'].expected}\b", source)


# --- Keras, the independent oracle, agrees for every variant ---------------------------------------

@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    return keras


def _keras_conv(keras, image, kernel):
    x = np.asarray(image, "float32")[None, :, :, None]
    k = np.asarray(kernel, "float32")[:, :, None, None]
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.conv(x, k, padding="valid")))[0, :, :, 0]


def test_keras_agrees_on_every_variants_hand_computations(keras):
    for g in POOL:
        a, answers = g.arrays(), checks.answers_for(g)
        np.testing.assert_allclose(_keras_conv(keras, a["image_3x3"], a["filter_2x2"]), answers["conv_small"].expected)
        np.testing.assert_allclose(_keras_conv(keras, a["edge_image"], a["edge_filter"]), answers["edge_output"].expected)
        pooled = keras.ops.max_pool(np.asarray(a["pool_input"], "float32")[None, :, :, None], 2, 2, padding="valid")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(pooled)[0, :, :, 0], answers["pooled"].expected)
        flipped = _keras_conv(keras, a["image_3x3"], np.flip(a["filter_2x2"]))
        assert not np.allclose(flipped, answers["conv_small"].expected)


def _shapes_and_params(keras, input_shape, layers):
    model = keras.Sequential([keras.Input(shape=input_shape), *layers])
    return [tuple(l.output.shape[1:]) for l in model.layers], [l.count_params() for l in model.layers], model.count_params()


def test_keras_agrees_on_every_variants_sizes_channels_and_layer_table(keras):
    L = keras.layers
    for g in POOL:
        answers = checks.answers_for(g)
        n, k, s = g.size_n, g.size_k, g.size_stride
        for key, kw in (("size_valid", {}), ("size_same", {"padding": "same"}), ("size_stride2", {"strides": s})):
            (shape,), _, _ = _shapes_and_params(keras, (n, n, 1), [L.Conv2D(1, k, **kw)])
            assert shape[0] == answers[key].expected, (key, g)
        assert answers["size_full"].expected == n + k - 1  # Keras has no 'full' padding: the formula
        (shape,), (params,), _ = _shapes_and_params(
            keras, (g.rgb_size, g.rgb_size, g.rgb_channels), [L.Conv2D(g.rgb_filters, g.rgb_k)])
        assert shape == answers["rgb_output_shape"].expected and params == answers["rgb_params"].expected
        f1, f2, f3 = g.table_filters
        shapes, params, total = _shapes_and_params(keras, (28, 28, 1), [
            L.Conv2D(f1, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)), L.Conv2D(f2, (3, 3), activation="relu"),
            L.MaxPooling2D((2, 2)), L.Conv2D(f3, (3, 3), activation="relu"), L.Flatten(),
            L.Dense(g.table_dense, activation="relu"), L.Dense(10, activation="softmax")])
        assert shapes == answers["layer_output_shapes"].expected
        assert params == answers["layer_params"].expected and total == answers["total_params"].expected


def test_the_variant_notebook_rewrite_finds_every_cell_it_rewrites_exactly_once():
    import nbformat

    from autograder import registry

    master = registry.get(ASSIGNMENT).master_notebook
    nb = nbformat.read(master, as_version=4)
    variants.variant_master(nb)
    text = "\n".join(c.source for c in nb.cells)
    assert "STUDENT_ID = ..." in text and "the lesson's examples" not in text
    broken = nbformat.read(master, as_version=4)
    broken.cells = [c for c in broken.cells if variants.GIVENS_MARKER not in c.source]
    with pytest.raises(ValueError, match="givens"):
        variants.variant_master(broken)
