"""Progress of a model download: one declaration of its shape, for `/status`, the SSE stream of
`/predict` and the dashboard, and the throttle that keeps it from following every chunk.

Contract:
* `DownloadProgress.to_dict()` is what every caller sees while a run's models download (before
  the prompt goes to ComfyUI): `stage` (`downloading models`), `file` (the file's name), `folder`,
  `source` (the URL, redacted), `bytes_done`, `bytes_total` (null when the server did not say),
  `percent` (null likewise) and `model` of `models` (which of the run's URL models this is).
  `SCHEMA` is its OpenAPI description; both are declared here only.
* `Meter.update(done, total)` may be called for every chunk (it is cheap); listeners get a
  `DownloadProgress` at the start, then at most once per `interval_s` and only when at least
  `min_step` (1 %) more of a known total arrived, and once at the end (`finish`). A value held
  back is sent when its interval ends, or, if under 1 % more, once no chunk came for a whole
  interval: a stalled server still shows where it stopped. Listeners are called on the download's thread or the watchdog's: they must be
  quick and must not block; one that raises is logged and kept out of the download.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from handler.net import watchdog

log = logging.getLogger("handler.models.progress")

STAGE = "downloading models"
INTERVAL_S = 0.5
MIN_STEP = 0.01  # of the total, when it is known


@dataclass(frozen=True, kw_only=True)
class DownloadProgress:
    file: str
    folder: str
    source: str
    bytes_done: int
    bytes_total: int | None
    model: int = 1
    models: int = 1

    @property
    def percent(self) -> float | None:
        if not self.bytes_total:
            return None
        return round(min(100.0, 100.0 * self.bytes_done / self.bytes_total), 1)

    def of(self, model: int, models: int) -> DownloadProgress:
        """The same, as the `model`-th of a run's `models` URL models."""
        return replace(self, model=model, models=models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": STAGE,
            "file": self.file,
            "folder": self.folder,
            "source": self.source,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "percent": self.percent,
            "model": self.model,
            "models": self.models,
        }


Listener = Callable[[DownloadProgress], None]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": f"While a run's models named by URL download (stage `{STAGE}`), before the prompt goes to "
    f"ComfyUI; at most one update every {INTERVAL_S:g} s.",
    "properties": {
        "stage": {"type": "string", "enum": [STAGE]},
        "file": {"type": "string", "description": "The file's name."},
        "folder": {"type": "string", "description": "The model folder it goes to (checkpoints, loras, …)."},
        "source": {"type": "string", "description": "Its URL, without query string or credentials."},
        "bytes_done": {"type": "integer"},
        "bytes_total": {"type": ["integer", "null"], "description": "Null when the server did not say."},
        "percent": {"type": ["number", "null"]},
        "model": {"type": "integer", "description": "Which of the run's URL models this is (from 1)."},
        "models": {"type": "integer", "description": "How many models the run names by URL."},
    },
}


class Meter:
    """One download's progress, throttled, for any number of listeners (see the contract)."""

    def __init__(
        self, *, file: str, folder: str, source: str, interval_s: float = INTERVAL_S, min_step: float = MIN_STEP
    ):
        self._base = DownloadProgress(file=file, folder=folder, source=source, bytes_done=0, bytes_total=None)
        self.interval_s = interval_s
        self.min_step = min_step
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._latest: tuple[int, int | None] | None = None  # (done, total), written per chunk
        self._sent: DownloadProgress | None = None
        self._sent_at = 0.0
        self._updated_at = 0.0
        self._alarm: watchdog.Alarm | None = None  # a look at the interval's end is due
        self._finished = False

    def listen(self, listener: Listener) -> None:
        """Add a listener; it gets the latest value at once, if there is one."""
        with self._lock:
            self._listeners.append(listener)
            latest = self._sent
        if latest is not None:
            self._call([listener], latest)

    def forget(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        self._updated_at = now
        self._latest = (done, total)  # before the look at the alarm: the alarm reads it after clearing itself
        if self._alarm is not None:
            return  # per chunk, mostly this: the look at the interval's end takes the latest
        with self._lock:
            if self._finished or self._alarm is not None:
                return
            if self._sent is None or self._due(now):
                self._send_locked(now)
            else:
                self._alarm = watchdog.arm(max(0.0, self._sent_at + self.interval_s - now), self._trailing)

    def finish(self) -> None:
        """The download ended: the last value goes out (if not already) and nothing after it."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            if self._alarm is not None:
                self._alarm.disarm()
                self._alarm = None
            if self._news():
                self._send_locked(time.monotonic())

    def _news(self) -> bool:
        latest, sent = self._latest, self._sent
        return latest is not None and (sent is None or latest != (sent.bytes_done, sent.bytes_total))

    def _due(self, now: float) -> bool:
        latest, sent = self._latest, self._sent
        if latest is None or not self._news() or now - self._sent_at < self.interval_s:
            return False
        done, total = latest
        if total and sent is not None and sent.bytes_total == total:
            return done - sent.bytes_done >= self.min_step * total
        return True

    def _trailing(self) -> None:
        with self._lock:
            self._alarm = None
            if self._finished or not self._news():
                return
            now = time.monotonic()
            if self._due(now) or now - self._updated_at >= self.interval_s:  # news, or stalled
                self._send_locked(now)
            else:  # under 1 % more while chunks still come: look again
                self._alarm = watchdog.arm(self.interval_s, self._trailing)

    def _send_locked(self, now: float) -> None:
        assert self._latest is not None
        done, total = self._latest
        value = replace(self._base, bytes_done=done, bytes_total=total)
        self._sent, self._sent_at = value, now
        self._call(list(self._listeners), value)

    @staticmethod
    def _call(listeners: list[Listener], value: DownloadProgress) -> None:
        for listener in listeners:
            try:
                listener(value)
            except Exception:  # progress is a courtesy: the download goes on
                log.exception("a download progress listener failed")
