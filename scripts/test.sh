#!/usr/bin/env bash
# Installs the project and its test tools into .venv (frozen, from requirements/test.lock), the
# Cloud Tasks emulator into .venv-tasks,
# then runs the test suite. Arguments go to pytest. To also run the integration tests against a
# real ComfyUI, set COMFYUI_PATH (its source folder) and COMFYUI_PYTHON (its interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

started=$SECONDS
say() { echo "test.sh [$((SECONDS - started)) s] $*" >&2; }
# The venv's stamp: a hash of what it was installed from and of this checkout's place (editable
# installs point here). While it matches, nothing is installed and nothing is printed.
made_of=(requirements/test.lock pyproject.toml client/pyproject.toml)
stamp() { { cat "${made_of[@]}"; echo "$PWD"; } | sha256sum | cut -d' ' -f1; }
if [ ! -f .venv/.installed-test ] || [ "$(cat .venv/.installed-test)" != "$(stamp)" ]; then
    say "installing the project and its test tools into .venv (requirements/test.lock) ..."
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    rm -f .venv/.installed-test
    # Frozen: exactly the versions and hashes of requirements/test.lock (./scripts/lock.sh makes it),
    # then the project itself without resolving anything again. pip shows its own progress.
    .venv/bin/python -m pip install --disable-pip-version-check --require-hashes -r requirements/test.lock
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . -e ./client
    stamp >.venv/.installed-test
    say "installed into .venv"
fi
if [ ! -x .venv-tasks/bin/gcloud-tasks-emulator ]; then
    say "installing the Cloud Tasks emulator into .venv-tasks ..."
fi
bash scripts/install-emulators.sh >/dev/null
# The dashboard's test loads the page in a real headless browser: Debian's chromium + chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if command -v apt-get >/dev/null; then
        say "installing Debian's chromium and chromedriver for the dashboard's browser test ..."
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
[ "$SECONDS" -eq "$started" ] || say "set up; running pytest"
exec .venv/bin/python -m pytest "$@"
