"""The student's own signal before submitting: ``grader.check("training")`` in the notebook.

The public training check is worth its point wherever it runs for the same thing: a compiled and
trained model the grader can retrain.  In the notebook it applies the grader's public rules (allowed
layers and fields, subclassed models, the step and cost budget) with the grader's own message, and
measures the live model on the test images against the threshold (a warning below it: the hidden
check scores the grader's own retraining).  Under the grader, a recipe the verifier refused fails it.
Cheap: small models, a few optimizer steps, never a full training.  The rules it applies are the
verifier's modules shipped in the student module (:mod:`autograder.student_rules`), so here they are
compared with the verifier itself.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import types

import numpy as np
import pytest

from assignments.cnn_mnist import checks
from autograder import student_rules
from autograder.verifier import rebuild, retrain

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def public():
    """The rendered ``cnn_checks.py``, loaded as a student's notebook loads it."""
    module = types.ModuleType("cnn_checks_training_under_test")
    exec(compile(checks.render_public_module(), "cnn_checks.py", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def mnist():
    from assignments.cnn_mnist import data

    (x_train, y_train), (x_test, y_test) = data.load_mnist()
    return (x_train.reshape(-1, 28, 28, 1) / 255, y_train), (x_test.reshape(-1, 28, 28, 1) / 255, y_test)


def _compiled(*layers):
    model = keras.Sequential([keras.Input((28, 28, 1)), *layers])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _small():
    return _compiled(keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax"))


def _grader_settings(assignment: str):
    """The verifier's settings as the grading engine makes them from the assignment's spec (no overrides)."""
    from autograder import registry
    from autograder.engine import RetrainOptions

    return RetrainOptions().settings(registry.get(assignment))


def _graders_message(model, fits, assignment: str = "cnn_mnist") -> str:
    """What the grader says about this recipe (it is refused before any training)."""
    settings = _grader_settings(assignment)
    with pytest.raises(rebuild.RefusedModel):
        retrain.prepare(model.to_json(), fits, settings)
    report = retrain.verify(model.to_json(), fits, settings, cache_dir=None)
    assert report.accuracy is None and report.error
    return report.error


def test_a_model_below_the_threshold_passes_with_a_warning_and_its_score(public, mnist, capsys):
    """15 steps of a linear model: about 0.85 on the 10,000 test images, which Keras's own loader gives
    the check (as the notebook loads them).  The check's point is the grader's public point (compiled,
    trained, retrainable), which this model gets: no ❌ here where the grader gives the point."""
    from assignments.cnn_mnist.data import install_keras_offline_mnist

    install_keras_offline_mnist()
    (x, y), _ = mnist
    model = _small()
    model.fit(x, y, epochs=1, batch_size=4096, verbose=0)
    public.check_training(model)
    message = capsys.readouterr().out
    assert message.startswith("Warning: Your model scores 0.")
    assert "on the MNIST test images; the hidden check needs more than 0.99." in message
    assert "retrains your recipe from scratch" in message and "the hidden check will fail" in message
    score = float(message.split("Your model scores ")[1].split()[0])
    assert 0.5 < score < 0.99


def test_an_untrained_model_scores_about_a_tenth_and_is_warned(public, mnist, capsys):
    (x, y), (x_test, y_test) = mnist
    model = _small()
    model.fit(x[:64], y[:64], epochs=1, batch_size=4096, verbose=0)  # one step: weights barely moved
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])  # every image gets class 0
    share = np.mean(y_test[:1000] == 0)  # about a tenth
    public.check_training(model, data=(x_test[:1000], y_test[:1000]))
    assert f"Your model scores {share:.4f} on the MNIST test images; the hidden check needs more than 0.99" \
        in capsys.readouterr().out


def test_a_model_above_the_threshold_passes_and_says_the_grader_retrains(public, mnist, capsys):
    (x, y), (x_test, _) = mnist
    model = _small()
    model.fit(x, y, epochs=1, batch_size=4096, verbose=0)
    own = np.argmax(model.predict(x_test[:500], verbose=0), axis=-1)  # labels it gets right by construction
    public.check_training(model, data=(x_test[:500], own))
    out = capsys.readouterr().out
    assert "Your model scores 1.0000 on the MNIST test images; the hidden check needs more than 0.99." in out
    assert "retrains your recipe from scratch" in out and "Warning" not in out


def test_grader_check_in_the_student_notebook_says_where_the_model_stands(mnist, tmp_path, monkeypatch, capsys):
    """What a student sees: Otter's ``grader.check("training")`` in a copy of the committed student folder,
    for a model below the threshold and for one the grader refuses."""
    import shutil

    import otter

    from autograder import registry
    from assignments.cnn_mnist.data import install_keras_offline_mnist

    install_keras_offline_mnist()
    folder = tmp_path / "student"
    shutil.copytree(registry.get("cnn_mnist").student_dir, folder)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "cnn_checks", raising=False)
    grader = otter.Notebook("cnn_mnist.ipynb")
    (x, y), _ = mnist
    low = _small()
    low.fit(x, y, epochs=1, batch_size=4096, verbose=0)
    refused = _compiled(keras.layers.Reshape((28, 28)), keras.layers.SimpleRNN(4), keras.layers.Dense(10))
    refused.fit(x, y, epochs=1, batch_size=4096, verbose=0)
    try:
        below = grader.check("training", global_env={"model": low})
        printed = capsys.readouterr().out
        not_rebuilt = grader.check("training", global_env={"model": refused})
    finally:
        sys.modules.pop("cnn_checks", None)
    assert below.grade == 1 and not not_rebuilt.grade  # as the grader gives them (the point: retrainable)
    assert "Your model scores 0." in printed and "the hidden check needs more than 0.99" in printed
    assert "The model was not retrained: layer 2 (SimpleRNN) is not a layer the grader can rebuild" in repr(not_rebuilt)


@pytest.mark.parametrize("recipe", ["900,000 steps", "a layer outside the allowed set", "a subclassed model"])
def test_a_recipe_the_grader_refuses_fails_with_the_graders_message(public, recipe):
    if recipe == "900,000 steps":  # epochs x 60,000 / batch size
        model, fits = _small(), [{"epochs": 15, "batch_size": 1}]
    elif recipe == "a layer outside the allowed set":
        model = _compiled(keras.layers.Reshape((28, 28)), keras.layers.SimpleRNN(16), keras.layers.Dense(10))
        fits = [{"epochs": 5, "batch_size": 128}]
    else:
        class Tiny(keras.Model):
            def __init__(self):
                super().__init__()
                self.flatten, self.dense = keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")

            def call(self, x):
                return self.dense(self.flatten(x))

        model = Tiny()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model(np.zeros((1, 28, 28, 1), "float32"))
        fits = [{"epochs": 5, "batch_size": 128}]
    grader = _graders_message(model, fits)
    with pytest.raises(AssertionError) as failed:
        public.check_recipe(model, fits)
    assert str(failed.value).startswith(grader + "\n"), (grader, str(failed.value))
    assert "the grader's own rule" in str(failed.value)
    expected = {"900,000 steps": "the recipe trains 900,000 steps; the assignment allows 30,000",
                "a layer outside the allowed set": "(SimpleRNN) is not a layer the grader can rebuild",
                "a subclassed model": "a subclassed model (a class with its own call method) cannot be rebuilt"}[recipe]
    assert expected in grader


def test_the_notebooks_trained_model_is_refused_as_the_grader_would(public, mnist):
    """Through the notebook's own check: the live model's fit is read from ``model.history``."""
    (x, y), _ = mnist
    model = _compiled(keras.layers.Reshape((28, 28)), keras.layers.SimpleRNN(4), keras.layers.Dense(10))
    model.fit(x, y, epochs=1, batch_size=4096, verbose=0)
    grader = _graders_message(model, [{"epochs": 1, "batch_size": 4096}])
    with pytest.raises(AssertionError) as failed:
        public.check_training(model)
    assert str(failed.value).startswith(grader + "\n")
    assert "read from model.history: 1 epochs of 15 steps" in str(failed.value)


def test_a_subclassed_model_keras_cannot_describe_is_refused_too(public, mnist):
    (x, y), _ = mnist

    class Wide(keras.Model):
        def __init__(self, width):
            super().__init__()
            self.flatten, self.dense = keras.layers.Flatten(), keras.layers.Dense(width, activation="softmax")

        def call(self, x):
            return self.dense(self.flatten(x))

    model = Wide(10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[:256], y[:256], epochs=1, batch_size=256, verbose=0)
    with pytest.raises(AssertionError, match="model is of class Wide, a subclassed model"):
        public.check_training(model)


def test_under_the_grader_the_public_check_leaves_accuracy_to_the_hidden_one(public):
    """The judge's model is a description: nothing is evaluated (the hidden check scores the retrained
    accuracy); without a retraining report (retraining off, or not finished) nothing is refused either."""
    from autograder.judge.judge import ExtractedModel

    model = _small()
    extracted = ExtractedModel(model.to_json(), [{"epochs": 15, "batch_size": 1}], None)
    public.check_training(extracted)
    below = {"reports": {"model": {"accuracy": 0.5, "accuracies": [0.5], "error": None}}}
    public.check_training(ExtractedModel(model.to_json(), [{"epochs": 1, "batch_size": 64}], below))
    from autograder.faults import Fault
    from autograder.verifier.retrain import RetrainReport

    fault = {"reports": {"model": RetrainReport.failed(Fault("host_limit", "out of memory")).as_dict()}}
    public.check_training(ExtractedModel(model.to_json(), [{"epochs": 1, "batch_size": 64}], fault))


def _subclassed():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.flatten, self.dense = keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")

        def call(self, x):
            return self.dense(self.flatten(x))

    model = Tiny()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model(np.zeros((1, 28, 28, 1), "float32"))
    return model


@pytest.mark.parametrize("refused", ["a subclassed model", "a Lambda layer"])
def test_a_model_the_grader_cannot_retrain_gets_no_public_point_in_the_notebook_or_from_the_grader(public, mnist,
                                                                                                  refused):
    """The same verdict in both places, with the same reason and how to fix it: the student's check on the
    live model, and the grader's public check on its description with the verifier's own report."""
    from autograder.judge.judge import ExtractedModel

    (x, y), _ = mnist
    if refused == "a subclassed model":
        model = _subclassed()
    else:
        model = _compiled(keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax"))
    model.fit(x[:256], y[:256], epochs=1, batch_size=128, verbose=0)
    fits = [{"epochs": 1, "batch_size": 128}]
    report = retrain.verify(model.to_json(), fits, _grader_settings("cnn_mnist"), cache_dir=None)
    assert report.accuracy is None and report.error and report.fault["cause"] == "recipe_refused"
    with pytest.raises(AssertionError) as local:
        public.check_training(model)
    extracted = ExtractedModel(model.to_json(), fits, {"reports": {"model": report.as_dict()}})
    with pytest.raises(AssertionError) as graded:
        public.check_training(extracted)
    assert str(local.value).startswith(report.error) and str(graded.value).startswith(report.error)
    for failed in (local, graded):
        assert "neither this check's point nor the accuracy's" in str(failed.value)
        assert failed.value.answered and not failed.value.reasons  # an answer, and no named misconception
    how = "functional API" if refused == "a subclassed model" else "(Lambda) is not a layer the grader can rebuild"
    assert how in report.error


def test_under_otters_own_grading_the_public_point_still_means_compiled_and_trained(public, mnist, monkeypatch,
                                                                                     capsys):
    """``otter run``/``otter grade`` execute the notebook in grading mode: the hidden check scores the accuracy
    there (as under our engine), so the public point keeps its meaning and the samples their designed scores."""
    import otter

    (x, y), _ = mnist
    model = _small()
    model.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)  # far below the threshold
    monkeypatch.setattr(otter.Notebook, "_grading_mode", True)
    public.check_training(model)
    assert "Your model scores" not in capsys.readouterr().out  # nothing measured: the hidden check does
    subclassed = _subclassed()
    subclassed.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)
    with pytest.raises(AssertionError, match="model is of class Tiny, a subclassed model"):
        public.check_training(subclassed)  # the rules still decide the point, as under the grader
    monkeypatch.setattr(otter.Notebook, "_grading_mode", False)
    public.check_training(model, data=(x[:500], y[:500]))
    assert "Warning: Your model scores" in capsys.readouterr().out


def test_the_student_module_ships_the_verifiers_rules_unchanged_but_for_their_imports(public):
    shipped = dict(public.GRADER_RULES)
    assert set(student_rules.ENTRY_MODULES) <= set(shipped)
    for name, source in shipped.items():
        original = (student_rules._VERIFIER_DIR / f"{name}.py").read_text()
        assert source == student_rules._rewrite(original)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(n.split(".")[0] in ("autograder", "assignments") for n in names), (name, names)
    assert public.grader_rules()["budget"].RefusedModel is public.grader_rules()["rebuild"].RefusedModel
    facts = public.TRAINING
    assert facts["threshold"] == 0.99 and facts["budget"]["max_steps"] == 30_000
    assert facts["data"]["input_shape"] == [28, 28, 1] and json.dumps(facts)


def test_a_verifier_module_importing_beyond_the_rules_cannot_be_shipped():
    for source in ("from autograder.verifier.no_such_module import prepare\n", "from autograder import data\n",
                   "import assignments.cnn_mnist.checks\n", "from .budget import Budget\n"):
        with pytest.raises(student_rules.UnbundlableModule):
            student_rules._verifier_imports("rebuild", source)
    assert student_rules._verifier_imports("x", "from autograder.verifier.rebuild import RefusedModel\n") == ["rebuild"]
    with pytest.raises(student_rules.UnbundlableModule, match=r"imports autograder\."):
        student_rules.bundled_sources(("retrain",))  # the retraining itself imports the grader: never shipped


def test_the_digits_module_knows_its_own_test_split():
    from assignments.digits import checks as digits_checks
    from assignments.digits import data

    module = types.ModuleType("digits_checks_training_under_test")
    exec(compile(digits_checks.render_public_module(), "digits_checks.py", "exec"), module.__dict__)
    images, labels = module._test_split()
    _, (x_test, y_test) = data.load_digits_split()
    assert images.shape == (360, 8, 8, 1) and np.array_equal(images, x_test.reshape(-1, 8, 8, 1) / 16)
    assert np.array_equal(labels, y_test)
    assert module.TRAINING["threshold"] == 0.90 and module.TRAINING["budget"]["max_steps"] == 6_000
    assert "digits_checks_training_under_test" not in sys.modules


def test_the_digits_check_measures_on_its_own_test_split_and_budget(capsys):
    """The second unit: its own threshold (0.90), data and budget (6,000 steps), from its spec."""
    from assignments.digits import checks as digits_checks
    from assignments.digits import data

    module = types.ModuleType("digits_checks_live_under_test")
    exec(compile(digits_checks.render_public_module(), "digits_checks.py", "exec"), module.__dict__)
    (x, y), _ = data.load_digits_split()
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.reshape(-1, 8, 8, 1) / 16, y, epochs=1, batch_size=32, verbose=0)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])  # class 0 for every digit
    module.check_training(model)
    assert re.search(r"scores 0\.\d{4} on the scikit-learn digits \(8x8\) test images; the hidden check needs more "
                     r"than 0\.90", capsys.readouterr().out)
    fits = [{"epochs": 60, "batch_size": 8}]  # 10,800 steps, and a batch size below the unit's 16
    grader = _graders_message(model, fits, "digits")
    assert "the recipe trains 10,800 steps; the assignment allows 6,000" in grader
    with pytest.raises(AssertionError) as failed:
        module.check_recipe(model, fits)
    assert str(failed.value).startswith(grader + "\n")


@pytest.mark.parametrize("unit", ["cnn_mnist", "digits"])
def test_the_rules_students_read_are_the_graders(unit, capsys):
    """``training_rules()`` in the notebook prints the verifier's own lists and the unit's budget, and the
    students' documentation page states each unit's budget and seed rule as the specs set them."""
    from pathlib import Path

    from autograder import registry

    spec = registry.get(unit)
    module = types.ModuleType(f"{spec.public_module_stem}_rules_under_test")
    exec(compile(spec.render_public_module(), spec.public_module_name, "exec"), module.__dict__)
    module.training_rules()
    out = capsys.readouterr().out
    policy, budget = spec.training, spec.training.budget
    for fact in (f"at most {budget.max_epochs} epochs", f"at most {budget.max_steps:,} training steps",
                 f"from {budget.min_batch_size:,} to {budget.max_batch_size:,}",
                 f"within {policy.seed_margin} of {policy.threshold}", f"{policy.max_seeds} in all"):
        assert fact in out, fact
    assert all(layer in out for layer in rebuild.LAYER_FIELDS) and "CosineDecay" in out and "Lambda" in out
    page = (Path(__file__).resolve().parent.parent / "docs" / "students" / "training.md").read_text()
    column = 0 if unit == "cnn_mnist" else 1
    rows = {line.split("|")[1].strip(): line.split("|")[2 + column].strip()
            for line in page.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["epochs"].startswith(f"at most {budget.max_epochs}")
    assert rows["training steps (epochs × training images / batch size)"] == f"at most {budget.max_steps:,}"
    assert rows["batch size"] == f"{budget.min_batch_size:,} to {budget.max_batch_size:,}"
    assert f"{policy.seed_margin} on {'MNIST' if unit == 'cnn_mnist' else 'the digits'}" in page
    assert f"{policy.threshold:.2f} on {'MNIST' if unit == 'cnn_mnist' else 'the 8x8 digits'}" in page
