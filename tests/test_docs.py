"""The documentation site: it builds offline in strict mode, and its generated reference is complete.

``mkdocs build --strict`` fails on a broken link, a missing page, a page left out of the navigation
or an unknown anchor; the reference pages are generated from the code by ``scripts/mkdocs_hooks.py``
(:mod:`autograder.docgen`), so every environment variable the code reads and every command-line
option must appear in the built site.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import docgen, settings

ROOT = Path(__file__).resolve().parent.parent
CODE = ("autograder", "assignments", "scripts", "benchmarks")
ENV_NAME = re.compile(r"CNN_GRADER_[A-Z0-9_]*[A-Z0-9]")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def _env_names_in_code() -> set[str]:
    names = set()
    for folder in CODE:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".sh", ".j2") and "__pycache__" not in path.parts:
                names |= set(ENV_NAME.findall(path.read_text(errors="replace")))
    return names


def test_every_environment_variable_in_the_code_is_in_the_settings_and_the_reference(site):
    found = _env_names_in_code()
    assert len(found) >= 10, found  # the scan works
    assert found - set(settings.by_name()) == set(), "add these to autograder/settings.py"
    page = _text(site / "reference" / "configuration" / "index.html")
    assert [s.name for s in settings.SETTINGS if s.name not in page] == []


def test_every_cli_option_is_in_the_reference(site):
    page = _text(site / "reference" / "cli" / "index.html")
    options = docgen.cli_options()
    assert {"data", "build", "grade"} <= set(options)
    assert "--verbose" in options["grade"]
    missing = [f"{cmd} {opt}" for cmd, opts in options.items() for opt in opts if opt not in page]
    assert missing == []
    assert all(f"python -m autograder {cmd}" in page for cmd in options)


def test_the_readme_links_only_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?:docs/)[^)#\s]+)", readme)
    assert targets, "the README links into the docs"
    assert [t for t in targets if not (ROOT / t).exists()] == []
