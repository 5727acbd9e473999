"""What the layout promises a reader: the engine holds no dataset of its own (each assignment's
``Dataset`` provisions, loads and hands its data to the probe), and the cnn_mnist modules import each
other in one direction only (answers <- variants <- checks)."""

from __future__ import annotations

import ast
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
