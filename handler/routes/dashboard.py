"""The live dashboard: `GET /dashboard` (one self-contained HTML page, no CDN: it works offline)
and `GET /dashboard/data` (the JSON it polls every two seconds).

Contract of `/dashboard/data`:

* `service`: version, role, uptime; `comfyui`: state, ready, version, restarts, reconnects, the
  versions it reports (Python, PyTorch), RAM and per-device VRAM (from its `/system_stats`);
* `queue`: jobs waiting per priority (the same numbers as `comfyrun_jobs_queued`);
* `running`: prompts in ComfyUI now with their job or request id, state (`starting`: claimed,
  not yet in ComfyUI; `downloading`: its models named by URL download, `download` says how far
  (handler/models/progress.py, the shape `/status` and SSE show); `placed`: waiting in ComfyUI's
  own queue; `running`: executing), progress and age;
* `counts`: `waiting` here (all priorities), `placed` in ComfyUI's queue (or starting, or downloading
  its models), `running`;
* `recent`: the last finished runs (sync and jobs) with state, duration and error;
* `latency`: request latency per 10 s over the last ten minutes (watching routes left out).

Both are for admins only (handler/access/): the page shows every caller's job and request ids.
The page is `handler/static/dashboard.html` (package data), read once.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Route

from handler import __version__
from handler.errors import scrub_text
from handler.metrics import Metrics
from handler.models.progress import SCHEMA as DOWNLOAD_SCHEMA
from handler.routes.apidoc import PathItems, json_response
from handler.routes.common import Services, caller_of, services_of

if TYPE_CHECKING:
    from handler.comfyui.instance import Comfy

PAGE = resources.files("handler").joinpath("static/dashboard.html").read_text(encoding="utf-8")
# The page has no other origin to talk to: everything it needs is inline.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
    "Cache-Control": "no-store",
}


def comfy_view(comfy: Comfy, stats: dict[str, Any] | None) -> dict[str, Any]:
    system = (stats or {}).get("system") or {}
    return {
        "state": comfy.state.value,
        "ready": comfy.ready,
        "version": comfy.version,
        "restarts": comfy.supervisor.restarts if comfy.supervisor else 0,
        "reconnects": max(0, comfy.client.connects - 1),
        "python_version": scrub_text(str(system.get("python_version", ""))).split(" ")[0] or None,
        "pytorch_version": system.get("pytorch_version"),
        "ram_total": system.get("ram_total"),
        "ram_free": system.get("ram_free"),
        "devices": [
            {
                key: device.get(key)
                for key in ("name", "type", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free")
            }
            for device in (stats or {}).get("devices") or []
        ],
    }


def running_view(
    comfy: Comfy | None, metrics: Metrics, downloads: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    priorities = metrics.running_jobs()
    rows: list[dict[str, Any]] = []
    now = time.monotonic()
    seen_jobs = set()
    for run in downloads or []:  # before their prompt: models named by URL download (Pipeline.downloading)
        job_id = run["labels"].get("job_id")
        seen_jobs.add(job_id)
        rows.append(
            {
                "prompt_id": None,
                "job_id": job_id,
                "request_id": None if job_id else run["labels"].get("request_id"),
                "workflow_id": run["labels"].get("workflow_id"),
                "priority": priorities.get(job_id, "high") if job_id else "high",
                "state": "downloading",
                "progress": None,
                "download": run["progress"],
                "for_s": round(now - run["since"], 1),
            }
        )
    for watch in comfy.client.in_flight() if comfy is not None else []:
        if watch.done:
            continue
        job_id = watch.labels.get("job_id")
        seen_jobs.add(job_id)
        value, maximum = watch.progress or (0.0, 0.0)
        rows.append(
            {
                "prompt_id": watch.prompt_id,
                "job_id": job_id,
                "request_id": None if job_id else watch.labels.get("request_id"),
                "workflow_id": watch.labels.get("workflow_id"),
                "priority": priorities.get(job_id, "high") if job_id else "high",  # sync runs go first
                "state": "running" if watch.started_at is not None else "placed",
                "progress": {"value": value, "max": maximum} if maximum else None,
                "download": None,
                "for_s": round(now - (watch.started_at or watch.submitted_at), 1),
            }
        )
    for job_id, priority in priorities.items():  # runs between their lease and their prompt
        if job_id not in seen_jobs:
            rows.append(
                {
                    "prompt_id": None,
                    "job_id": job_id,
                    "request_id": None,
                    "workflow_id": None,
                    "priority": priority,
                    "state": "starting",
                    "progress": None,
                    "download": None,
                    "for_s": None,
                }
            )
    return rows


def counts(queued: dict[str, int] | None, running: list[dict[str, Any]]) -> dict[str, int]:
    """What the queue card shows: a prompt placed in ComfyUI's queue is not running yet."""
    executing = sum(1 for row in running if row["state"] == "running")
    return {
        "waiting": sum((queued or {}).values()),
        "placed": len(running) - executing,
        "running": executing,
    }


def data(services: Services) -> dict[str, Any]:
    comfy, metrics, collector = services.comfy, services.metrics, services.collector
    now = time.time()
    queued = collector.queued.get()
    running = running_view(comfy, metrics, services.pipeline.downloading() if services.pipeline else None)
    return {
        "now": now,
        "service": {
            "version": __version__,
            "role": services.settings.service_role.value,
            "uptime_s": round(now - services.started_at, 1),
        },
        "comfyui": comfy_view(comfy, collector.stats.get()) if comfy is not None else None,
        "queue": queued,
        "running": running,
        "counts": counts(queued, running),
        "recent": metrics.finished(),
        "latency": metrics.latency.series(now),
    }


async def page(request: Request) -> HTMLResponse:
    caller_of(request).require_admin()
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


async def page_data(request: Request) -> JSONResponse:
    caller_of(request).require_admin()
    return JSONResponse(await run_in_threadpool(data, services_of(request)), headers={"Cache-Control": "no-store"})


def routes() -> list[BaseRoute]:
    return [Route("/dashboard", page), Route("/dashboard/data", page_data)]


# --- the OpenAPI document (routes/apidoc.py)

OPERATIONS: PathItems = {
    "/dashboard": {
        "get": {
            "summary": "The live dashboard: one self-contained HTML page that polls /dashboard/data",
            "operationId": "dashboard",
            "tags": ["observability"],
            "responses": {
                "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}
            },
        }
    },
    "/dashboard/data": {
        "get": {
            "summary": "What the dashboard shows, as JSON",
            "operationId": "dashboardData",
            "tags": ["observability"],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "now": {"type": "number", "description": "Unix time of the answer."},
                            "service": {"type": "object", "description": "Version, role, uptime_s."},
                            "comfyui": {
                                "type": ["object", "null"],
                                "description": "State, readiness, versions, restarts, reconnects, RAM and VRAM.",
                            },
                            "queue": {"type": "object", "description": "Jobs waiting per priority."},
                            "running": {
                                "type": "array",
                                "description": "Prompts in ComfyUI now, with progress, and runs whose models "
                                "download (`download`: as in /status).",
                                "items": {"type": "object", "properties": {"download": DOWNLOAD_SCHEMA}},
                            },
                            "recent": {"type": "array", "description": "The last finished runs."},
                            "latency": {"type": "array", "description": "Request latency per 10 s, last ten minutes."},
                        },
                    },
                    "The dashboard's data (not cached).",
                )
            },
        }
    },
}
