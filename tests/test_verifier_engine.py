"""The retrain step inside the engine: after the probe, before the judge; training policy; on_partial."""

from __future__ import annotations

import json

import nbformat
import pytest

from assignments.cnn_mnist import checks
from autograder import engine
from assignments.cnn_mnist import sample_answers as samples
from autograder.engine import RetrainOptions
from autograder.judge.judge import ExtractedModel
from autograder.probe.sandbox import Limits

FAST = Limits(cell_seconds=60, notebook_seconds=240, memory_mb=3072, max_processes=48)
SAME_PADDING = samples.SEED_MODEL_CODE.replace("activation='relu', input_shape", "activation='relu', padding='same', input_shape")


def _same_padding_config() -> str:
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(32, 3, padding="same", activation="relu"),
                              layers.MaxPooling2D(), layers.Flatten(), layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model.to_json()


def _report(accuracy: float) -> dict:
    from autograder.verifier.retrain import RetrainReport

    return RetrainReport(accuracy=accuracy, accuracies=[accuracy], seeds=[1], epochs=15, batch_size=64,
                         optimizer="Adam", device="CPU", backend="tensorflow").as_dict()


def test_training_credit_is_judged_on_its_own_unless_the_assignment_requires_the_lesson_model():
    fits = [{"epochs": 15, "batch_size": 64}]
    model = ExtractedModel(_same_padding_config(), fits, {"reports": {"model": _report(0.9931)}})
    with pytest.raises(AssertionError):
        checks.check_model(model)  # the structure question fails ...
    checks.check_accuracy(model)  # ... and the training question still gives credit
    strict = ExtractedModel(_same_padding_config(), fits,
                            {"reports": {"model": _report(0.9931)}, "require_lesson_model": True})
    with pytest.raises(AssertionError, match="only to the lesson's architecture"):
        checks.check_accuracy(strict)
    low = ExtractedModel(_same_padding_config(), fits, {"reports": {"model": _report(0.985)}})
    with pytest.raises(AssertionError, match="Training policy: the training question scores the retrained accuracy"):
        checks.check_accuracy(low)


def test_the_judge_only_reads_numbers_and_grader_errors_are_not_the_students():
    fits = [{"epochs": 1, "batch_size": 64}]
    from autograder.faults import Fault
    from autograder.verifier.retrain import RetrainReport

    failed = RetrainReport.failed(Fault("timeout_infrastructure", "safety limit")).as_dict()
    broken = ExtractedModel(_same_padding_config(), fits, {"reports": {"model": failed}})
    with pytest.raises(AssertionError, match="not your fault"):
        checks.check_accuracy(broken)
    # a report with neither a figure nor a cause (never written by the grader's worker) is not the student's either
    empty = ExtractedModel(_same_padding_config(), fits, {"reports": {"model": {**_report(0.0), "accuracy": None}}})
    with pytest.raises(AssertionError, match="not your fault"):
        checks.check_accuracy(empty)
    pending = ExtractedModel(_same_padding_config(), fits, {"reports": {}, "pending": True})
    with pytest.raises(AssertionError, match="provisional"):
        checks.check_accuracy(pending)


def test_engine_retrains_before_judging_and_reports_partial_results_first(autograder, tmp_path):
    nb = nbformat.read(samples.SAMPLES_DIR / "untouched.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("model = models.Sequential()"):
            cell.source = "model = models.Sequential()\n" + SAME_PADDING
        elif cell.cell_type == "code" and cell.source.strip() == "...":
            cell.source = ("model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
                           "model.fit(train_images, train_labels, epochs=1, batch_size=256)")
    path = tmp_path / "same.ipynb"
    nbformat.write(nb, path)
    options = RetrainOptions(cache_dir=str(tmp_path / "cache"), data_subset=(2000, 500), seeds=1)
    partials = []
    result = engine.grade_notebook(path, autograder, limits=FAST, retrain=options, on_partial=partials.append)
    assert len(partials) == 1 and partials[0]["retrain_pending"] and partials[0]["retrain"] is None, (result["status"], result["error"], result["execution"].get("output_tail", "")[-1500:])
    partial_training = next(q for q in partials[0]["questions"] if q["name"] == "training")
    assert "provisional" in json.dumps(partial_training)
    questions = {q["name"]: q for q in result["questions"]}
    assert result["status"] == "graded" and questions["model_structure"]["score"] < questions["model_structure"]["max_score"]
    report = result["retrain"]
    assert report["accuracy"] is not None and report["error"] is None  # retrained although the structure differs
    hidden = next(c for c in questions["training"]["cases"] if c["hidden"])
    assert "is not above 0.99" in hidden["message"] and "retrained from scratch" in hidden["message"]
    assert "Layer 1" not in hidden["message"] and "whatever model you built" in hidden["message"]

    strict = RetrainOptions(cache_dir=str(tmp_path / "cache"), data_subset=(2000, 500), seeds=1, require_lesson_model=True)
    result = engine.grade_notebook(path, autograder, limits=FAST, retrain=strict)
    questions = {q["name"]: q for q in result["questions"]}
    assert result["retrain"]["cache_hit"]
    messages = " ".join(c["message"] for c in questions["training"]["cases"])
    assert "padding is 'same'" in messages and "only to the lesson's architecture" in messages
