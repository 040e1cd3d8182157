"""HTTP routes of async jobs: /status, /cancel, /tasks/run, /tasks/webhook, local outputs, and
the async branch of /predict.

Cloud Tasks calls /tasks/run (a job queue's token: run the first job in line) and /tasks/webhook
(deliver one job's event) with an OIDC token, checked by `tasktoken` wherever
VERIFY_TASK_TOKENS is on (cloud mode). A task's answer tells Cloud Tasks what to do: 2xx when
it is done (or never can be), 503 when a retry may help (ComfyUI restarting, shutdown, a
receiver that failed), 409 while another delivery of the same job holds its lease.

`X-CloudTasks-*` headers on /predict (a task a client created against /predict) are honoured
only with a verified task token; without token checking configured they are ignored.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from handler import errors
from handler.body import PRIORITIES
from handler.comfyui.progress import Stage
from handler.config.cloud import CloudSettings
from handler.jobs import JobState, Outcome, RunOutcome, Sent
from handler.jobs.repo import check_job_id
from handler.models.progress import SCHEMA as DOWNLOAD_SCHEMA
from handler.routes import follow
from handler.routes.apidoc import JSON, PathItems, error_response, json_response, path_param, ref
from handler.routes.common import Caller, Services, base_url, caller_of, query_flag, services_of
from handler.routes.delivery import EVENT_STREAM

log = logging.getLogger("handler.routes.jobs")

TASK_BODY_LIMIT = 64 * 1024
CLOUD_TASKS_HEADER = "x-cloudtasks-taskname"
SYNC_OUTPUTS = "sync-"  # outputs/sync-<random>/: a sync answer's files (handler/routes/delivery.py)


# --- the async branch of /predict (handler/routes/predict.py)


def wants_async(body: Any, request: Request, *, cloud: CloudSettings) -> bool:
    if cloud.verify_task_tokens and request.headers.get(CLOUD_TASKS_HEADER):
        return True
    return isinstance(body, dict) and (body.get("async") is True or body.get("webhook") is not None)


async def accept(services: Services, body: Any, request: Request, caller: Caller | None) -> Response:
    """`caller`: who submits (None only for a client-made task, which its token vouches for)."""
    settings, jobs = services.settings, services.jobs
    base = base_url(request, cloud=settings.cloud)
    task_name = request.headers.get(CLOUD_TASKS_HEADER)
    if task_name and settings.verify_task_tokens:
        # A task a client created against /predict: run it now, once per task.
        await _verify(services, request)
        if jobs.runner is None:
            raise errors.BadRequest(
                "this is the api service: point client-made tasks at the worker's /predict",
                worker_url=settings.worker_url,
            )
        queue_name = request.headers.get("x-cloudtasks-queuename", "")
        job_id = await run_in_threadpool(
            jobs.service.adopt_task, body, queue_name=queue_name, task_name=task_name, base_url=base
        )
        outcome = await jobs.runtime.run_long(jobs.runner.run, job_id)
        return _outcome(services, outcome, base)
    if not settings.service_role.accepts_jobs:
        raise errors.BadRequest("this is a worker: submit async jobs to the api service", api_url=settings.api_url)
    assert caller is not None  # the gate put one on every request but task deliveries
    with services.access.limits.running(caller.key, jobs.service.still_open) as keep:
        job = await run_in_threadpool(jobs.service.submit, body, base_url=base, caller=caller)
        keep(job.job_id)
    status_url = f"{base}/status/{job.job_id}"
    return JSONResponse(
        {"job_id": job.job_id, "status_url": status_url, "state": job.state.value, "priority": job.priority},
        status_code=202,
        headers={"Location": status_url},
    )


# --- deliveries from Cloud Tasks (or anyone holding a valid task token)


async def tasks_run(request: Request) -> Response:
    services = services_of(request)
    jobs = services.jobs
    await _verify(services, request)
    job_id = await _job_id(request)
    if job_id is None:
        # Cloud Tasks would retry a 400 forever; no retry can fix this task, so it ends here.
        log.warning("a task without a job id reached /tasks/run")
        return JSONResponse({"outcome": "idle", "detail": "the task body has no job_id"})
    runner = jobs.runner
    assert runner is not None  # the route exists only where jobs run
    if jobs.worker is None:  # a push queue: the task is a token, the line decides
        outcome = await jobs.runtime.run_long(runner.run_next, job_id)
    else:
        outcome = await jobs.runtime.run_long(runner.run, job_id)
    return _outcome(services, outcome, base_url(request, cloud=services.settings.cloud))


async def tasks_webhook(request: Request) -> Response:
    services = services_of(request)
    await _verify(services, request)
    job_id = await _job_id(request)
    if job_id is None:
        return JSONResponse({"outcome": "idle", "detail": "the task body has no job_id"})
    sent = await run_in_threadpool(services.jobs.outbox.deliver, job_id)
    if sent is Sent.RETRY:
        return JSONResponse({"outcome": "retry"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"outcome": "done"})


async def _verify(services: Services, request: Request) -> None:
    if services.settings.verify_task_tokens:
        headers = request.headers
        await run_in_threadpool(
            services.task_tokens.verify, headers.get("authorization"), headers.get("x-serverless-authorization")
        )


async def _job_id(request: Request) -> str | None:
    raw = await request.body()
    if len(raw) > TASK_BODY_LIMIT:
        raise errors.PayloadTooLarge("a task body carries only a job id")
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    job_id = body.get("job_id") if isinstance(body, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def _outcome(services: Services, outcome: RunOutcome, base: str) -> JSONResponse:
    body: dict[str, Any] = {"outcome": outcome.kind.value, "detail": outcome.detail}
    if outcome.job is not None:
        body["job"] = services.jobs.service.views.status(outcome.job, base_url=base)
    headers = {"Retry-After": "5"} if outcome.kind in (Outcome.RETRY, Outcome.BUSY) else None
    return JSONResponse(body, status_code=outcome.http_status, headers=headers)


# --- callers


async def status(request: Request) -> Response:
    services = services_of(request)
    read = functools.partial(
        services.jobs.service.status,
        request.path_params["job_id"],
        base_url=base_url(request, cloud=services.settings.cloud),
        inline=query_flag(request, "inline"),
        caller=caller_of(request),
    )
    if EVENT_STREAM in request.headers.get("accept", ""):
        return await follow.stream(read)  # the job live, until it is final
    return JSONResponse(await run_in_threadpool(read))


async def cancel(request: Request) -> Response:
    answer = await run_in_threadpool(
        services_of(request).jobs.service.cancel, request.path_params["job_id"], caller_of(request)
    )
    return JSONResponse(answer, status_code=200 if answer["cancel"] == "dequeued" else 202)


async def local_output(request: Request) -> Response:
    """Outputs kept in a local folder, served the way a signed URL would serve them: a job's to
    its caller (and admins), a sync answer's (`sync-<random>`) to whoever holds its link."""
    service = services_of(request).jobs.service
    store = service.store
    if not store.on_local_disk:
        raise errors.NotFound("outputs are in Cloud Storage: use the job's signed URLs")
    job_id = check_job_id(request.path_params["job_id"])  # 404 for anything no job could be named
    caller = caller_of(request)
    if not job_id.startswith(SYNC_OUTPUTS):  # a sync answer's files: 128 random bits, like a signed URL
        await run_in_threadpool(service.owned, job_id, caller)  # another caller's job: 404
    try:
        path = store.local_file(f"outputs/{job_id}/{request.path_params['name']}")
        found = path is not None and path.is_file()
    except (ValueError, OSError):  # not a key, or a name the filesystem refuses (too long)
        path, found = None, False
    if path is None or not found:
        raise errors.NotFound("no such output")
    return FileResponse(path)


def routes(*, cloud: CloudSettings, runs_jobs: bool) -> list[BaseRoute]:
    """The api role keeps the callers' routes and delivers webhooks; the worker role runs job
    tasks (`runs_jobs`); role "all" serves both."""
    mounted: list[BaseRoute] = []
    if cloud.service_role.accepts_jobs:
        mounted += [
            Route("/status/{job_id}", status, methods=["GET"]),
            Route("/cancel/{job_id}", cancel, methods=["POST"]),
            Route("/tasks/webhook", tasks_webhook, methods=["POST"]),
            Route("/outputs/{job_id}/{name:path}", local_output, methods=["GET"]),
        ]
    if runs_jobs:
        mounted.append(Route("/tasks/run", tasks_run, methods=["POST"]))
    return mounted


# --- the OpenAPI document (routes/apidoc.py)

_STATE = {
    "type": "string",
    "enum": [state.value for state in JobState],  # the one list: handler/jobs/model.py
    "description": "queued: in the service's line; placed: in ComfyUI's queue, not executing yet; "
    "running: ComfyUI is executing it; then succeeded, failed or cancelled.",
}
_TIME = {"type": ["string", "null"], "format": "date-time"}

ACCEPTED = {
    "type": "object",
    "required": ["job_id", "status_url", "state"],
    "properties": {
        "job_id": {"type": "string"},
        "status_url": {"type": "string", "format": "uri"},
        "state": _STATE,
        "priority": {"type": "string", "enum": PRIORITIES},
    },
}

JOB = {
    "type": "object",
    "description": "An async job: its state and, once finished, its result (files with URLs) or error.",
    "required": ["job_id", "state"],
    "properties": {
        "job_id": {"type": "string"},
        "state": _STATE,
        "priority": {"type": "string", "enum": PRIORITIES},
        "attempts": {"type": "integer"},
        "created_at": _TIME,
        "placed_at": {**_TIME, "description": "When the latest run claimed it (placed in ComfyUI's queue)."},
        "started_at": {**_TIME, "description": "When ComfyUI began executing the latest run's prompt."},
        "finished_at": _TIME,
        "updated_at": _TIME,
        "status_url": {"type": "string"},
        "cancel_requested": {"type": "boolean"},
        "progress": {
            "type": "object",
            "description": "While placed or running: the latest of ComfyUI's progress messages (at most one update "
            "a second) or, placed, before the prompt goes to ComfyUI, how its models named by URL download (stage "
            "`downloading models`).",
            "properties": {
                **DOWNLOAD_SCHEMA["properties"],
                "stage": {
                    "type": ["string", "null"],
                    "enum": [*(stage.value for stage in Stage), None],
                    "description": "downloading models: the run's models named by URL download (file, bytes_done, "
                    "bytes_total); loading models: started, no step yet, in a graph with a model loader.",
                },
                "node": {"type": ["string", "null"]},
                "class_type": {"type": ["string", "null"]},
                "step": {"type": ["number", "null"]},
                "max": {"type": ["number", "null"]},
                "percent": {"type": ["number", "null"]},
                "updated_at": _TIME,
            },
        },
        "result": {
            "type": "object",
            "properties": {
                "files": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "uri": {"type": "string"},
                            "url": {"type": ["string", "null"]},
                            "base64": {"type": "string", "contentEncoding": "base64"},
                        },
                    },
                },
            },
        },
        "error": {"type": "object", "description": "Why the job failed or was cancelled."},
        "last_error": {"type": "object", "description": "The latest transient failure of a job that will be retried."},
        "webhook": {"type": "object", "description": "The webhook URL (shortened) and its delivery state."},
    },
}

CANCEL = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "state": _STATE,
        "cancel": {"type": "string", "enum": ["dequeued", "interrupting", "requested"]},
        "detail": {"type": "string"},
    },
}

SCHEMAS: dict[str, Any] = {"JobAccepted": ACCEPTED, "Job": JOB}

OPERATIONS: PathItems = {
    "/status/{job_id}": {
        "get": {
            "summary": "State of an async job",
            "operationId": "status",
            "tags": ["jobs"],
            "parameters": [
                path_param("job_id"),
                {
                    "name": "inline",
                    "in": "query",
                    "schema": {"type": "boolean"},
                    "description": "Embed the outputs as base64 (default: what the job asked for).",
                },
            ],
            "responses": {
                "200": {
                    "description": "The job, or with `Accept: text/event-stream` the job followed live.",
                    "content": {
                        JSON: {"schema": ref("Job")},
                        EVENT_STREAM: {"schema": {"type": "string", "description": follow.EVENTS_DESCRIPTION}},
                    },
                },
                "404": error_response("No such job."),
            },
        }
    },
    "/cancel/{job_id}": {
        "post": {
            "summary": "Cancel an async job",
            "operationId": "cancel",
            "tags": ["jobs"],
            "parameters": [path_param("job_id")],
            "responses": {
                "200": json_response(CANCEL, "A queued job was taken out of the queue: it will never run."),
                "202": json_response(CANCEL, "A running job is being interrupted, or will stop soon."),
                "404": error_response("No such job."),
                "409": error_response("The job has already finished."),
            },
        }
    },
    "/outputs/{job_id}/{name}": {
        "get": {
            "summary": "An output file of an async job (local storage only; Cloud Storage gives signed URLs)",
            "operationId": "output",
            "tags": ["jobs"],
            "parameters": [path_param("job_id"), path_param("name")],
            "responses": {
                "200": {"description": "The file.", "content": {"*/*": {}}},
                "404": error_response("No such file."),
            },
        }
    },
}
