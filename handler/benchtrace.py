"""Timestamps along a sync `/predict`, for `bench/run.py --trace`: a public hook, so the bench
wraps nothing of ours.

Off unless TRACE_OUT names a file. Then a request that carries an `X-Bench-Trace` id collects
`time.perf_counter()` marks (on Linux CLOCK_MONOTONIC, comparable with the client's own) as it
goes: `predict` (the route), `pipeline` and `waited` and `pipeline_end` (the run, with its
`timings`), `response_dict` (the answer built in the worker thread) and `response_built` (back on
the event loop); `end` writes them as one JSON line. Off, each call is one context read.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from pathlib import Path
from typing import Any, TextIO

_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("trace", default=None)
_sink: TextIO | None = None
_lock = threading.Lock()


def configure(path: Path | None) -> None:
    """Called once by the app, from Settings.trace_out."""
    global _sink
    if path is not None and _sink is None:
        _sink = open(path, "a", buffering=1)  # noqa: SIM115  (open for the process's life)


def begin(trace_id: str | None) -> None:
    if _sink is not None and trace_id:
        _current.set({"id": trace_id[:64], "predict": time.perf_counter()})


def mark(label: str, **extra: Any) -> None:
    record = _current.get()
    if record is not None:
        record[label] = time.perf_counter()
        record.update(extra)


def end() -> None:
    record = _current.get()
    if record is not None and _sink is not None:
        with _lock:
            _sink.write(json.dumps(record) + "\n")
        _current.set(None)
