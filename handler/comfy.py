"""ComfyUI as the service sees it: booted or attached, connected, warmed up, ready or not.

Ready means: ComfyUI listens, our websocket is connected, its node catalogue is loaded and the
optional warmup workflow has run. Every step is triggered by the one before it (the "listening"
log line, the websocket handshake), not by polling.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from . import gpu
from .comfy_client import ComfyClient
from .config import Settings
from .errors import ComfyUnavailable, NotFound
from .inputs import FolderInputs, InputSink, UploadedInputs
from .outputs import FolderOutputs, OutputSource, ViewOutputs
from .runtime import Spawn
from .supervisor import ComfyFolders, ComfySupervisor

log = logging.getLogger("handler.comfy")


class Comfy:
    def __init__(self, settings: Settings, spawn: Spawn):
        """`spawn` starts this part's threads (the runtime's, in the service)."""
        self.settings = settings
        self._spawn = spawn
        self.supervisor: ComfySupervisor | None = None
        folders: ComfyFolders | None = None
        if settings.comfyui_url:
            base_url = settings.comfyui_url
            if settings.comfyui_input_dir and settings.comfyui_output_dir:
                temp = settings.comfyui_temp_dir or settings.comfyui_output_dir.parent / "temp"
                folders = ComfyFolders(settings.comfyui_input_dir, settings.comfyui_output_dir, temp)
        elif settings.comfyui_path:
            self.supervisor = ComfySupervisor(settings, self._on_listening, self._on_exit, spawn)
            base_url = self.supervisor.url
            folders = self.supervisor.folders
        else:
            raise ValueError("set COMFYUI_PATH (boot ComfyUI) or COMFYUI_URL (attach to one)")
        self.client = ComfyClient(base_url, settings, supervised=self.supervisor is not None, spawn=spawn)
        self.folders = folders
        self.inputs: InputSink
        self.outputs: OutputSource
        if folders:
            self.inputs = FolderInputs(folders.input, settings)
            self.outputs = FolderOutputs({"input": folders.input, "output": folders.output, "temp": folders.temp})
        else:
            self.inputs = UploadedInputs(self.client, settings)
            self.outputs = ViewOutputs(self.client)
        self._booted = threading.Event()
        self._boot_lock = threading.Lock()
        self.state = "starting"
        self.output_classes: frozenset[str] = frozenset()
        self.object_info: dict[str, Any] = {}
        self.version: str | None = None
        self.started_at = time.monotonic()
        # Seconds, for metrics: the last boot (start or crash → ready), the models' fetch, the warmup.
        self.boot_s: float | None = None
        self.models_fetch_s: float | None = None
        self.warmup_s: float | None = None
        self._down_since = self.started_at
        self._models: tuple[float, dict[str, list[str]]] | None = None
        self._after_boot: Callable[[], None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._booted.is_set() and self.client.connected

    def start(self, after_boot: Callable[[], None] | None = None) -> None:
        """Boot (or attach to) ComfyUI. `after_boot` runs once the catalogue is loaded and
        before the service is ready: the warmup, publishing the catalogue to the store."""
        self._after_boot = after_boot
        if self.supervisor is not None:
            self._check_gpu()  # before anything starts: a worker without its GPU stops here
        self.client.on_connect = self._on_connect
        self.client.start()
        if self.supervisor is None:
            return
        if self.settings.models_source:
            # Runtime models: fetch them first, while /healthz answers 503.
            self._spawn("models", self._fetch_models_then_boot)
        else:
            self.supervisor.start()

    def _check_gpu(self) -> None:
        """Log the GPU, its driver and CUDA (NVML: milliseconds, no PyTorch); with REQUIRE_GPU,
        raise GpuUnavailable when there is none, so the process exits saying why."""
        info = gpu.probe()
        log.info("GPU: %s", info.summary() if info else "none (ComfyUI runs on CPU)")
        if self.settings.require_gpu:
            gpu.require(info)

    def _fetch_models_then_boot(self) -> None:
        from .modelfiles import ensure_models

        self.state = "fetching models"
        try:
            fetch_started = time.monotonic()
            ensure_models(self.settings)
            self.models_fetch_s = time.monotonic() - fetch_started
        except Exception as exc:
            self.state = "model fetch failed"
            log.error("cannot fetch the models from MODELS_SOURCE: %s", exc)
            return
        self.state = "starting"
        if self.supervisor:
            self.supervisor.start()

    def stop(self) -> None:
        self.state = "stopping"
        self._booted.clear()
        if self.supervisor:
            self.supervisor.stop()
        self.client.close()

    def _on_listening(self) -> None:
        self.client.comfy_listening()

    def _on_exit(self, code: int) -> None:
        if self.state != "stopping":
            self.state = "restarting"
        self._down_since = time.monotonic()
        self._booted.clear()
        self.client.comfy_exited()

    def _on_connect(self) -> None:
        if self._booted.is_set():
            return  # a websocket reconnect, not a new ComfyUI
        self._spawn("comfyui-boot", self._boot)

    def _boot(self) -> None:
        with self._boot_lock:
            while not self._booted.is_set() and self.state != "stopping" and self.client.connected:
                try:
                    self._boot_checks()
                except Exception as exc:
                    log.error("ComfyUI boot checks failed (%s); retrying", exc)
                    time.sleep(2)
                    continue
                self.state = "ready"
                self._booted.set()
                self.boot_s = time.monotonic() - self._down_since
                log.info(
                    "ComfyUI %s is ready (%.1f s after start)", self.version or "?", time.monotonic() - self.started_at
                )

    def _boot_checks(self) -> None:
        self.object_info = self.client.get_json("/object_info", timeout_s=120)
        self.output_classes = frozenset(
            name for name, info in self.object_info.items() if isinstance(info, dict) and info.get("output_node")
        )
        stats = self.client.get_json("/system_stats")
        self.version = (stats.get("system") or {}).get("comfyui_version")
        torch_version, devices = gpu.torch_summary(stats)
        log.info("ComfyUI %s: torch %s, devices %s", self.version or "?", torch_version, ", ".join(devices) or "?")
        if self.settings.require_gpu and self.supervisor and not any(d.startswith("cuda") for d in devices):
            # PyTorch cannot use the GPU the driver shows (a CUDA build the driver does not run):
            # stop now rather than serve prompts on the CPU or not at all.
            log.critical(
                "REQUIRE_GPU is set but ComfyUI's PyTorch %s sees no CUDA device (%s): stopping",
                torch_version,
                ", ".join(devices) or "none",
            )
            self.state = "gpu unusable"
            self.supervisor.stop()
            os._exit(3)
        self._models = None
        if self._after_boot is not None:
            self._after_boot()

    def require_ready(self) -> None:
        if not self.ready:
            raise ComfyUnavailable(f"ComfyUI is not ready ({self.state}); retry shortly")

    # --- models ----------------------------------------------------------------------------

    def models(self, refresh: bool = False) -> dict[str, list[str]]:
        cached = self._models
        if cached and not refresh and time.monotonic() - cached[0] < self.settings.models_cache_ttl_s:
            return cached[1]
        self.require_ready()
        folders = self.client.get_json("/models")
        catalogue: dict[str, list[str]] = {}
        for folder in folders:
            try:
                catalogue[folder] = sorted(self.client.get_json(f"/models/{folder}"))
            except Exception:
                catalogue[folder] = []
        self._models = (time.monotonic(), catalogue)
        return catalogue

    def model_folder(self, folder: str, refresh: bool = False) -> list[str]:
        catalogue = self.models(refresh)
        if folder not in catalogue:
            raise NotFound(f"no model folder named {folder!r}", folders=sorted(catalogue))
        return catalogue[folder]
