"""The documentation site: it builds offline in strict mode, and its generated reference is complete.

``mkdocs build --strict`` fails on a broken link, a missing page, a page left out of the navigation
or an unknown anchor; the reference pages are generated from the code by ``scripts/mkdocs_hooks.py``
(:mod:`autograder.docgen`), so every environment variable the code reads and every command-line
option must appear in the built site.
"""

from __future__ import annotations

import html
import json
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


def test_the_configuration_object_is_read_from_the_settings_and_travels_whole(monkeypatch):
    """``settings.current()`` is the one reading of the ``CNN_GRADER_*`` variables; a worker that inherits none
    (the retraining worker, a Ray node) gets the object and installs it, and reads the same configuration."""
    for name in settings.by_name():
        monkeypatch.delenv(name, raising=False)
    default = settings.current()
    assert default.isolation == "auto" and default.retrain_slots is None and default.deterministic is None
    assert default.cache_dir == Path(settings.CACHE.default).expanduser()
    monkeypatch.setenv(settings.ISOLATION.name, " BWRAP ")
    monkeypatch.setenv(settings.PRIVATE_PATHS.name, os.pathsep.join(["/srv/out", "/srv/in"]))
    monkeypatch.setenv(settings.RETRAIN_THREADS.name, "3")
    monkeypatch.setenv(settings.RETRAIN_SLOTS.name, "2")
    monkeypatch.setenv(settings.DETERMINISTIC.name, "0")
    monkeypatch.setenv(settings.PROBE_THREADS.name, "not a number")  # as before: TensorFlow's default
    monkeypatch.setenv(settings.CACHE.name, "/srv/cache")
    config = settings.current()
    assert (config.isolation, config.private_paths, config.retrain_threads, config.retrain_slots) == (
        "bwrap", ("/srv/out", "/srv/in"), 3, 2)
    assert config.deterministic is False and config.probe_threads == 0
    assert config.calibration_file == Path("/srv/cache/host-calibration.json")
    travelled = settings.GraderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert travelled == config
    for name in settings.by_name():  # a worker that inherited nothing
        monkeypatch.delenv(name, raising=False)
    settings.install(travelled)
    assert settings.current() == config
    shell_only = {settings.GRADESCOPE_ROOT.name, settings.PYTHON.name}  # read by run_autograder's shell
    assert set(config.environment()) | shell_only == set(settings.by_name())
