"""Settings of ComfyUI, booted as a child process (COMFYUI_PATH) or attached to by URL
(COMFYUI_URL). One section of `Settings` (handler/config/settings.py)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from handler.config.declare import Section, setting, upper, url


def shell_words(text: str) -> tuple[str, ...]:
    """Arguments split as a shell splits them (quotes kept together)."""
    return tuple(shlex.split(text))


@dataclass(frozen=True, kw_only=True)
class ComfyUISettings(Section):
    """One of `COMFYUI_PATH` and `COMFYUI_URL` is needed wherever ComfyUI runs (roles `all` and
    `worker`)."""

    TITLE: ClassVar[str] = "ComfyUI"

    comfyui_path: Path | None = setting(
        env="COMFYUI_PATH", default=None, help="ComfyUI's source folder (`/comfyui` in the image): the service boots it"
    )
    comfyui_python: str = setting(
        env="COMFYUI_PYTHON", default=sys.executable, shown="the service's Python", help="interpreter that runs ComfyUI"
    )
    comfyui_args: tuple[str, ...] = setting(
        env="COMFYUI_ARGS",
        default=(),
        parse=shell_words,
        help="extra arguments for ComfyUI's `main.py`, split as a shell would, e.g. `--cpu`",
    )
    comfyui_env_passthrough: tuple[str, ...] = setting(
        env="COMFYUI_ENV_PASSTHROUGH",
        default=(),
        help="extra environment variables ComfyUI may see, comma-separated: names, or prefixes like "
        "`MYNODE_*` (docs/architecture.md, Isolation)",
    )
    comfyui_port: int = setting(env="COMFYUI_PORT", default=8188, help="loopback port of the booted ComfyUI")
    comfy_log_level: str = setting(
        env="COMFY_LOG_LEVEL",
        default="INFO",
        parse=upper,
        help="ComfyUI's `--verbose` level; its log lines are forwarded to ours",
    )
    allow_folder_nodes: tuple[str, ...] = setting(
        env="ALLOW_FOLDER_NODES",
        default=(),
        help="node classes that list or write a folder by name (`LoadImageOutput`, the dataset loaders and "
        "savers) a request may use, comma-separated; honoured only where ComfyUI runs the isolation "
        "extension (docs/security.md); Load/SaveTrainingDataset never (ComfyUI's shared datasets folder)",
    )
    comfyui_restart_backoff_s: float = setting(
        env="COMFYUI_RESTART_BACKOFF_S",
        default=1.0,
        help="first wait before a ComfyUI that exited is started again (doubling after each quick exit)",
    )
    comfyui_restart_backoff_max_s: float = setting(
        env="COMFYUI_RESTART_BACKOFF_MAX_S", default=30.0, help="the longest wait between two restarts of ComfyUI"
    )
    comfyui_url: str | None = setting(
        env="COMFYUI_URL",
        default=None,
        parse=url,
        help="attach to a running ComfyUI instead of booting one (with `COMFYUI_INPUT_DIR` and "
        "`COMFYUI_OUTPUT_DIR` if this machine sees its folders; otherwise files go over HTTP); install "
        "`handler/comfyui/extension/` into its custom nodes for per-request folders (docs/security.md); "
        "without it, only admins may send raw workflows",
    )
    comfyui_input_dir: Path | None = setting(
        env="COMFYUI_INPUT_DIR", default=None, help="with `COMFYUI_URL`: that ComfyUI's input folder, seen from here"
    )
    comfyui_output_dir: Path | None = setting(
        env="COMFYUI_OUTPUT_DIR", default=None, help="with `COMFYUI_URL`: that ComfyUI's output folder, seen from here"
    )
    comfyui_temp_dir: Path | None = setting(
        env="COMFYUI_TEMP_DIR",
        default=None,
        shown="`temp` beside the output folder",
        help="with `COMFYUI_URL`: that ComfyUI's temp folder, seen from here",
    )
    ws_reconnect_attempts: int = setting(
        env="WEBSOCKET_RECONNECT_ATTEMPTS",
        default=5,
        help="after this many failed reconnects of the websocket, jobs in flight fail with 503 (the service "
        "keeps trying)",
    )
    ws_reconnect_delay_s: float = setting(
        env="WEBSOCKET_RECONNECT_DELAY_S", default=3.0, help="wait between two reconnects of the websocket"
    )
    warmup_workflow: Path | None = setting(
        env="WARMUP_WORKFLOW",
        default=None,
        help="an API-format workflow run at each boot, before ready, so the first request pays no model load; "
        "it runs twice (the second run is cached by ComfyUI and absorbs the garbage collection ComfyUI does "
        "after its first prompt)",
    )
    require_gpu: bool = setting(
        env="REQUIRE_GPU",
        default=False,
        shown="false; true in the worker image",
        help="stop at boot, saying so, when no usable GPU is there; `--cpu` in `COMFYUI_ARGS` overrides it",
    )
