"""Assignments as plug-ins: the spec interface, the registry, per-notebook assignment choice,
the typed result and the shared probe/judge protocol."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import nbformat
import pytest

from autograder import batch, protocol, registry
from autograder.engine import RetrainOptions
from autograder.faults import Fault
from autograder.result import GradeResult
from autograder.spec import AssignmentSpec, NOTEBOOK_METADATA_KEY, TrainingPolicy


def test_installed_assignments_are_found_by_name_and_an_unknown_name_is_a_clear_error():
    assert "cnn_mnist" in registry.names()
    spec = registry.get("cnn_mnist")
    assert isinstance(spec, AssignmentSpec) and spec.name == "cnn_mnist"
    assert spec.master_notebook.is_file() and spec.master_notebook.stem == spec.name
    with pytest.raises(registry.UnknownAssignment, match="unknown assignment 'no_such_unit'.*'cnn_mnist'"):
        registry.get("no_such_unit")


def test_an_entry_point_that_cannot_load_is_named_with_its_cause_and_hides_no_other(monkeypatch):
    """A stale install (the entry point names a module that is gone, as when a Gradescope zip's
    lib/assignments shadows the installed one) must not stop the working assignments."""
    import importlib.metadata as md

    real = md.entry_points(group=registry.ENTRY_POINT_GROUP)
    ghost = md.EntryPoint(name="ghost_unit", value="assignments.ghost_unit.spec:ASSIGNMENT",
                          group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(md, "entry_points", lambda group=None: [*real, ghost])
    registry._scan.cache_clear()
    try:
        assert "cnn_mnist" in registry.names() and "ghost_unit" not in registry.names()
        assert "ModuleNotFoundError" in registry.broken()["ghost_unit"]
        with pytest.raises(registry.BrokenAssignment, match="'ghost_unit' is installed but cannot be loaded.*ghost_unit"):
            registry.get("ghost_unit")
    finally:
        monkeypatch.undo()
        registry._scan.cache_clear()
    assert registry.broken() == {}


@pytest.mark.parametrize("name", registry.names())
def test_every_spec_is_complete(name):
    """What the engine calls on an assignment's answer key exists and returns plain data."""
    spec = registry.get(name)
    checks = spec.checks_module()
    assert callable(checks.render_public_module) and callable(checks.probe_plan) and callable(checks.expected_layers)
    plan = spec.probe_plan()
    json.dumps(plan)  # plain JSON: it crosses into the sandbox
    assert all(set(call) == {"args", "kwargs"} for calls in plan.values() for call in calls)
    assert spec.public_module_name.endswith(".py") and spec.dataset.num_classes >= 2
    assert len(spec.dataset.input_shape) == 3 and 0 < spec.training.threshold < 1
    assert spec.package_dir.name == name and (spec.package_dir / "spec.py").is_file()


def test_the_answer_keys_of_every_assignment_are_masked_from_the_sandbox():
    from autograder.probe import jail

    private = jail.private_paths()
    for spec in registry.all_assignments():
        assert any(spec.package_dir == p or p in spec.package_dir.parents for p in private), spec.package_dir


def _notebook(path: Path, metadata: dict | None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("x = 1"))
    if metadata is not None:
        nb.metadata.update(metadata)
    nbformat.write(nb, path)
    return path


def test_each_notebook_picks_its_assignment_from_its_metadata(tmp_path):
    two = {"cnn_mnist": "a.zip", "other": "b.zip"}
    ours = _notebook(tmp_path / "ours.ipynb", {NOTEBOOK_METADATA_KEY: {"assignment": "other"}})
    assert batch.pick_assignment(ours, two) == ("other", None)
    otter_only = _notebook(tmp_path / "otter.ipynb", {"otter": {"assignment_name": "cnn_mnist"}})
    assert batch.pick_assignment(otter_only, two) == ("cnn_mnist", None)
    unknown = _notebook(tmp_path / "unknown.ipynb", {NOTEBOOK_METADATA_KEY: {"assignment": "fluid_dynamics"}})
    name, problem = batch.pick_assignment(unknown, two)
    assert name == "fluid_dynamics" and problem.cause == "unknown_assignment"
    assert "unknown assignment 'fluid_dynamics'" in problem.message
    anonymous = _notebook(tmp_path / "anonymous.ipynb", None)
    assert batch.pick_assignment(anonymous, {"cnn_mnist": "a.zip"}) == ("cnn_mnist", None)
    name, problem = batch.pick_assignment(anonymous, two)
    assert name is None and problem.cause == "unknown_assignment" and "does not say which assignment" in problem.message


def test_a_notebook_of_an_unknown_assignment_gets_an_error_row_naming_it(built, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    solution = nbformat.read(registry.get("cnn_mnist").samples_dir / "solution.ipynb", as_version=4)
    solution.metadata[NOTEBOOK_METADATA_KEY] = {"assignment": "fluid_dynamics"}
    solution.metadata["otter"] = {"assignment_name": "fluid_dynamics"}
    nbformat.write(solution, subs / "alice.ipynb")
    options = batch.BatchOptions(jobs=1, progress=False, retrain=RetrainOptions(enabled=False))
    (row,) = batch.run_batch([subs], built.autograder_zip, tmp_path / "out", options)
    assert row["status"] == "error" and row["assignment"] == "fluid_dynamics"
    assert "unknown assignment 'fluid_dynamics'" in row["error"] and row["schema"] == GradeResult().schema
    assert "fluid_dynamics" in (tmp_path / "out" / "grades.csv").read_text()


def test_run_options_override_the_assignments_policy_only_where_given():
    spec = registry.get("cnn_mnist")
    assert RetrainOptions().policy(spec) == spec.training
    policy = RetrainOptions(seeds=1, max_steps=100).policy(spec)
    assert policy.max_seeds == 1 and policy.budget.max_steps == 100
    assert policy.budget.max_epochs == spec.training.budget.max_epochs and policy.threshold == spec.training.threshold
    settings = RetrainOptions(seeds=1).settings(spec)
    assert settings.assignment == "cnn_mnist" and settings.threshold == spec.training.threshold
    assert settings.data()["input_shape"] == list(spec.dataset.input_shape)


def test_cli_defaults_are_read_from_the_dataclasses():
    from autograder import cli
    from autograder.probe.sandbox import Limits

    params = inspect.signature(cli.grade).parameters
    limits = Limits()
    assert params["cell_seconds"].default.default == limits.cell_seconds
    assert params["notebook_seconds"].default.default == limits.notebook_seconds
    assert params["memory_mb"].default.default == limits.memory_mb
    for name in ("seeds", "max_epochs", "max_steps", "retrain_seconds", "require_lesson_model"):
        assert params[name].default.default is None  # None: each assignment's own policy
    assert str(TrainingPolicy().max_seeds) in params["seeds"].default.help


def test_the_typed_result_round_trips_and_keeps_the_documented_shape():
    row = GradeResult.error_row(Fault("input_refused", "not a notebook"), student={"id": "bob"}, retry=True)
    data = row.to_dict()
    assert GradeResult.from_dict(json.loads(json.dumps(data))) == row
    documented = {"student", "assignment", "status", "error", "score", "max_score", "questions", "retrain",
                  "limits_hit", "execution", "isolation", "versions", "seconds", "schema"}
    assert documented <= set(data) and data["retry"] is True
    assert "retry" not in GradeResult().to_dict()
    with pytest.raises(ValueError):
        GradeResult(status="fine")


def test_both_sides_of_the_probe_take_the_protocol_from_one_module():
    from autograder import jail_messages
    from autograder.judge import judge
    from autograder.probe import runtime

    assert runtime.P is protocol and judge.protocol is protocol
    assert jail_messages.MAX_JSON_CHARS == runtime.MAX_JSON_CHARS == protocol.MAX_JSON_CHARS
    source = Path(protocol.__file__).read_text()
    assert not re.findall(r"^\s*(import|from) ", source, flags=re.M)  # dependency-free: copied into the jail
    runtime_source = Path(runtime.__file__).read_text()
    assert '"status": "' not in runtime_source and 'send("' not in runtime_source
