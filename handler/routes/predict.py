"""`POST /predict` (sync here; async and client-made tasks go to handler/routes/jobs.py), `GET /`
and `GET /healthz`.

A sync run is parsed, run and rendered in a worker thread on the runtime's own limiter, so the
event loop stays free for /healthz and long runs never hold anyio's default pool. With
`Accept: text/event-stream` the answer is a stream of progress events (handler/routes/sse.py).
A plain caller that goes away before its answer gets its prompt interrupted and its files
removed, as a streamed one does.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from handler.routes.apidoc import JSON, PathItems, error_response, json_response, ref
from handler.routes.common import Caller, Services, base_url, caller_of, read_json, services_of
from handler.routes.delivery import AcceptedAnswer, AnswerForm, DeliveryContext
from handler.runtime import Trigger

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


def parse_sync(services: Services, body: Any, accepted: AcceptedAnswer, caller: Caller) -> PredictRequest:
    settings = services.settings
    predict_request = parse_predict_body(
        body,
        http=settings.http,
        urls=settings.urls,
        cloud=settings.cloud,
        models=settings.models,
        templates=services.templates,
    )
    # A caller holds a connection: its prompt goes ahead of queued normal and low jobs.
    predict_request.priority = SYNC_PRIORITY
    predict_request.confined = caller.confine(predict_request.workflow_id)
    accepted.check(predict_request.output)
    return predict_request


def delivery_context(services: Services, base: str) -> DeliveryContext:
    """Where `output.delivery: "url"` stores a sync answer's files: the jobs' store."""
    settings = services.settings
    return DeliveryContext(http=settings.http, jobs=settings.jobs, store=services.jobs.service.store, base_url=base)


def run_sync(
    services: Services, body: Any, caller: Caller, accepted: AcceptedAnswer, base: str, cancel: Trigger | None = None
) -> Response:
    """Parse, run and render in a worker thread: the event loop stays free for /healthz.
    `cancel`: set when the caller has gone away (the run is interrupted)."""
    predict_request = parse_sync(services, body, accepted, caller)
    assert services.pipeline is not None  # predict() sends sync runs only where there is one
    result = services.pipeline.run(predict_request, cancel, defer_cleanup=True)
    services.metrics.sync_timings(result.timings)
    # The job's files are removed once the answer is on its way (delivery.respond).
    response = delivery.respond(result, predict_request.output, accepted, delivery_context(services, base))
    benchtrace.mark("response_dict")
    return response


async def predict(request: Request) -> Response:
    services = services_of(request)
    benchtrace.begin(request.headers.get("x-bench-trace"))
    task = services.access.is_open("/predict", request.headers)  # a client-made task: its token decides
    caller = None if task else caller_of(request)
    if caller is not None:
        services.access.limits.take(caller.key)  # the key's rate, before its body is read
    body = await read_json(request, services.settings.max_body_bytes, services.settings.body_read_timeout_s)
    if caller is not None:
        caller.check_body(body)
    if job_routes.wants_async(body, request, cloud=services.settings.cloud):
        return await job_routes.accept(services, body, request, caller)
    if services.pipeline is None:
        raise BadRequest(
            'this is the api service, without a GPU: send sync requests to the worker, or add "async": true',
            worker_url=services.settings.worker_url,
        )
    accepted = delivery.negotiate(request.headers.get("accept"))  # 406 before any work
    base = base_url(request, cloud=services.settings.cloud)
    assert caller is not None  # a task is always async
    pipeline = services.pipeline
    if accepted.form is AnswerForm.EVENTS:

        def prepare() -> PredictRequest:
            # A bad body, or a ComfyUI that cannot take it now, is a plain HTTP error before the stream.
            predict_request = parse_sync(services, body, accepted, caller)
            pipeline.admit(predict_request)
            return predict_request

        held = contextlib.ExitStack()  # the run holds its place under the key's cap while it streams
        held.enter_context(services.access.limits.running(caller.key, services.jobs.service.still_open))
        try:
            context = delivery_context(services, base)
            return await sse.stream(prepare, pipeline, services.runtime, context, held.close)
        except BaseException:
            held.close()
            raise
    gone = Trigger()
    watcher = asyncio.ensure_future(until_disconnect(request, gone))
    try:
        with services.access.limits.running(caller.key, services.jobs.service.still_open):
            response = await services.runtime.run_long(run_sync, services, body, caller, accepted, base, gone)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    benchtrace.mark("response_built")
    benchtrace.end()
    return response


async def until_disconnect(request: Request, gone: Trigger) -> None:
    """Set `gone` when the caller disconnects. The body has been read, so the next message the
    server has for this request is its disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


def routes() -> list[BaseRoute]:
    return [
        Route("/", info),
        Route("/healthz", healthz),
        Route("/predict", predict, methods=["POST"]),
    ]


# --- the OpenAPI document (routes/apidoc.py); /predict's request body is made of the templates,
# so routes/openapi.py adds it when it builds the document.

FILE = {
    "type": "object",
    "properties": {
        "filename": {"type": "string"},
        "subfolder": {"type": "string"},
        "type": {"type": "string", "examples": ["output", "temp"]},
        "node_id": {"type": "string"},
        "output_key": {"type": "string", "examples": ["images", "gifs"]},
        "content_type": {"type": "string", "examples": ["image/png"]},
        "size": {"type": "integer"},
        "image": {"type": "string", "contentEncoding": "base64", "description": "Inline delivery."},
        "uri": {"type": "string", "description": "URL delivery: gs://bucket/key (local://key for a local store)."},
        "url": {
            "type": ["string", "null"],
            "format": "uri",
            "description": "URL delivery: a signed HTTPS URL (or the service's own link for a local store).",
        },
    },
}

PREDICT_RESPONSE = {
    "type": "object",
    "properties": {
        "status": {"const": "success"},
        "prompt_id": {"type": "string"},
        "images": {"type": "array", "items": ref("OutputFile")},
        "outputs": {"type": "object", "description": "ComfyUI's outputs per node, as in its history."},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}

SCHEMAS: dict[str, Any] = {"OutputFile": FILE, "PredictResponse": PREDICT_RESPONSE}

OPERATIONS: PathItems = {
    "/": {
        "get": {
            "summary": "Service information",
            "operationId": "info",
            "tags": ["service"],
            "responses": {
                "200": json_response({"type": "object"}, "Version, MODEL_TYPE, ComfyUI state and endpoints.")
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Readiness (does not call ComfyUI)",
            "operationId": "healthz",
            "tags": ["service"],
            "responses": {
                "200": json_response(
                    {"type": "object", "properties": {"status": {"const": "ready"}}}, "ComfyUI is ready."
                ),
                "503": json_response(
                    {"type": "object", "properties": {"status": {"type": "string"}}},
                    "ComfyUI is booting or restarting; see Retry-After.",
                ),
            },
        }
    },
    "/predict": {
        "post": {
            "summary": "Run a workflow: raw, or a named template with parameters",
            "operationId": "predict",
            "tags": ["predict"],
            "description": (
                "Sends either `workflow` (API format) or `workflow_id` with `params`. The result comes back in the "
                "response, unless the body asks for `async` or a `webhook`: then the graph is checked, a job is "
                "accepted (202) and its state is read from `/status/{job_id}`.\n\n"
                "The sync answer takes the form the `Accept` header asks for: JSON (default; files inline as base64, "
                'or stored with links when `output.delivery` is "url"), the file itself, or Server-Sent Events. '
                "Any answer over CHUNKED_ABOVE_BYTES (16 MiB) goes out chunked: Cloud Run lets a chunked answer through "
                "at any size, and refuses one over 32 MiB that declares its length.\n\n"
                + delivery.RAW_DESCRIPTION
                + "\n\n"
                + sse.EVENTS_DESCRIPTION
            ),
            "responses": {
                "200": {
                    "description": 'The outputs: JSON (base64 inline, or links with output.delivery "url"), the '
                    "one file itself (raw), or an event stream.",
                    "content": {
                        JSON: {"schema": ref("PredictResponse")},
                        "text/event-stream": {"schema": {"type": "string", "description": sse.EVENTS_DESCRIPTION}},
                        "image/*": {"schema": {"type": "string", "format": "binary"}},
                        "video/*": {"schema": {"type": "string", "format": "binary"}},
                        "audio/*": {"schema": {"type": "string", "format": "binary"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "202": {
                    **json_response(
                        ref("JobAccepted"),
                        "Accepted as an async job (`async`, `webhook`, or a Cloud Tasks delivery).",
                    ),
                    "headers": {"Location": {"schema": {"type": "string"}, "description": "The status URL."}},
                },
                "400": error_response(
                    "A malformed body, or a workflow ComfyUI refuses (workflow_invalid, with node_errors)."
                ),
                "404": error_response("No template with that workflow_id."),
                "406": error_response(
                    "The Accept header allows no form of the answer (e.g. text/html), or a raw answer was "
                    "asked for and the workflow did not produce exactly one file of an accepted type."
                ),
                "413": error_response("The body or an input image is too large."),
                "422": error_response("A template parameter is wrong: `param` names it, `message` says why."),
                "500": error_response("ComfyUI failed while running the workflow."),
                "502": error_response("ComfyUI named an output file that is not there."),
                "503": error_response("ComfyUI is not ready; retry after Retry-After seconds."),
                "504": error_response("The workflow did not finish in time."),
            },
        }
    },
}
