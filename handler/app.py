"""The HTTP service: routes, lifespan and the mapping of errors to JSON responses."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import (
    __version__,
    catalog,
    dashboard,
    delivery,
    logs,
    observe,
    sse,
    storage,
    taskqueue,
    tracing,
    workflows_api,
)
from .catalog import StoreCatalog
from .comfy import Comfy, ComfyConnection
from .config import ServiceRole, Settings
from .delivery import Form, Outlet, Wanted
from .errors import BadRequest, PayloadTooLarge, RequestTimeout, ServiceError
from .jobs import Jobs, Preflight, Runs
from .jobs_api import JobRoutes
from .metrics import Metrics
from .pipeline import Pipeline
from .predict_request import PredictRequest, parse_predict_body
from .runtime import Runtime
from .tasktoken import TaskTokenVerifier
from .templates import Templates

log = logging.getLogger("handler.app")


@dataclass
class Services:
    """What the routes need, built once per process."""

    settings: Settings
    comfy: Comfy | None  # None in the api role, which has no ComfyUI
    pipeline: Pipeline | None
    templates: Templates
    jobs: Jobs
    job_routes: JobRoutes
    metrics: Metrics


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _comfy(services: Services) -> Comfy:
    assert services.comfy is not None  # these routes are mounted only where ComfyUI runs
    return services.comfy


async def read_json(request: Request, limit: int, timeout_s: float | None = None) -> Any:
    """The body as JSON. The whole body must arrive within `timeout_s` (a client trickling
    bytes, or declaring more than it sends, gets 408 instead of holding the connection)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    with anyio.move_on_after(timeout_s) as scope:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s")
    try:
        return json.loads(b"".join(chunks), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> float:
    # Python's json accepts NaN and Infinity, which are not JSON and slip past every `<=` check.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400
        raise ValueError(f"{text[:40]} is out of range")
    return value


# --- routes ----------------------------------------------------------------------------------


async def info(request: Request) -> JSONResponse:
    services = services_of(request)
    comfy = services.comfy
    return JSONResponse(
        {
            "service": "comfyrun",
            "version": __version__,
            "role": services.settings.service_role.value,
            "model_type": services.settings.model_type,
            "comfyui": None
            if comfy is None
            else {
                "version": comfy.version,
                "state": comfy.state.value,
                "ready": comfy.ready,
                "restarts": comfy.supervisor.restarts if comfy.supervisor else None,
            },
            "async": {"queue": services.settings.queue_backend, "storage": services.settings.storage_backend},
            "endpoints": sorted({route.path for route in request.app.routes if hasattr(route, "path")}),
        }
    )


async def healthz(request: Request) -> JSONResponse:
    comfy = services_of(request).comfy
    if comfy is None or comfy.ready:  # the api role needs no ComfyUI to serve
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": comfy.state.value}, status_code=503, headers={"Retry-After": "5"})


async def models(request: Request) -> JSONResponse:
    services = services_of(request)
    refresh = request.query_params.get("refresh", "").lower() in {"1", "true", "yes"}
    catalogue = await run_in_threadpool(_comfy(services).models, refresh)
    return JSONResponse({"model_type": services.settings.model_type, "models": catalogue})


async def model_folder(request: Request) -> JSONResponse:
    services = services_of(request)
    refresh = request.query_params.get("refresh", "").lower() in {"1", "true", "yes"}
    folder = request.path_params["folder"]
    files = await run_in_threadpool(_comfy(services).model_folder, folder, refresh)
    return JSONResponse({"folder": folder, "models": files})


# Where sync /predict requests stand in ComfyUI's queue, among async jobs (docs/async.md).
SYNC_PRIORITY = "high"


def parse_sync(services: Services, body: Any, wanted: Wanted) -> PredictRequest:
    predict_request = parse_predict_body(body, services.settings, services.templates)
    # A caller holds a connection: its prompt goes ahead of queued normal and low jobs.
    predict_request.priority = SYNC_PRIORITY
    wanted.check(predict_request.output)
    return predict_request


def outlet(services: Services, base_url: str) -> Outlet:
    """Where `output.delivery: "url"` stores a sync answer's files: the jobs' store."""
    return Outlet(services.settings, services.jobs.service.store, base_url)


def run_sync(services: Services, body: Any, wanted: Wanted | None = None, base_url: str = "") -> Response:
    """Parse, run and render in a worker thread: the event loop stays free for /healthz."""
    wanted = wanted or Wanted(Form.JSON)
    predict_request = parse_sync(services, body, wanted)
    assert services.pipeline is not None  # predict() sends sync runs only where there is one
    result = services.pipeline.run(predict_request, defer_cleanup=True)
    services.metrics.sync_timings(result.timings)
    # The job's files are removed once the answer is on its way (delivery.respond).
    response = delivery.respond(result, predict_request.output, wanted, outlet(services, base_url))
    tracing.mark("response_dict")
    return response


async def predict(request: Request) -> Response:
    services = services_of(request)
    tracing.begin(request.headers.get("x-bench-trace"))
    body = await read_json(request, services.settings.max_body_bytes, services.settings.body_read_timeout_s)
    if services.job_routes.wants_async(body, request):
        return await services.job_routes.accept(body, request)
    if services.pipeline is None:
        raise BadRequest(
            'this is the api service, without a GPU: send sync requests to the worker, or add "async": true',
            worker_url=services.settings.worker_url,
        )
    # On the runtime's own limiter: long runs never hold anyio's default pool (/models, /status).
    runtime: Runtime = request.app.state.runtime
    wanted = delivery.negotiate(request.headers.get("accept"))  # 406 before any work
    base_url = services.job_routes.base_url(request)
    if wanted.form is Form.EVENTS:
        comfy = _comfy(services)

        def prepare() -> PredictRequest:
            # A bad body or a ComfyUI that is not ready is a plain HTTP error, before the stream starts.
            predict_request = parse_sync(services, body, wanted)
            comfy.require_ready()
            return predict_request

        return await sse.stream(prepare, services.pipeline, runtime, outlet(services, base_url))
    response = await runtime.run_long(run_sync, services, body, wanted, base_url)
    tracing.mark("response_built")
    tracing.end()
    return response


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
    # Sent by starlette's outermost middleware, past the request observer: the id is added here.
    request_id = {"X-Request-Id": logs.current().request_id or ""}
    body = {"status": "error", "error": {"code": "internal_error", "message": "internal error"}}
    return JSONResponse(body, status_code=500, headers=request_id)


# --- assembly --------------------------------------------------------------------------------


def core_routes(settings: Settings) -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/", info),
        Route("/healthz", healthz),
        Route("/predict", predict, methods=["POST"]),
    ]
    if settings.service_role.runs_comfy:
        routes += [Route("/models", models), Route("/models/{folder}", model_folder)]
    return routes


def build_services(settings: Settings, runtime: Runtime, comfy_client: ComfyConnection | None = None) -> Services:
    """Everything the role needs, each part complete when built. `comfy_client`: the
    connection to an attached ComfyUI (the in-process tests' double); by default Comfy's own."""
    store = storage.from_settings(settings)
    templates = Templates.from_settings(settings)
    comfy = pipeline = None
    checks: Preflight = StoreCatalog(store)
    runs = None
    if settings.service_role.runs_comfy:
        comfy = Comfy(settings, runtime.thread, comfy_client)
        pipeline = Pipeline(comfy, runtime)
        checks, runs = pipeline, Runs(pipeline, comfy)
    metrics = Metrics(settings)
    jobs = Jobs.build(
        settings,
        store,
        taskqueue.from_settings(settings),
        taskqueue.outbox_from_settings(settings),
        checks,
        runs,
        templates,
        runtime,
        observer=metrics.job_changed if metrics.enabled else None,  # None: no decode of `before` per write
    )
    routes = JobRoutes(settings, jobs, TaskTokenVerifier.from_settings(settings))
    return Services(settings, comfy, pipeline, templates, jobs, routes, metrics)


def warmup(services: Services) -> None:
    """WARMUP_WORKFLOW, run on the boot thread before the service is ready, twice. The first run
    pays the model loads and first-call costs. The second, cached by ComfyUI but for its output
    nodes, costs little, and ComfyUI starts it only once it is done with the first: after its
    first prompt ComfyUI collects garbage in full (0.3-0.5 s on CPU, its server frozen), which
    the first request would otherwise wait for."""
    settings, comfy, pipeline = services.settings, services.comfy, services.pipeline
    assert comfy is not None and pipeline is not None and settings.warmup_workflow is not None
    workflow = json.loads(Path(settings.warmup_workflow).read_text())
    run = logs.in_context(pipeline.warmup)  # each run's ids stay on its own log lines
    started = time.monotonic()
    run(workflow)
    first_s = time.monotonic() - started
    run(workflow)
    comfy.warmup_s = time.monotonic() - started
    name = Path(settings.warmup_workflow).name
    log.info("warmup workflow %s ran in %.2f s, then again in %.2f s", name, first_s, comfy.warmup_s - first_s)


def publish_catalogue(services: Services, object_info: dict[str, Any]) -> None:
    """After each boot, once ready: a worker publishes ComfyUI's catalogue for the api role."""
    if services.settings.service_role is ServiceRole.WORKER:
        catalog.publish(services.jobs.service.store, object_info)


def create_app(settings: Settings | None = None, *, comfy_client: ComfyConnection | None = None) -> Starlette:
    """The service. `comfy_client` replaces the connection to ComfyUI (see `build_services`)."""
    settings = settings or Settings.from_env()
    runtime = Runtime(settings)
    tracing.configure(settings.trace_out)
    if settings.service_role.runs_comfy or "local" in (settings.queue_backend, settings.storage_backend):
        runtime.claim_state_dir(settings.state_dir)
    services = build_services(settings, runtime, comfy_client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if services.comfy is not None:
            services.comfy.start(
                warmup=functools.partial(warmup, services) if settings.warmup_workflow else None,
                on_catalogue=functools.partial(publish_catalogue, services),
            )
        services.jobs.start()
        try:
            yield
        finally:
            runtime.signal_stop()  # already set by SIGTERM when served by `python -m handler`
            # Runs in flight saw `stopping` and handed their jobs back while uvicorn drained;
            # then ComfyUI goes (its threads end with it), then every thread is joined.
            if services.comfy is not None:
                await run_in_threadpool(services.comfy.stop)
            await run_in_threadpool(runtime.stop, 3.0)
            services.jobs.close()

    scraped = observe.collector(services)
    services.metrics.registry.register(scraped)
    app = Starlette(
        routes=core_routes(settings)
        + workflows_api.routes(services)
        + services.job_routes.routes()
        + observe.routes(services, services.metrics)
        + dashboard.routes(services, services.metrics, scraped),
        middleware=[Middleware(observe.RequestObserver, metrics=services.metrics, settings=settings)],
        lifespan=lifespan,
        # starlette types each handler as taking any Exception; ours take the class they are for
        exception_handlers={ServiceError: service_error, HTTPException: http_error, Exception: unexpected_error},  # type: ignore[dict-item]
    )
    app.state.services = services
    app.state.runtime = runtime
    return app
