#!/usr/bin/env bash
# Install the package into .venv (created if missing), build the assignment and grade the bundled
# sample submissions with the grading engine.  Results land in grading-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -e .
python -m autograder data
python -m autograder build --out dist
python -m autograder grade examples/submissions --out grading-out "$@"
