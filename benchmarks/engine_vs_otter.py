"""One notebook, graded by the engine (cold, and with a warm pool) and by `otter run`, in one run.

    python benchmarks/engine_vs_otter.py [--notebook untouched] [--rounds 3] [--retrain]

Default: the untouched student notebook, where neither side trains.  Each side grades it
``--rounds`` times, alternating, and the medians count:

* **engine, cold**: every grade starts its jail (Python, TensorFlow/Keras, IPython) and its judge
  (Otter) from nothing, as a single `grade` does;
* **engine, warm**: the steady state of a batch: the jail and the judge were started ahead (the
  warm pool) while something else ran, so their start-up is the grader's, not this notebook's.
  The benchmark waits until they are ready, then times the grade;
* **otter run**: the notebook and Otter's checks in one kernel.

Also printed: the per-notebook floor (the engine's time outside the student's own cells), and
peak memory of the whole process tree.  The goal of issue 12 is otter / engine-warm >= 5 on the
untouched notebook.  ``--retrain`` leaves retraining on (cold cache: the first round trains).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measured  # noqa: E402

from autograder import build, warm  # noqa: E402
from autograder import engine  # noqa: E402
from assignments.cnn_mnist import sample_answers as samples  # noqa: E402


def student_cells(result: dict) -> float:
    return sum(c.get("seconds") or 0 for c in (result.get("execution") or {}).get("cells", []))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", default="untouched", help="a sample's name (examples/submissions) or a path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--retrain", action="store_true")
    args = ap.parse_args(argv)
    nb = Path(args.notebook) if args.notebook.endswith(".ipynb") else samples.SAMPLES_DIR / f"{args.notebook}.ipynb"
    import otter.run

    results: dict = {}
    floors: dict[str, list[float]] = {"cold": [], "warm": []}
    scores: dict[str, object] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        (built,) = build.build_all(Path(tmp) / "dist", ["cnn_mnist"], gradescope=False)
        retrain = engine.RetrainOptions(enabled=args.retrain, cache_dir=str(Path(tmp) / "cache"))

        def grade(label: str) -> dict:
            with measured(label, results):
                r = engine.grade_notebook(nb, built.autograder_zip, retrain=retrain)
            floors[label.split()[1].rstrip(",")].append(r["seconds"] - student_cells(r))
            scores[label.split()[1].rstrip(",")] = r["score"]
            return r

        for i in range(args.rounds):
            warm.configure(0)
            grade(f"engine cold, round {i + 1}")
            warm.configure(1)
            engine.grade_notebook(nb, built.autograder_zip, retrain=retrain)  # starts the next jail (not timed)
            if not warm.wait_ready(timeout=600):
                sys.exit("the warm pool did not get ready")
            grade(f"engine warm, round {i + 1}")
            with measured(f"otter run, round {i + 1}", results):
                scores["otter"] = otter.run.main(str(nb), autograder=str(built.autograder_zip), output_dir=tmp,
                                                 no_logo=True).total
        warm.configure(0)
    med = {kind: statistics.median(r["seconds"] for k, r in results.items() if k.startswith(kind))
           for kind in ("engine cold", "engine warm", "otter run")}
    peak = {kind: max(r["peak_mib"] for k, r in results.items() if k.startswith(kind)) for kind in med}
    cpu = {kind: statistics.median(r["cpu_seconds"] for k, r in results.items() if k.startswith(kind)) for kind in med}
    for kind in med:
        print(f"{kind:12s} median {med[kind]:7.2f} s of {args.rounds}   CPU {cpu[kind]:6.1f} s   "
              f"peak {peak[kind]:6.0f} MiB")
    print("(CPU counts finished child processes: a warm grade includes its own jail's start-up, done earlier)")
    print(f"notebook: {nb.name}; scores: engine {scores.get('warm')} | otter {scores.get('otter')}; "
          f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores)")
    print(f"per-notebook floor (time outside the student's cells), median: cold {statistics.median(floors['cold']):.2f} s, "
          f"warm {statistics.median(floors['warm']):.2f} s")
    out = {"otter_over_warm": med["otter run"] / med["engine warm"], "otter_over_cold": med["otter run"] / med["engine cold"],
           "medians": med, "peak_mib": peak, "floor_warm": statistics.median(floors["warm"])}
    print(f"ratio otter run / engine warm: {out['otter_over_warm']:.2f}x (goal 5x); "
          f"otter run / engine cold: {out['otter_over_cold']:.2f}x")
    return out


if __name__ == "__main__":
    main()
