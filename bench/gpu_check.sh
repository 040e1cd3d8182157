#!/usr/bin/env bash
# The CUDA path, verified in minutes on any machine with an NVIDIA GPU and a ComfyUI installed
# from this project's locks (the worker image, or ./scripts/serve.sh's .comfyui/): no internet
# needed, the tiny SD1.5 checkpoint is built here from ComfyUI's own model classes.
#
#   COMFYUI_PATH=/comfyui COMFYUI_PYTHON=/opt/comfy/bin/python bench/gpu_check.sh
#   (in the image: docker run --gpus all --entrypoint bash IMAGE -c 'cd /app && bench/gpu_check.sh',
#    with the repository's tests/ and bench/ copied or mounted at /app)
#
# Runs, on the GPU (ComfyUI without --cpu, REQUIRE_GPU=true): the driver and PyTorch's view of
# the device, the real-model tests (tests/test_real_model.py: txt2img, img2img, async job,
# templates, /models, Cloud Storage download with checksum, warmup) and the cold-start run
# (bench/cold_start.py), then prints one short report. Exit status: non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
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
