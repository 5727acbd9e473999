"""Issue 17: a cost model that cannot be fooled, and faults that belong to whoever caused them."""

from __future__ import annotations

import json
import time

import pytest

from autograder.verifier import budget as budget_module
from autograder.verifier import recipe as recipe_module, retrain, training
from autograder.verifier.budget import Budget, check, model_cost, recipe_cost
from autograder.verifier.rebuild import RefusedModel

MNIST = {"num_classes": 10, "name": "MNIST", "train_size": 60000}


def _conv(filters, **kw):
    return {"type": "Conv2D", "filters": filters, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
            "dilation_rate": [1, 1], "activation": "relu", "use_bias": True, **kw}


def _head():
    return [{"type": "GlobalMaxPooling2D", "keepdims": False},
            {"type": "Dense", "units": 10, "activation": "softmax", "use_bias": True}]


def _plan(model, epochs=15, batch_size=64):
    return {"model": model, "fits": [{"epochs": epochs, "batch_size": batch_size, "validation_split": 0.0,
                                      "steps_per_epoch": None, "callbacks": []}]}


def test_pooling_windows_are_counted_and_the_pooling_attack_is_refused():
    """Four 28x28 stride-1 'same' max-poolings on a 256-channel 28x28 map, 15 epochs at batch 64: 14,070 steps,
    1.4% of the limit when pooling cost nothing; about 19 h per run measured.  The static model refuses it."""
    pool = {"type": "MaxPooling2D", "pool_size": [28, 28], "strides": [1, 1], "padding": "same"}
    model = {"input_shape": [28, 28, 1], "layers": [_conv(256), pool, pool, pool, pool, *_head()]}
    recipe = _plan(model)
    cost, _, _ = recipe_cost(recipe, Budget(), MNIST)
    assert cost.steps == 14_070
    assert cost.macs_per_image >= 4 * 28 * 28 * 256 * 28 * 28  # every output value reads its 28x28 window
    with pytest.raises(RefusedModel, match="pooling windows") as err:
        check(cost, recipe, Budget(), 3)
    assert "operations" in str(err.value) and "4e+13" in str(err.value)


def test_a_layer_without_a_rule_gets_the_generic_per_value_cost_and_keras_shape():
    """A type added to the whitelist later (augmentation, noise, resizing) is costed without a rule of its own."""
    base = {"input_shape": [28, 28, 1], "layers": [_conv(8), *_head()]}
    plain = model_cost(base, 10)[1]
    for extra, shape in [({"type": "GaussianNoise", "stddev": 0.1}, (28, 28, 8)),
                         ({"type": "RandomRotation", "factor": 0.1}, (28, 28, 8)),
                         ({"type": "UpSampling2D", "size": [4, 4]}, (112, 112, 8))]:
        model = {"input_shape": [28, 28, 1], "layers": [_conv(8), extra, *_head()]}
        params, ops, acts = model_cost(model, 10)
        values_in, values_out = 28 * 28 * 8, shape[0] * shape[1] * shape[2]
        assert ops - plain >= budget_module.GENERIC_OPS_PER_VALUE * (values_in + values_out), extra["type"]
        assert acts >= values_out + 10, extra["type"]  # the shape came from Keras, not assumed unchanged


def test_every_allowed_layer_costs_something():
    """Normalisation, dropout, global pooling and activations count; none is free."""
    base = {"input_shape": [28, 28, 1], "layers": [_conv(8), *_head()]}
    plain = model_cost(base, 10)[1]
    for extra in [{"type": "BatchNormalization", "axis": -1, "momentum": 0.99, "epsilon": 1e-3, "center": True,
                   "scale": True},
                  {"type": "Dropout", "rate": 0.5}, {"type": "SpatialDropout2D", "rate": 0.5},
                  {"type": "Activation", "activation": "gelu"}, {"type": "LeakyReLU", "negative_slope": 0.1},
                  {"type": "AveragePooling2D", "pool_size": [3, 3], "strides": [1, 1], "padding": "same"}]:
        model = {"input_shape": [28, 28, 1], "layers": [_conv(8), extra, *_head()]}
        assert model_cost(model, 10)[1] > plain, extra["type"]


def test_the_lessons_recipe_stays_well_inside_the_limit():
    import keras
    from keras import layers

    from autograder.verifier.rebuild import canonical_model

    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.Flatten(),
        layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
    ])
    canonical, _ = canonical_model(json.loads(model.to_json()))
    cost, _, _ = recipe_cost(_plan(canonical, 15, 32), Budget(), MNIST)
    assert cost.training_macs < Budget().max_macs / 4


# --- a recipe Keras cannot build is the submission's error, with Keras's message ------------------

def _small_keras_model():
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(2),
                              layers.Flatten(), layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _fit(model, epochs=1, batch_size=64, compile_config=None):
    return {"epochs": epochs, "batch_size": batch_size, "initial_epoch": 0, "validation_split": 0.0, "shuffle": True,
            "callbacks": [], "compile_config": compile_config or model.get_compile_config(),
            "x": {"kind": "array", "shape": [60000, 28, 28, 1], "max": 1.0}}


def _keras_raising_recipes():
    import keras
    from keras import layers

    model = _small_keras_model()
    clipped = model.get_compile_config()
    clipped["optimizer"] = {"module": "keras.optimizers", "class_name": "Adam",
                            "config": {"learning_rate": 0.001, "clipnorm": 1.0, "global_clipnorm": 1.0}}
    schedule = model.get_compile_config()
    schedule["optimizer"] = {"module": "keras.optimizers", "class_name": "SGD", "config": {"learning_rate": {
        "module": "keras.optimizers.schedules", "class_name": "PiecewiseConstantDecay",
        "config": {"boundaries": [100, 200], "values": [0.1, 0.01]}}}}
    dense = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(32), layers.BatchNormalization(),
                              layers.Dense(10, activation="softmax")])
    dense.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    bn = json.loads(dense.to_json())
    for layer in bn["config"]["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["axis"] = 3  # no such axis after a Dense layer
    return {
        "clipnorm and global_clipnorm": (model.to_json(), [_fit(model, compile_config=clipped)],
                                         "Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"),
        "PiecewiseConstantDecay lists disagree": (model.to_json(), [_fit(model, compile_config=schedule)],
                                                  "boundaries should be 1 less than the length of values"),
        "BatchNormalization axis after Dense": (bn, [_fit(dense)], "IndexError"),
    }


TINY = retrain.Settings("cnn_mnist", data_subset=(2000, 500), seeds=1)


def _no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("training started: the recipe was not built and compiled when it was prepared")

    monkeypatch.setattr(retrain, "_train", refuse)


@pytest.mark.parametrize("case", ["clipnorm and global_clipnorm", "PiecewiseConstantDecay lists disagree",
                                  "BatchNormalization axis after Dense"])
def test_a_recipe_keras_cannot_build_is_the_submissions_error_with_keras_message(case, monkeypatch):
    """Built and compiled when prepared, without data: Keras's exception is the student's, before any training, and
    the accuracy check fails with it (0 on the training question, never a grader_error, the same on every rerun)."""
    from assignments.cnn_mnist import checks
    from autograder.judge.judge import ExtractedModel

    _no_training(monkeypatch)
    config, fits, keras_says = _keras_raising_recipes()[case]
    for _ in range(2):  # a rerun gives the same verdict
        report = retrain.verify(config, fits, TINY, cache_dir=None)
        assert report.fault["owner"] == "submission" and report.fault["cause"] == "recipe_refused"
        assert report.accuracy is None and "Keras could not build the recipe" in report.error
        assert keras_says in report.error
    extracted = ExtractedModel(config if isinstance(config, str) else json.dumps(config), fits,
                               {"reports": {"model": report.as_dict()}})
    with pytest.raises(AssertionError) as err:
        checks.check_accuracy(extracted)
    assert keras_says in str(err.value) and "not your fault" not in str(err.value)


# --- the timed projection ------------------------------------------------------------------

def _hidden_heavy_recipe():
    """Cheap by a cost model that undercounts pooling, heavy when run: two 28x28 stride-1 poolings."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(64, 3, padding="same", activation="relu"),
                              layers.MaxPooling2D((28, 28), strides=1, padding="same"),
                              layers.MaxPooling2D((28, 28), strides=1, padding="same"),
                              layers.GlobalMaxPooling2D(), layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("isolated", [False, True])
def test_a_hidden_heavy_cost_is_refused_from_the_measured_projection(isolated, monkeypatch, tmp_path):
    """The static model is fooled (its check is switched off here); the first real steps are timed and the
    projection refuses the run, as the submission's, with the figures, after a handful of steps (and the
    refusal, which depends on the machine, is not cached)."""
    monkeypatch.setattr(recipe_module, "check_budget", lambda *a, **k: None)
    monkeypatch.setattr(retrain, "PROJECTION_SHARE", 0.1)  # 4 s of the 40 s safety net: a tiny budget, to be quick
    model = _hidden_heavy_recipe()
    settings = retrain.Settings("cnn_mnist", data_subset=(2000, 500), seeds=1, max_seconds=40.0)
    started = time.monotonic()
    report = retrain.verify(model.to_json(), [_fit(model, 15, 64)], settings, cache_dir=tmp_path, isolated=isolated)
    assert not list(tmp_path.glob("*.json"))
    assert report.fault["cause"] == "recipe_too_slow" and report.accuracy is None, report
    assert time.monotonic() - started < 120  # a few steps, not 480
    if report.projection is None:  # isolated: its steps ran past the 4 s allowance before they could be timed,
        assert isolated and "stopped" in report.error and "the assignment's allowance" in report.error
        return  # and the worker's parent stopped it there, during a step (the timer is tested in test_retrain)
    assert "training would take about" in report.error and "ms per step" in report.error
    assert "the assignment allows 4 s per training run" in report.error
    projection = report.projection
    assert projection["steps"] == 15 * 32 and 1 <= projection["measured_steps"] <= retrain.TIMED_STEPS
    assert projection["projected_seconds"] > projection["allowed_seconds"] == 4.0


def test_a_normal_recipe_passes_the_projection_and_is_trained():
    model = _small_keras_model()
    report = retrain.verify(model.to_json(), [_fit(model, 1, 64)], TINY, cache_dir=None, isolated=False)
    assert report.error is None and isinstance(report.accuracy, float)
    assert report.projection and report.projection["projected_seconds"] < report.projection["allowed_seconds"]


def test_a_run_that_overruns_its_own_projection_is_refused_as_the_submissions(monkeypatch):
    """Stop a run well past its projection (made to overrun here by shrinking the allowance): the student's
    refusal with the figures, not a grader_error."""
    monkeypatch.setattr(training, "OVERRUN_FACTOR", 0.01)
    monkeypatch.setattr(training, "OVERRUN_SLACK_S", -1e9)
    model = _small_keras_model()
    report = retrain.verify(model.to_json(), [_fit(model, 2, 64)], TINY, cache_dir=None, isolated=False)
    assert report.fault["cause"] == "recipe_too_slow" and report.accuracy is None, report
    assert "took longer than its own measured estimate" in report.error
    assert "against a projection of" in report.error and "steps" in report.error


# --- grader errors name their cause; a repeated one is listed ---------------------------------

def test_a_grader_error_carries_a_cause_class():
    from autograder.faults import Fault
    from autograder.result import GRADER_ERROR, GRADER_ERROR_CAUSES, GradeResult

    result = GradeResult(assignment="cnn_mnist").fail(Fault("host_limit", "the judge exceeded its memory limit"))
    data = result.to_dict()
    assert data["status"] == "grader_error" and data["cause"] == "host_limit"
    assert GradeResult.from_dict(data).cause == "host_limit"
    assert GradeResult(status=GRADER_ERROR).cause == "unknown"  # never without one
    assert GradeResult().fail(Fault("crashed", "the student's")).to_dict().get("cause") is None
    with pytest.raises(ValueError):
        GradeResult(status=GRADER_ERROR, cause="the student's fault")
    assert {"host_limit", "grader_crash", "dataset_missing", "interpreter", "timeout_infrastructure"} <= set(
        GRADER_ERROR_CAUSES)


def test_a_retrain_killed_at_the_memory_limit_is_a_host_limit_grader_error():
    model = _small_keras_model()
    tight = retrain.Settings("cnn_mnist", data_subset=(2000, 500), seeds=1, memory_mb=50)
    report = retrain.verify(model.to_json(), [_fit(model, 1, 64)], tight, cache_dir=None)
    assert report.accuracy is None and report.fault["cause"] == "host_limit" and report.fault["owner"] == "host"


def test_a_grader_error_repeated_on_rerun_is_listed_for_the_instructor(tmp_path):
    import csv

    from autograder import batch
    from autograder.lms import reports
    from autograder.faults import Fault
    from autograder.result import GradeResult

    path = tmp_path / "s1.json"
    first = GradeResult(assignment="cnn_mnist", student={"id": "s1"}).fail(Fault("host_limit", "killed"))
    path.write_text(json.dumps(first.to_dict()))
    second = GradeResult(assignment="cnn_mnist", student={"id": "s1"}).fail(Fault("host_limit", "killed"))
    rerun = batch._with_earlier_causes(second.to_dict(), path)
    assert rerun["earlier_causes"] == ["host_limit"]
    other = batch._with_earlier_causes(
        GradeResult(assignment="cnn_mnist", student={"id": "s2"}).fail(Fault("grader_crash", "crash")).to_dict(),
        path)
    once = GradeResult(assignment="cnn_mnist", student={"id": "s3"}).fail(Fault("grader_crash", "crash"))
    reports.write_review_csv([rerun, other, once.to_dict()], tmp_path / "needs_review.csv")
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "needs_review.csv"))}
    assert "repeated grader error: host_limit" in rows["s1"]["reason"]
    assert "repeated grader error" not in rows["s2"]["reason"]  # another cause than last time
    assert "repeated grader error" not in rows["s3"]["reason"]  # the first time
    assert any(f.startswith("repeated grader error: host_limit") for f in reports.flags(rerun))


def test_the_untouched_notebook_with_a_keras_raising_optimizer_is_graded_not_a_grader_error(autograder, tmp_path):
    """The issue's escape from a 0: the lesson notebook, its optimizer given both clipnorm and global_clipnorm.
    It is graded (no points for the retrained accuracy, Keras's message in its feedback), never a grader_error."""
    import nbformat

    from assignments.cnn_mnist import sample_answers as samples
    from autograder import engine
    from autograder.engine import RetrainOptions
    from autograder.probe.sandbox import Limits

    nb = nbformat.read(samples.SAMPLES_DIR / "untouched.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("model = models.Sequential()"):
            cell.source = "model = models.Sequential()\n" + samples.SEED_MODEL_CODE  # the lesson's model
        elif cell.cell_type == "code" and cell.source.strip() == "...":
            cell.source = ("import keras\n"
                           "opt = keras.optimizers.Adam(clipnorm=1.0)\n"
                           "opt.global_clipnorm = 1.0  # passes in the notebook; its config has both\n"
                           "model.compile(optimizer=opt, loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
                           "model.fit(train_images, train_labels, epochs=1, batch_size=256)")
    path = tmp_path / "clipped.ipynb"
    nbformat.write(nb, path)
    options = RetrainOptions(cache_dir=str(tmp_path / "cache"), data_subset=(2000, 500), seeds=1)
    limits = Limits(cell_seconds=60, notebook_seconds=240, memory_mb=3072, max_processes=48)
    result = engine.grade_notebook(path, autograder, limits=limits, retrain=options)
    assert result["status"] in ("graded", "error") and "cause" not in result, (result["status"], result["error"])
    training = next((q for q in result["questions"] if q["name"] == "training"), None)
    assert training is not None, (result["status"], result["error"], [q["name"] for q in result["questions"]])
    refused = [c for c in training["cases"] if "Keras could not build the recipe" in c["message"]]
    assert refused and not any(c["passed"] for c in refused), training  # the accuracy check: no points
    assert "global_clipnorm" in refused[0]["message"] and "not your fault" not in refused[0]["message"]
    assert training["score"] < training["max_score"]


@pytest.mark.parametrize("case,isolated", [("clipnorm and global_clipnorm", False),
                                           ("BatchNormalization axis after Dense", True)])
def test_a_recipe_that_fails_in_the_training_process_before_its_first_step_is_the_submissions(case, isolated,
                                                                                             monkeypatch):
    """Second line: had the recipe passed the check when prepared, the training process builds it again and
    whatever Keras raises before the first step is the submission's, with Keras's message, not a grader_error."""
    monkeypatch.setattr(recipe_module, "check_buildable", lambda *a, **k: None)
    config, fits, keras_says = _keras_raising_recipes()[case]
    report = retrain.verify(config, fits, TINY, cache_dir=None, isolated=isolated)
    assert report.fault["cause"] == "recipe_refused" and report.accuracy is None, report
    assert "Keras could not build the recipe" in report.error and keras_says in report.error
