"""Seeing what the service does: the request middleware, `/metrics` and `/system`.

Contract:

* `RequestObserver` (pure ASGI, outermost of the app's middleware) gives every request an id —
  the caller's `X-Request-Id` when it is short and plain, else a fresh one — returns it on the
  answer, starts the request's log context (id and trace, `logs.start`), counts the request by
  route template and status, times it to its last body byte, and writes the access line. With
  `METRICS=false` Metrics counts nothing (ids, log context and the access line stay as they are).
* `ServiceCollector` is read at scrape time: jobs queued per priority (the local queue, or the
  store's line with Cloud Tasks: in the api role the queue is the store's), ComfyUI's restarts,
  websocket reconnects, readiness, boot, model fetch and warmup times, and ComfyUI's own
  `/system_stats` (RAM, VRAM total/free, torch VRAM) as gauges.
* `GET /metrics`: Prometheus' text format; with `METRICS=false`, 404 in the one JSON error shape
  (errors.py), saying that metrics are off. `GET /system`: ComfyUI's system stats, its queue as
  prompt ids only (never another request's graph), and the settings with secrets masked.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler import __version__, logs
from handler.config.declare import Section
from handler.config.observability import ObservabilitySettings
from handler.errors import NotFound, scrub
from handler.metrics import Metrics
from handler.routes.apidoc import PathItems, error_response, json_response
from handler.routes.common import Services, caller_of, services_of

if TYPE_CHECKING:
    from handler.comfyui.instance import Comfy

# Routes that watch the service: counted, but kept out of the dashboard's latency chart.
WATCHING = frozenset({"/metrics", "/dashboard", "/dashboard/data", "/system", "/healthz"})
ERROR_PEEK_BYTES = 4096  # of a failed /predict answer, to show its error code on the dashboard
SECRET_WORDS = ("secret", "token", "password", "credential", "private", "key")
# In any shown value: a URL's userinfo, a query value or a command-line option whose name
# sounds secret (`?sig=…`, `--api-key …`).
USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/?#@\s]*@", re.IGNORECASE)
SECRET_NAMES = r"[\w-]*(?:secret|token|passw(?:or)?d|pwd|credential|private|key|sig|signature|auth)[\w-]*"
SECRET_QUERY = re.compile(rf"(?P<name>[?&;]{SECRET_NAMES}=)[^&#;\s]*", re.IGNORECASE)
SECRET_OPTION = re.compile(rf"(?P<name>--{SECRET_NAMES}(?:=|\s+))\S+", re.IGNORECASE)


def redact(value: Any) -> Any:
    """`value` with URL userinfo and secret-named query values and options masked ("***")."""
    if isinstance(value, str):
        value = USERINFO.sub(lambda m: m.group("scheme") + "***@", value)
        value = SECRET_QUERY.sub(lambda m: m.group("name") + "***", value)
        return SECRET_OPTION.sub(lambda m: m.group("name") + "***", value)
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    return value


class RequestObserver:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, observability: ObservabilitySettings):
        self.app = app
        self.metrics = metrics
        self.access_log = observability.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        caller_id = user_agent = None
        trace_headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                caller_id = value.decode("latin-1")
            elif name in (b"traceparent", b"x-cloud-trace-context"):
                trace_headers[name.decode()] = value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
        request_id = logs.request_id_of(caller_id)
        logs.start(request_id, logs.trace_of(trace_headers) if trace_headers else None)
        header = (b"x-request-id", request_id.encode())
        state = _Answer()

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                state.size += len(body)
                if state.status >= 400 and len(state.peek) < ERROR_PEEK_BYTES:
                    state.peek += body[:ERROR_PEEK_BYTES]
                if not message.get("more_body", False) and state.ended is None:
                    state.ended = time.perf_counter()  # sent: cleanup after this is not the caller's wait
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            state.status = 500 if state.ended is None else state.status
            raise
        finally:
            self._record(scope, state, request_id, started, user_agent)

    def _record(self, scope: Scope, state: _Answer, request_id: str, started: float, user_agent: str | None) -> None:
        seconds = (state.ended or time.perf_counter()) - started
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.request(route, method, state.status, seconds, charted=route not in WATCHING)
        if route == "/predict" and method == "POST" and state.status != 202:  # 202: accepted as a job
            self.metrics.sync_finished(request_id, state.status, seconds, _error_of(state.peek))
        if self.access_log:
            client = scope.get("client")
            logs.access(
                method,
                scope["path"],
                state.status,
                seconds,
                size=state.size,
                user_agent=user_agent,
                remote_ip=client[0] if client else None,
                protocol=f"HTTP/{scope.get('http_version', '1.1')}",
            )


@dataclasses.dataclass
class _Answer:
    status: int = 500  # until the app starts an answer
    size: int = 0
    ended: float | None = None
    peek: bytes = b""


def _error_of(body: bytes) -> str | None:
    """`code: message` of the one JSON error shape, from the start of an answer."""
    if not body:
        return None
    try:
        error = json.loads(body).get("error") or {}
        return f"{error.get('code', 'error')}: {error.get('message', '')}"[:300]
    except (ValueError, AttributeError):
        return None


# --- routes ----------------------------------------------------------------------------------


def masked_settings(settings: Section) -> dict[str, Any]:
    """Every setting; secrets as "***" when set, and so are URL userinfo and secret-named query
    values and options (`redact`); paths and private names as errors.scrub shows them."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        secret = not field.repr or any(word in field.name.lower() for word in SECRET_WORDS)
        if secret:
            value = None if value is None else "***"
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        elif field.name == "comfyui_args":  # `--api-key`, `sk-…`: the value is the next word
            value = [
                "***" if i and re.fullmatch(f"--{SECRET_NAMES}", value[i - 1], re.IGNORECASE) else word
                for i, word in enumerate(value)
            ]
        out[field.name] = scrub(redact(value))  # per value: scrub bounds the items of one object
    return out


def comfy_queue(comfy: Comfy) -> dict[str, list[str]]:
    """ComfyUI's queue as prompt ids: what is queued, never what others sent."""
    queue = comfy.client.get_json("/queue", timeout_s=5)
    return {
        state: [str(entry[1]) for entry in queue.get(f"queue_{state}") or [] if len(entry) > 1]
        for state in ("running", "pending")
    }


async def metrics_text(request: Request) -> Response:
    metrics = services_of(request).metrics
    if not metrics.enabled:  # a route that says why, not the router's bare "Not Found"
        raise NotFound("metrics are off on this service (METRICS=false)", setting="METRICS")
    body = await run_in_threadpool(metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def system_document(services: Services) -> dict[str, Any]:
    comfy = services.comfy
    document: dict[str, Any] = {
        "service": {"version": __version__, "role": services.settings.service_role.value},
        "settings": masked_settings(services.settings),
        "comfyui": None,
    }
    if comfy is not None:
        info: dict[str, Any] = {"state": comfy.state.value, "ready": comfy.ready, "version": comfy.version}
        if comfy.ready:
            info["isolated"] = comfy.isolated  # runs the isolation extension (docs/security.md)
            info["system_stats"] = scrub(redact(comfy.client.get_json("/system_stats", timeout_s=5)))
            info["queue"] = comfy_queue(comfy)
        document["comfyui"] = info
    return document


async def system(request: Request) -> JSONResponse:
    caller_of(request).require_admin()
    return JSONResponse(await run_in_threadpool(system_document, services_of(request)))


def routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics_text), Route("/system", system)]


# --- the OpenAPI document (routes/apidoc.py)

OPERATIONS: PathItems = {
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "tags": ["observability"],
            "responses": {
                "200": {
                    "description": "Prometheus' text format: requests, runs, jobs queued per priority, ComfyUI's "
                    "restarts, readiness and memory.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": error_response("Metrics are off on this service (METRICS=false)."),
            },
        }
    },
    "/system": {
        "get": {
            "summary": "ComfyUI's system stats and queue, and this service's settings",
            "operationId": "system",
            "tags": ["observability"],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "service": {"type": "object", "description": "Version and role."},
                            "settings": {"type": "object", "description": "The settings, secrets masked."},
                            "comfyui": {
                                "type": ["object", "null"],
                                "description": "State, readiness, version; when ready, whether it runs comfyrun's "
                                "isolation extension (`isolated`: callers' raw workflows need it), its "
                                "/system_stats and its queue as prompt ids only. Null where this role runs "
                                "no ComfyUI.",
                            },
                        },
                    },
                    "The service and its ComfyUI.",
                )
            },
        }
    },
}
