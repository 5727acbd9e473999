#!/usr/bin/env bash
# Install the package into .venv (created if missing), build every assignment and grade the bundled
# sample submissions with the grading engine.  Results land in grading-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # the jail every submission runs in (docs/operators/isolation.md)
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -e .
python -m autograder data
# pre-verifies each solution's recipe (its retrain happens here, and grading serves it below); the lesson's own
# recipe (three seeds: several minutes) is left to a real build: --no-common-recipes
python -m autograder build --out dist --no-common-recipes
# one class folder holding every assignment's samples, named <assignment>-<sample> (the file name is the student
# id); each notebook is graded by the autograder of the assignment its metadata names
rm -rf grading-in && mkdir grading-in
for samples in assignments/*/samples; do
  name="$(basename "$(dirname "$samples")")"
  for nb in "$samples"/*.ipynb; do cp "$nb" "grading-in/$name-$(basename "$nb")"; done
done
zips=(); for z in dist/*/autograder.zip; do zips+=(--autograder "$z"); done
python -m autograder grade grading-in --out grading-out "${zips[@]}" "$@"
