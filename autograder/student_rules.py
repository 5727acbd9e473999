"""The verifier's public rules, shipped to students inside their check module.

A recipe the grader will refuse (a layer outside the allowed set, a field out of range, a subclassed
model, 900,000 training steps) should fail the student's own ``grader.check("training")`` with the
message the grader gives.  Students do not have this package installed (their notebook needs
Keras, Otter and the check module beside it), so the build ships the rules themselves: the source
of :mod:`autograder.verifier.rebuild` and :mod:`autograder.verifier.budget` (and of any module of
``autograder.verifier`` they import), unchanged except that their imports of one another name the
bundled copies.  The rules are therefore never written twice: a change to the verifier reaches
students with the next build.  Only rules travel; the answer key never does (those modules import
nothing from ``assignments``, which :func:`bundled_sources` checks).

:func:`training_facts` gives the assignment's side: threshold, seed rule, budget and the plain
description of its data.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autograder.spec import AssignmentSpec

VERIFIER = "autograder.verifier"
#: The verifier's public entry points the student-side check calls (canonical_recipe, recipe_cost,
#: check, check_config_size, Budget, RefusedModel); the modules they import come along.
ENTRY_MODULES = ("rebuild", "budget")
#: What a bundled module is called where it runs (``sys.modules``; private, never a package name).
BUNDLED_PREFIX = "_grader_rules_"

_VERIFIER_DIR = Path(__file__).resolve().parent / "verifier"


class UnbundlableModule(ValueError):
    """A verifier module imports something the student side cannot have."""


def _verifier_imports(name: str, source: str) -> list[str]:
    """The verifier modules ``source`` imports; refuses any other import of this package or of the answer keys."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise UnbundlableModule(f"{VERIFIER}.{name}: relative imports are not bundled; write "
                                    f"`from {VERIFIER}.<module> import ...`")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{VERIFIER}."):
            module = node.module[len(VERIFIER) + 1:]
            if "." in module or not (_VERIFIER_DIR / f"{module}.py").is_file():
                raise UnbundlableModule(f"{VERIFIER}.{name} imports {node.module}, which is not a module of {VERIFIER}")
            found.append(module)
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
        for imported in names:
            if imported.split(".")[0] in ("autograder", "assignments"):
                raise UnbundlableModule(
                    f"{VERIFIER}.{name} imports {imported}: the student-side rules may import the standard library, "
                    f"numpy, keras and `from {VERIFIER}.<module> import ...` only (the build ships them to students)")
    return found


def _rewrite(source: str) -> str:
    """``from autograder.verifier.X import ...`` -> ``from _grader_rules_X import ...`` (line by line)."""
    return re.sub(rf"^(\s*from\s+){re.escape(VERIFIER)}\.(\w+)(\s+import\b)", rf"\g<1>{BUNDLED_PREFIX}\g<2>\g<3>",
                  source, flags=re.M)


def bundled_sources(entry: tuple[str, ...] = ENTRY_MODULES) -> list[list[str]]:
    """``[[module, source], ...]``: the entry modules and the verifier modules they import, each after
    the ones it imports, with those imports rewritten to the bundled names."""
    order: list[str] = []
    sources: dict[str, str] = {}

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in stack:
            raise UnbundlableModule(f"circular imports between verifier modules: {' -> '.join(stack + (name,))}")
        source = (_VERIFIER_DIR / f"{name}.py").read_text()
        for dep in _verifier_imports(name, source):
            visit(dep, stack + (name,))
        sources[name] = _rewrite(source)
        order.append(name)

    for name in entry:
        visit(name, ())
    for name in order:
        tree = ast.parse(sources[name])
        left = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("autograder")]
        if left:
            raise UnbundlableModule(f"{VERIFIER}.{name}: an import of {left[0].module} could not be rewritten "
                                    f"(write it on one line as `from {VERIFIER}.<module> import ...`)")
    return [[name, sources[name]] for name in order]


def training_facts(spec: "AssignmentSpec") -> dict:
    """What the student-side training check needs to know: plain JSON."""
    policy = spec.training
    return {"assignment": spec.name, "threshold": policy.threshold, "seed_margin": policy.seed_margin,
            "seeds": policy.max_seeds, "budget": policy.budget.as_dict(), "data": spec.dataset.describe()}
