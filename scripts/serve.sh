#!/usr/bin/env bash
# Sets up and runs the service on this machine, with local queue and storage (no cloud needed).
#
#   ./scripts/serve.sh                 # fetches ComfyUI at the pinned release into .comfyui/
#   COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python ./scripts/serve.sh
#   COMFYUI_URL=http://127.0.0.1:8188 ./scripts/serve.sh    # a ComfyUI that is already running
#
# Needs python3 (3.11+) with venv. Fetching ComfyUI needs curl and access to GitHub (COMFYUI_REPO
# names another place that serves <repo>/archive/<commit>.tar.gz) and PyPI (its requirements
# include PyTorch: several GB). Without a GPU, ComfyUI runs with --cpu.
#
# Every long step prints a line when it starts and one with its time when it ends; pip shows its
# own progress. A step that fails says what failed and what to do, and removes what it had begun
# (no half-fetched ComfyUI, no half-installed virtualenv): running the script again starts clean.
# A virtualenv whose lock is already installed is not installed again (a stamp of the lock's hash).
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned ComfyUI (COMFYUI_VERSION, COMFYUI_COMMIT): the one the image ships and the tests use.
# shellcheck source=/dev/null
. deploy/comfyui.env
PYTHON="${PYTHON:-python3}"
COMFYUI_REPO="${COMFYUI_REPO:-https://github.com/comfyanonymous/ComfyUI}"
started=$SECONDS

say() { echo "serve.sh [$((SECONDS - started)) s] $*" >&2; }

# What a step has begun and not finished: removed if the script stops (error, Ctrl-C) before it ends.
unfinished=()
cleanup() {
    local path
    for path in "${unfinished[@]}"; do
        rm -rf "$path"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A virtualenv's stamp (a file in it): a hash of what it was installed from and of this checkout's
# place (editable installs point here). `current STAMP FILE...` is true when they still match.
stamp() { { cat "${@:2}"; echo "$PWD"; } | sha256sum | cut -d' ' -f1; }
current() { [ -f "$1" ] && [ "$(cat "$1")" = "$(stamp "$@")" ]; }
# begin STAMP WHAT: says what is installed, makes the stamp's venv if missing (removed again if the
# step fails) and drops the stamp until the step ends.
begin() {
    local venv
    venv=$(dirname "$1")
    say "installing $2 into $venv ..."
    step_start=$SECONDS
    if [ ! -x "$venv/bin/python" ]; then
        unfinished+=("$venv")
        "$PYTHON" -m venv "$venv"
    fi
    rm -f "$1"
}
# finish STAMP FILE...: stamps the venv, keeps it, says how long the step took.
finish() {
    stamp "$@" >"$1"
    unfinished=()
    say "installed into $(dirname "$1") in $((SECONDS - step_start)) s"
}
failed() {
    say "$*"
    exit 1
}

if ! "$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "needs Python 3.11 or later with venv: '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing)." \
        "Name another interpreter with PYTHON=/path/to/python3.11 ./scripts/serve.sh"
    exit 1
fi

how_else="To use a ComfyUI you already have instead:
    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/venv/bin/python ./scripts/serve.sh
  or one that is already running:
    COMFYUI_URL=http://127.0.0.1:8188 ./scripts/serve.sh"

# ComfyUI's source first: the step most likely to fail (network), before any long install.
if [ -z "${COMFYUI_PATH:-}" ] && [ -z "${COMFYUI_URL:-}" ] && [ ! -f .comfyui/ComfyUI/main.py ]; then
    url="${COMFYUI_REPO}/archive/${COMFYUI_COMMIT}.tar.gz"
    say "no COMFYUI_PATH or COMFYUI_URL: fetching ComfyUI ${COMFYUI_VERSION} from $url into .comfyui/ComfyUI ..."
    [ -d .comfyui ] || unfinished+=(.comfyui)
    mkdir -p .comfyui
    # An empty folder from an older, failed run is not a ComfyUI: it goes.
    rm -rf .comfyui/ComfyUI
    partial=$(mktemp -d .comfyui/.fetching.XXXXXX)
    unfinished+=("$partial")
    if ! command -v curl >/dev/null; then
        error="curl is not installed"
    elif ! curl -fSL --retry 2 --connect-timeout 20 --progress-bar -o "$partial/ComfyUI.tar.gz" "$url"; then
        error="the download failed (curl's error above)"
    elif ! mkdir "$partial/ComfyUI" \
        || ! tar -xzf "$partial/ComfyUI.tar.gz" --strip-components=1 -C "$partial/ComfyUI"; then
        error="the download is not a whole .tar.gz (tar's error above)"
    elif [ ! -f "$partial/ComfyUI/main.py" ]; then
        error="the archive has no main.py at its top: not a ComfyUI source tree"
    else
        error=""
    fi
    if [ -n "$error" ]; then
        say "could not fetch ComfyUI ${COMFYUI_VERSION} from $url: $error. Nothing was kept.
  Retry where that address is reachable, or name a copy of the same archive with COMFYUI_REPO=<base URL>.
  $how_else"
        exit 1
    fi
    mv "$partial/ComfyUI" .comfyui/ComfyUI
    rm -rf "$partial"
    unfinished=()
    say "fetched ComfyUI ${COMFYUI_VERSION}"
fi

# Frozen installs from the lock files (./scripts/lock.sh makes them): the same versions every time.
# pip's own progress shows while it downloads.
pip=(pip install --disable-pip-version-check)
made_of=(requirements/service.lock pyproject.toml client/pyproject.toml)
if ! current .venv/.installed-service "${made_of[@]}"; then
    begin .venv/.installed-service "the service (requirements/service.lock)"
    if ! .venv/bin/python -m pip install --disable-pip-version-check --require-hashes -r requirements/service.lock \
        || ! .venv/bin/python -m "${pip[@]}" --quiet --no-deps -e . -e ./client; then
        failed "could not install the service into .venv (pip's error above): check access to PyPI" \
            "(or PIP_INDEX_URL), then run ./scripts/serve.sh again."
    fi
    finish .venv/.installed-service "${made_of[@]}"
fi

if [ -z "${COMFYUI_PATH:-}" ] && [ -z "${COMFYUI_URL:-}" ]; then
    if [ -n "${COMFYUI_PYTHON:-}" ]; then
        say "using COMFYUI_PYTHON=$COMFYUI_PYTHON for the fetched ComfyUI (nothing installed for it)"
    elif [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
        # The image's lock: ComfyUI's requirements with PyTorch built for CUDA 12 (several GB).
        if ! current .comfyui/venv/.installed requirements/comfyui.lock; then
            begin .comfyui/venv/.installed "ComfyUI's requirements (requirements/comfyui.lock; PyTorch: several GB)"
            .comfyui/venv/bin/python -m pip install --disable-pip-version-check --require-hashes -r requirements/comfyui.lock \
                || failed "could not install ComfyUI's requirements (pip's error above). Nothing was kept. $how_else"
            finish .comfyui/venv/.installed requirements/comfyui.lock
        fi
    elif ! current .comfyui/venv/.installed .comfyui/ComfyUI/requirements.txt; then
        say "requirements/comfyui.lock is for Linux x86_64: ComfyUI's requirements go in unlocked"
        begin .comfyui/venv/.installed "ComfyUI's requirements (.comfyui/ComfyUI/requirements.txt)"
        .comfyui/venv/bin/python -m "${pip[@]}" -r .comfyui/ComfyUI/requirements.txt \
            || failed "could not install ComfyUI's requirements (pip's error above). Nothing was kept. $how_else"
        finish .comfyui/venv/.installed .comfyui/ComfyUI/requirements.txt
    fi
    export COMFYUI_PATH="$PWD/.comfyui/ComfyUI" COMFYUI_PYTHON="${COMFYUI_PYTHON:-$PWD/.comfyui/venv/bin/python}"
fi
# No GPU here: ComfyUI must be told, or it stops at start looking for CUDA.
if [ -z "${COMFYUI_URL:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    export COMFYUI_ARGS="${COMFYUI_ARGS:---cpu --disable-api-nodes}"
fi

export PORT="${PORT:-8080}" STATE_DIR="${STATE_DIR:-$PWD/.state}"
say "ready to start: serving on http://127.0.0.1:${PORT} (state in ${STATE_DIR}); ComfyUI's start follows"
exec .venv/bin/python -m handler
