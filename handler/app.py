"""The starlette app for a role: its routes, its lifespan (ComfyUI and the job threads start and
stop with it) and the mapping of errors to the one JSON error shape."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from handler import benchtrace, logs, services
from handler.access.gate import AccessGate
from handler.comfyui import catalog
from handler.comfyui.connection import ComfyConnection
from handler.config import ServiceRole, Settings
from handler.errors import HTTPStatusError, ServiceError
from handler.routes import dashboard, jobs, models, observe, openapi, predict, workflows
from handler.runtime import Runtime
from handler.services import Services

log = logging.getLogger("handler.app")
STORE_COPY_GRACE_S = 2.0  # at shutdown, for copies into the model cache's backing store


# --- errors ----------------------------------------------------------------------------------


async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if exc.status_code >= 500:
        log.warning("%s %s → %d %s", request.method, request.url.path, exc.status_code, exc.message)
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    error = HTTPStatusError(exc.status_code, str(exc.detail))
    return JSONResponse(error.to_dict(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    # Sent by starlette's outermost middleware, past the request observer: the id is added here.
    request_id = {"X-Request-Id": logs.current().request_id or ""}
    error = ServiceError("internal error")  # 500 internal_error, nothing of the exception
    return JSONResponse(error.to_dict(), status_code=500, headers=request_id)


# --- lifespan --------------------------------------------------------------------------------


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


def role_routes(built: Services) -> list[BaseRoute]:
    """Every route the role serves, one module per concern (handler/routes/)."""
    settings = built.settings
    mounted = predict.routes()
    if settings.service_role.runs_comfy:
        mounted += models.routes()
    return (
        mounted
        + workflows.routes()
        + openapi.routes()
        + jobs.routes(cloud=settings.cloud, runs_jobs=built.jobs.runner is not None)
        + observe.routes()
        + dashboard.routes()
    )


def create_app(
    settings: Settings | None = None,
    *,
    comfy_client: ComfyConnection | None = None,
    comfy_process: subprocess.Popen[bytes] | None = None,
) -> Starlette:
    """The service. `comfy_client` replaces the connection to ComfyUI; `comfy_process` is a
    ComfyUI already spawned (see `services.build`)."""
    settings = settings or Settings.from_env()
    runtime = Runtime(http=settings.http)
    benchtrace.configure(settings.trace_out)
    if settings.service_role.runs_comfy or "local" in (settings.queue_backend, settings.storage_backend):
        runtime.claim_state_dir(settings.state_dir)
    built = services.build(settings, runtime, comfy_client, comfy_process)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if built.comfy is not None:
            built.comfy.start(
                warmup=functools.partial(warmup, built) if settings.warmup_workflow else None,
                on_catalogue=functools.partial(publish_catalogue, built),
            )
        built.jobs.start()
        try:
            yield
        finally:
            runtime.signal_stop()  # already set by SIGTERM when served by `python -m handler`
            # Runs in flight saw `stopping` and handed their jobs back while uvicorn drained;
            # then ComfyUI goes (its threads end with it), then every thread is joined.
            if built.comfy is not None:
                await run_in_threadpool(built.comfy.stop)
            await run_in_threadpool(runtime.stop, 3.0)
            built.jobs.close()
            if built.models is not None:
                # A model copy into the backing store still under way gets what is left of Cloud
                # Run's 10 s; one cut off leaves no record, so no instance ever takes it.
                built.models.wait_stored(STORE_COPY_GRACE_S)
                built.models.flush()  # the last uses since the index was last written

    app = Starlette(
        routes=role_routes(built),
        middleware=[
            Middleware(observe.RequestObserver, metrics=built.metrics, observability=settings.observability),
            Middleware(AccessGate, access=built.access),  # inside: its 401s are observed too
        ],
        lifespan=lifespan,
        # starlette types each handler as taking any Exception; ours take the class they are for
        exception_handlers={ServiceError: service_error, HTTPException: http_error, Exception: unexpected_error},  # type: ignore[dict-item]
    )
    app.state.services = built
    app.state.runtime = runtime
    return app
