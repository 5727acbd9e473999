"""Every assignment's samples graded by our engine, retraining each model from scratch.

Each sample gets the score it is designed to get (derived as in ``tests/test_assignment.py``, where
``otter run`` must give the same designed scores: so the engine and Otter agree on every honest
sample), the feedback its metadata names, and the solutions' recipes retrain above their thresholds.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import registry

sys.path.insert(0, str(Path(__file__).parent))
from test_assignment import SAMPLES, _Lazy, _sample, designed_scores  # noqa: E402


@pytest.fixture(scope="module")
def engine_results(builds, tmp_path_factory):
    """Our engine on the same samples, retraining every model from scratch (fresh cache)."""
    from autograder import engine

    options = engine.RetrainOptions(cache_dir=str(tmp_path_factory.mktemp("retrain-cache")))
    return _Lazy(lambda assignment, name: engine.grade_notebook(_sample(assignment, name),
                                                                builds[assignment].autograder_zip, retrain=options))


@pytest.mark.parametrize("assignment,name", SAMPLES)
def test_engine_gives_each_sample_its_designed_score(assignment, name, builds, engine_results, tmp_path):
    expected, feedback = designed_scores(builds[assignment], assignment, name, tmp_path)
    result = engine_results[assignment][name]
    questions = {q["name"]: q for q in result["questions"]}
    assert set(questions) == set(expected)
    for question, score in expected.items():
        assert questions[question]["score"] == pytest.approx(score), (name, question, questions[question]["cases"])
        if question in feedback:
            assert feedback[question] in "\n".join(c["message"] for c in questions[question]["cases"])
    assert result["score"] == pytest.approx(sum(expected.values()))
    assert result["status"] == "graded", result.get("error")
    # the class insight: each designed mistake recorded by its id, on its question, and nothing else
    meta = nbformat.read(_sample(assignment, name), as_version=4).metadata[
        importlib.import_module(registry.get(assignment).samples).METADATA_KEY]
    named = {q: sorted({m for c in questions[q]["cases"] for m in c["misconceptions"]}) for q in questions}
    assert {q: ids for q, ids in named.items() if ids} == \
        {q: sorted(ids) for q, ids in meta["expected_misconceptions"].items()}, name


@pytest.mark.slow
def test_solution_recipe_retrained_from_scratch_reaches_99(engine_results):
    report = engine_results["cnn_mnist"]["solution"]["retrain"]
    assert report["error"] is None and not report["cache_hit"]
    assert report["accuracy"] >= 0.99, report
    assert report["epochs"] == 10 and report["batch_size"] == 128
    # it fits Gradescope's default 3 GiB container beside the grader's own share (tests/test_gradescope.py)
    from autograder.lms.gradescope import MEMORY_HEADROOM_MB

    assert 0 < report["peak_mb"] < 3072 - MEMORY_HEADROOM_MB, report


def test_digits_solution_recipe_retrained_from_scratch_above_its_threshold(engine_results):
    """The second assignment's solution retrains in seconds, so every run retrains it (not marked slow)."""
    report = engine_results["digits"]["solution"]["retrain"]
    assert report["error"] is None and not report["cache_hit"], report
    assert report["accuracy"] > registry.get("digits").training.threshold, report
    assert report["epochs"] == 40 and report["batch_size"] == 32
