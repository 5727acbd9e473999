"""The class-sized benchmark in its reduced CI form (8 generated submissions, a small MNIST subset).

The full form (200 submissions on full MNIST) is `python benchmarks/class_benchmark.py`; see docs/benchmarks.md.
No timing is asserted: the test checks that the benchmark grades every generated submission, that the
retraining cache trains each distinct recipe once, and that it prints its figures and the projection.
"""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import class_benchmark  # noqa: E402


def test_the_generated_class_has_the_promised_variety():
    assert len(class_benchmark.RECIPES) == 30
    assert len({json.dumps(r, sort_keys=True) for r in class_benchmark.RECIPES}) == 30
    assert {r["optimizer"] for r in class_benchmark.RECIPES} == {"adam", "sgd", "rmsprop"}
    assert min(r["epochs"] for r in class_benchmark.RECIPES) >= 3 and max(r["epochs"] for r in class_benchmark.RECIPES) <= 15
    plan = class_benchmark.plan_class(200)
    assert sum(bool(s["hostile"]) for s in plan) == 10  # 5%
    assert len({s["hostile"] for s in plan if s["hostile"]}) == len(class_benchmark.HOSTILE)
    recipes = [s["recipe"] for s in plan if s["recipe"] is not None]
    assert 20 <= len(set(recipes)) <= 30 and len(recipes) < 200  # popular recipes repeat; a few never train
    assert any(s["skill"] < 1 for s in plan) and any(s["skill"] == 1 for s in plan)


def test_generated_notebooks_differ_in_answers_and_recipes(tmp_path):
    plan = class_benchmark.generate(tmp_path, 20)
    import nbformat

    sources = {p.stem: "\n".join(c.source for c in nbformat.read(p, as_version=4).cells)
               for p in tmp_path.glob("*.ipynb")}
    assert len(sources) == 20 and len(set(sources.values())) == 20
    for student in plan:
        src = sources[student["id"]]
        if student["recipe"] is None:
            assert "model.fit(" not in src
        else:
            r = class_benchmark.RECIPES[student["recipe"]]
            assert f"epochs={r['epochs']}" in src and "model.fit(" in src
    hostile = [s for s in plan if s["hostile"]]
    assert hostile and class_benchmark.HOSTILE[hostile[0]["hostile"]].strip().splitlines()[0] in sources[hostile[0]["id"]]


@pytest.mark.slow
def test_reduced_class_benchmark_grades_everyone_and_trains_each_recipe_once(tmp_path):
    out = tmp_path / "summary.json"
    summary = class_benchmark.main(["--n", "8", "--subset", "1000", "500", "--cell-seconds", "20", "--jobs", "2",
                                    "--json", str(out)])
    assert json.loads(out.read_text()) == summary
    plan = class_benchmark.plan_class(8)
    assert summary["graded"] == 8
    assert summary["statuses"].get("grader_error", 0) == 0, summary["statuses"]
    trained = [(s["recipe"], s["model"]) for s in plan if s["recipe"] is not None]
    assert summary["models_retrained"] == len(set(trained))  # each distinct recipe once ...
    assert summary["cache_hits"] == len(trained) - len(set(trained))  # ... every repeat from the cache
    assert summary["hostile"] and all(h["status"] in ("graded", "error") for h in summary["hostile"].values())
    assert summary["floor_seconds_median"] is not None and summary["peak_mib"] > 0
    assert summary["training_seconds_per_recipe_full_mnist"] > 0
