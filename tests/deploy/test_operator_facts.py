"""The operator guide's facts, read from where they are decided: the queues' limits, backoff and
retry window from deploy.sh, the base image from the Dockerfile, the substitutions from
cloudbuild.yaml, the ComfyUI version from deploy/comfyui.env and PyTorch's from
requirements/comfyui.lock. A change to any of those fails here until the guide says the same."""

from __future__ import annotations

import re
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "operators.md").read_text()
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
