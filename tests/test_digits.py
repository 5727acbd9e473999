"""What is specific to the second assignment (CNN on scikit-learn's 8x8 digits).

The data set is verified by hash with its fixed split, the reference math agrees with Keras,
public and hidden checks agree and name each typical mistake, and no plain answer is shipped.
The end-to-end tests (build, committed files in sync, ``otter run`` and the engine agree on every
sample, solution full marks, untouched 0, the solution's recipe retrained from scratch) are in
tests/test_assignment.py, which runs them for every installed assignment.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from assignments.digits import checks, data, reference

@pytest.fixture(scope="module")
def digits_built(builds):
    return builds["digits"]


# --- data --------------------------------------------------------------------------------------

def test_dataset_is_verified_with_its_fixed_split():
    (x_train, y_train), (x_test, y_test) = data.load_digits_split()
    assert x_train.shape == (1437, 8, 8) and x_test.shape == (360, 8, 8)
    assert x_train.dtype == np.uint8 and 0 <= x_train.min() and x_train.max() == 16
    assert set(np.unique(y_test)) == set(range(10))
    from sklearn.datasets import load_digits

    bunch = load_digits()  # the split is scikit-learn's order: first 1,437 / last 360
    assert np.array_equal(x_test, bunch.images[1437:].astype(np.uint8))
    assert np.array_equal(y_train, bunch.target[:1437])
    tampered = {"x_train": x_train.copy(), "y_train": y_train, "x_test": x_test, "y_test": y_test}
    tampered["x_train"][0, 0, 0] += 1
    with pytest.raises(ValueError, match="x_train content hash"):
        data.verify(tampered)


def test_spec_describes_the_digits():
    from autograder import registry

    spec = registry.get("digits")
    assert spec.dataset.input_shape == (8, 8, 1) and spec.dataset.num_classes == 10
    assert (spec.dataset.train_size, spec.dataset.test_size) == (1437, 360)
    assert spec.dataset.pixel_scale == 16.0 and spec.training.threshold == checks.ACCURACY_THRESHOLD
    assert spec.master_notebook.is_file() and spec.public_module_name == "digits_checks.py"


# --- the math against Keras --------------------------------------------------------------------

def test_reference_math_matches_keras():
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 7, 6, 3)).astype("float32")
    layer = keras.layers.Conv2D(4, (3, 2), activation="relu")
    layer.build(x.shape)
    kernels, bias = rng.normal(size=(3, 2, 3, 4)).astype("float32"), rng.normal(size=4).astype("float32")
    layer.set_weights([kernels, bias])
    np.testing.assert_allclose(reference.conv_layer(x[0], kernels, bias), np.asarray(layer(x))[0], atol=1e-4)

    patch = reference.PATCH.reshape(1, 4, 4, 1).astype("float32")
    same2 = keras.layers.Conv2D(1, 3, strides=2, padding="same", use_bias=False)
    same2.build(patch.shape)
    same2.set_weights([reference.SOBEL_X.reshape(3, 3, 1, 1).astype("float32")])
    np.testing.assert_allclose(checks.ANSWERS["conv_same_stride2"].expected, np.asarray(same2(patch))[0, :, :, 0])

    pool_in = reference.POOL_INPUT.reshape(1, 5, 5, 1).astype("float32")
    pooled = keras.layers.MaxPooling2D(3, strides=2)(pool_in)
    np.testing.assert_allclose(checks.ANSWERS["pooled"].expected, np.asarray(pooled)[0, :, :, 0])

    model = keras.Sequential([keras.layers.Input(reference.INPUT_SHAPE),
                              keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                              keras.layers.MaxPooling2D(2), keras.layers.Conv2D(32, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    rows = reference.layer_table(reference.INPUT_SHAPE, reference.SEED_MODEL)
    assert [tuple(l.output.shape[1:]) for l in model.layers] == [r.output_shape for r in rows]
    assert [l.count_params() for l in model.layers] == [r.params for r in rows]
    assert model.count_params() == checks.ANSWERS["total_params"].expected


# --- the checks --------------------------------------------------------------------------------

def _public_module():
    spec = importlib.util.spec_from_loader("digits_checks_under_test", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(checks.render_public_module(), "digits_checks.py", "exec"), mod.__dict__)
    return mod


def test_public_and_hidden_checks_agree_and_name_every_mistake():
    public = _public_module()
    for key, answer in checks.ANSWERS.items():
        checks.check_answer(key, answer.expected)
        public.check_answer(key, answer.expected)
        assert answer.mistakes or answer.item_mistakes, key
        for wrong, _reason, _text in answer.mistakes:
            for judge in (checks.explain_answer, public.check_answer):
                with pytest.raises(AssertionError, match="Likely mistake"):
                    judge(key, wrong)
            with pytest.raises(AssertionError) as hidden:
                checks.check_answer(key, wrong)
            assert "Likely mistake" not in str(hidden.value)  # the hidden message stays general
    assert "digits_checks_under_test" not in sys.modules


def test_functions_are_judged_with_named_mistakes():
    public = _public_module()
    for name, ref in checks.REFERENCE_FUNCTIONS.items():
        checks.check_function(name, ref)
        public.check_function(name, ref)
        for case in checks.public_cases(name) + checks.hidden_cases(name):
            checks.judge_function_output(name, case, case.expected(name))
            for wrong, reason, msg in checks._function_mistakes(name, case):
                if np.allclose(wrong, case.expected(name)):
                    continue  # e.g. the ReLU changes nothing on this case
                with pytest.raises(AssertionError, match="Likely mistake") as err:
                    checks.judge_function_output(name, case, wrong)
                assert reason in err.value.reasons or set(reason) <= set(err.value.reasons)
    no_relu = lambda x, k, b: reference.conv2d(x, k, bias=b)  # noqa: E731
    with pytest.raises(AssertionError, match="forgot the ReLU") as err:
        public.check_function("conv_layer", no_relu)
    assert err.value.reasons == ("forgot_relu",)
    with pytest.raises(AssertionError, match=r"wrong on \d+ of 6 hidden inputs") as err:
        checks.check_function("conv_layer", no_relu)
    assert "forgot_relu" in err.value.reasons  # the hidden check's message is general, its reasons are not
    ignores_stride = lambda x, size=2, stride=None: reference.max_pool(x, size)  # noqa: E731
    with pytest.raises(AssertionError, match="shape") as err:
        public.check_function("max_pool", ignores_stride)
    assert err.value.reasons == ("ignored_stride",)
    with pytest.raises(AssertionError, match="not implemented yet"):
        checks.check_function("max_pool", lambda x, size=2, stride=None: None)


def test_model_check_names_the_padding_mistake():
    import keras

    def model(first_padding):
        return keras.Sequential([keras.layers.Input((8, 8, 1)),
                                 keras.layers.Conv2D(16, (3, 3), padding=first_padding, activation="relu"),
                                 keras.layers.MaxPooling2D((2, 2)), keras.layers.Conv2D(32, (3, 3), activation="relu"),
                                 keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                                 keras.layers.Dense(10, activation="softmax")])

    checks.check_model(model("same"))
    _public_module().check_model(model("same"))
    with pytest.raises(AssertionError, match="padding is 'valid', expected 'same'"):
        _public_module().check_model(model("valid"))
    with pytest.raises(AssertionError, match="do not match"):
        checks.check_model(model("valid"))


# --- the build -------------------------------------------------------------------------------
# Build, committed student folder and samples in sync, ``otter run`` designed scores, engine = otter run
# and the solution's retraining: tests/test_assignment.py, which covers every installed assignment.

def _sources(path: Path) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]


def test_student_files_hold_no_hidden_tests_or_plain_answers(digits_built):
    student_text = "\n".join(p.read_text() for p in digits_built.student_dir.rglob("*.py"))
    student_text = re.sub(r"\b[0-9a-f]{64}\b", "<digest>", student_text)
    notebook_text = "\n".join(s for _, s in _sources(digits_built.student_notebook))
    test_text = "\n".join(p.read_text() for p in (digits_built.student_dir / "tests").glob("*.py"))
    assert "hidden=True" not in test_text and "assignments.digits.checks" not in test_text
    for answer in ("9258", "4640", "4128", "(2, 2, 32)", "(128,)", "-59", "[[9.0, 6.0], [7.0, 8.0]]", "[9, 6]"):
        assert answer not in student_text, answer
        assert answer not in notebook_text, answer
