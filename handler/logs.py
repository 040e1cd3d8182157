"""Log lines: readable text locally, one JSON object per line for Cloud Logging.

Contract:

* `configure(observability=..., cloud=...)` installs the process's one root handler on stdout. `LOG_FORMAT=json`
  (the default when K_SERVICE is set, i.e. on Cloud Run) writes one JSON object per line:
  `severity`, `message`, `time`, `logger`, `logging.googleapis.com/trace` (and `spanId`) from the
  request's `traceparent` or `X-Cloud-Trace-Context`, `logging.googleapis.com/labels` with the
  request, job, prompt and workflow ids the line is about, and `httpRequest` on access lines.
  `LOG_FORMAT=text` (the local default) writes `time LEVEL logger: message [labels]`.
* `bind(**ids)` adds ids to the current context; `labels()` reads them. The context is a
  `contextvars.ContextVar`: set by the HTTP middleware per request, copied into the worker
  threads anyio starts, and dropped when a function wrapped by `in_context` returns.
* `trace_of(headers)` parses the caller's trace header; `request_id_of(value)` keeps a caller's
  X-Request-Id only when it is short and plain, otherwise makes a fresh one.
* `comfy_level(line)` is the level a forwarded ComfyUI line carries (its own prefix, a traceback).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson

from handler.config.cloud import CloudSettings
from handler.config.observability import ObservabilitySettings

T = TypeVar("T")

# The label names Cloud Logging shows; a context carries no other ids.
LABELS = ("request_id", "job_id", "prompt_id", "workflow_id")
SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=([01]))?")
# A forwarded line's own level: "[WARNING] …", "WARNING: …", "ERROR …"; tracebacks are errors.
_LEVEL_PREFIX = re.compile(r"\s*\[?(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\]?[\s:]", re.IGNORECASE)
_ERROR_LINE = re.compile(r"Traceback \(most recent call last\)|^!!! Exception|^\w*(Error|Exception): ")
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}


@dataclass(frozen=True)
class Trace:
    trace_id: str
    span_id: str | None = None
    sampled: bool | None = None


@dataclass
class LogContext:
    """The ids of what a request (or a job's run) is about. One object per request, shared by
    the event loop's task and the worker thread that runs it, so the prompt id the pipeline
    binds is on the request's access line too."""

    request_id: str | None = None
    job_id: str | None = None
    prompt_id: str | None = None
    workflow_id: str | None = None
    trace: Trace | None = None

    def labels(self) -> dict[str, str]:
        return {name: value for name in LABELS if (value := getattr(self, name)) is not None}


_EMPTY = LogContext()  # outside any request or run: never changed
_context: contextvars.ContextVar[LogContext] = contextvars.ContextVar("comfyrun_log_context", default=_EMPTY)


def current() -> LogContext:
    return _context.get()


def labels() -> dict[str, str]:
    return _context.get().labels()


def start(request_id: str, trace: Trace | None) -> None:
    """A new request: its context replaces whatever the task inherited."""
    _context.set(LogContext(request_id=request_id, trace=trace))


def bind(**ids: str | None) -> None:
    """Add ids (job_id, prompt_id, workflow_id) to the current context; None leaves one as it is."""
    context = _context.get()
    if context is _EMPTY:
        context = LogContext()
        _context.set(context)
    for name, value in ids.items():
        if value is not None and name in LABELS:
            setattr(context, name, value)


def in_context(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` with a copy of the current ids: what it binds is gone when it returns (a
    long-lived worker thread does not carry one job's ids into the next)."""

    def run(*args: Any, **kwargs: Any) -> T:
        _context.set(replace(_context.get()))
        return fn(*args, **kwargs)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return contextvars.copy_context().run(run, *args, **kwargs)

    return wrapper


def request_id_of(value: str | None) -> str:
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def trace_of(headers: Mapping[str, str]) -> Trace | None:
    """W3C `traceparent` first, then Google's `X-Cloud-Trace-Context: TRACE/SPAN;o=1`."""
    parent = headers.get("traceparent")
    if parent and (match := _TRACEPARENT.fullmatch(parent.strip())) and match.group(1) != "0" * 32:
        return Trace(match.group(1), match.group(2), bool(int(match.group(3), 16) & 1))
    cloud = headers.get("x-cloud-trace-context")
    if cloud and (match := _CLOUD_TRACE.fullmatch(cloud.strip())):
        span = f"{int(match.group(2)):016x}" if match.group(2) else None
        return Trace(match.group(1).lower(), span, None if match.group(3) is None else match.group(3) == "1")
    return None


def comfy_level(line: str) -> int:
    match = _LEVEL_PREFIX.match(line)
    if match:
        return _LEVELS[match.group(1).upper()]
    if _ERROR_LINE.search(line):
        return logging.ERROR
    return logging.INFO


# --- formatting ------------------------------------------------------------------------------


class CloudFormatter(logging.Formatter):
    """One JSON object per line, in the fields Cloud Logging's agent on Cloud Run understands."""

    def __init__(self, project: str | None):
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        entry: dict[str, Any] = {
            "severity": SEVERITY.get(record.levelno, "DEFAULT"),
            "message": message,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "logger": record.name,
        }
        context = _context.get()
        ids = context.labels()
        if ids:
            entry["logging.googleapis.com/labels"] = ids
        trace = context.trace
        if trace is not None:
            entry["logging.googleapis.com/trace"] = (
                f"projects/{self.project}/traces/{trace.trace_id}" if self.project else trace.trace_id
            )
            if trace.span_id:
                entry["logging.googleapis.com/spanId"] = trace.span_id
            if trace.sampled is not None:
                entry["logging.googleapis.com/trace_sampled"] = trace.sampled
        http_request = getattr(record, "http_request", None)
        if http_request is not None:
            entry["httpRequest"] = http_request
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the ids the line is about at its end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = _context.get().labels()
        if not ids:
            return line
        return line + " [" + " ".join(f"{name}={value}" for name, value in ids.items()) + "]"


def configure(*, observability: ObservabilitySettings, cloud: CloudSettings) -> None:
    """The root handler on stdout, in the format LOG_FORMAT names (JSON lines name GCP_PROJECT's traces)."""
    handler = logging.StreamHandler(sys.stdout)
    if observability.log_format == "json":
        handler.setFormatter(CloudFormatter(cloud.gcp_project))
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(observability.log_level)


access_log = logging.getLogger("handler.access")


def access(
    method: str,
    path: str,
    status: int,
    duration_s: float,
    *,
    size: int | None,
    user_agent: str | None,
    remote_ip: str | None,
    protocol: str,
) -> None:
    """One access line: `httpRequest` for Cloud Logging, `METHOD path status ms` for people."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    # The path only: a query string may carry what a log must not keep.
    http_request: dict[str, Any] = {
        "requestMethod": method,
        "requestUrl": path,
        "status": status,
        "latency": f"{duration_s:.6f}s",
        "protocol": protocol,
    }
    if size is not None:
        http_request["responseSize"] = str(size)
    if user_agent:
        http_request["userAgent"] = user_agent
    if remote_ip:
        http_request["remoteIp"] = remote_ip
    access_log.info("%s %s %d %.1f ms", method, path, status, duration_s * 1000, extra={"http_request": http_request})
