"""Grade the bundled samples with the engine (no retraining) and with `otter run`, in one run.

    python benchmarks/engine_vs_otter.py

The engine records `model.fit` instead of running it, so a submission costs one process start
plus the notebook's cheap cells; `otter run` executes the training in the student's kernel.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measured, report  # noqa: E402

from autograder import build
from autograder.judge import pipeline as engine
from assignments.cnn_mnist import sample_answers as samples  # noqa: E402


def main() -> None:
    notebooks = sorted(samples.SAMPLES_DIR.glob("*.ipynb"))
    with tempfile.TemporaryDirectory() as tmp:
        (built,) = build.build_all(Path(tmp) / "dist", gradescope=False)
        results: dict = {}
        with measured("engine (probe + judge, no retrain)", results):
            ours = {nb.stem: engine.grade_notebook(nb, built.autograder_zip,
                                                   retrain=engine.RetrainOptions(enabled=False))["score"]
                    for nb in notebooks}
        import otter.run

        with measured("otter run (trains in the kernel)", results):
            theirs = {nb.stem: otter.run.main(str(nb), autograder=str(built.autograder_zip),
                                              output_dir=tmp, no_logo=True).total for nb in notebooks}
    print(f"{len(notebooks)} submissions: {', '.join(n.stem for n in notebooks)}")
    print("scores (engine without retraining | otter):", {k: (ours[k], theirs[k]) for k in ours})
    report(results, "otter run (trains in the kernel)", "engine (probe + judge, no retrain)")


if __name__ == "__main__":
    main()
