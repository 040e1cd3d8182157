# ComfyUI as a serverless API on Cloud Run with one NVIDIA L4. Two images from one file:
#
#   worker (the default, last stage): the service + ComfyUI + PyTorch (CUDA 12) + MODEL_TYPE's models
#   api:    the service alone on a slim Python (SERVICE_ROLE=api): no ComfyUI, no CUDA, no models
#
#   DOCKER_BUILDKIT=1 docker build --build-arg MODEL_TYPE=sdxl \
#     --secret id=hf_token,src=$HOME/.cache/huggingface/token -t comfyrun .
#   DOCKER_BUILDKIT=1 docker build --target api -t comfyrun-api .
#
# Builds on any Docker >= 20.10 with BuildKit (Cloud Build's included) with the frontend built into
# the engine: no `# syntax=` line, so nothing is pulled to read this file, and no `COPY --link`
# (20.10 does not know it). tests/image/ builds both targets with Debian's Docker 20.10.
#
# Versions, each stated once: ComfyUI in deploy/comfyui.env (the commit the tests run), ComfyUI's
# Python side with PyTorch in requirements/comfyui.lock, the service's in requirements/service.lock;
# every install is frozen (--require-hashes). PyTorch's CUDA 12 wheels carry their own CUDA
# libraries (the nvidia-*-cu12 wheels), so the base is plain Debian Python, not nvidia/cuda: Cloud
# Run mounts the driver (535 on L4), and CUDA 12.x runs on it through minor-version compatibility.
# docs/operators.md ("Versions and the GPU driver") explains the choice.
#
# Stages: base (Python, non-root user) -> service (the service's venv) -> models (MODEL_TYPE's
# files, HF token as a BuildKit secret) and comfyui (ComfyUI + PyTorch venv, custom nodes) -> api,
# worker.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- base: Python 3.11, user comfy
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Debian's packages move with the base image tag; pinning each one would only break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 comfy \
    && useradd --create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin comfy

# ---------------------------------------------------------------- service: the service's own venv (frozen)
FROM base AS service
COPY requirements/service.lock /opt/service.lock
RUN python -m venv /opt/service \
    && /opt/service/bin/python -m pip install --require-hashes --requirement /opt/service.lock
COPY pyproject.toml README.md /app/
COPY handler/ /app/handler/
RUN /opt/service/bin/python -m pip install --no-deps /app

# ---------------------------------------------------------------- models: MODEL_TYPE's files from models.txt
FROM base AS models
ARG MODEL_TYPE=flux1-dev-fp8
WORKDIR /src
# Only what the downloader needs (it uses the standard library only), so a change elsewhere in
# the service keeps this stage cached and the models are not downloaded again.
COPY handler/__init__.py handler/
COPY handler/config/ handler/config/
COPY handler/models/ handler/models/
COPY models.txt ./
# The Hugging Face token is a BuildKit secret: mounted for this step only, never in a layer.
RUN --mount=type=secret,id=hf_token,required=false \
    mkdir -p /models \
    && python -m handler.models --model-type "${MODEL_TYPE}" --models-file models.txt \
        --dest /models --hf-token-file /run/secrets/hf_token

# ---------------------------------------------------------------- comfyui: the pinned ComfyUI and its venv (frozen)
FROM base AS comfyui
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY requirements/comfyui.lock /opt/comfyui.lock
# ComfyUI's requirements and PyTorch with its CUDA 12 libraries, exactly as locked (about 5 GB,
# minutes). Before ComfyUI's source and its ARG (an ARG's value is part of every later RUN's cache
# key), so another source tree or COMFYUI_REPO with the same lock reuses this layer. The same
# pins, without hashes, constrain the custom nodes' installs so none can move PyTorch.
RUN python -m venv /opt/comfy \
    && /opt/comfy/bin/python -m pip install --require-hashes --requirement /opt/comfyui.lock \
    && sed -n 's/^\([A-Za-z0-9_.-]*==[^ ;\\]*\).*/\1/p' /opt/comfyui.lock > /opt/constraints.txt
ARG COMFYUI_REPO=https://github.com/comfyanonymous/ComfyUI
COPY deploy/comfyui.env /opt/deploy/comfyui.env
# The commit of deploy/comfyui.env, the one the tests run: a tarball of exactly that tree.
# hadolint ignore=SC1091
RUN . /opt/deploy/comfyui.env \
    && mkdir /comfyui \
    && curl -fsSL "${COMFYUI_REPO}/archive/${COMFYUI_COMMIT}.tar.gz" | tar -xz --strip-components=1 -C /comfyui \
    && grep -q "__version__ = \"${COMFYUI_VERSION}\"" /comfyui/comfyui_version.py \
    && chown -R comfy:comfy /comfyui
# Custom nodes: lines of deploy/custom_nodes.txt plus CUSTOM_NODES (space-separated), each a
# git URL with an optional @ref, e.g. https://github.com/owner/ComfyUI-Node@v1.2.0, plus the git
# nodes of a ComfyUI-Manager snapshot at deploy/snapshot.json when there is one (each at the
# snapshot's commit). The whole folder is copied so that the snapshot may be absent; .dockerignore
# lets in only the files named there.
ARG CUSTOM_NODES=""
COPY deploy/ /opt/deploy/
# git only for this step's clones; CUSTOM_NODES and snapshot are split into words on purpose.
# hadolint ignore=SC1091,SC2086,DL3008
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/* \
    && . /opt/deploy/comfyui.env \
    && snapshot="" && if [ -f /opt/deploy/snapshot.json ]; then snapshot="--snapshot /opt/deploy/snapshot.json"; fi \
    && PATH=/opt/comfy/bin:$PATH PIP_CONSTRAINT=/opt/constraints.txt COMFYUI_COMMIT=${COMFYUI_COMMIT} \
        /opt/deploy/install_custom_nodes.sh ${snapshot} /comfyui/custom_nodes /opt/deploy/custom_nodes.txt \
        ${CUSTOM_NODES} \
    && chown -R comfy:comfy /comfyui/custom_nodes

# ---------------------------------------------------------------- api: the service alone (SERVICE_ROLE=api)
FROM base AS api
COPY --from=service /opt/service /opt/service
WORKDIR /app
COPY --chown=comfy:comfy workflows/ /app/workflows/
COPY --chown=comfy:comfy models.txt /app/
RUN install -d -o comfy -g comfy /var/lib/comfyrun
ENV PATH=/opt/service/bin:${PATH} \
    SERVICE_ROLE=api \
    WORKFLOWS_DIR=/app/workflows \
    STATE_DIR=/var/lib/comfyrun \
    HOME=/home/comfy \
    PORT=8080
USER 1000:1000
EXPOSE 8080
CMD ["python", "-m", "handler"]

# ---------------------------------------------------------------- worker (default): service + ComfyUI + models
# The models layer sits right on the base, under ComfyUI, PyTorch and the service, which are copied
# in from their stages above it. So a new ComfyUI, PyTorch, custom node or service rebuilds only the
# layers above the models: the models layer keeps its content and digest (not downloaded, rebuilt,
# re-compressed or pushed again), as `COPY --link` would give. And a new MODEL_TYPE does not
# reinstall ComfyUI or PyTorch: their stage stays cached and is only copied (a local copy of its
# ~5 GB venv, seconds to a minute), which is the price of not using --link.
FROM base AS worker
# The default, FLUX.1 [dev] fp8, is under the FLUX.1 [dev] Non-Commercial License: for a commercial
# service build another MODEL_TYPE (flux1-schnell: Apache-2.0). docs/operators.md, "Model licences".
ARG MODEL_TYPE=flux1-dev-fp8
COPY --from=models --chown=1000:1000 /models/ /comfyui/models/
COPY --from=comfyui /opt/comfy /opt/comfy
COPY --from=comfyui --chown=1000:1000 /comfyui /comfyui
COPY --from=service /opt/service /opt/service
WORKDIR /app
COPY --chown=comfy:comfy workflows/ /app/workflows/
COPY --chown=comfy:comfy models.txt /app/
RUN install -d -o comfy -g comfy /var/lib/comfyrun
# REQUIRE_GPU: a worker with no usable GPU stops at boot and says why (COMFYUI_ARGS=--cpu runs
# without). SERVICE_ROLE is left to the deployment: all (one service) or worker (behind an api).
ENV PATH=/opt/service/bin:${PATH} \
    COMFYUI_PATH=/comfyui \
    COMFYUI_PYTHON=/opt/comfy/bin/python \
    REQUIRE_GPU=true \
    MODEL_TYPE=${MODEL_TYPE} \
    MODELS_FILE=/app/models.txt \
    WORKFLOWS_DIR=/app/workflows \
    STATE_DIR=/var/lib/comfyrun \
    HOME=/home/comfy \
    PORT=8080
USER 1000:1000
EXPOSE 8080
CMD ["python", "-m", "handler"]
