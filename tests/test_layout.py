"""What the layout promises a reader: the engine holds no dataset of its own (each assignment's
``Dataset`` provisions, loads and hands its data to the probe); the cnn_mnist modules import each
other in one direction only (answers <- variants <- checks); and the grader's own modules keep their
import rules (docs/authors/layout.md): the judge imports nothing of the probe, the probe and the verifier
do not import each other, metering imports no side, no module imports one that imports it back (at any
depth, deferred imports in functions included), and every ``CNN_GRADER_*`` name is spelled in settings.py
alone."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from autograder import data as engine_data, registry

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_the_engine_asks_each_assignment_to_provision_its_own_dataset():
    from assignments.cnn_mnist import data as mnist

    provisioned = {spec.name: engine_data.provision(spec, allow_network=False) for spec in registry.all_assignments()}
    assert provisioned["cnn_mnist"] == mnist.ensure_mnist_npz(allow_network=False)
    assert provisioned["digits"] is None  # scikit-learn's bundled copy: nothing to fetch
    engine = [ROOT / "autograder" / "data.py", ROOT / "autograder" / "probe" / "runtime.py"]
    for path in engine:  # no MNIST code, nor an import of an assignment, in the engine's data path
        assert not any(name.startswith("assignments") for name in _imports(path)), path
    assert "mnist" not in (ROOT / "autograder" / "data.py").read_text().lower()


def test_no_import_circle_between_checks_and_variants():
    folder = ROOT / "assignments" / "cnn_mnist"
    assert not any("checks" in name.split(".")[-1] and "public" not in name
                   for name in _imports(folder / "variants.py") | _imports(folder / "answers.py"))
    assert not any(name.endswith("variants") for name in _imports(folder / "answers.py"))
    done = subprocess.run([sys.executable, "-c", "import sys, assignments.cnn_mnist.variants; "
                           "print('assignments.cnn_mnist.checks' in sys.modules)"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr


# --- the grader's own modules ----------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every module of ``autograder`` -> the modules of ``autograder`` it imports: every import statement,
    at module level or deferred inside a function (or under ``TYPE_CHECKING``)."""
    files = {_module_name(p): p for p in (ROOT / "autograder").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: a relative import"
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def _imports_of(prefix: str, graph) -> dict[str, set[str]]:
    return {m: deps for m, deps in graph.items() if m == prefix or m.startswith(prefix + ".")}


def test_the_judge_imports_nothing_of_the_probe():
    graph = _import_graph()
    assert "autograder.judge.judge" in graph and "autograder.probe.sandbox" in graph  # the scan works
    offending = {m: sorted(d for d in deps if d.startswith("autograder.probe"))
                 for m, deps in _imports_of("autograder.judge", graph).items()}
    assert {m: d for m, d in offending.items() if d} == {}


def test_the_probe_and_the_verifier_do_not_import_each_other():
    graph = _import_graph()
    for side, other in (("autograder.probe", "autograder.verifier"), ("autograder.verifier", "autograder.probe")):
        offending = {m: sorted(d for d in deps if d.startswith(other)) for m, deps in _imports_of(side, graph).items()}
        assert {m: d for m, d in offending.items() if d} == {}, side


def test_metering_imports_none_of_the_sides_it_meters():
    graph = _import_graph()
    sides = ("autograder.probe", "autograder.judge", "autograder.verifier", "autograder.engine", "autograder.lms",
             "autograder.batch")
    offending = {m: sorted(d for d in deps if d.startswith(sides)) for m, deps in _imports_of("autograder.metering", graph).items()}
    assert {m: d for m, d in offending.items() if d} == {}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_the_graders_modules():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the search works
    assert _cycles(_import_graph()) == []


def test_every_cnn_grader_variable_is_named_in_settings_alone():
    """No module but ``autograder/settings.py`` spells out a ``CNN_GRADER_*`` name to read or set it (help texts,
    docstrings and comments may mention one); the shell templates get theirs from the settings when rendered."""
    spelled = []
    for path in (ROOT / "autograder").rglob("*.py"):
        if path == ROOT / "autograder" / "settings.py":
            continue
        spelled += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and re.fullmatch(r"\s*\$?\{?CNN_GRADER_\w+\}?\s*", node.value)]
    for path in (ROOT / "autograder" / "lms" / "templates").glob("*.j2"):
        spelled += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                    if "CNN_GRADER_" in line and not line.lstrip().startswith("#")]
    assert spelled == []
