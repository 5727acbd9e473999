"""Pre-verified verdicts: a recipe the build trained is served from the zip's signed verdict, and nothing else is.

No test here trains: the verifier's training function is stubbed (``retrain._train``), so what is asserted is
whether it was called, and what the report says.  The one build that trains for real is the digits assignment's
on the emulated Gradescope (``tests/test_gradescope.py``).
"""

from __future__ import annotations

import base64
import json
import os
import zipfile
from pathlib import Path

import pytest

from autograder import protocol, registry
from autograder.engine import Autograder, RetrainOptions, _retrain_models
from autograder.verifier import preverified, retrain

SPEC = registry.get("cnn_mnist")
OPTIONS = RetrainOptions(cache_dir=None, data_subset=(2000, 500), seeds=1)
SETTINGS = OPTIONS.settings(SPEC)
TRAINED = {"accuracy": 0.9712, "epochs": 1, "seconds": 1.5, "peak_mb": 321}  # what the stub "trains" to at build
RETRAINED = {"accuracy": 0.5, "epochs": 1, "seconds": 2.0, "peak_mb": 100}  # ... and when grading trains again
# the zip's grading contents a verdict file is bound to
TESTS, PUBLIC, VARIANTS = {"training.py": "def test_accuracy(model):\n    pass\n"}, "# checks\n", None
DIGEST = preverified.autograder_digest("cnn_mnist", TESTS, PUBLIC, VARIANTS)


def _recipe(epochs: int = 1, batch_size: int = 64):
    """A small recipe as the probe extracts it: the model's config (JSON) and its recorded fit calls."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(4, 3, activation="relu"),
                              layers.MaxPooling2D(4), layers.Flatten(), layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit = {"epochs": epochs, "batch_size": batch_size, "initial_epoch": 0, "validation_split": 0.0, "shuffle": True,
           "callbacks": [], "compile_config": model.get_compile_config(),
           "x": {"kind": "array", "shape": [60000, 28, 28, 1], "max": 1.0}}
    return model.to_json(), [fit]


class Trainer:
    """Stands for the training process: counts the runs and returns a fixed result."""

    def __init__(self, result: dict):
        self.result, self.calls = result, 0

    def __call__(self, job, settings, isolated, slots):
        self.calls += 1
        return dict(self.result)


def _train_with(monkeypatch, result: dict) -> Trainer:
    trainer = Trainer(result)
    monkeypatch.setattr(retrain, "_train", trainer)
    return trainer


@pytest.fixture(scope="module")
def recipe():
    return _recipe()


@pytest.fixture(scope="module")
def build(tmp_path_factory, recipe):
    """What the build records for ``recipe`` (a Recorder in verify, training stubbed) and its signing key."""
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(retrain, "_train", Trainer(TRAINED))
        recorder = preverified.Recorder()
        report = retrain.verify(*recipe, SETTINGS, cache_dir=None, verdicts=recorder)
    finally:
        mp.undo()
    assert report.accuracy == TRAINED["accuracy"] and len(recorder.seen) == 1
    digest, ctx = recorder.seen[0]
    key_dir = tmp_path_factory.mktemp("key") / "preverify"
    return {"entry": preverified.entry("solution", digest, ctx, report.as_dict()),
            "key": preverified.signing_key(key_dir), "key_dir": key_dir}


def _files(build, *, entry: dict | None = None, key=None, digest: str = DIGEST) -> dict[str, bytes]:
    text, public = preverified.sign([entry or build["entry"]], "cnn_mnist", digest, key or build["key"])
    return {preverified.VERDICTS_FILE: text.encode(), preverified.PUBLIC_KEY_FILE: public.encode()}


def _verdicts(files: dict[str, bytes]):
    return preverified.load(files.get, DIGEST, "test zip")


def _assert_retrained(report, trainer: Trainer) -> None:
    assert trainer.calls == 1 and report.accuracy == RETRAINED["accuracy"] and report.preverified is None


# --- served ---------------------------------------------------------------------------------------

def test_the_recipe_the_build_trained_is_served_without_training(monkeypatch, build, recipe):
    trainer = _train_with(monkeypatch, RETRAINED)
    report = retrain.verify(*recipe, SETTINGS, cache_dir=None, verdicts=_verdicts(_files(build)))
    assert trainer.calls == 0
    assert report.accuracy == TRAINED["accuracy"] and report.accuracies == [TRAINED["accuracy"]]
    assert report.seeds == [SETTINGS.seed] and report.epochs == 1 and report.seconds == 0 and not report.cache_hit
    assert report.preverified["recipe"] == "solution" and report.preverified["device"] == report.device
    assert report.preverified["built"][:2] == "20" and report.peak_mb == TRAINED["peak_mb"]
    assert "pre-verified when the assignment was built" in report.summary()


def test_the_key_is_the_canonical_recipe_not_what_the_notebook_names(monkeypatch, build):
    """The same recipe built again (Keras numbers its layers anew: other names in the config) is served; the
    lookup reads nothing of the notebook but the recipe."""
    config, fits = _recipe()
    renamed = json.loads(config)
    for layer in renamed["config"]["layers"]:
        layer["config"]["name"] = "claimed_" + layer["config"].get("name", "")
    renamed["config"]["name"] = "solution"
    trainer = _train_with(monkeypatch, RETRAINED)
    report = retrain.verify(json.dumps(renamed), fits, SETTINGS, cache_dir=None, verdicts=_verdicts(_files(build)))
    assert trainer.calls == 0 and report.preverified is not None


# --- never served: attacks and mismatches ------------------------------------------------------------

def test_another_recipe_is_retrained(monkeypatch, build):
    trainer = _train_with(monkeypatch, RETRAINED)
    _assert_retrained(retrain.verify(*_recipe(epochs=2), SETTINGS, cache_dir=None,
                                     verdicts=_verdicts(_files(build))), trainer)


def _payload_edited(files: dict[str, bytes], edit) -> dict[str, bytes]:
    envelope = json.loads(files[preverified.VERDICTS_FILE])
    envelope["payload"] = edit(envelope["payload"])
    return {**files, preverified.VERDICTS_FILE: json.dumps(envelope).encode()}


@pytest.mark.parametrize("attack", ["accuracy edited", "truncated", "garbage", "empty", "signature of another key",
                                    "no public key", "signature removed", "another zip",
                                    "not Ed25519"])
def test_a_verdict_file_that_does_not_verify_is_never_served(monkeypatch, capsys, build, recipe, attack, tmp_path):
    files = _files(build)
    text = files[preverified.VERDICTS_FILE]
    other = preverified.signing_key(tmp_path / "other")
    if attack == "accuracy edited":  # the payload says 0.9912 now; the signature is the build's
        files = _payload_edited(files, lambda p: p.replace(str(TRAINED["accuracy"]), "0.9912"))
        assert b"0.9912" in files[preverified.VERDICTS_FILE]
    elif attack == "truncated":
        files[preverified.VERDICTS_FILE] = text[:len(text) // 2]
    elif attack == "garbage":
        files[preverified.VERDICTS_FILE] = os.urandom(512)
    elif attack == "empty":
        files[preverified.VERDICTS_FILE] = b""
    elif attack == "signature of another key":  # a verdict file signed by someone else, with this zip's key
        files[preverified.VERDICTS_FILE] = _files(build, key=other)[preverified.VERDICTS_FILE]
    elif attack == "no public key":
        del files[preverified.PUBLIC_KEY_FILE]
    elif attack == "signature removed":
        envelope = json.loads(text)
        envelope["signature"] = base64.b64encode(b"\0" * 64).decode()
        files[preverified.VERDICTS_FILE] = json.dumps(envelope).encode()
    elif attack == "another zip":  # signed for another assignment's (or another build's) tests
        files = _files(build, digest=preverified.autograder_digest("digits", TESTS, PUBLIC, VARIANTS))
    elif attack == "not Ed25519":
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        files[preverified.PUBLIC_KEY_FILE] = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    verdicts = _verdicts(files)
    assert verdicts is not None and verdicts.problem, attack
    trainer = _train_with(monkeypatch, RETRAINED)
    _assert_retrained(retrain.verify(*recipe, SETTINGS, cache_dir=None, verdicts=verdicts), trainer)
    assert "none served from test zip" in capsys.readouterr().err  # the grader's log says why


@pytest.mark.parametrize("part, change", [
    ("data", lambda c: {**c, "data": {**c["data"], "sha256": {k: "0" * 64 for k in c["data"]["sha256"]}}}),
    ("verifier", lambda c: {**c, "verifier": c["verifier"] - 1}),
    ("keras", lambda c: {**c, "keras": "2.15.0"}),
    ("backend", lambda c: {**c, "backend": "jax" if c["backend"] != "jax" else "tensorflow"}),
])
def test_a_signed_verdict_made_in_another_context_is_not_served(monkeypatch, capsys, build, recipe, part, change):
    """Correctly signed (an earlier build's, say) but for another dataset, verifier version, Keras or backend."""
    entry = {**build["entry"], "context": change(build["entry"]["context"])}
    trainer = _train_with(monkeypatch, RETRAINED)
    _assert_retrained(retrain.verify(*recipe, SETTINGS, cache_dir=None, verdicts=_verdicts(_files(build, entry=entry))),
                      trainer)
    assert f"made with another {preverified.CONTEXT_NAMES[part]}" in capsys.readouterr().err


@pytest.mark.parametrize("override", [{"threshold": 0.98}, {"seeds": 3}, {"seed_margin": 0.01}, {"max_epochs": 5}])
def test_grading_with_other_settings_retrains(monkeypatch, capsys, build, recipe, override):
    """The settings that decide the seed rule, the threshold and the budget are part of the match."""
    import dataclasses

    options = dataclasses.replace(OPTIONS, **{k: v for k, v in override.items() if k != "threshold"})
    settings = options.settings(SPEC)
    if "threshold" in override:
        settings = dataclasses.replace(settings, threshold=override["threshold"])
    trainer = _train_with(monkeypatch, RETRAINED)
    _assert_retrained(retrain.verify(*recipe, settings, cache_dir=None, verdicts=_verdicts(_files(build))), trainer)
    assert "made with another training settings" in capsys.readouterr().err


def test_the_time_and_memory_safety_nets_are_not_part_of_the_match(monkeypatch, build, recipe):
    """A Gradescope container gives each run less time than the build had: the verdict is served all the same."""
    import dataclasses

    trainer = _train_with(monkeypatch, RETRAINED)
    settings = dataclasses.replace(SETTINGS, max_seconds=300.0, memory_mb=2048)
    report = retrain.verify(*recipe, settings, cache_dir=None, verdicts=_verdicts(_files(build)))
    assert trainer.calls == 0 and report.preverified is not None


def test_a_malformed_signed_verdict_is_not_served(monkeypatch, capsys, build, recipe):
    entry = {**build["entry"], "accuracies": [1.5]}  # signed by the key's holder, yet not a verdict
    trainer = _train_with(monkeypatch, RETRAINED)
    _assert_retrained(retrain.verify(*recipe, SETTINGS, cache_dir=None, verdicts=_verdicts(_files(build, entry=entry))),
                      trainer)
    assert "not well formed" in capsys.readouterr().err


def test_a_zip_without_verdicts_has_none_and_an_unreadable_one_serves_none(build):
    assert preverified.load({}.get, DIGEST) is None
    files = _files(build)

    def failing(name: str) -> bytes:
        if name == preverified.PUBLIC_KEY_FILE:
            raise zipfile.BadZipFile("Bad CRC-32")
        return files[name]

    verdicts = preverified.load(failing, DIGEST)
    assert verdicts is not None and "could not be read (BadZipFile)" in verdicts.problem


# --- the signing key ---------------------------------------------------------------------------------

def test_the_signing_key_is_private_and_kept_across_builds(tmp_path):
    folder = tmp_path / "cache" / "preverify"
    first = preverified.signing_key(folder)
    assert (folder.stat().st_mode & 0o777) == 0o700 and ((folder / "ed25519.key").stat().st_mode & 0o777) == 0o600
    assert preverified.signing_key(folder).public_key() == first.public_key()  # the next build signs with it too
    os.chmod(folder / "ed25519.key", 0o644)
    with pytest.raises(preverified.VerdictError, match="private"):
        preverified.signing_key(folder)


# --- through the engine: the zip (batch) and the unpacked folder (Gradescope) ------------------------

def _zip(tmp_path: Path, extra: dict[str, bytes]) -> Path:
    path = tmp_path / "autograder.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("otter_config.json", json.dumps({"assignment_name": "cnn_mnist"}))
        for name, source in TESTS.items():
            z.writestr(f"tests/{name}", source)
        z.writestr(f"files/{SPEC.public_module_name}", PUBLIC)
        for name, data in extra.items():
            z.writestr(name, data)
    return path


def test_the_batch_and_gradescope_read_the_verdicts_beside_the_tests(monkeypatch, build, recipe, tmp_path):
    from autograder.lms import gradescope

    path = _zip(tmp_path, _files(build))
    source = tmp_path / "source"
    with zipfile.ZipFile(path) as z:
        z.extractall(source)
    config, fits = recipe
    values = {"model": {"status": protocol.MODEL, "config": config, "fits": fits}}
    for ag in (Autograder.from_zip(path), gradescope.autograder_from_source(source)):
        assert ag.verdicts is not None and ag.verdicts.problem is None
        trainer = _train_with(monkeypatch, RETRAINED)
        reports = _retrain_models(values, OPTIONS, SPEC, ag.verdicts)
        assert trainer.calls == 0 and reports["model"]["preverified"]["recipe"] == "solution"
    assert Autograder.from_zip(_zip(tmp_path, {})).verdicts is None


def test_the_student_and_gradescope_are_told_the_verdict_was_pre_verified(build):
    from autograder.lms import gradescope, reports

    report = retrain.RetrainReport(accuracy=0.9881, accuracies=[0.9871, 0.9881, 0.9885], seeds=[1234, 1235, 1236],
                                   epochs=10, batch_size=1000, optimizer="Adam", loss="sparse_categorical_crossentropy",
                                   device="CPU", backend="tensorflow",
                                   preverified={"recipe": "lesson_recipe", "built": "2025-01-31T10:00:00+00:00",
                                                "device": "CPU", "backend": "tensorflow"})
    result = {"status": "graded", "score": 0.0, "max_score": 6.0, "questions": [], "retrain": report.as_dict(),
              "student": {"id": "s1"}, "assignment": "cnn_mnist", "limits_hit": []}
    output = gradescope.to_gradescope(result, 30.0)["output"]
    assert "pre-verified" in output and "2025-01-31, on CPU" in output and "0.9871, 0.9881, 0.9885" in output
    page = reports.render_feedback(result)
    assert "Pre-verified" in page and "2025-01-31" in page and "it was not retrained again" in page
    assert "pre-verified when the assignment was built (2025-01-31)" in report.summary()


def test_a_recipe_near_the_threshold_is_served_with_every_seed_the_build_trained(monkeypatch, tmp_path, recipe):
    """The lesson's case: the first accuracy lies within the margin, the build trains three seeds, and the
    served report is the median of the three, with the seed rule's note, as if trained here."""
    import dataclasses

    settings = dataclasses.replace(SETTINGS, seeds=3)
    accuracies = iter([0.9889, 0.9871, 0.9893])
    monkeypatch.setattr(retrain, "_train", lambda *a: {**TRAINED, "accuracy": next(accuracies)})
    recorder = preverified.Recorder()
    built = retrain.verify(*recipe, settings, cache_dir=None, verdicts=recorder)
    assert built.accuracies == [0.9889, 0.9871, 0.9893] and len(recorder.seen) == 1
    key = preverified.signing_key(tmp_path / "key")
    text, public = preverified.sign([preverified.entry("lesson_recipe", *recorder.seen[0], built.as_dict())],
                                    "cnn_mnist", DIGEST, key)
    trainer = _train_with(monkeypatch, RETRAINED)
    verdicts = _verdicts({preverified.VERDICTS_FILE: text.encode(), preverified.PUBLIC_KEY_FILE: public.encode()})
    served = retrain.verify(*recipe, settings, cache_dir=None, verdicts=verdicts)
    assert trainer.calls == 0 and served.accuracy == 0.9889 and served.accuracies == built.accuracies
    assert served.seeds == built.seeds == [settings.seed, settings.seed + 1, settings.seed + 2]
    assert any("3 seeds were trained and the median counts" in n for n in served.notes)
    assert served.preverified["accuracies"] == built.accuracies


# --- the build's side ----------------------------------------------------------------------------------

def test_the_build_pre_verifies_the_solution_the_lessons_recipe_and_the_instructors_notebooks(tmp_path):
    """Which notebooks: the solution, the assignment's common recipes (cnn_mnist: the lesson's own cells, as the
    question quotes them) and each named notebook of this assignment (one of another assignment is left to it)."""
    import nbformat

    from autograder.build import BuiltAssignment
    from autograder.preverify import Preverify, notebooks_to_verify

    student = SPEC.student_dir / "cnn_mnist.ipynb"
    built = BuiltAssignment("cnn_mnist", SPEC.student_dir, tmp_path / "autograder.zip", tmp_path / "solution.ipynb")
    mine, theirs = tmp_path / "popular.ipynb", tmp_path / "other.ipynb"
    nb = nbformat.read(student, as_version=4)
    nbformat.write(nb, mine)
    nb.metadata["autograder"] = {"assignment": "digits"}
    nbformat.write(nb, theirs)
    found = notebooks_to_verify(built, Preverify(notebooks=(mine, theirs)), tmp_path / "work")
    assert [name for name, _ in found] == ["solution", "lesson_recipe", "popular"]
    lesson = nbformat.read(found[1][1], as_version=4)
    code = "\n".join(c.source for c in lesson.cells if c.cell_type == "code")
    assert "model.fit(train_images, train_labels, epochs=10, batch_size=1000)" in code
    assert "optimizer='adam'" in code and "layers.Conv2D(64, (3, 3), activation='relu')" in code
    assert [n for n, _ in notebooks_to_verify(built, Preverify(common_recipes=False), tmp_path / "w2")] == ["solution"]


@pytest.mark.parametrize("case, why", [
    ("grader error", "grader error"), ("no model", "no model was retrained"), ("refused", "over budget"),
    ("two models", "only a notebook with one model"),
])
def test_a_recipe_the_build_could_not_verify_gets_no_verdict_and_a_reason(case, why):
    from autograder.preverify import _verdict

    seen = [("a" * 64, {})]
    result = {"status": "graded", "retrain": {"accuracy": 0.99, "accuracies": [0.99], "seeds": [1], "epochs": 1,
                                              "device": "CPU", "backend": "tensorflow"}}
    if case == "grader error":
        result = {"status": "grader_error", "error": "the jail could not start"}
    elif case == "no model":
        seen = []
    elif case == "refused":
        result["retrain"] = {"accuracy": None, "error": "The model was not retrained: over budget."}
    elif case == "two models":
        seen = [("a" * 64, {}), ("b" * 64, {})]
    verdict, reason = _verdict("solution", result, seen)
    assert verdict is None and why in reason
    assert _verdict("solution", {"status": "graded", "retrain": {
        "accuracy": 0.99, "accuracies": [0.99], "seeds": [1], "epochs": 1, "device": "CPU", "backend": "tensorflow"}},
        [("a" * 64, {})])[0]["accuracies"] == [0.99]


@pytest.mark.parametrize("args, message", [
    (["--preverify-notebook", "{plain}"], "its metadata names none"),
    (["-a", "digits", "--preverify-notebook", "{student}"], "names cnn_mnist, which is not built here"),
    (["--no-preverify", "--preverify-notebook", "{student}"], "needs --preverify"),
])
def test_build_refuses_a_notebook_it_cannot_pre_verify_before_building(tmp_path, args, message):
    from typer.testing import CliRunner

    from autograder.cli import app

    plain = tmp_path / "plain.ipynb"
    plain.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    paths = {"plain": str(plain), "student": str(SPEC.student_dir / "cnn_mnist.ipynb")}
    shown = CliRunner().invoke(app, ["build", "--out", str(tmp_path / "dist"), *[a.format(**paths) for a in args]],
                               env={"COLUMNS": "300"})
    assert shown.exit_code == 2 and message in " ".join(shown.output.split()), shown.output
    assert not (tmp_path / "dist").exists()  # nothing was built
