"""The HTTP service: routes, lifespan and the mapping of errors to JSON responses."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from . import __version__, jobs_api, workflows_api
from .comfy import Comfy
from .config import Settings
from .errors import BadRequest, PayloadTooLarge, ServiceError
from .jobs import JobService
from .pipeline import Pipeline
from .predict_request import parse_predict_body
from .templates import Templates

log = logging.getLogger("handler.app")


@dataclass
class Services:
    """What the routes need, built once per process."""

    settings: Settings
    comfy: Comfy
    pipeline: Pipeline
    templates: Templates
    jobs: JobService | None = None  # set right after the rest: it needs the pipeline


def services_of(request: Request) -> Services:
    return request.app.state.services


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


# --- routes ----------------------------------------------------------------------------------


async def info(request: Request) -> JSONResponse:
    services = services_of(request)
    comfy = services.comfy
    return JSONResponse({
        "service": "comfyrun",
        "version": __version__,
        "model_type": services.settings.model_type,
        "comfyui": {"version": comfy.version, "state": comfy.state, "ready": comfy.ready,
                    "restarts": comfy.supervisor.restarts if comfy.supervisor else None},
        "async": {"queue": services.settings.queue_backend, "storage": services.settings.storage_backend},
        "endpoints": sorted({route.path for route in request.app.routes if hasattr(route, "path")}),
    })


async def healthz(request: Request) -> JSONResponse:
    comfy = services_of(request).comfy
    if comfy.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": comfy.state}, status_code=503, headers={"Retry-After": "5"})


async def models(request: Request) -> JSONResponse:
    services = services_of(request)
    refresh = request.query_params.get("refresh", "").lower() in {"1", "true", "yes"}
    catalogue = await run_in_threadpool(services.comfy.models, refresh)
    return JSONResponse({"model_type": services.settings.model_type, "models": catalogue})


async def model_folder(request: Request) -> JSONResponse:
    services = services_of(request)
    refresh = request.query_params.get("refresh", "").lower() in {"1", "true", "yes"}
    folder = request.path_params["folder"]
    files = await run_in_threadpool(services.comfy.model_folder, folder, refresh)
    return JSONResponse({"folder": folder, "models": files})


# Above this size a /predict answer is streamed: the client reads one file while the next is encoded.
STREAM_ABOVE_BYTES = 1024 * 1024


def run_sync(services: Services, body: Any) -> Response:
    """Parse, run and render in a worker thread: the event loop stays free for /healthz."""
    predict_request = parse_predict_body(body, services.settings, services.templates)
    result = services.pipeline.run(predict_request, defer_cleanup=True)
    # The job's files are removed once the answer is on its way.
    cleanup = BackgroundTask(result.cleanup)
    length, parts = result.json_parts()
    if length <= STREAM_ABOVE_BYTES:
        return Response(b"".join(parts), media_type="application/json", background=cleanup)
    return StreamingResponse(parts, media_type="application/json", background=cleanup,
                             headers={"Content-Length": str(length)})


async def predict(request: Request) -> Response:
    services = services_of(request)
    body = await read_json(request, services.settings.max_body_bytes)
    if services.jobs.wants_async(body, request.headers):
        return await services.jobs.accept(body, request)
    return await run_in_threadpool(run_sync, services, body)


# --- errors ----------------------------------------------------------------------------------


async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if exc.status_code >= 500:
        log.warning("%s %s → %d %s", request.method, request.url.path, exc.status_code, exc.message)
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    body = {"status": "error", "error": {"code": "http_error", "message": exc.detail}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"status": "error", "error": {"code": "internal_error", "message": "internal error"}}
    return JSONResponse(body, status_code=500)


# --- assembly --------------------------------------------------------------------------------


def core_routes() -> list[BaseRoute]:
    return [
        Route("/", info),
        Route("/healthz", healthz),
        Route("/models", models),
        Route("/models/{folder}", model_folder),
        Route("/predict", predict, methods=["POST"]),
    ]


def build_services(settings: Settings) -> Services:
    comfy = Comfy(settings)
    pipeline = Pipeline(comfy)
    comfy.warmup_runner = pipeline.warmup
    services = Services(settings, comfy, pipeline, templates=Templates.from_settings(settings))
    services.jobs = JobService.from_services(services)
    return services


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    services = build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        services.comfy.start()
        services.jobs.start()
        try:
            yield
        finally:
            services.jobs.stop()
            await run_in_threadpool(services.comfy.stop)

    app = Starlette(
        routes=core_routes() + workflows_api.routes(services) + jobs_api.routes(services),
        lifespan=lifespan,
        exception_handlers={ServiceError: service_error, HTTPException: http_error, Exception: unexpected_error},
    )
    app.state.services = services
    return app
