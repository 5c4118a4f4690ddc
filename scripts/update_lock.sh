#!/usr/bin/env bash
# Refresh requirements/lock.txt: the exact versions of everything `pip install -r requirements/lock.txt -e .`
# installs, resolved from pyproject.toml's ranges (with the test extra) and requirements/lock.in by pip-tools'
# pip-compile, in a throw-away virtual environment. Then regenerate the bundles (their metadata pins come from the
# lock) and run the tests:
#   bash scripts/update_lock.sh && python3 scripts/generate_bundles.py && python3 -m pytest -q -m "not benchmark"
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/python" -m pip install -q "pip-tools==7.6.2"
CUSTOM_COMPILE_COMMAND="bash scripts/update_lock.sh" "$tools/bin/pip-compile" --quiet --upgrade --strip-extras \
  --extra test --allow-unsafe --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --output-file requirements/lock.txt pyproject.toml requirements/lock.in
# Pin torch's release, not a local build label ("2.13.0+cpu" where an index offers the CPU-only wheel): pip takes
# the CPU build where one is offered and the default build elsewhere, with the same version.
sed -i -E 's/^(torch==[0-9][0-9.]*)\+[A-Za-z0-9.]+/\1/' requirements/lock.txt
echo "wrote requirements/lock.txt"
