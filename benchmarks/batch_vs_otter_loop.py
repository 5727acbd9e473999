"""A class of N generated submissions: our batch grader against a plain loop of `otter run`, in one run.

    python benchmarks/batch_vs_otter_loop.py [--n 50] [--mode no-training|distinct|shared] [--jobs J]

The class comes from :mod:`class_benchmark` (hand answers right or with typical mistakes, 5%
hostile); ``--mode`` decides the training cell:

* ``no-training`` (issue 12's "batch without retraining", goal >= 20x): nobody trains, so neither
  side does; the batch runs with retraining off;
* ``distinct``: every student trains a recipe of their own (1 epoch, a distinct batch size), so
  every recipe is trained on both sides: `otter run` in the kernel, the batch in the verifier
  (goal >= 1.5x);
* ``shared``: every student trains the same cheap recipe; the batch retrains it once (cache).

The batch uses the warm pool (its default); ``--cold`` turns it off for comparison.  Time and peak
memory of the whole process tree are printed with their ratio and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import class_benchmark  # noqa: E402
from _measure import measured, report  # noqa: E402

from autograder import batch, build  # noqa: E402
from autograder import engine  # noqa: E402


def plan_for(mode: str, n: int) -> list[dict]:
    plan = class_benchmark.plan_class(n)
    for i, student in enumerate(plan):
        student["recipe"] = None
        if mode == "distinct":
            student["recipe_dict"] = {"epochs": 1, "batch_size": 64 + 8 * i, "optimizer": "adam",
                                      "schedule": "constant", "validation_split": 0.0}
        elif mode == "shared":
            student["recipe_dict"] = {"epochs": 1, "batch_size": 256, "optimizer": "adam",
                                      "schedule": "constant", "validation_split": 0.0}
    return plan


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--mode", choices=("no-training", "distinct", "shared"), default="no-training")
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--cold", action="store_true", help="no warm pool")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        class_benchmark.generate(tmp / "class", args.n, plan=plan_for(args.mode, args.n))
        (built,) = build.build_all(tmp / "dist", ["cnn_mnist"], gradescope=False)
        results: dict = {}
        options = batch.BatchOptions(
            progress=False, jobs=args.jobs or max(os.cpu_count() or 1, 1), warm=0 if args.cold else 1,
            retrain=engine.RetrainOptions(enabled=args.mode != "no-training", cache_dir=str(tmp / "cache"), seeds=1))
        load = os.getloadavg()[0]
        ours_label = f"our batch ({options.jobs} workers, {'cold' if args.cold else 'warm pool'}, {args.mode})"
        with measured(ours_label, results):
            ours = batch.run_batch([tmp / "class"], built.autograder_zip, tmp / "out", options)
        import otter.run

        with measured("plain loop of otter run", results):
            for nb in sorted((tmp / "class").glob("*.ipynb")):
                otter.run.main(str(nb), autograder=str(built.autograder_zip), output_dir=str(tmp), no_logo=True)
    hits = sum(bool((r.get("retrain") or {}).get("cache_hit")) for r in ours)
    print(f"{args.n} submissions ({args.mode}); statuses {sorted({r['status'] for r in ours})}; "
          f"retrain cache hits: {hits}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores)")
    report(results, "plain loop of otter run", ours_label)
    return {"ratio": results["plain loop of otter run"]["seconds"] / results[ours_label]["seconds"], **results}


if __name__ == "__main__":
    main()
