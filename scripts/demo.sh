#!/usr/bin/env bash
# Install the package into .venv (created if missing), build every assignment and grade the bundled
# sample submissions with the grading engine.  Results land in grading-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # the jail every submission runs in (README: Isolation)
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -e .
python -m autograder data
python -m autograder build --out dist
python -m autograder grade assignments/*/samples --out grading-out "$@"
