"""Retraining packed onto a CPU machine: one retrain with every thread, probes beside it.

    python benchmarks/retrain_packing.py [--subset 20000 2000] [--probes 4]

Measured in one run, on the lesson's model (1 epoch at batch size 128 on ``--subset`` images):

1. the retrain alone (all threads: TensorFlow's default, as the verifier runs it);
2. probes alone: ``--probes`` gradings of the untouched notebook, one after the other, with the warm
   pool (the next jail starts while one runs), no retraining;
3. the retrain with probes running beside it until it ends, probes at TensorFlow's default threads
   (every core: oversubscribed) and then at 1 thread each (``CNN_GRADER_PROBE_THREADS=1``, what the
   batch grader sets).

Printed: retrain seconds and probes per minute in each case, and the combined work rate (retrains
per hour and probes per minute at once), with the load average: on a shared machine the figures
move with the neighbours.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from retrain_overhead import recipe  # noqa: E402

from assignments.cnn_mnist import sample_answers as samples  # noqa: E402
from autograder import build, warm  # noqa: E402
from autograder import engine  # noqa: E402
from autograder.probe import sandbox  # noqa: E402
from autograder.verifier import retrain  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, nargs=2, default=(20000, 2000))
    ap.add_argument("--probes", type=int, default=4)
    args = ap.parse_args(argv)
    config, fits = recipe(1, 128)
    settings = retrain.Settings("cnn_mnist", seeds=1, data_subset=tuple(args.subset))
    nb = samples.SAMPLES_DIR / "untouched.ipynb"
    out: dict = {"load_before": os.getloadavg()[0], "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        (built,) = build.build_all(Path(tmp) / "dist", ["cnn_mnist"], gradescope=False)
        no_retrain = engine.RetrainOptions(enabled=False)

        def one_probe() -> None:
            r = engine.grade_notebook(nb, built.autograder_zip, retrain=no_retrain)
            assert r["status"] == "graded", r["error"]

        def timed_retrain(sink: dict) -> None:
            started = time.perf_counter()
            report = retrain.verify(config, fits, settings, cache_dir=None)
            sink["seconds"] = time.perf_counter() - started
            sink["accuracy"] = report.accuracy

        alone: dict = {}
        timed_retrain(alone)
        out["retrain_alone_s"] = alone["seconds"]

        for threads in (0, 1):
            os.environ[sandbox.ENV_PROBE_THREADS] = str(threads)
            warm.configure(1)
            one_probe()  # fills the pool (not timed)
            warm.wait_ready(600)
            started = time.perf_counter()
            for _ in range(args.probes):
                one_probe()
            out[f"probes_per_min_alone_t{threads}"] = args.probes / (time.perf_counter() - started) * 60
            warm.wait_ready(600)
            beside: dict = {}
            worker = threading.Thread(target=timed_retrain, args=(beside,))
            started, done = time.perf_counter(), 0
            worker.start()
            while worker.is_alive():
                one_probe()
                done += 1
            worker.join()
            elapsed = time.perf_counter() - started
            out[f"retrain_beside_probes_t{threads}_s"] = beside["seconds"]
            out[f"probes_per_min_beside_t{threads}"] = done / elapsed * 60
            warm.configure(0)
        os.environ.pop(sandbox.ENV_PROBE_THREADS, None)
    out["load_after"] = os.getloadavg()[0]
    print(f"{out['cores']} cores; load average {out['load_before']:.1f} before, {out['load_after']:.1f} after")
    print(f"retrain alone (1 epoch, {args.subset[0]:,} images, all threads): {out['retrain_alone_s']:.1f} s")
    for t, label in ((0, "probes at TensorFlow's default threads"), (1, "probes at 1 thread each")):
        print(f"{label}: alone {out[f'probes_per_min_alone_t{t}']:.1f} probes/min; beside the retrain "
              f"{out[f'probes_per_min_beside_t{t}']:.1f} probes/min while the retrain took "
              f"{out[f'retrain_beside_probes_t{t}_s']:.1f} s "
              f"({out[f'retrain_beside_probes_t{t}_s'] / out['retrain_alone_s']:.2f}x alone)")
    return out


if __name__ == "__main__":
    main()
