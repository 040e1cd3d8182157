#!/usr/bin/env bash
# Lint, format check and types: `ruff check`, `ruff format --check`, `mypy` (strict, on handler/).
# Installs the project with its test extras (which hold ruff, mypy and the stubs) into .venv if
# needed, as scripts/test.sh does. Arguments go to `ruff check` (e.g. --statistics).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ]; then
    # Frozen, as scripts/test.sh installs: the versions and hashes of requirements/test.lock.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/test.lock
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . -e ./client
fi

status=0
.venv/bin/ruff check "$@" . || status=1
.venv/bin/ruff format --check . || status=1
.venv/bin/mypy || status=1   # [tool.mypy] files = handler
exit "$status"
