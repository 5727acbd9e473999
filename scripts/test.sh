#!/usr/bin/env bash
# Install the package with its test extras into .venv (created if missing) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -e '.[test]'
python -m autograder data
python -m pytest "$@"
