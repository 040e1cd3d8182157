#!/usr/bin/env bash
# Installs the project and its test tools into .venv (frozen, from requirements/test.lock), the
# Cloud Tasks emulator into .venv-tasks,
# then runs the test suite. Arguments go to pytest. To also run the integration tests against a
# real ComfyUI, set COMFYUI_PATH (its source folder) and COMFYUI_PYTHON (its interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Frozen: exactly the versions and hashes of requirements/test.lock (./scripts/lock.sh makes it),
# then the project itself without resolving anything again.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/test.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . -e ./client
bash scripts/install-emulators.sh
# The dashboard's test loads the page in a real headless browser: Debian's chromium + chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if command -v apt-get >/dev/null; then
        sudo_=()
        if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo_=(sudo -n); fi
        { "${sudo_[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq \
            --no-install-recommends chromium chromium-driver >/dev/null; } ||
            echo "could not install chromium (the dashboard's browser test will skip and say why)" >&2
    fi
fi
# The test tools (hadolint, shellcheck, check-jsonschema) live in .venv/bin: nothing is activated.
PATH="$PWD/.venv/bin:$PATH"
export PATH
exec .venv/bin/python -m pytest "$@"
