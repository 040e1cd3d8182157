# syntax=docker/dockerfile:1.7
#
# ComfyUI as a serverless API on Cloud Run with one NVIDIA L4.
#
#   DOCKER_BUILDKIT=1 docker build \
#     --build-arg MODEL_TYPE=flux1-dev-fp8 \
#     --secret id=hf_token,src=$HOME/.cache/huggingface/token \
#     -t comfyrun .
#
# CUDA: Cloud Run's L4 instances come with NVIDIA driver 535 (CUDA 12.2). The base image is
# CUDA 12.2.2, the newest CUDA that driver runs natively, and PyTorch comes from the cu121 wheel
# index (its bundled CUDA 12.1 libraries also need nothing newer than driver 535), so nothing
# relies on CUDA forward compatibility. ComfyUI is pinned to a release that supports that
# PyTorch. When Cloud Run moves to a newer driver, raise CUDA_IMAGE, TORCH_* and COMFYUI_VERSION
# together.
#
# Stages: uv -> python (CUDA + Python 3.11 venv, non-root user) -> models (MODEL_TYPE's files,
# HF token as a BuildKit secret) and comfyui (ComfyUI + PyTorch + custom nodes) -> final.

ARG CUDA_IMAGE=nvidia/cuda:12.2.2-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.8.22

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- python: CUDA runtime + Python 3.11
FROM ${CUDA_IMAGE} AS python
ARG PYTHON_VERSION=3.11
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}
COPY --from=uv /uv /usr/local/bin/uv
# Ubuntu's own packages move with the base image tag; pinning each one would only break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && uv python install "${PYTHON_VERSION}" \
    && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv \
    && python --version \
    && groupadd --gid 1000 comfy \
    && useradd --create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin comfy

# ---------------------------------------------------------------- models: MODEL_TYPE's files from models.txt
FROM python AS models
ARG MODEL_TYPE=flux1-dev-fp8
WORKDIR /src
# Only what the downloader needs, so a change elsewhere in the service keeps this layer cached.
COPY handler/__init__.py handler/config.py handler/modelfiles.py handler/
COPY models.txt ./
# The Hugging Face token is a BuildKit secret: mounted for this step only, never in a layer.
RUN --mount=type=secret,id=hf_token,required=false \
    mkdir -p /models \
    && python -m handler.modelfiles --model-type "${MODEL_TYPE}" --models-file models.txt \
        --dest /models --hf-token-file /run/secrets/hf_token

# ---------------------------------------------------------------- comfyui: ComfyUI, PyTorch, custom nodes
FROM python AS comfyui
ARG COMFYUI_REPO=https://github.com/comfyanonymous/ComfyUI.git
ARG COMFYUI_VERSION=v0.3.60
ARG TORCH_CUDA=cu121
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
ARG TORCH_VERSION=2.5.1
ARG TORCHVISION_VERSION=0.20.1
ARG TORCHAUDIO_VERSION=2.5.1
# The constraints pin the CUDA builds of PyTorch (local version +cu121) for every later install,
# ComfyUI's requirements and custom nodes included.
RUN git clone --depth 1 --branch "${COMFYUI_VERSION}" "${COMFYUI_REPO}" /comfyui \
    && rm -rf /comfyui/.git \
    && printf 'torch==%s+%s\ntorchvision==%s+%s\ntorchaudio==%s+%s\n' \
        "${TORCH_VERSION}" "${TORCH_CUDA}" "${TORCHVISION_VERSION}" "${TORCH_CUDA}" \
        "${TORCHAUDIO_VERSION}" "${TORCH_CUDA}" > /opt/constraints.txt \
    && chown -R comfy:comfy /comfyui
# PyTorch from its own index, as PyTorch documents; that index also serves its dependencies.
# PyTorch and ComfyUI's requirements are separate layers: a new ComfyUI release keeps PyTorch cached.
RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --requirement /opt/constraints.txt
# The installed CUDA builds satisfy the constraints, so pip leaves them in place.
# hadolint ignore=DL3059
RUN python -m pip install --no-cache-dir --constraint /opt/constraints.txt \
        --requirement /comfyui/requirements.txt
# Custom nodes: lines of deploy/custom_nodes.txt plus CUSTOM_NODES (space-separated), each a
# git URL with an optional @ref, e.g. https://github.com/owner/ComfyUI-Node@v1.2.0
ARG CUSTOM_NODES=""
COPY deploy/custom_nodes.txt deploy/install_custom_nodes.sh /opt/deploy/
# CUSTOM_NODES is split into words on purpose.
# hadolint ignore=SC2086
RUN PIP_CONSTRAINT=/opt/constraints.txt \
        /opt/deploy/install_custom_nodes.sh /comfyui/custom_nodes /opt/deploy/custom_nodes.txt ${CUSTOM_NODES} \
    && chown -R comfy:comfy /comfyui/custom_nodes

# ---------------------------------------------------------------- final: the service
FROM comfyui AS final
ARG MODEL_TYPE=flux1-dev-fp8
COPY --from=models --chown=comfy:comfy /models/ /comfyui/models/
WORKDIR /app
COPY --chown=comfy:comfy . /app/
RUN python -m pip install --no-cache-dir --constraint /opt/constraints.txt /app \
    && install -d -o comfy -g comfy /var/lib/comfyrun
ENV COMFYUI_PATH=/comfyui \
    MODEL_TYPE=${MODEL_TYPE} \
    MODELS_FILE=/app/models.txt \
    WORKFLOWS_DIR=/app/workflows \
    STATE_DIR=/var/lib/comfyrun \
    HOME=/home/comfy \
    PORT=8080
USER 1000:1000
EXPOSE 8080
CMD ["python", "-m", "handler"]
