"""COMFYUI_ARGS that contradict what the service sets for ComfyUI are refused at start, naming the
setting to use instead (before: ComfyUI moved to another port and the only word was "cannot reach
ComfyUI's websocket after 5 attempts")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.comfy import STANDIN, free_port

ROOT = Path(__file__).resolve().parents[2]


def start(tmp_path: Path, comfyui_args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_", "GCS_", "TASKS_", "QUEUE_"))}
    env.update(
        PORT=str(free_port()),
        HOST="127.0.0.1",
        COMFYUI_PATH=str(STANDIN),
        COMFYUI_PYTHON=sys.executable,
        COMFYUI_PORT=str(free_port()),
        COMFYUI_ARGS=comfyui_args,
        STATE_DIR=str(tmp_path / "state"),
    )
    try:
        return subprocess.run(
            [sys.executable, "-m", "handler"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the service started with COMFYUI_ARGS={comfyui_args!r} instead of refusing it: {exc.stderr!r}")


@pytest.mark.parametrize(
    ("comfyui_args", "flag", "instead"),
    [
        ("--cpu --port 18496", "--port", "COMFYUI_PORT"),
        ("--cpu --port=18496", "--port", "COMFYUI_PORT"),
        ("--listen 0.0.0.0", "--listen", "COMFYUI_URL"),
        ("--output-directory /tmp/elsewhere", "--output-directory", "STATE_DIR"),
        ("--models-directory /tmp/models", "--models-directory", "MODELS_DIR"),
    ],
)
def test_a_flag_the_service_sets_is_refused_with_the_setting_to_use(tmp_path, comfyui_args, flag, instead):
    result = start(tmp_path, comfyui_args)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert f"COMFYUI_ARGS must not contain {flag}" in result.stderr and instead in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_other_flags_still_pass():
    from handler.comfyui.supervisor import refuse_own_args

    refuse_own_args(["--cpu", "--disable-api-nodes", "--preview-method", "auto", "--lowvram"])
