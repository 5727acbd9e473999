"""Gradescope: grade ``/autograder/submission`` with our engine and write ``results.json``.

Gradescope runs ``/autograder/run_autograder`` in a container where the autograder zip is
unpacked in ``/autograder/source`` and the student's files are in ``/autograder/submission``;
it reads ``/autograder/results/results.json`` (its specification: ``score``,
``execution_time``, ``output``, ``tests`` with ``name``, ``score``, ``max_score``, ``output``,
``visibility``).  ``python -m autograder.gradescope --root DIR`` does exactly that, with the
root configurable so a test can emulate the layout in a temporary folder.

Each question becomes two Gradescope tests: its public checks (visible at once) and its
hidden checks (shown when grades are published), like Otter's own output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autograder.engine import Autograder, RetrainOptions, grade_notebook


def autograder_from_source(source: Path) -> Autograder:
    tests = {p.name: p.read_text() for p in sorted((source / "tests").glob("*.py"))}
    config = json.loads((source / "otter_config.json").read_text())
    public = (source / "files" / "cnn_checks.py").read_text()
    import hashlib

    digest = hashlib.sha256("".join(tests.values()).encode() + public.encode()).hexdigest()
    return Autograder(config.get("assignment_name", "assignment"), tests, public, digest)


def to_gradescope(result: dict, seconds: float) -> dict:
    tests = []
    for q in result.get("questions", []):
        for hidden, visibility, label in ((False, "visible", "public checks"), (True, "after_published", "hidden checks")):
            cases = [c for c in q["cases"] if c["hidden"] == hidden]
            if not cases:
                continue
            share = q["max_score"] / max(len(q["cases"]), 1)
            points = sum((c["points"] if c["points"] is not None else share) for c in cases)
            score = sum((c["points"] if c["points"] is not None else share) for c in cases if c["passed"])
            output = "\n\n".join(c["message"] for c in cases)
            tests.append({"name": f"{q['name']} ({label})", "score": round(score, 4), "max_score": round(points, 4),
                          "output": output, "visibility": visibility})
    lines = []
    if result.get("error"):
        lines.append(f"Grading problem: {result['error']}")
    rt = result.get("retrain")
    if rt:
        lines.append(f"Retraining: {rt['error']}" if rt.get("error") else
                     f"Your model was retrained from scratch: test accuracy {rt['accuracy']:.4f} "
                     f"({rt['epochs']} epochs, batch size {rt['batch_size']}, {rt['device']}).")
    for hit in result.get("limits_hit", []):
        lines.append(f"Limit reached: {hit}")
    return {
        "score": round(float(result.get("score") or 0.0), 4),
        "execution_time": int(round(seconds)),
        "output": "\n".join(lines) or "Graded.",
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }


def run(root: Path, retrain: RetrainOptions = RetrainOptions()) -> dict:
    started = time.monotonic()
    submission = root / "submission"
    results_path = root / "results" / "results.json"
    notebooks = sorted(submission.rglob("*.ipynb"))
    if len(notebooks) != 1:
        result = {"status": "error", "score": 0.0, "questions": [],
                  "error": f"expected one .ipynb file in the submission, found {len(notebooks)}"}
    else:
        result = grade_notebook(notebooks[0], autograder_from_source(root / "source"), retrain=retrain)
    payload = to_gradescope(result, time.monotonic() - started)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(payload, indent=1))
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/autograder"))
    parser.add_argument("--no-retrain", action="store_true")
    args = parser.parse_args()
    run(args.root, RetrainOptions(enabled=not args.no_retrain))


if __name__ == "__main__":
    main()
