"""The fork server, measured: a batch whose jails are forked from a template, the same batch with every jail
started fresh, and a plain loop of `otter run`, over the same notebooks, in one run.

    python benchmarks/forkserver.py [--n 10] [--jobs 2] [--skip-otter]

The class comes from :mod:`class_benchmark` with nobody training (retraining off on our side, as in
``batch_vs_otter_loop.py --mode no-training``).  Printed for each side: wall time, CPU seconds of the whole
process tree (the template and its jails included: each batch worker closes its templates before it ends)
and per notebook, peak memory of the whole tree, the ratios to the loop of `otter run`, how many jails were
forked, and the load average before and after.  Goals (issue 26): CPU per graded notebook at most a quarter of
`otter run`'s; the batch at least 5x the loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import class_benchmark  # noqa: E402
from _measure import measured  # noqa: E402

from autograder import batch, build, engine  # noqa: E402
from autograder.probe import forkserver  # noqa: E402

OTTER = "plain loop of otter run"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-otter", action="store_true", help="only the two batches")
    args = ap.parse_args(argv)
    results: dict = {}
    forked: dict = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = class_benchmark.plan_class(args.n)
        for student in plan:
            student["recipe"] = None
        class_benchmark.generate(tmp / "class", args.n, plan=plan)
        (built,) = build.build_all(tmp / "dist", ["cnn_mnist"], gradescope=False)
        for label, setting in ((f"batch, jails forked ({args.jobs} workers)", "1"),
                               (f"batch, jails fresh ({args.jobs} workers)", "0")):
            os.environ[forkserver.ENV] = setting
            options = batch.BatchOptions(progress=False, jobs=args.jobs, warm=1,
                                         retrain=engine.RetrainOptions(enabled=False))
            with measured(label, results):
                out = batch.run_batch([tmp / "class"], built.autograder_zip, tmp / f"out-{setting}", options)
            forked[label] = sum((r.get("isolation") or {}).get("started") == "forked" for r in out)
            statuses = sorted({r["status"] for r in out})
            print(f"{label}: statuses {statuses}, {forked[label]} of {len(out)} forked", flush=True)
            loads.append(os.getloadavg()[0])
        os.environ.pop(forkserver.ENV, None)
        if not args.skip_otter:
            import otter.run

            with measured(OTTER, results):
                for nb in sorted((tmp / "class").glob("*.ipynb")):
                    otter.run.main(str(nb), autograder=str(built.autograder_zip), output_dir=str(tmp), no_logo=True)
            loads.append(os.getloadavg()[0])
    print(f"{args.n} notebooks, no training; load average {', '.join(f'{x:.1f}' for x in loads)} "
          f"(before, after each side; {os.cpu_count()} cores)")
    for label, r in results.items():
        print(f"{label:40s} {r['seconds']:8.1f} s   CPU {r['cpu_seconds']:7.1f} s ({r['cpu_seconds'] / args.n:5.2f} "
              f"per notebook)   peak {r['peak_mib']:6.0f} MiB")
    if OTTER in results:
        for label in results:
            if label != OTTER:
                print(f"{OTTER} / {label}: {results[OTTER]['seconds'] / results[label]['seconds']:.2f}x time, "
                      f"{results[OTTER]['cpu_seconds'] / results[label]['cpu_seconds']:.2f}x CPU")
    return {"results": results, "forked": forked, "loads": loads}


if __name__ == "__main__":
    main()
