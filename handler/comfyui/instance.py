"""ComfyUI as the service sees it: booted or attached, connected, warmed up, ready or not.

Ready means: ComfyUI listens, our websocket is connected, `/system_stats` answered (version,
devices, the REQUIRE_GPU check) and the optional warmup workflow has run. The boot is a chain of
events, nothing polls: ComfyUI's "listening" log line starts the websocket connect, the
handshake starts the boot thread.

The node catalogue (`/object_info`, which ComfyUI computes on each call: ~0.1 s in which it
answers nothing else) is loaded after each boot without holding readiness back: requested right
after the system check, it lands shortly after ready, or before the warmup, which needs it.
Whoever needs it meanwhile waits for it, bounded (`catalog.CatalogueSlot`): no graph is
prepared or checked against a catalogue still on its way. A failed load takes readiness back
until a retry succeeds. Publishing it for the api role (`on_catalogue`) comes after ready.

`Comfy.state` (a `ComfyState`) has one writer, `Comfy._update`: the supervisor's, the
websocket's, the boot's and the caller's threads all change it there, under one lock, and the
same call sets or clears the readiness event that `wait_ready` and `notify_ready` wait on.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from handler.comfyui import gpu
from handler.comfyui.catalog import CatalogueSlot, NodeCatalogue
from handler.comfyui.client import ComfyClient
from handler.comfyui.connection import ComfyConnection
from handler.comfyui.inputs import FolderInputs, InputSink, Sources, UploadedInputs
from handler.comfyui.outputs import FolderOutputs, OutputSource, ViewOutputs
from handler.comfyui.supervisor import ComfyFolders, ComfySupervisor
from handler.config import ComfyUISettings, HttpSettings, ModelSettings, ObservabilitySettings
from handler.errors import ComfyUnavailable, NotFound, ServiceError
from handler.runtime import Spawn, Trigger

log = logging.getLogger("handler.comfyui.instance")


class ComfyState(str, enum.Enum):
    """Where ComfyUI stands; the value is what /healthz, / and the dashboard show."""

    STARTING = "starting"  # booting or attaching (or the catalogue failed to load: retried)
    FETCHING_MODELS = "fetching models"  # MODELS_SOURCE is copied before ComfyUI starts
    MODEL_FETCH_FAILED = "model fetch failed"  # final: the models could not be fetched
    READY = "ready"  # booted: system checked, warmup run (ready for work while connected)
    RESTARTING = "restarting"  # the child exited; the supervisor starts it again
    STOPPING = "stopping"  # final: the service stops
    GPU_UNUSABLE = "gpu unusable"  # final: REQUIRE_GPU and PyTorch sees no CUDA device


# States nothing leaves.
FINAL_STATES = frozenset({ComfyState.MODEL_FETCH_FAILED, ComfyState.STOPPING, ComfyState.GPU_UNUSABLE})


class Comfy:
    def __init__(
        self,
        *,
        comfyui: ComfyUISettings,
        models: ModelSettings,
        http: HttpSettings,
        observability: ObservabilitySettings,
        sources: Sources,
        spawn: Spawn,
        client: ComfyConnection | None = None,
        started: subprocess.Popen[bytes] | None = None,
    ):
        """`spawn` starts this part's threads (the runtime's, in the service). `client`: the
        connection to an attached ComfyUI whose folders are given (COMFYUI_URL with
        COMFYUI_INPUT_DIR and COMFYUI_OUTPUT_DIR); by default a `ComfyClient` to ComfyUI.
        `started`: a ComfyUI spawned early (`supervisor.boot_early`), adopted by the supervisor."""
        self.comfyui, self.http, self.model_settings = comfyui, http, models  # models(): ComfyUI's list
        self._spawn = spawn
        self.supervisor: ComfySupervisor | None = None
        folders: ComfyFolders | None = None
        if comfyui.comfyui_url:
            base_url = comfyui.comfyui_url
            if comfyui.comfyui_input_dir and comfyui.comfyui_output_dir:
                temp = comfyui.comfyui_temp_dir or comfyui.comfyui_output_dir.parent / "temp"
                folders = ComfyFolders(comfyui.comfyui_input_dir, comfyui.comfyui_output_dir, temp)
        elif comfyui.comfyui_path:
            self.supervisor = ComfySupervisor(
                comfyui=comfyui,
                models=models,
                http=http,
                on_listening=self._on_listening,
                on_exit=self._on_exit,
                spawn=spawn,
                started=started,
            )
            base_url = self.supervisor.url
            folders = self.supervisor.folders
        else:
            raise ValueError("set COMFYUI_PATH (boot ComfyUI) or COMFYUI_URL (attach to one)")
        self.folders = folders
        self.inputs: InputSink
        self.outputs: OutputSource
        if client is not None and (self.supervisor is not None or folders is None):
            raise ValueError(
                "a given ComfyUI client attaches: set COMFYUI_URL, COMFYUI_INPUT_DIR and COMFYUI_OUTPUT_DIR"
            )
        if client is None:
            supervised = self.supervisor is not None
            own = ComfyClient(
                base_url, comfyui=comfyui, observability=observability, supervised=supervised, spawn=spawn
            )
            client = own
            if folders is None:
                self.inputs = UploadedInputs(own, sources=sources, isolated=self._runs_isolated)
                self.outputs = ViewOutputs(own, isolated=self._runs_isolated)
        self.client: ComfyConnection = client
        if folders:
            self.inputs = FolderInputs(folders.input, sources=sources)
            self.outputs = FolderOutputs({"input": folders.input, "output": folders.output, "temp": folders.temp})
        self._boot_lock = threading.Lock()
        # Written only by `_update`, under `_state_lock`.
        self._state_lock = threading.Lock()
        self._state = ComfyState.STARTING
        self._life = 0  # which ComfyUI process: one more after each exit
        self._ready = Trigger()  # set exactly while ready: booted and the websocket connected
        self.catalogue = CatalogueSlot()
        self.version: str | None = None
        # Whether ComfyUI runs the isolation extension: each prompt in its own folders (`_has_isolation`).
        self.isolated = False
        self.started_at = time.monotonic()
        # Seconds, for metrics: the last boot (start or crash → ready), the models' fetch, the warmup.
        self.boot_s: float | None = None
        self.models_fetch_s: float | None = None
        self.warmup_s: float | None = None
        self._down_since = self.started_at
        self._models: tuple[float, dict[str, list[str]]] | None = None
        self._warmup: Callable[[], None] | None = None
        self._on_catalogue: Callable[[dict[str, Any]], None] | None = None

    # --- state -----------------------------------------------------------------------------

    @property
    def state(self) -> ComfyState:
        return self._state

    @property
    def ready(self) -> bool:
        """Booted (system checked, warmup run) and the websocket connected."""
        return self._ready.is_set()

    @property
    def object_info(self) -> dict[str, Any]:
        """ComfyUI's node catalogue; while one is loading, waits for it (`catalog.WAIT_S`)."""
        return self.catalogue.get().object_info

    @property
    def output_classes(self) -> frozenset[str]:
        """The catalogue's output node classes; waits like `object_info`."""
        return self.catalogue.get().output_classes

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until ComfyUI is ready or `timeout_s` passed; whether it is ready."""
        return self._ready.wait(timeout_s)

    @contextlib.contextmanager
    def notify_ready(self, event: threading.Event) -> Iterator[None]:
        """While inside, `event` is set each time ComfyUI becomes ready (at once if it is)."""
        with self._ready.linked(event):
            yield

    def _update(self, to: ComfyState | None = None, *, life: int | None = None) -> bool:
        """The one writer of `state` and of readiness: move to `to` (unless the state is final,
        or `life` is given and ComfyUI exited since), then set readiness iff READY and the
        websocket is connected. Whether it moved."""
        with self._state_lock:
            moved = False
            if to is not None and self._state not in FINAL_STATES and life in (None, self._life):
                if self._state is not to:
                    log.debug("ComfyUI state: %s → %s", self._state.value, to.value)
                self._state, moved = to, True
                if to is ComfyState.RESTARTING:
                    self._life += 1  # a boot of the ComfyUI that exited no longer makes it ready
            if self._state is ComfyState.READY and self.client.connected:
                self._ready.set()  # a Trigger: linked waiters wake too
            else:
                self._ready.clear()
            return moved

    # --- lifecycle -------------------------------------------------------------------------

    def start(
        self,
        warmup: Callable[[], None] | None = None,
        on_catalogue: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Boot (or attach to) ComfyUI. After each boot, on the boot thread: `warmup` once the
        catalogue is loaded, before ready; `on_catalogue` with the catalogue, after ready."""
        self._warmup, self._on_catalogue = warmup, on_catalogue
        if self.supervisor is not None:
            self._check_gpu()  # before anything starts: a worker without its GPU stops here
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.start()
        if self.supervisor is None:
            return
        if self.model_settings.models_source:
            # Runtime models: fetch them first, while /healthz answers 503.
            self._spawn("models", self._fetch_models_then_boot)
        else:
            self.supervisor.start()

    def _check_gpu(self) -> None:
        """Log the GPU, its driver and CUDA (NVML: milliseconds, no PyTorch); with REQUIRE_GPU,
        raise GpuUnavailable when there is none, so the process exits saying why."""
        info = gpu.probe()
        log.info("GPU: %s", info.summary() if info else "none (ComfyUI runs on CPU)")
        if self.comfyui.require_gpu:
            gpu.require(info)

    def _fetch_models_then_boot(self) -> None:
        from handler.models import ensure_models

        if not self._update(ComfyState.FETCHING_MODELS):
            return  # stopped before it began
        try:
            fetch_started = time.monotonic()
            ensure_models(models=self.model_settings, comfyui=self.comfyui)
            self.models_fetch_s = time.monotonic() - fetch_started
        except Exception as exc:
            self._update(ComfyState.MODEL_FETCH_FAILED)
            log.error("cannot fetch the models from MODELS_SOURCE: %s", exc)
            return
        if self._update(ComfyState.STARTING) and self.supervisor:
            self.supervisor.start()

    def stop(self) -> None:
        self._update(ComfyState.STOPPING)
        self.catalogue.settle()  # nobody waits on a load that will not come
        if self.supervisor:
            self.supervisor.stop()
        self.client.close()

    def _on_listening(self) -> None:
        self.client.comfy_listening()

    def _on_exit(self, code: int) -> None:
        self._update(ComfyState.RESTARTING)
        self._down_since = time.monotonic()
        self.client.comfy_exited()

    def _on_disconnect(self) -> None:
        self._update()  # not ready while the websocket is down

    def _on_connect(self) -> None:
        self._update()  # a websocket reconnect to a booted ComfyUI: ready again
        if self._state is ComfyState.READY:
            return  # a websocket reconnect, not a new ComfyUI
        self._spawn("comfyui-boot", self._boot)

    def _boot(self) -> None:
        """One ComfyUI's boot. An attempt that fails is retried while that ComfyUI runs and the
        websocket is up; a later connect boots again if this one gave up."""
        with self._boot_lock:
            life = self._life
            try:
                while self._booting(life):
                    try:
                        info = self._boot_once(life)
                    except Exception as exc:
                        log.error("ComfyUI boot checks failed (%s); retrying", exc)
                        if self._state is ComfyState.READY:
                            self._update(ComfyState.STARTING, life=life)  # not ready without its catalogue
                        time.sleep(2)
                        continue
                    if info is not None and self._on_catalogue is not None:
                        self._on_catalogue(info)  # after ready: publishing is no part of it
                    return
            finally:
                self.catalogue.settle()  # a load this boot left unfinished will not come

    def _booting(self, life: int) -> bool:
        state = self._state
        return (
            state not in FINAL_STATES and state is not ComfyState.READY and life == self._life and self.client.connected
        )

    def _boot_once(self, life: int) -> dict[str, Any] | None:
        """The system check; then ready at once (without a warmup) while the catalogue loads,
        or the catalogue, the warmup, then ready. The catalogue, or None if not ready (stopped,
        or this ComfyUI exited meanwhile)."""
        self._check_system()
        self._models = None
        self.catalogue.expect()  # from now on, whoever needs the catalogue waits for this load
        if self._warmup is None and not self._become_ready(life):
            return None
        started = time.monotonic()
        info: dict[str, Any] = self.client.get_json("/object_info", timeout_s=120)
        self.catalogue.fill(NodeCatalogue.of(info))
        log.info("node catalogue loaded: %d node classes in %.0f ms", len(info), (time.monotonic() - started) * 1000)
        if self._warmup is not None:
            self._warmup()
            if not self._become_ready(life):
                return None
        return info

    def _become_ready(self, life: int) -> bool:
        if not self._update(ComfyState.READY, life=life):
            return False  # stopped, or ComfyUI exited, meanwhile: its next connect boots
        self.boot_s = time.monotonic() - self._down_since
        log.info("ComfyUI %s is ready (%.1f s after start)", self.version or "?", time.monotonic() - self.started_at)
        return True

    def _check_system(self) -> None:
        """ComfyUI's version and devices (`/system_stats`, a few ms); with REQUIRE_GPU, that
        its PyTorch sees CUDA."""
        stats = self.client.get_json("/system_stats")
        self.version = (stats.get("system") or {}).get("comfyui_version")
        self.isolated = self._has_isolation()
        torch_version, devices = gpu.torch_summary(stats)
        log.info("ComfyUI %s: torch %s, devices %s", self.version or "?", torch_version, ", ".join(devices) or "?")
        if self.comfyui.require_gpu and self.supervisor and not any(d.startswith("cuda") for d in devices):
            # PyTorch cannot use the GPU the driver shows (a CUDA build the driver does not run):
            # stop now rather than serve prompts on the CPU or not at all.
            log.critical(
                "REQUIRE_GPU is set but ComfyUI's PyTorch %s sees no CUDA device (%s): stopping",
                torch_version,
                ", ".join(devices) or "none",
            )
            self._update(ComfyState.GPU_UNUSABLE)
            self.supervisor.stop()
            os._exit(3)

    def _runs_isolated(self) -> bool:  # read at each cleanup: a reattached ComfyUI may differ
        return self.isolated

    def _has_isolation(self) -> bool:
        """Whether this ComfyUI runs the isolation extension (docs/security.md); the supervisor
        installs it, an attached ComfyUI has it if its operator installed it."""
        try:
            found = self.client.get_json("/comfyrun/isolation", timeout_s=10)
        except ServiceError:
            found = None
        isolated = isinstance(found, dict) and found.get("version") == 1
        if not isolated:
            log.warning(
                "ComfyUI runs without comfyrun's isolation extension: each prompt sees the shared input, "
                "output and temp folders (only the node policy and name rewriting keep requests apart), "
                "so only admins may send raw workflows%s",
                "" if self.supervisor else "; the files of its runs are emptied, not deleted",
            )
        return isolated

    def require_ready(self) -> None:
        if not self.ready:
            raise ComfyUnavailable(f"ComfyUI is not ready ({self._state.value}); retry shortly")

    # --- models ----------------------------------------------------------------------------

    def models(self, refresh: bool = False) -> dict[str, list[str]]:
        cached = self._models
        if cached and not refresh and time.monotonic() - cached[0] < self.model_settings.models_cache_ttl_s:
            return cached[1]
        self.require_ready()
        folders = self.client.get_json("/models")
        catalogue: dict[str, list[str]] = {}
        for folder in folders:
            try:
                catalogue[folder] = sorted(filter(worth_listing, self.client.get_json(f"/models/{folder}")))
            except Exception:
                catalogue[folder] = []
        self._models = (time.monotonic(), catalogue)
        return catalogue

    def model_folder(self, folder: str, refresh: bool = False) -> list[str]:
        catalogue = self.models(refresh)
        if folder not in catalogue:
            raise NotFound(f"no model folder named {folder!r}", folders=sorted(catalogue))
        return catalogue[folder]


def worth_listing(name: str) -> bool:
    """A file of a model folder that /models shows: ComfyUI lists every file (custom_nodes has no
    extension filter), Python's caches and hidden files and folders (`.git`) included; those go."""
    parts = name.replace("\\", "/").split("/")
    return not any(part.startswith(".") or part == "__pycache__" for part in parts) and not name.endswith(".pyc")
