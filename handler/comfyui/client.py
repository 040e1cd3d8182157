"""The one connection to ComfyUI: its HTTP API (handler/comfyui/api.py) and a single long-lived
websocket.

The websocket uses a fixed client id for the life of the process. A listener thread routes
events by `prompt_id` to `PromptWatch`es. After any reconnect it re-checks `/history` for every
prompt in flight, because ComfyUI drops the messages sent while a client was away.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websocket

from handler import logs
from handler.comfyui.api import ComfyAPI
from handler.comfyui.wsframes import OPCODE_BINARY, OPCODE_CLOSE, OPCODE_TEXT, FrameReader
from handler.config.comfyui import ComfyUISettings
from handler.config.observability import ObservabilitySettings
from handler.errors import ComfyUnavailable, ExecutionFailed, ServiceError
from handler.runtime import Spawn, daemon_thread

log = logging.getLogger("handler.comfyui.instance")

FEATURE_FLAGS = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})

# Binary websocket frames: a 4-byte big-endian event type first.
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}
# Characters of ComfyUI's exception message kept in an execution error.
MAX_MESSAGE = 2000


class Interrupted(ServiceError):
    """ComfyUI reported `execution_interrupted` for the prompt."""

    status_code = 500
    code = "interrupted"


@dataclass
class BinaryImage:
    node_id: str | None
    content_type: str
    data: bytes


@dataclass
class PromptWatch:
    """Everything ComfyUI tells us about one prompt, and a way to wait for its end."""

    prompt_id: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    binary_images: list[BinaryImage] = field(default_factory=list)
    cached_nodes: list[str] = field(default_factory=list)
    error: ServiceError | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # True if the websocket was down while this prompt was in flight: events may be missing.
    missed_events: bool = False
    # Its place in ComfyUI's queue (lowest runs first), when the submitter chose one.
    number: float | None = None
    # Called on the listener thread with every message about this prompt (type, data) and each
    # binary image ("binary", BinaryImage): it must be quick and must not raise.
    listener: Callable[[str, Any], None] | None = field(default=None, repr=False)
    # Set on every change a waiter cares about (started, finished); waiters clear it. Other
    # sources (cancel, shutdown) may be linked to it too: one event to wait on.
    changed: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    # For the dashboard: the latest `progress` (value, max), and the ids of the run (logs.labels).
    progress: tuple[float, float] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    submitted_at: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float | None) -> bool:
        return self._done.wait(timeout_s)

    def start(self) -> None:
        """ComfyUI began executing the prompt (`execution_start`): its run time counts from now."""
        if self.started_at is None:
            self.started_at = time.monotonic()
            self.changed.set()

    def finish(self, error: ServiceError | None = None) -> None:
        if self._done.is_set():
            return
        self.error = error
        self.finished_at = time.monotonic()
        self._done.set()
        self.changed.set()

    def add_output(self, node_id: str, output: dict[str, Any]) -> None:
        # A node may report more than once (lists grow); keep everything it said.
        current = self.outputs.setdefault(node_id, {})
        for key, value in output.items():
            if isinstance(value, list) and isinstance(current.get(key), list):
                current[key] = current[key] + [item for item in value if item not in current[key]]
            else:
                current[key] = value

    def apply_history(self, entry: dict[str, Any]) -> None:
        """Fill in from a `/history/<id>` entry (what the websocket may have missed)."""
        for node_id, output in (entry.get("outputs") or {}).items():
            self.add_output(node_id, output)
        status = entry.get("status") or {}
        if status.get("status_str") == "success" or status.get("completed"):
            self.finish()
        elif status.get("status_str") == "error":
            for event, data in status.get("messages") or []:
                if event == "execution_error":
                    self.finish(execution_failed(data))
                    return
                if event == "execution_interrupted":
                    self.finish(Interrupted("the job was interrupted", node_id=data.get("node_id")))
                    return
            self.finish(ExecutionFailed("ComfyUI reported an error for this job"))


def execution_failed(data: dict[str, Any]) -> ExecutionFailed:
    node_type = data.get("node_type")
    node_id = data.get("node_id")
    # Bounded here, before it is logged; errors.scrub takes our folder names and paths out of answers.
    message = str(data.get("exception_message") or "execution failed").strip()[:MAX_MESSAGE]
    return ExecutionFailed(
        f"{node_type} (node {node_id}) failed: {message}",
        node_id=node_id,
        node_type=node_type,
        exception_type=data.get("exception_type"),
        exception_message=message,
    )


class ComfyClient(ComfyAPI):
    def __init__(
        self,
        base_url: str,
        *,
        comfyui: ComfyUISettings,
        observability: ObservabilitySettings,
        supervised: bool,
        spawn: Spawn = daemon_thread,
    ):
        super().__init__(base_url, client_id=uuid.uuid4().hex)
        self.ws_url = "ws" + self.base_url[len("http") :] + "/ws"
        self._spawn = spawn
        self.comfyui = comfyui
        self.supervised = supervised
        self._watches: dict[str, PromptWatch] = {}
        self._lock = threading.Lock()
        self._ws: websocket.WebSocket | None = None
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._closing = threading.Event()
        # While ComfyUI is known to be down (supervised), failed connects are expected.
        self._comfy_down = supervised
        self._thread: threading.Thread | None = None
        self._progress_owner: tuple[str | None, str | None] = (None, None)
        self.connects = 0
        self.on_connect: Callable[[], None] | None = None  # called after every (re)connect
        self.on_disconnect: Callable[[], None] | None = None  # called after every drop
        if observability.ws_trace:
            websocket.enableTrace(True)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._thread = self._spawn("comfyui-ws", self._listen_forever)

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._drop_socket()
        if self._thread:
            self._thread.join(5)
        self.fail_all(ComfyUnavailable("the service is shutting down"))
        super().close()

    def comfy_listening(self) -> None:
        """The supervisor saw ComfyUI start listening: connect now."""
        self._comfy_down = False
        self._wake.set()

    def comfy_exited(self) -> None:
        """The supervisor saw ComfyUI exit: every prompt in flight fails at once."""
        self._comfy_down = True
        self._connected.clear()
        self._drop_socket()
        self.fail_all(ComfyUnavailable("ComfyUI stopped while running the job; it is restarting"))

    def fail_all(self, error: ServiceError) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.finish(error)

    def _drop_socket(self) -> None:
        ws = self._ws
        if ws is not None:
            try:
                # websocket-client has no type hints
                ws.abort() if hasattr(ws, "abort") else ws.close()  # type: ignore[no-untyped-call]
            except Exception:  # already closed
                pass

    # --- the listener ----------------------------------------------------------------------

    def _listen_forever(self) -> None:
        failures = 0
        while not self._closing.is_set():
            try:
                ws = websocket.create_connection(
                    f"{self.ws_url}?clientId={self.client_id}",
                    timeout=10,
                    enable_multithread=True,
                    # json.loads rejects bad UTF-8 anyway; the library's pure-Python check
                    # costs more than the parse on every message.
                    skip_utf8_validation=True,
                )
            except Exception as exc:
                if not self._comfy_down:
                    failures += 1
                    log.debug("websocket connect failed (%d): %s", failures, exc)
                    if failures == self.comfyui.ws_reconnect_attempts:
                        log.error("cannot reach ComfyUI's websocket after %d attempts", failures)
                        self.fail_all(ComfyUnavailable("lost the connection to ComfyUI"))
                delay = 0.5 if self._comfy_down else self.comfyui.ws_reconnect_delay_s
                self._wake.wait(delay)
                self._wake.clear()
                continue
            failures = 0
            self._on_connected(ws)
            self._receive(ws)
            self._connected.clear()
            self._ws = None
            if self.on_disconnect:
                self.on_disconnect()
            with self._lock:
                for watch in self._watches.values():
                    watch.missed_events = True
            if not self._closing.is_set() and not self._comfy_down:
                log.warning("websocket to ComfyUI closed; reconnecting")

    def _on_connected(self, ws: websocket.WebSocket) -> None:
        ws.settimeout(None)
        ws.send(FEATURE_FLAGS)
        self._ws = ws
        self.connects += 1
        if self.connects > 1:
            # Messages sent while we were away are gone: ask /history about prompts in flight.
            self._spawn("comfyui-recheck", self._recheck_in_flight)
        self._connected.set()
        log.info("connected to ComfyUI's websocket (client id %s)", self.client_id)
        if self.on_connect:
            self.on_connect()

    def _receive(self, ws: websocket.WebSocket) -> None:
        if ws.sock is None:  # closed under us
            return
        # The library's handshake read the response byte by byte: nothing of ours is in its buffer.
        reader = FrameReader(ws.sock, pong=ws.pong)
        while not self._closing.is_set():
            try:
                opcode, payload = reader.next()
            except Exception:
                return
            if opcode == OPCODE_TEXT:
                try:
                    message = json.loads(payload)
                except ValueError:
                    continue
                self._route(message)
            elif opcode == OPCODE_BINARY:
                self._route_binary(payload)
            elif opcode == OPCODE_CLOSE:
                return

    def _watch_for(self, prompt_id: str | None) -> PromptWatch | None:
        if prompt_id is None:
            return None
        with self._lock:
            return self._watches.get(prompt_id)

    def _route(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        data = message.get("data") or {}
        if kind == "progress":
            self._progress_owner = (data.get("prompt_id"), data.get("node"))
        watch = self._watch_for(data.get("prompt_id"))
        if watch is None:
            return
        if watch.listener is not None:
            watch.listener(str(kind), data)
        if kind == "progress":
            watch.progress = (float(data.get("value") or 0), float(data.get("max") or 0))
        elif kind == "execution_start":
            watch.start()
        elif kind == "execution_cached":
            watch.cached_nodes = list(data.get("nodes") or [])
        elif kind == "executed" and isinstance(data.get("output"), dict):
            watch.add_output(str(data.get("node")), data["output"])
        elif kind == "execution_success":
            watch.finish()
        elif kind == "executing" and data.get("node") is None:
            watch.finish()
        elif kind == "execution_error":
            log.warning(
                "job %s failed in node %s (%s): %.500s",
                watch.prompt_id,
                data.get("node_id"),
                data.get("node_type"),
                data.get("exception_message"),
            )
            watch.finish(execution_failed(data))
        elif kind == "execution_interrupted":
            watch.finish(Interrupted("the job was interrupted", node_id=data.get("node_id")))

    def _route_binary(self, payload: bytes) -> None:
        if len(payload) < 8:
            return
        (event,) = struct.unpack(">I", payload[:4])
        if event == PREVIEW_IMAGE_WITH_METADATA:
            (size,) = struct.unpack(">I", payload[4:8])
            try:
                meta = json.loads(payload[8 : 8 + size])
            except ValueError:
                return
            watch = self._watch_for(meta.get("prompt_id"))
            if watch is not None:
                image = BinaryImage(meta.get("node_id"), meta.get("image_type") or "image/png", payload[8 + size :])
                watch.binary_images.append(image)
                if watch.listener is not None:
                    watch.listener("binary", image)
        elif event == PREVIEW_IMAGE:
            (image_format,) = struct.unpack(">I", payload[4:8])
            prompt_id, node_id = self._progress_owner
            watch = self._watch_for(prompt_id)
            if watch is not None:
                content_type = IMAGE_FORMATS.get(image_format, "application/octet-stream")
                image = BinaryImage(node_id, content_type, payload[8:])
                watch.binary_images.append(image)
                if watch.listener is not None:
                    watch.listener("binary", image)

    def _recheck_in_flight(self) -> None:
        with self._lock:
            watches = [w for w in self._watches.values() if not w.done]
        if not watches:
            return
        try:
            running = {entry[1] for entry in self.get_json("/queue").get("queue_running") or [] if len(entry) > 1}
        except ServiceError:
            running = set()
        for watch in watches:
            if watch.prompt_id in running:
                watch.start()  # its execution_start may have been sent while we were away
            try:
                entry = self.history(watch.prompt_id)
            except ServiceError:
                continue
            if entry:
                watch.apply_history(entry)

    # --- prompts ---------------------------------------------------------------------------

    def watch(self, prompt_id: str) -> PromptWatch:
        watch = PromptWatch(prompt_id, labels=logs.labels())
        with self._lock:
            self._watches[prompt_id] = watch
        return watch

    def ahead_of(self, prompt_id: str) -> int:
        """How many of our prompts ComfyUI runs before this one: those running, and those
        waiting with a lower number (ComfyUI's queue is a heap on it)."""
        with self._lock:
            mine = self._watches.get(prompt_id)
            others = [w for w in self._watches.values() if w is not mine and not w.done]
        if mine is None or mine.number is None:
            return 0
        return sum(1 for w in others if w.started_at is not None or (w.number is not None and w.number < mine.number))

    def in_flight(self) -> list[PromptWatch]:
        """Prompts submitted and not yet forgotten (the dashboard's running list)."""
        with self._lock:
            return list(self._watches.values())

    def forget(self, prompt_id: str) -> None:
        with self._lock:
            self._watches.pop(prompt_id, None)
