"""Retraining verifier: train the submitted recipe from scratch and measure test accuracy.

The accuracy a notebook prints proves nothing (lucky seed, test-set training, loaded weights,
a print statement).  From the extracted model config and the recorded ``fit`` calls:

1. :mod:`autograder.verifier.rebuild` reduces them to a canonical recipe of validated numbers (nothing
   the student produced is deserialized; what cannot be replayed is refused, and what is
   normalised, such as a seed or an array initializer, is listed in the notes); a ``tf.data``
   pipeline is rebuilt on the assignment's data (:mod:`autograder.verifier.pipeline`), and
   validation data that a callback watches is replayed as the assignment's test images;
2. :mod:`autograder.verifier.budget` checks the recipe against the assignment's limits (config size,
   parameters, batch size, steps, operations of every layer, batch memory) before any training, and
   :func:`autograder.verifier.recipe.check_buildable` builds and compiles the whole recipe without data: whatever Keras raises there
   is the submission's error, with Keras's message;
3. a separate process (:mod:`autograder.verifier.worker`: ``python -I``, memory watched, wall time as a
   safety net only) builds
   the model from the recipe, trains it on the assignment's training images at a fixed seed with
   op determinism, and returns only numbers (:mod:`autograder.verifier.training`).  Its first real steps (one warm-up, then up to
   ``TIMED_STEPS``) are timed; a run whose measured projection exceeds ``PROJECTION_SHARE`` of
   ``max_seconds``, or that later overruns its own projection, is stopped and refused as the
   submission's, with the figures; a failure before the first step is the submission's too.  A
   ``grader_error`` is left for the grader's and the host's faults (:mod:`autograder.faults`), each with its cause;
4. when the first accuracy lies within ``seed_margin`` of the threshold, more seeds are
   trained, up to ``seeds``, and the median is scored (every accuracy is reported);
5. results are cached (:mod:`autograder.verifier.signed_cache`) by the canonical recipe, the data description, every option and the
   framework versions; entries are authenticated with an HMAC whose key only the grader can
   read, so neither a submission nor another user can forge one;
6. a recipe that ``build`` already trained, in the same context, is served from the zip's signed verdict
   (:mod:`autograder.verifier.preverified`) before any seed is trained.
"""

from __future__ import annotations

import fcntl
import os
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from autograder.verifier.rebuild import RefusedModel, describe_optimizer, learning_rates
from autograder.verifier.recipe import DEFAULT_SEED, Settings, input_max, prepare  # noqa: F401 (DEFAULT_SEED re-exported)
from autograder.verifier.signed_cache import _hmac_key, _private_dir, _read_entry, _write_entry, cache_key, default_cache_dir
from autograder.faults import Fault, FaultError
from autograder.verifier.training import deterministic, device_description, select_backend, train_run
from autograder.verifier.worker import _run_isolated, _Slot, default_slot_dir, retrain_slots

# the verifier's parts, as callers and tests know them from here
from autograder.verifier.recipe import _data_notes, check_buildable  # noqa: E402,F401
from autograder.verifier.signed_cache import VERIFIER_VERSION  # noqa: E402,F401
from autograder.verifier.training import TIMED_STEPS, fingerprint, load_data  # noqa: E402,F401

PROJECTION_SHARE = 0.75  # a recipe whose measured projection exceeds this share of max_seconds is refused


@dataclass
class RetrainReport:
    """What the verifier did with a submission's model: the recipe it retrained, the accuracy it measured
    on the test images, or why there is none."""

    accuracy: float | None = None  # the test accuracy that counts: the median of the seeds' accuracies
    accuracies: list[float] = field(default_factory=list)  # each seed's test accuracy, in the order trained
    seeds: list[int] = field(default_factory=list)  # the seeds trained (more than one only near the threshold)
    epochs: int = 0  # the epochs the scored run trained (EarlyStopping may stop it before epochs_requested)
    seed_epochs: list[int] = field(default_factory=list)  # the epochs each seed trained, in the order of seeds
    epochs_requested: int = 0  # the epochs the recipe's fit calls ask for, all together (after the budget's cap)
    batch_size: int | None = None  # the first fit call's batch size
    steps: int = 0  # optimizer steps of one training run, every fit call and epoch included
    optimizer: str = ""  # the first fit call's optimizer, with its settings
    learning_rate: float | None = None  # the optimizer's learning rate (a schedule's first); None: Keras's default
    default_learning_rate: float | None = None  # Keras's default learning rate for that optimizer
    # the largest pixel value the model's first weighted layer sees, after the notebook's scaling, its tf.data
    # maps and the model's own Rescaling (about 1 for pixels scaled to [0, 1])
    input_max: float | None = None
    loss: str = ""  # the loss's name
    device: str = ""  # where it trained: "CPU", or the GPU
    backend: str = ""  # Keras' backend: "tensorflow" or "jax"
    seconds: float = 0.0  # training time of the runs that did not come from the cache
    peak_mb: int = 0  # the largest memory (RSS) of a training process, as measured when it trained
    cache_hit: bool = False  # every run came from the retraining cache
    # where the retraining differs from the notebook's own run (data, pixel scale, capped epochs, seeds)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why there is no accuracy, for people (a refused recipe, or the grader's fault)
    # why there is no accuracy, typed (autograder.faults.Fault: owner, cause, message): the recipe's (refused,
    # with the figures) or the host's or the grader's (then the result is a grader_error)
    fault: dict | None = None
    projection: dict | None = None  # the timed projection of the last run: step seconds, steps, projected seconds
    # served from the build's signed verdict instead of training (autograder.verifier.preverified): which recipe,
    # when it was built, on which device, its seeds' accuracies; None: trained here (or from the cache)
    preverified: dict | None = None

    def summary(self) -> str:
        """The run that was scored, for people (:func:`autograder.verifier.describe.describe_run`)."""
        from autograder.verifier.describe import describe_run

        return describe_run(self.as_dict())

    def fail(self, fault: Fault) -> "RetrainReport":
        """No accuracy, because of ``fault``: the recipe's (refused) or the host's or the grader's."""
        self.fault = fault.to_dict()
        self.error = (f"The grader could not retrain the model (not your fault): {fault.message}." if fault.graders
                      else f"The model was not retrained: {fault.message}.")
        return self

    @classmethod
    def failed(cls, fault: Fault) -> "RetrainReport":
        return cls().fail(fault)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RetrainReport":
        """A report from its JSON (a result file's ``retrain``); fields it lacks keep their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _train(job: dict, settings: Settings, isolated: bool, slots: Path) -> dict:
    slot = _Slot(slots, retrain_slots())
    if isolated:
        return _run_isolated(job, settings.max_seconds, settings.memory_mb, slot)
    with slot:
        return train_run(job)


def train_seed_cached(job: dict, recipe: dict, settings: Settings, cache: Path | None, isolated: bool = True) -> dict:
    """One seed's training, through the authenticated cache (locked: parallel graders train once)."""
    if cache is None:
        result = _train(job, settings, isolated, default_slot_dir())
        _raise_graders(result)
        return {**result, "cache_hit": False}
    _private_dir(cache)
    secret = _hmac_key(cache)
    key = cache_key(recipe, job["raw"], settings, job["seed"])
    entry, lock = cache / f"{key}.json", cache / f"{key}.lock"
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)  # a second grader with the same key waits, then reads
        cached = _read_entry(entry, secret)
        if cached is not None:
            return {**cached, "cache_hit": True}
        result = _train(job, settings, isolated, cache / "slots")
        _raise_graders(result)  # (not isolated: the run says so itself)
        if not result.get("fault"):  # a refusal from measured time is not cached: it depends on the machine
            _write_entry(entry, result, secret)
        return {**result, "cache_hit": False}


def _raise_graders(result: dict) -> None:
    """A training run's fault of the host's or the grader's, raised (the recipe's own is reported)."""
    if result.get("fault"):
        fault = Fault.from_dict(result["fault"])
        if fault.graders:
            raise FaultError(fault)


def verify(config, fits, settings: Settings, *, cache_dir: str | os.PathLike | None = "default",
           isolated: bool = True, verdicts=None) -> RetrainReport:
    """Retrain the submission's recipe from scratch and measure test accuracy (seed rule, cache).

    ``verdicts`` (:class:`autograder.verifier.preverified.Verdicts`, from the autograder zip): a recipe the build
    already trained in this very context is served from its signed verdict instead of being trained again."""
    report = RetrainReport()
    try:
        recipe, plan, cost, notes = prepare(config, fits, settings)
    except RefusedModel as exc:
        return report.fail(Fault("recipe_refused", str(exc)))
    except FaultError as exc:
        return report.fail(exc.fault)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        return report.fail(Fault("recipe_refused", f"its description could not be read ({type(exc).__name__})"))
    try:
        raw, data_notes = _data_notes(recipe, settings.assignment, settings.data_subset)
    except RefusedModel as exc:
        return report.fail(Fault("recipe_refused", str(exc)))
    report.notes = notes + data_notes
    report.steps, report.batch_size = cost.steps, plan[0]["batch_size"]
    report.epochs_requested = sum(fit["epochs"] for fit in plan)
    report.optimizer, report.loss = describe_optimizer(plan[0]["optimizer"]), plan[0]["loss"]["name"]
    report.input_max = input_max(recipe, raw, settings.data()["pixel_scale"])
    try:
        report.backend = select_backend()
        report.device = device_description()
        report.learning_rate, report.default_learning_rate = learning_rates(plan[0]["optimizer"])
        cache = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        planned = {**recipe, "fits": plan}
        runs = []
        served = verdicts.lookup(planned, raw, settings) if verdicts is not None else None  # the build's verdict
        if served is not None:
            runs = served.apply(report)  # its seeds' accuracies: nothing is trained
        for seed in (() if served else range(settings.seed, settings.seed + max(settings.seeds, 1))):
            job = {"assignment": settings.assignment, "num_classes": settings.data()["num_classes"],
                   "model": recipe["model"], "plan": plan, "seed": seed, "raw": raw,
                   "subset": list(settings.data_subset) if settings.data_subset else None,
                   "deterministic": deterministic(), "steps": cost.steps, "max_seconds": settings.max_seconds,
                   "allowed_seconds": round(PROJECTION_SHARE * settings.max_seconds, 1)}
            run = train_seed_cached(job, planned, settings, cache, isolated)
            report.projection = run.get("projection") or report.projection
            if run.get("fault"):  # failed to build, failed its first step, or too slow as measured: the recipe's
                return report.fail(Fault.from_dict(run["fault"]))
            runs.append(run)
            report.seeds.append(seed)
            if abs(runs[0]["accuracy"] - settings.threshold) >= settings.seed_margin:
                break  # clearly above or below: one seed decides
    except FaultError as exc:  # error too, so every page that shows error shows why
        return report.fail(exc.fault)
    report.accuracies = [r["accuracy"] for r in runs]
    report.accuracy = float(statistics.median(report.accuracies))
    report.seed_epochs = [r["epochs"] for r in runs]
    report.epochs = next((r for r in runs if r["accuracy"] == report.accuracy), runs[0])["epochs"]  # the scored run
    report.seconds = round(sum(r["seconds"] for r in runs if not r["cache_hit"]), 2)
    report.cache_hit = all(r["cache_hit"] for r in runs)
    report.peak_mb = max(int(r.get("peak_mb") or 0) for r in runs)
    if len(runs) > 1:
        report.notes.append(f"the first accuracy, {report.accuracies[0]:.4f}, was within {settings.seed_margin} of the "
                            f"threshold {settings.threshold}, so {len(runs)} seeds were trained and the median counts")
    return report
