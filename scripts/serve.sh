#!/usr/bin/env bash
# Sets up and runs the service on this machine, with local queue and storage (no cloud needed).
#
#   ./scripts/serve.sh                 # fetches ComfyUI at the pinned release into .comfyui/
#   COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python ./scripts/serve.sh
#
# Needs python3 (3.11+) with venv. Fetching ComfyUI needs curl and access to GitHub and PyPI
# (its requirements include PyTorch: several GB). Without a GPU, ComfyUI runs with --cpu.
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned ComfyUI (COMFYUI_VERSION, COMFYUI_COMMIT): the one the image ships and the tests use.
# shellcheck source=/dev/null
. deploy/comfyui.env
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Frozen installs from the lock files (./scripts/lock.sh makes them): the same versions every time.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/service.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . -e ./client

if [ -z "${COMFYUI_PATH:-}" ] && [ -z "${COMFYUI_URL:-}" ]; then
    if [ ! -f .comfyui/ComfyUI/main.py ]; then
        echo "fetching ComfyUI ${COMFYUI_VERSION} (${COMFYUI_COMMIT}) into .comfyui/ ..."
        mkdir -p .comfyui/ComfyUI
        curl -fsSL "https://github.com/comfyanonymous/ComfyUI/archive/${COMFYUI_COMMIT}.tar.gz" \
            | tar -xz --strip-components=1 -C .comfyui/ComfyUI
    fi
    if [ ! -x .comfyui/venv/bin/python ]; then
        "$PYTHON" -m venv .comfyui/venv
        if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
            # The image's lock: ComfyUI's requirements with PyTorch built for CUDA 12.
            .comfyui/venv/bin/python -m pip install --quiet --require-hashes -r requirements/comfyui.lock
        else
            echo "requirements/comfyui.lock is for Linux x86_64: installing ComfyUI's requirements unlocked" >&2
            .comfyui/venv/bin/python -m pip install --quiet -r .comfyui/ComfyUI/requirements.txt
        fi
    fi
    export COMFYUI_PATH="$PWD/.comfyui/ComfyUI" COMFYUI_PYTHON="$PWD/.comfyui/venv/bin/python"
fi
# No GPU here: ComfyUI must be told, or it stops at start looking for CUDA.
if [ -z "${COMFYUI_URL:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    export COMFYUI_ARGS="${COMFYUI_ARGS:---cpu --disable-api-nodes}"
fi

export PORT="${PORT:-8080}" STATE_DIR="${STATE_DIR:-$PWD/.state}"
echo "serving on http://127.0.0.1:${PORT} (state in ${STATE_DIR})"
exec .venv/bin/python -m handler
