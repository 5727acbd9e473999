"""A class-sized batch: generated submissions with realistic variety, graded end to end.

    python benchmarks/class_benchmark.py                      # full form: 200 submissions, full MNIST
    python benchmarks/class_benchmark.py --n 12 --subset 1000 500 --cell-seconds 20   # the CI form

The class (:func:`generate`, deterministic for a given ``--seed``):

* hand answers: each student has a skill level; every hand-computed answer is right with that
  probability, otherwise one of the typical mistakes of ``examples/submissions`` (flipped kernel,
  valid for same, forgotten channels or biases, swapped axes, ceil pooling);
* ``conv2d``/``max_pool2d``: correct, or the flipped-kernel / ceil-pooling versions;
* the model: the lesson's, or one with 'same' padding (about 1 in 12);
* training: one of :data:`RECIPES` (30 distinct: epochs 3 to 15, batch sizes 32 to 1000, Adam, SGD
  with momentum or RMSprop, a constant rate, an exponential or a cosine decay, some with a
  validation split), drawn with Zipf-like weights (a few recipes are popular, as when students
  copy the lesson), or no training at all (about 1 in 20);
* 5% hostile (every 20th student, from the 8th): patched checks, ``os._exit``, a loop that
  ignores time, a hunt for the grader's files.

It prints wall time, throughput, peak memory of the whole process tree, the retraining time
share and cache hits, the per-notebook floor (time outside the student's own cells and outside
training), and a projection for 500 students on CPU, on one GPU and on N Ray workers, with the
assumptions printed beside it.  ``--subset TRAIN TEST`` trains on that many MNIST images (the
verifier's ``data_subset``): the projection then scales training time linearly to 60,000 images.
``--json PATH`` also writes every figure as JSON (the CI test reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measured  # noqa: E402

MNIST_TRAIN = 60_000
EPOCHS = (3, 5, 8, 10, 12, 15)
BATCHES = (32, 64, 128, 256, 512, 1000)
OPTIMIZERS = {
    "adam": "tf.keras.optimizers.Adam(learning_rate={lr})",
    "sgd": "tf.keras.optimizers.SGD(learning_rate={lr}, momentum=0.9)",
    "rmsprop": "tf.keras.optimizers.RMSprop(learning_rate={lr})",
}
BASE_LR = {"adam": 0.001, "sgd": 0.05, "rmsprop": 0.001}
SCHEDULES = ("constant", "exponential", "cosine")


def _recipes(count: int = 30, seed: int = 7) -> list[dict]:
    """``count`` distinct training recipes; the first is the lesson's (10 epochs, Adam, Keras's default batch)."""
    rng = random.Random(seed)
    out = [{"epochs": 10, "batch_size": None, "optimizer": "adam", "schedule": "constant", "validation_split": 0.0}]
    seen = {json.dumps(out[0], sort_keys=True)}
    while len(out) < count:
        r = {"epochs": rng.choice(EPOCHS), "batch_size": rng.choice(BATCHES), "optimizer": rng.choice(list(OPTIMIZERS)),
             "schedule": rng.choice(SCHEDULES), "validation_split": rng.choice((0.0, 0.0, 0.1))}
        if r["batch_size"] == 32 and r["epochs"] > 15:  # (never: 15 x 32 is within the step budget)
            continue
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


RECIPES = _recipes()


def training_code(r: dict) -> str:
    lr = BASE_LR[r["optimizer"]]
    batch = r["batch_size"] or 32
    steps = r["epochs"] * -(-int(MNIST_TRAIN * (1 - r["validation_split"])) // batch)
    rate = {"constant": f"{lr}",
            "exponential": f"tf.keras.optimizers.schedules.ExponentialDecay({lr}, decay_steps=1000, decay_rate=0.9)",
            "cosine": f"tf.keras.optimizers.schedules.CosineDecay({lr}, decay_steps={steps})"}[r["schedule"]]
    fit = [f"epochs={r['epochs']}"]
    if r["batch_size"]:
        fit.append(f"batch_size={r['batch_size']}")
    if r["validation_split"]:
        fit.append(f"validation_split={r['validation_split']}")
    return (f"optimizer = {OPTIMIZERS[r['optimizer']].format(lr=rate)}\n"
            "model.compile(optimizer=optimizer, loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
            f"history = model.fit(train_images, train_labels, {', '.join(fit)})")


HOSTILE = {
    "patched checks": ("import numpy, cnn_checks\nnumpy.allclose = lambda *a, **k: True\n"
                       "numpy.testing.assert_allclose = lambda *a, **k: None\n"
                       "cnn_checks.check_answer = lambda *a, **k: None\n"),
    "os._exit": "import os\nos._exit(3)\n",
    "endless loop": "while True:\n    try:\n        pass\n    except KeyboardInterrupt:\n        break\n",
    "grader hunt": ("import glob, os\nfound = [p for d in ('/root', '/home', '/work', '/tmp', '/srv') for p in "
                    "glob.glob(d + '/**/autograder.zip', recursive=True)][:5]\n"
                    "try:\n    import autograder.reference as leak\nexcept Exception:\n    leak = None\n"
                    "print('HUNT', found, leak)\n"),
}


def plan_class(n: int, seed: int = 0) -> list[dict]:
    """Who each student is: skill, implementation variants, recipe (an index into RECIPES or None), hostility."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** 1.1 for k in range(len(RECIPES))]
    hostile_kinds = list(HOSTILE)
    plan = []
    for i in range(n):
        hostile = hostile_kinds[(i // 20) % len(hostile_kinds)] if i % 20 == 7 else None
        plan.append({
            "id": f"student{i:03d}",
            "skill": rng.choice((0.55, 0.75, 0.9, 1.0, 1.0)),
            "conv2d": rng.choices(("right", "flipped"), (5, 1))[0],
            "max_pool2d": rng.choices(("right", "ceil"), (6, 1))[0],
            "model": rng.choices(("lesson", "same padding"), (11, 1))[0],
            "recipe": None if rng.random() < 0.05 else rng.choices(range(len(RECIPES)), weights)[0],
            "hostile": hostile,
            "rng": rng.random(),
        })
    return plan


def recipe_of(student: dict) -> dict | None:
    """The student's training recipe: one of RECIPES, or one given outright (``recipe_dict``), or None."""
    if student.get("recipe_dict"):
        return student["recipe_dict"]
    return None if student["recipe"] is None else RECIPES[student["recipe"]]


def notebook_for(student: dict, untouched: nbformat.NotebookNode) -> nbformat.NotebookNode:
    from assignments.cnn_mnist import sample_answers as samples

    rng = random.Random(student["rng"])
    wrong = {}
    for s in samples.SAMPLES:
        for var, value in s.answers.items():
            if value != samples.CORRECT.get(var):
                wrong.setdefault(var, []).append(value)
    answers = {var: (value if var not in wrong or rng.random() < student["skill"] else rng.choice(wrong[var]))
               for var, value in samples.CORRECT.items()}
    model = samples.SEED_MODEL_CODE
    if student["model"] == "same padding":
        model = model.replace("activation='relu', input_shape", "activation='relu', padding='same', input_shape")
    sample = samples.Sample(
        student["id"], "generated", answers=answers,
        functions={"conv2d": samples.CONV2D_LOOP.replace("KERNEL", "kernel" if student["conv2d"] == "right"
                                                         else "kernel[::-1, ::-1]"),
                   "max_pool2d": samples.MAX_POOL_FLOOR if student["max_pool2d"] == "right" else samples.MAX_POOL_CEIL},
        model=model, training=None if recipe_of(student) is None else training_code(recipe_of(student)))
    nb = samples.fill(untouched, sample)
    nb.metadata.pop(samples.METADATA_KEY, None)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(f"{student['id']}"))  # distinct bytes per student
    if student["hostile"]:
        nb.cells.insert(3, nbformat.v4.new_code_cell(HOSTILE[student["hostile"]]))
    return nb


def generate(folder: Path, n: int, seed: int = 0, plan: list[dict] | None = None) -> list[dict]:
    from assignments.cnn_mnist import sample_answers as samples

    folder.mkdir(parents=True, exist_ok=True)
    untouched = nbformat.read(samples.SAMPLES_DIR / "untouched.ipynb", as_version=4)
    plan = plan if plan is not None else plan_class(n, seed)
    for student in plan:
        nbformat.write(notebook_for(student, untouched), folder / f"{student['id']}.ipynb")
    return plan


def distinct_recipes_expected(students: int, seed: int = 0, trials: int = 20) -> float:
    """Distinct recipes in a class of ``students`` under this generator's distribution (mean of ``trials``)."""
    return statistics.mean(len({s["recipe"] for s in plan_class(students, seed + t) if s["recipe"] is not None})
                           for t in range(trials))


def _per_epoch_fit(misses: list[dict]) -> tuple[float, float] | None:
    """Least squares ``seconds = fixed + per_epoch * epochs`` over the models trained in this run."""
    points = [(t["epochs"], t["seconds"]) for t in misses if t.get("epochs") and t.get("seconds")]
    if len({e for e, _ in points}) < 2:
        return None
    n = len(points)
    mean_e, mean_s = sum(e for e, _ in points) / n, sum(s for _, s in points) / n
    slope = sum((e - mean_e) * (s - mean_s) for e, s in points) / sum((e - mean_e) ** 2 for e, _ in points)
    return max(mean_s - slope * mean_e, 0.0), max(slope, 0.0)


def summarize(results: list[dict], plan: list[dict], wall: float, peak_mib: float, jobs: int,
              subset: tuple[int, int] | None, full_recipe_seconds: float | None = None) -> dict:
    by_id = {r["student"]["id"]: r for r in results}
    retrained = [r["retrain"] for r in results if r.get("retrain") and r["retrain"].get("accuracy") is not None]
    misses = [t for t in retrained if not t.get("cache_hit")]
    hits = sum(bool(t.get("cache_hit")) for t in retrained)
    train_seconds = sum(t.get("seconds") or 0 for t in misses)
    floors, probe_overheads, judges, retrain_walls = [], [], [], []
    for r in results:
        ex = r.get("execution") or {}
        timings = ex.get("timings") or {}
        cells = sum(c.get("seconds") or 0 for c in ex.get("cells", []))
        if r.get("seconds") is not None and timings:
            floors.append(r["seconds"] - cells - timings.get("retrain", 0))  # outside the student's cells and retraining
            probe_overheads.append(timings["probe"] - cells)
            judges.append(timings.get("judge", 0))
            retrain_walls.append(timings.get("retrain", 0))
    epochs_mean = statistics.mean(recipe_of(p)["epochs"] for p in plan if recipe_of(p)) if any(map(recipe_of, plan)) else 0
    fit = _per_epoch_fit(misses)
    if full_recipe_seconds:
        per_recipe_full, how = full_recipe_seconds, "given (--full-recipe-seconds)"
    elif not subset and misses:
        per_recipe_full, how = train_seconds / len(misses), "measured on full MNIST"
    elif fit and subset:
        fixed, per_epoch = fit
        per_recipe_full = fixed + per_epoch * epochs_mean * MNIST_TRAIN / subset[0]
        how = (f"fitted here as {fixed:.1f} s + {per_epoch:.2f} s per epoch of {subset[0]:,} images, scaled to "
               f"60,000 images at the class's mean {epochs_mean:.1f} epochs")
    elif misses and subset:
        per_recipe_full = train_seconds / len(misses) * MNIST_TRAIN / subset[0]
        how = f"measured on {subset[0]:,} images, scaled linearly (fixed costs scaled too: an overestimate)"
    else:
        per_recipe_full, how = None, "no model was trained"
    hostile = [p for p in plan if p["hostile"]]
    med = lambda xs: round(statistics.median(xs), 2) if xs else None  # noqa: E731
    summary = {
        "submissions": len(plan), "graded": len(results), "jobs": jobs,
        "warm_starts": sum(all((r.get("execution") or {}).get("warm_starts") or [False]) for r in results),
        "wall_seconds": round(wall, 1),
        "throughput_per_minute": round(len(results) / wall * 60, 2), "peak_mib": round(peak_mib),
        "statuses": {s: sum(r["status"] == s for r in results) for s in {r["status"] for r in results}},
        "models_retrained": len(misses), "cache_hits": hits,
        "distinct_recipes_in_class": len({p["recipe"] for p in plan if p["recipe"] is not None}),
        "training_seconds": round(train_seconds, 1),
        "training_share_of_wall": round(train_seconds / wall, 3),
        "retrain_wall_seconds_sum": round(sum(retrain_walls), 1),
        "floor_seconds_median": med(floors),
        "probe_overhead_seconds_median": med(probe_overheads),
        "judge_seconds_median": med(judges),
        "subset": list(subset) if subset else None,
        "training_seconds_per_recipe_full_mnist": round(per_recipe_full, 1) if per_recipe_full else None,
        "training_projection_basis": how,
        "hostile": {p["id"]: {"kind": p["hostile"], "status": by_id.get(p["id"], {}).get("status"),
                              "score": by_id.get(p["id"], {}).get("score")} for p in hostile},
    }
    return summary


def projection(summary: dict, students: int = 500, gpu_speedup: float = 15.0, ray_workers=(4, 16),
               gpu_slots: int = 4) -> list[str]:
    """Time for a class of ``students``: the work outside training spreads over the workers, the distinct recipes
    train one at a time per CPU machine (or ``gpu_slots`` at once on a GPU)."""
    n, jobs = summary["graded"], summary["jobs"]
    other = (summary["floor_seconds_median"] or 0.0)  # worker-seconds per submission outside retraining (median)
    distinct = distinct_recipes_expected(students)
    per_recipe = summary["training_seconds_per_recipe_full_mnist"] or 0.0
    train = distinct * per_recipe

    def hours(seconds: float) -> str:
        return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"

    lines = [f"projection for {students} students (assumptions below):"]
    cpu = students * other / jobs + train  # this machine: a retrain takes every core
    lines.append(f"  this machine ({jobs} workers, CPU):                     {hours(cpu)}")
    gpu = max(students * other / jobs, train / gpu_speedup / gpu_slots)
    lines.append(f"  + one GPU ({gpu_slots} retrains at once, each {gpu_speedup:g}x this CPU): {hours(gpu)}")
    for w in ray_workers:
        lines.append(f"  {w} Ray workers like this machine:                {hours(students * other / (jobs * w) + train / w)}")
    lines += [
        f"  assumptions: {other:.1f} s per submission outside retraining per worker (the median floor measured "
        f"here, {n} submissions); {distinct:.0f} distinct recipes in {students} students (this generator's "
        f"popularity curve; the cache trains each once); {per_recipe:.0f} s to train one recipe on full MNIST "
        f"on this CPU ({summary['training_projection_basis']}); retraining takes every core, so on CPU it adds to "
        f"the rest; the GPU's {gpu_speedup:g}x and {gpu_slots} retrains at once are assumptions, not measured here; "
        "Ray workers divide both parts (no network or cache warm-up cost counted)."]
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=0, help="workers (0: one per core)")
    ap.add_argument("--subset", type=int, nargs=2, metavar=("TRAIN", "TEST"), default=None)
    ap.add_argument("--cell-seconds", type=float, default=60.0)
    ap.add_argument("--warm", type=int, default=1, help="jails and judges started ahead per worker (0: cold)")
    ap.add_argument("--full-recipe-seconds", type=float, default=None,
                    help="seconds to train one recipe on full MNIST on this machine, for the projection "
                         "(default: measured or fitted in this run)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep the class and the results in this folder")
    args = ap.parse_args(argv)

    from autograder import batch, build
    from autograder import engine
    from autograder.probe.sandbox import Limits

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        plan = generate(root / "class", args.n, args.seed)
        (built,) = build.build_all(root / "dist", ["cnn_mnist"], gradescope=False)
        options = batch.BatchOptions(
            jobs=args.jobs or max(os.cpu_count() or 1, 1), progress=False, warm=args.warm,
            limits=Limits(cell_seconds=args.cell_seconds, notebook_seconds=max(4 * args.cell_seconds, 240)),
            retrain=engine.RetrainOptions(cache_dir=str(root / "cache"), seeds=1,
                                          data_subset=tuple(args.subset) if args.subset else None))
        sink: dict = {}
        load_before = os.getloadavg()
        started = time.perf_counter()
        with measured("class", sink):
            results = batch.run_batch([root / "class"], built.autograder_zip, root / "out", options)
        wall = time.perf_counter() - started
    summary = summarize(results, plan, wall, sink["class"]["peak_mib"], options.jobs,
                        tuple(args.subset) if args.subset else None, args.full_recipe_seconds)
    summary["load_average_before"] = [round(x, 2) for x in load_before]
    summary["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"{summary['graded']} submissions in {summary['wall_seconds']} s with {summary['jobs']} workers: "
          f"{summary['throughput_per_minute']} per minute; peak memory {summary['peak_mib']} MiB "
          f"(load average {summary['load_average_before'][0]} before, {summary['load_average_after'][0]} after)")
    print(f"statuses: {summary['statuses']}; probes started warm: {summary['warm_starts']} of {summary['graded']}")
    print(f"retraining: {summary['models_retrained']} models trained, {summary['cache_hits']} cache hits "
          f"({summary['distinct_recipes_in_class']} distinct recipes in the class); {summary['training_seconds']} s "
          f"training = {summary['training_share_of_wall']:.0%} of the wall time (retraining steps, queue included: "
          f"{summary['retrain_wall_seconds_sum']} s summed over submissions)")
    print(f"per-notebook floor (median, outside the student's cells and retraining): {summary['floor_seconds_median']} s "
          f"(probe start-up, extraction and clean-up {summary['probe_overhead_seconds_median']} s, judge "
          f"{summary['judge_seconds_median']} s)")
    print(f"hostile: {summary['hostile']}")
    for line in projection(summary):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
