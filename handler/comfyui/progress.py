"""Progress of one run, as events a caller may see: ComfyUI's messages translated and scrubbed.

Contract:

* `Reporter` turns the messages ComfyUI sends about one prompt (through `PromptWatch.listener`,
  on the websocket listener thread) into `ProgressEvent`s handed to a sink, in this order:
  `queued` (position: how many of this service's prompts ComfyUI runs first) always before
  `started`, then `progress` (node, class_type, step, max, percent: ComfyUI's `progress`
  messages as they come), `executed` (per output node; its outputs with our private folder
  names taken out) and, only when asked, `preview` (images pushed by nodes that are not output
  nodes: sampler previews, base64). Nothing is sent after `close()`.
* A sink is called on ComfyUI's listener thread: it must be quick and never block (a store write
  goes through `Throttled`, which writes at most once per interval on a thread of its own).
* `OnStart` wraps a sink and tells its caller when ComfyUI starts the prompt (an async job is
  `running` from then on, handler/jobs/leases.py).
* `JobProgress` keeps an async job's latest progress in the store (`progress/<job id>.json`, at
  most one write a second, removed when the run ends), where `/status` on any instance reads it
  (`read_job_progress`): {stage, node, class_type, step, max, percent, updated_at}.
* Before the prompt goes to ComfyUI, while the run's models named by URL download, `download`
  events carry handler/models/progress.py's `DownloadProgress` (stage `downloading models`, file,
  bytes done and total), at most one every half second; `JobProgress` records them like the rest.
* `started` and `progress` carry a `stage` (`Stage`): between the start and the first step a
  graph with a model loader is `loading models` (ComfyUI sends no steps while it loads weights),
  one without is `running`; a sampler's steps are `sampling`, any other node's steps `running`.
"""

from __future__ import annotations

import base64
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from handler.models.progress import STAGE as DOWNLOAD_STAGE
from handler.models.progress import DownloadProgress
from handler.net import watchdog
from handler.storage import Store

log = logging.getLogger("handler.comfyui.progress")


class EventKind(str, enum.Enum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    EXECUTED = "executed"
    PREVIEW = "preview"
    DOWNLOAD = "download"


class Stage(str, enum.Enum):
    DOWNLOADING = DOWNLOAD_STAGE
    LOADING = "loading models"
    SAMPLING = "sampling"
    RUNNING = "running"


def _loads_models(class_type: Any) -> bool:
    return isinstance(class_type, str) and "Loader" in class_type  # CheckpointLoaderSimple, UNETLoader, …


@dataclass(frozen=True)
class ProgressEvent:
    kind: EventKind
    data: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


ProgressSink = Callable[[ProgressEvent], None]


def download_event(progress: DownloadProgress) -> ProgressEvent:
    """A model download's progress as the run's event (SSE `download`, /status `progress`)."""
    return ProgressEvent(EventKind.DOWNLOAD, progress.to_dict())


def percent(step: Any, maximum: Any) -> float | None:
    if isinstance(step, (int, float)) and isinstance(maximum, (int, float)) and maximum > 0:
        return round(min(100.0, max(0.0, 100.0 * step / maximum)), 1)
    return None


class Reporter:
    """Translates one prompt's ComfyUI messages for a sink (see the module's contract)."""

    def __init__(
        self,
        sink: ProgressSink,
        graph: dict[str, Any],
        output_classes: frozenset[str],
        publish: Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]],
        *,
        prompt_id: str,
        previews: bool = False,
    ):
        self.sink = sink
        self.classes = {node_id: node.get("class_type") for node_id, node in graph.items()}
        self.output_classes = output_classes
        self.publish = publish  # ComfyUI's outputs as the caller may see them
        self.prompt_id = prompt_id
        self.previews = previews
        self._lock = threading.Lock()
        self._queued = False
        self._started = False
        self._closed = False

    def _emit(self, kind: EventKind, data: dict[str, Any]) -> None:
        if self._closed:
            return
        try:
            self.sink(ProgressEvent(kind, data))
        except Exception:  # a sink's failure must not reach ComfyUI's listener thread
            log.exception("a progress sink failed")

    def queued(self, position: int) -> None:
        with self._lock:
            if not self._queued:
                self._queued = True
                self._emit(EventKind.QUEUED, {"prompt_id": self.prompt_id, "position": position})

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def on_message(self, kind: str, data: Any) -> None:
        with self._lock:
            if kind == "execution_start":
                self._start()
            elif kind == "progress":
                self._start()
                node = str(data.get("node"))
                step, maximum = data.get("value"), data.get("max")
                self._emit(
                    EventKind.PROGRESS,
                    {
                        "node": node,
                        "class_type": self.classes.get(node),
                        "step": step,
                        "max": maximum,
                        "percent": percent(step, maximum),
                        "stage": (Stage.SAMPLING if "Sampler" in str(self.classes.get(node)) else Stage.RUNNING).value,
                    },
                )
            elif kind == "executed" and isinstance(data.get("output"), dict):
                self._start()
                node = str(data.get("node"))
                output = self.publish({node: data["output"]}).get(node, {})
                self._emit(EventKind.EXECUTED, {"node": node, "class_type": self.classes.get(node), "output": output})
            elif kind == "binary" and self.previews:
                image_node: str | None = getattr(data, "node_id", None)
                if image_node is None or self.classes.get(image_node) in self.output_classes:
                    return  # an output node's image is an output, not a preview
                self._emit(
                    EventKind.PREVIEW,
                    {
                        "node": image_node,
                        "class_type": self.classes.get(image_node),
                        "content_type": data.content_type,
                        "image": base64.b64encode(data.data).decode("ascii"),
                    },
                )

    def _start(self) -> None:
        # ComfyUI's execution_start may come before the submitter learnt its position.
        if not self._queued:
            self._queued = True
            self._emit(EventKind.QUEUED, {"prompt_id": self.prompt_id, "position": 0})
        if not self._started:
            self._started = True
            loading = any(_loads_models(class_type) for class_type in self.classes.values())
            self._emit(
                EventKind.STARTED,
                {"prompt_id": self.prompt_id, "stage": (Stage.LOADING if loading else Stage.RUNNING).value},
            )


class Throttled:
    """A sink that keeps the latest `started`/`progress` event and hands it to `write` at most
    once per `interval_s`, on a thread of its own, so that a slow write (a store) never holds
    ComfyUI's listener thread. The first write waits `interval_s` too, and the thread starts
    only then (a watchdog alarm until that): a run shorter than that writes nothing and starts
    no thread. `close()` stops it without a last write."""

    def __init__(self, write: Callable[[ProgressEvent], None], interval_s: float = 1.0, name: str = "progress"):
        self.write = write
        self.interval_s = interval_s
        self.name = name
        self._latest: ProgressEvent | None = None
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._alarm: watchdog.Alarm | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind not in (EventKind.STARTED, EventKind.PROGRESS, EventKind.DOWNLOAD):
            return
        self._latest = event
        self._wake.set()
        if self._alarm is None:
            with self._lock:
                if self._alarm is None and not self._closed.is_set():
                    self._alarm = watchdog.arm(self.interval_s, self._start)

    def close(self, wait_s: float = 0.0) -> None:
        """Stop; with `wait_s`, wait that long for a write in progress to end."""
        with self._lock:
            self._closed.set()
            if self._alarm is not None:
                self._alarm.disarm()
            thread = self._thread
        self._wake.set()
        if wait_s and thread is not None:
            thread.join(wait_s)

    def _start(self) -> None:
        """On the watchdog's thread: the run outlived the first interval."""
        with self._lock:
            if self._closed.is_set():
                return
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.clear()  # before taking the latest: a later event wakes the next round
            event, self._latest = self._latest, None
            if event is not None and not self._closed.is_set():
                try:
                    self.write(event)
                except Exception as exc:  # progress is a courtesy: the run goes on
                    log.warning("recording progress failed: %s", exc)
            if self._closed.wait(self.interval_s):
                return
            self._wake.wait()
            if self._closed.is_set():
                return


def progress_key(job_id: str) -> str:
    return f"progress/{job_id}.json"


class JobProgress:
    """A sink for an async job's run: its latest progress in the store, for /status."""

    def __init__(self, store: Store, job_id: str, interval_s: float = 1.0):
        self.store = store
        self.key = progress_key(job_id)
        self._written = False
        self._throttled = Throttled(self._write, interval_s, name=f"progress-{job_id[:8]}")

    def __call__(self, event: ProgressEvent) -> None:
        self._throttled(event)

    def _write(self, event: ProgressEvent) -> None:
        data = event.data
        if event.kind is EventKind.DOWNLOAD:
            shown = dict(data)  # DownloadProgress.to_dict(): its shape is declared there
        else:
            shown = {key: data.get(key) for key in ("stage", "node", "class_type", "step", "max", "percent")}
        self.store.put_json(self.key, {**shown, "updated_at": time.time()})  # /status shows it in ISO 8601
        self._written = True

    def close(self) -> None:
        """The run ended: no more writes, and the record goes (/status shows the job's result)."""
        self._throttled.close(wait_s=15.0)
        if not self._written:
            return  # a short run wrote none (a crashed run's record is not shown for a final job)
        try:
            self.store.delete(self.key)
        except Exception as exc:  # a stale record shows only while the job is running
            log.warning("could not remove %s: %s", self.key, exc)


class OnStart:
    """A sink that calls `on_start` at the run's `started` event (ComfyUI began executing the
    prompt), then passes every event on to `inner`. On the listener thread: `on_start` must
    not block."""

    def __init__(self, inner: JobProgress, on_start: Callable[[], None]):
        self.inner = inner
        self.on_start = on_start

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind is EventKind.STARTED:
            self.on_start()
        self.inner(event)

    def close(self) -> None:
        self.inner.close()


def read_job_progress(store: Store, job_id: str) -> dict[str, Any] | None:
    try:
        stored = store.get_json(progress_key(job_id))
    except Exception:  # progress is a courtesy: /status answers without it
        return None
    return stored.data if stored is not None and isinstance(stored.data, dict) else None
