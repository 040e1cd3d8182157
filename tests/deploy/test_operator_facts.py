"""The operator guide's facts, read from where they are decided: the queues' limits, backoff and
retry window from deploy.sh, the base image from the Dockerfile, the substitutions from
cloudbuild.yaml, the ComfyUI version from deploy/comfyui.env and PyTorch's from
requirements/comfyui.lock, where each model type's files go (baked, or mounted from the models
bucket) from deploy.sh's threshold and models.txt's sizes. A change to any of those fails here
until the guide (and the README's mention) says the same."""

from __future__ import annotations

import re
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "operators.md").read_text()
README = (ROOT / "README.md").read_text()
DEPLOY = (ROOT / "deploy.sh").read_text()


def deploy_default(name: str) -> str:
    match = re.search(rf"^{name}=\$\{{{name}:-([^}}]*)\}}$", DEPLOY, re.M)
    assert match, f"deploy.sh has no default for {name}"
    return match.group(1)


def flag_value(name: str) -> str:
    match = re.search(rf"--{name}=(\S+?)[\s)]", DEPLOY)
    assert match, f"deploy.sh sets no --{name}"
    return match.group(1)


def seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def test_queue_limits_backoff_and_retry_window_are_deploy_shs():
    specs = re.search(r'^for spec in ((?:"[^"]+" ?)+); do$', DEPLOY, re.M)
    assert specs, "deploy.sh's queue specs moved"
    lanes = {}
    for spec in re.findall(r'"([^"]+)"', specs.group(1)):
        lane, rate, concurrent, backoff = spec.split(":")
        lanes[lane] = (rate, concurrent, seconds(backoff))
    slots = int(deploy_default("MAX_INSTANCES")) * int(deploy_default("CONCURRENCY"))
    concurrent = [str(slots) if c == "$SLOTS" else c for c in (lanes[x][1] for x in ("high", "normal", "low"))]
    min_backoff, window = seconds(flag_value("min-backoff")), flag_value("max-retry-duration")
    assert len({lanes[x][2] for x in ("high", "normal", "low")}) == 1
    job_row = (
        f"{'/'.join(lanes[x][0] for x in ('high', 'normal', 'low'))} dispatches per second, each as many "
        f"concurrent as the worker has request slots (max instances × concurrency: {'/'.join(concurrent)} by "
        f"default); retried with {min_backoff}–{lanes['high'][2]} s backoff for up to {window} "
        f"({seconds(window) // 3600} h;"
    )
    assert job_row in GUIDE
    rate, hooks_concurrent, hooks_backoff = lanes["webhooks"]
    hooks_row = (
        f"the webhook outbox: {rate} dispatches per second, {hooks_concurrent} concurrent, "
        f"{min_backoff}–{hooks_backoff} s backoff for up to {window}"
    )
    assert hooks_row in GUIDE


def test_base_image_is_the_dockerfiles():
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile's PYTHON_IMAGE moved"
    assert f"**Base image**: `{match.group(1)}`" in GUIDE
    assert not re.search(r"`python:3\.11-slim`", GUIDE)


def test_substitutions_are_cloudbuilds():
    config = YAML(typ="safe").load((ROOT / "cloudbuild.yaml").read_text())
    listed = re.search(r"^Substitutions: ((?:`_\w+`,?\s*)+)", GUIDE, re.M)
    assert listed, "the guide's list of substitutions moved"
    assert re.findall(r"`(_\w+)`", listed.group(1)) == list(config["substitutions"])


def test_comfyui_and_pytorch_versions_are_the_pinned_ones():
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "comfyui.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert f"`deploy/comfyui.env` ({env['COMFYUI_VERSION']}, its commit)" in GUIDE
    torch = re.search(r"^torch==(\S+) ", (ROOT / "requirements" / "comfyui.lock").read_text(), re.M)
    assert torch
    assert f"PyTorch {torch.group(1)} built for CUDA 12.8" in GUIDE
    assert f"The torch {torch.group(1)} cu128 wheel carries machine code (SASS) for" in GUIDE
    assert "sm_89, compiled into" not in GUIDE  # the wheel has no sm_89 code: the L4 runs its sm_86


def model_sizes() -> dict[str, int]:
    """Bytes of each model type's files, from models.txt's SIZE column."""
    sizes: dict[str, int] = {"base": 0}
    for line in (ROOT / "models.txt").read_text().splitlines():
        cols = line.split()
        if cols and not cols[0].startswith("#"):
            for model_type in cols[0].split(","):
                sizes[model_type] = sizes.get(model_type, 0) + int(cols[4])
    return sizes


def test_where_each_model_type_goes_follows_deploy_shs_threshold():
    match = re.search(r"^BAKE_LIMIT_GB=(\d+)$", DEPLOY, re.M)
    assert match, "deploy.sh's BAKE_LIMIT_GB moved"
    limit = int(match.group(1))
    guide_text, readme_text = " ".join(GUIDE.split()), " ".join(README.split())  # prose, line breaks aside
    assert f"against the {limit} GB Google advises baking into a Cloud Run GPU image" in guide_text
    assert f"Model sets over the {limit} GB Google advises baking" in readme_text
    help_text = " ".join(DEPLOY.split("Usage: ./deploy.sh", 1)[1].split("EOF", 1)[0].split())
    assert f"exceed {limit} GB is mounted" in help_text and f"even above {limit} GB" in help_text
    for model_type, size in model_sizes().items():
        if size == 0:
            way = "none"
        elif size <= limit * 10**9:
            way = "baked into the image"
        else:
            way = "mounted from the models bucket"
        shown = f"{size / 1e9:.1f}" if size else "0"
        assert f"| `{model_type}` | {shown} GB | {way} |" in GUIDE, model_type
    default = deploy_default("MODEL_TYPE")
    size = model_sizes()[default]
    assert f"the default `{default}` is {size / 1e9:.1f} GB" in readme_text
    # the cold-start estimate for the default set at the rate deploy.sh assumes for downloads
    rate = int(re.search(r"^DOWNLOAD_MB_PER_S=(\d+)$", DEPLOY, re.M).group(1))
    cold = GUIDE.split("## Cold starts", 1)[1].split("\n## ", 1)[0]
    assert f"| `{default}`, {size / 1e9:.1f} GB |" in cold
    assert f"at an assumed {rate} MB/s, about {round(size / (rate * 1e6))} s" in cold
