#!/usr/bin/env bash
# Regenerates the lock files (with hashes) from what they are made of:
#
#   requirements/service.lock   the service's dependencies (pyproject.toml), every platform
#   requirements/test.lock      the same plus the test extras (scripts/test.sh installs it)
#   requirements/comfyui.lock   the worker image's ComfyUI side: ComfyUI's requirements.txt at the
#                               commit of deploy/comfyui.env plus requirements/comfyui-torch.in,
#                               for Linux x86_64 and the image's Python
#
# Installs are frozen (`pip install --require-hashes`), so a build today and tomorrow get the same
# files; run this on purpose to move versions, then run the tests. Needs PyPI (and GitHub for
# ComfyUI's requirements, unless COMFYUI_PATH points at a checkout of that commit).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
UV_VERSION=0.13.9
# shellcheck source=/dev/null
. deploy/comfyui.env

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
uv=(.venv/bin/uv pip compile --quiet --generate-hashes --no-header --python-version 3.11)

"${uv[@]}" --universal pyproject.toml -o requirements/service.lock
"${uv[@]}" --universal pyproject.toml --extra test -o requirements/test.lock

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${COMFYUI_PATH:-}" ]; then
    cp "$COMFYUI_PATH/requirements.txt" "$tmp/comfyui-requirements.txt"
else
    curl -fsSL "https://raw.githubusercontent.com/comfyanonymous/ComfyUI/${COMFYUI_COMMIT}/requirements.txt" \
        -o "$tmp/comfyui-requirements.txt"
fi
# No annotations: they would name this machine's temporary paths.
"${uv[@]}" --no-annotate --python-platform x86_64-manylinux_2_28 \
    "$tmp/comfyui-requirements.txt" requirements/comfyui-torch.in -o requirements/comfyui.lock
# comfy-kitchen: its pure-Python wheel only. Its binary wheels carry a CUDA extension built with
# CUDA 13 (driver 580 or later); Cloud Run's L4 has driver 535. ComfyUI runs without it (it uses
# the extension only with a CUDA 13 PyTorch): docs/operators.md, "Versions and the GPU driver".
.venv/bin/python - requirements/comfyui.lock comfy-kitchen <<'PY'
import json, re, sys, urllib.request

path, name = sys.argv[1], sys.argv[2]
text = open(path).read()
entry = re.search(rf"^{re.escape(name)}==(\S+) \\\n(?:    --hash=sha256:\w+(?: \\)?\n)+", text, re.M)
version = entry.group(1)
with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json") as answer:
    files = json.load(answer)["releases"][version]
(pure,) = [f["digests"]["sha256"] for f in files if f["filename"].endswith("-py3-none-any.whl")]
note = f"# {name}: the pure-Python wheel only (scripts/lock.sh says why)\n"
open(path, "w").write(text.replace(entry.group(0), f"{note}{name}=={version} \\\n    --hash=sha256:{pure}\n"))
PY
echo "locked: requirements/service.lock requirements/test.lock requirements/comfyui.lock (ComfyUI ${COMFYUI_VERSION})"
