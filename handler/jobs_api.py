"""HTTP routes of async jobs: /status, /cancel, /tasks/run, local outputs, and the async
branch of /predict (reached through JobService.accept).

Cloud Tasks calls /tasks/run with an OIDC token; in cloud mode the token must be Google-signed,
for our SERVICE_URL as audience, and for TASKS_SERVICE_ACCOUNT. A task's answer tells Cloud Tasks
what to do: 2xx when the job reached a final state (or never can), 503 when a retry may help
(ComfyUI restarting, shutdown), 409 while another delivery of the same job holds its lease.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import google.auth.exceptions
import requests
from google.auth import jwt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import errors
from .config import Settings
from .errors import Forbidden, ServiceError, Unauthorized
from .jobs import JobService, RunOutcome

log = logging.getLogger("handler.jobs_api")

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
TASK_BODY_LIMIT = 64 * 1024


class TaskTokenVerifier:
    """Checks the OIDC token Cloud Tasks sends: signature (Google's certificates, cached),
    expiry, issuer, audience (our URL) and the service account it was minted for."""

    def __init__(self, audience: str | None, service_account: str | None,
                 certs_url: str = GOOGLE_CERTS_URL, certs_ttl_s: float = 3600.0):
        self.audience = audience
        self.service_account = service_account
        self.certs_url = certs_url
        self.certs_ttl_s = certs_ttl_s
        self._certs: tuple[float, dict[str, str]] | None = None
        self._lock = threading.Lock()

    def _fetch(self, force: bool = False) -> dict[str, str]:
        with self._lock:
            if not force and self._certs and time.monotonic() - self._certs[0] < self.certs_ttl_s:
                return self._certs[1]
            response = requests.get(self.certs_url, timeout=10)
            response.raise_for_status()
            self._certs = (time.monotonic(), response.json())
            return self._certs[1]

    def verify(self, authorization: str | None) -> dict[str, Any]:
        if not self.audience or not self.service_account:
            raise Forbidden("task tokens cannot be checked: set SERVICE_URL and TASKS_SERVICE_ACCOUNT")
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("a Cloud Tasks OIDC token is required")
        token = authorization.split(" ", 1)[1].strip()
        try:
            header = jwt.decode_header(token)
        except (ValueError, TypeError):
            raise Unauthorized("the token is not a JWT") from None
        try:
            certs = self._fetch()
            if header.get("kid") not in certs:
                certs = self._fetch(force=True)  # Google rotated its keys
        except (requests.RequestException, ValueError) as exc:
            raise errors.ComfyUnavailable(f"cannot fetch Google's token certificates: {exc}") from None
        try:
            claims = jwt.decode(token, certs=certs, audience=self.audience, clock_skew_in_seconds=30)
        except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
            raise Unauthorized(f"the task token is not valid: {exc}") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthorized("the task token was not issued by Google")
        if claims.get("email") != self.service_account or not claims.get("email_verified"):
            raise Forbidden("the task token is not for the configured TASKS_SERVICE_ACCOUNT")
        return claims


def _service(request: Request) -> JobService:
    jobs = request.app.state.services.jobs
    if jobs is None:
        raise errors.NotFound("async jobs are not enabled on this service")
    return jobs


def base_url(request: Request, settings: Settings) -> str:
    """Our public URL: SERVICE_URL when set (Cloud Run terminates TLS in front of us)."""
    return (settings.service_url or str(request.base_url)).rstrip("/")


def outcome_response(outcome: RunOutcome, service: JobService, base: str) -> JSONResponse:
    body: dict[str, Any] = {"outcome": outcome.kind, "detail": outcome.detail}
    if outcome.job is not None:
        body["job"] = service.view(outcome.job, base_url=base)
    headers = {"Retry-After": "10"} if outcome.kind in ("retry", "busy") else None
    return JSONResponse(body, status_code=outcome.http_status, headers=headers)


async def accept(service: JobService, body: Any, request: Request) -> Response:
    """The async branch of /predict."""
    base = base_url(request, service.settings)
    task_name = request.headers.get("x-cloudtasks-taskname")
    if task_name:
        # A task a client created against /predict: run it now, once per task.
        queue_name = request.headers.get("x-cloudtasks-queuename", "")
        log.info("Cloud Tasks delivery %s/%s (retry %s)", queue_name, task_name,
                 request.headers.get("x-cloudtasks-taskretrycount", "0"))
        job_id = await run_in_threadpool(
            service.adopt_task, body, queue_name=queue_name, task_name=task_name, base_url=base
        )
        outcome = await run_in_threadpool(service.run, job_id)
        return outcome_response(outcome, service, base)
    job = await run_in_threadpool(service.submit, body, base_url=base)
    status_url = f"{base}/status/{job.job_id}"
    return JSONResponse(
        {"job_id": job.job_id, "status_url": status_url, "state": job.state, "priority": job.priority},
        status_code=202,
        headers={"Location": status_url},
    )


async def tasks_run(request: Request) -> Response:
    service = _service(request)
    if service.settings.cloud_mode:
        await run_in_threadpool(service.task_verifier.verify, request.headers.get("authorization"))
    raw = await request.body()
    if len(raw) > TASK_BODY_LIMIT:
        raise errors.PayloadTooLarge("a task body carries only a job id")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    job_id = body.get("job_id") if isinstance(body, dict) else None
    if not isinstance(job_id, str) or not job_id:
        # Cloud Tasks would retry a 400 forever; no retry can fix this task, so it ends here.
        log.warning("a task without a job id reached /tasks/run")
        return JSONResponse({"outcome": "unknown", "detail": "the task body has no job_id"})
    outcome = await run_in_threadpool(service.run, job_id)
    return outcome_response(outcome, service, base_url(request, service.settings))


async def status(request: Request) -> Response:
    service = _service(request)
    inline_param = request.query_params.get("inline")
    inline = None if inline_param is None else inline_param.lower() in {"1", "true", "yes"}
    view = await run_in_threadpool(
        service.status, request.path_params["job_id"],
        base_url=base_url(request, service.settings), inline=inline,
    )
    return JSONResponse(view)


async def cancel(request: Request) -> Response:
    service = _service(request)
    answer = await run_in_threadpool(service.cancel, request.path_params["job_id"])
    return JSONResponse(answer, status_code=200 if answer["cancel"] == "dequeued" else 202)


async def local_output(request: Request) -> Response:
    """Outputs kept in a local folder, served the way a signed URL would serve them."""
    service = _service(request)
    store = service.store
    if not hasattr(store, "path"):
        raise errors.NotFound("outputs are in Cloud Storage: use the job's signed URLs")
    key = f"outputs/{request.path_params['job_id']}/{request.path_params['name']}"
    try:
        path = store.path(key)
    except ValueError:
        raise errors.NotFound("no such output") from None
    if not path.is_file():
        raise errors.NotFound("no such output")
    return FileResponse(path)


def routes(services: Any) -> list[BaseRoute]:
    if services.jobs is not None:
        settings = services.settings
        services.jobs.task_verifier = TaskTokenVerifier(settings.service_url, settings.tasks_service_account)
    return [
        Route("/status/{job_id}", status, methods=["GET"]),
        Route("/cancel/{job_id}", cancel, methods=["POST"]),
        Route("/tasks/run", tasks_run, methods=["POST"]),
        Route("/outputs/{job_id}/{name:path}", local_output, methods=["GET"]),
    ]
