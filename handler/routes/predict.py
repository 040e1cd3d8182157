"""`POST /predict` (sync here; async and client-made tasks go to handler/routes/jobs.py), `GET /`
and `GET /healthz`.

A sync run is parsed, run and rendered in a worker thread on the runtime's own limiter, so the
event loop stays free for /healthz and long runs never hold anyio's default pool. With
`Accept: text/event-stream` the answer is a stream of progress events (handler/routes/sse.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from handler import __version__, benchtrace
from handler.comfyui.instance import Comfy
from handler.errors import BadRequest
from handler.predict_request import PredictRequest, parse_predict_body
from handler.routes import delivery, sse
from handler.routes import jobs as job_routes
from handler.routes.common import Services, base_url, read_json, services_of
from handler.routes.delivery import AcceptedAnswer, AnswerForm, DeliveryContext

# Where sync /predict requests stand in ComfyUI's queue, among async jobs (docs/async.md).
SYNC_PRIORITY = "high"


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


def comfy_of(services: Services) -> Comfy:
    assert services.comfy is not None  # these routes are mounted only where ComfyUI runs
    return services.comfy


def parse_sync(services: Services, body: Any, accepted: AcceptedAnswer) -> PredictRequest:
    predict_request = parse_predict_body(body, services.settings, services.templates)
    # A caller holds a connection: its prompt goes ahead of queued normal and low jobs.
    predict_request.priority = SYNC_PRIORITY
    accepted.check(predict_request.output)
    return predict_request


def delivery_context(services: Services, base: str) -> DeliveryContext:
    """Where `output.delivery: "url"` stores a sync answer's files: the jobs' store."""
    return DeliveryContext(services.settings, services.jobs.service.store, base)


def run_sync(services: Services, body: Any, accepted: AcceptedAnswer, base: str) -> Response:
    """Parse, run and render in a worker thread: the event loop stays free for /healthz."""
    predict_request = parse_sync(services, body, accepted)
    assert services.pipeline is not None  # predict() sends sync runs only where there is one
    result = services.pipeline.run(predict_request, defer_cleanup=True)
    services.metrics.sync_timings(result.timings)
    # The job's files are removed once the answer is on its way (delivery.respond).
    response = delivery.respond(result, predict_request.output, accepted, delivery_context(services, base))
    benchtrace.mark("response_dict")
    return response


async def predict(request: Request) -> Response:
    services = services_of(request)
    benchtrace.begin(request.headers.get("x-bench-trace"))
    body = await read_json(request, services.settings.max_body_bytes, services.settings.body_read_timeout_s)
    if job_routes.wants_async(services.settings, body, request):
        return await job_routes.accept(services, body, request)
    if services.pipeline is None:
        raise BadRequest(
            'this is the api service, without a GPU: send sync requests to the worker, or add "async": true',
            worker_url=services.settings.worker_url,
        )
    accepted = delivery.negotiate(request.headers.get("accept"))  # 406 before any work
    base = base_url(request, services.settings)
    if accepted.form is AnswerForm.EVENTS:
        comfy = comfy_of(services)

        def prepare() -> PredictRequest:
            # A bad body or a ComfyUI that is not ready is a plain HTTP error, before the stream starts.
            predict_request = parse_sync(services, body, accepted)
            comfy.require_ready()
            return predict_request

        return await sse.stream(prepare, services.pipeline, services.runtime, delivery_context(services, base))
    response = await services.runtime.run_long(run_sync, services, body, accepted, base)
    benchtrace.mark("response_built")
    benchtrace.end()
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/", info),
        Route("/healthz", healthz),
        Route("/predict", predict, methods=["POST"]),
    ]
