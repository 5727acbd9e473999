"""A class of N generated submissions: our batch grader against a plain loop of `otter run`.

    python benchmarks/batch_vs_otter_loop.py [N]      # default 50

The mix: a third correct (one shared, cheap training recipe: 1 epoch at batch size 256), a
third with typical mistakes, a third hostile (patched numpy and checks). Our batch records
`fit`, retrains each distinct recipe once (the cache serves the rest) and runs the workers in
parallel; the loop trains in every kernel. Both run in this one process tree, one after the
other; time and peak memory are printed with their ratio.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measured, report  # noqa: E402

from autograder import batch, build
from autograder.judge import pipeline as engine
from assignments.cnn_mnist import sample_answers as samples  # noqa: E402

CHEAP_RECIPE = ("model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
                "history = model.fit(train_images, train_labels, epochs=1, batch_size=256)")
HOSTILE = ("import numpy, cnn_checks\nnumpy.allclose = lambda *a, **k: True\n"
           "cnn_checks.check_answer = lambda *a, **k: None\n")


def generate(folder: Path, n: int) -> None:
    solution = nbformat.read(samples.SAMPLES_DIR / "solution.ipynb", as_version=4)
    for cell in solution.cells:
        if cell.cell_type == "code" and "model.fit(" in cell.source:
            cell.source = CHEAP_RECIPE
    mistakes = [nbformat.read(samples.SAMPLES_DIR / f"{s.name}.ipynb", as_version=4) for s in samples.SAMPLES]
    for i in range(n):
        kind = i % 3
        if kind == 0:
            nb = nbformat.from_dict(solution)
        elif kind == 1:
            nb = nbformat.from_dict(mistakes[i % len(mistakes)])
        else:
            nb = nbformat.from_dict(mistakes[0])
            nb.cells.insert(3, nbformat.v4.new_code_cell(HOSTILE))
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(f"student {i}"))  # distinct bytes per student
        nbformat.write(nb, folder / f"student{i:03d}_{1000 + i}_{5000 + i}_cnn_mnist.ipynb")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "class").mkdir()
        generate(tmp / "class", n)
        (built,) = build.build_all(tmp / "dist", gradescope=False)
        results: dict = {}
        options = batch.BatchOptions(progress=False, retrain=engine.RetrainOptions(cache_dir=str(tmp / "cache")))
        with measured(f"our batch ({options.jobs} workers, retrain + cache)", results):
            ours = batch.run_batch([tmp / "class"], built.autograder_zip, tmp / "out", options)
        import otter.run

        with measured("plain loop of otter run", results):
            for nb in sorted((tmp / "class").glob("*.ipynb")):
                otter.run.main(str(nb), autograder=str(built.autograder_zip), output_dir=str(tmp), no_logo=True)
    hits = sum(bool((r.get("retrain") or {}).get("cache_hit")) for r in ours)
    print(f"{n} submissions; retrain cache hits: {hits}")
    report(results, "plain loop of otter run", next(k for k in results if k.startswith("our batch")))


if __name__ == "__main__":
    main()
