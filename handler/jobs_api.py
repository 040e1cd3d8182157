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

import json
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import errors
from .config import Settings
from .jobs import Jobs, Outcome, RunOutcome, Sent
from .jobs.repo import check_job_id
from .storage.local import LocalStore
from .tasktoken import TaskTokenVerifier

log = logging.getLogger("handler.jobs_api")

TASK_BODY_LIMIT = 64 * 1024
CLOUD_TASKS_HEADER = "x-cloudtasks-taskname"


class JobRoutes:
    def __init__(self, settings: Settings, jobs: Jobs, verifier: TaskTokenVerifier):
        self.settings = settings
        self.jobs = jobs
        self.service = jobs.service
        self.verifier = verifier

    def routes(self) -> list[BaseRoute]:
        """The api role keeps the callers' routes and delivers webhooks; the worker role runs
        job tasks; role "all" serves both."""
        role = self.settings.service_role
        routes: list[BaseRoute] = []
        if role.accepts_jobs:
            routes += [
                Route("/status/{job_id}", self.status, methods=["GET"]),
                Route("/cancel/{job_id}", self.cancel, methods=["POST"]),
                Route("/tasks/webhook", self.tasks_webhook, methods=["POST"]),
                Route("/outputs/{job_id}/{name:path}", self.local_output, methods=["GET"]),
            ]
        if self.jobs.runner is not None:
            routes.append(Route("/tasks/run", self.tasks_run, methods=["POST"]))
        return routes

    # --- the async branch of /predict

    def wants_async(self, body: Any, request: Request) -> bool:
        if self.settings.verify_task_tokens and request.headers.get(CLOUD_TASKS_HEADER):
            return True
        return isinstance(body, dict) and (body.get("async") is True or body.get("webhook") is not None)

    async def accept(self, body: Any, request: Request) -> Response:
        base = self.base_url(request)
        task_name = request.headers.get(CLOUD_TASKS_HEADER)
        if task_name and self.settings.verify_task_tokens:
            # A task a client created against /predict: run it now, once per task.
            await self._verify(request)
            if self.jobs.runner is None:
                raise errors.BadRequest(
                    "this is the api service: point client-made tasks at the worker's /predict",
                    worker_url=self.settings.worker_url,
                )
            queue_name = request.headers.get("x-cloudtasks-queuename", "")
            job_id = await run_in_threadpool(
                self.service.adopt_task, body, queue_name=queue_name, task_name=task_name, base_url=base
            )
            outcome = await self.jobs.runtime.run_long(self.jobs.runner.run, job_id)
            return self._outcome(outcome, base)
        if not self.settings.service_role.accepts_jobs:
            raise errors.BadRequest(
                "this is a worker: submit async jobs to the api service", api_url=self.settings.api_url
            )
        job = await run_in_threadpool(self.service.submit, body, base_url=base)
        status_url = f"{base}/status/{job.job_id}"
        return JSONResponse(
            {"job_id": job.job_id, "status_url": status_url, "state": job.state.value, "priority": job.priority},
            status_code=202,
            headers={"Location": status_url},
        )

    # --- deliveries from Cloud Tasks (or anyone holding a valid task token)

    async def tasks_run(self, request: Request) -> Response:
        await self._verify(request)
        job_id = await self._job_id(request)
        if job_id is None:
            # Cloud Tasks would retry a 400 forever; no retry can fix this task, so it ends here.
            log.warning("a task without a job id reached /tasks/run")
            return JSONResponse({"outcome": "idle", "detail": "the task body has no job_id"})
        runner = self.jobs.runner
        assert runner is not None  # the route exists only where jobs run
        if self.jobs.worker is None:  # a push queue: the task is a token, the line decides
            outcome = await self.jobs.runtime.run_long(runner.run_next, job_id)
        else:
            outcome = await self.jobs.runtime.run_long(runner.run, job_id)
        return self._outcome(outcome, self.base_url(request))

    async def tasks_webhook(self, request: Request) -> Response:
        await self._verify(request)
        job_id = await self._job_id(request)
        if job_id is None:
            return JSONResponse({"outcome": "idle", "detail": "the task body has no job_id"})
        sent = await run_in_threadpool(self.jobs.outbox.deliver, job_id)
        if sent is Sent.RETRY:
            return JSONResponse({"outcome": "retry"}, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"outcome": "done"})

    async def _verify(self, request: Request) -> None:
        if self.settings.verify_task_tokens:
            await run_in_threadpool(self.verifier.verify, request.headers.get("authorization"))

    @staticmethod
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

    def _outcome(self, outcome: RunOutcome, base: str) -> JSONResponse:
        body: dict[str, Any] = {"outcome": outcome.kind.value, "detail": outcome.detail}
        if outcome.job is not None:
            body["job"] = self.service.views.status(outcome.job, base_url=base)
        headers = {"Retry-After": "5"} if outcome.kind in (Outcome.RETRY, Outcome.BUSY) else None
        return JSONResponse(body, status_code=outcome.http_status, headers=headers)

    # --- callers

    async def status(self, request: Request) -> Response:
        inline_param = request.query_params.get("inline")
        inline = None if inline_param is None else inline_param.lower() in {"1", "true", "yes"}
        view = await run_in_threadpool(
            self.service.status, request.path_params["job_id"], base_url=self.base_url(request), inline=inline
        )
        return JSONResponse(view)

    async def cancel(self, request: Request) -> Response:
        answer = await run_in_threadpool(self.service.cancel, request.path_params["job_id"])
        return JSONResponse(answer, status_code=200 if answer["cancel"] == "dequeued" else 202)

    async def local_output(self, request: Request) -> Response:
        """Outputs kept in a local folder, served the way a signed URL would serve them."""
        store = self.service.store
        if not isinstance(store, LocalStore):
            raise errors.NotFound("outputs are in Cloud Storage: use the job's signed URLs")
        job_id = check_job_id(request.path_params["job_id"])  # 404 for anything no job could be named
        try:
            path = store.path(f"outputs/{job_id}/{request.path_params['name']}")
            found = path.is_file()
        except (ValueError, OSError):  # not a key, or a name the filesystem refuses (too long)
            found = False
        if not found:
            raise errors.NotFound("no such output")
        return FileResponse(path)

    def base_url(self, request: Request) -> str:
        """Our public URL: SERVICE_URL when set (Cloud Run terminates TLS in front of us)."""
        return (self.settings.service_url or str(request.base_url)).rstrip("/")
