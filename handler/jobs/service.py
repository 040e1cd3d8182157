"""Async jobs as callers use them: submit, adopt a client-made task, status, cancel.

A job is accepted only if it could run now (same parsing and graph checks as a sync request),
is stored, then queued. Job ids are capabilities: random (128 bits) for submits; for a task a
client created against /predict, an HMAC of the task's name and the body's hash under a server
secret, so redeliveries of one task find one job and nobody can derive another caller's id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from handler import errors
from handler.access import Caller
from handler.body import check_fields
from handler.comfyui.progress import read_job_progress
from handler.config.cloud import CloudSettings
from handler.config.http import HttpSettings
from handler.config.jobs import JobSettings
from handler.config.models import ModelSettings
from handler.config.urls import UrlSettings
from handler.errors import ServiceError
from handler.jobs import retention
from handler.jobs.model import Job, JobState, error, iso, now
from handler.jobs.outbox import Outbox
from handler.jobs.repo import JobRepo, LeaveUnchanged
from handler.jobs.runner import Runner
from handler.jobs.views import JobViews
from handler.jobs.worker import LocalWorker
from handler.net import urlguard, webhooks
from handler.predict_request import parse_predict_body
from handler.storage import PreconditionFailed, Store
from handler.taskqueue import PRIORITIES, TaskQueue
from handler.templates.registry import Templates

log = logging.getLogger("handler.jobs")

ASYNC_KEYS = ("async", "priority", "webhook", "inline")
TASK_NAME_HOLD_S = 3600.0  # Cloud Tasks refuses a used task name for about an hour, then allows it
DISPATCH_MARGIN_S = 120.0  # of a Cloud Tasks dispatch, kept for staging inputs and storing outputs
SECRET_KEY = "meta/job-id-secret"


class Preflight(Protocol):
    def preflight(self, workflow: dict[str, Any], *, confined: bool) -> None: ...


@dataclass(frozen=True)
class AsyncOptions:
    priority: str = "normal"
    webhook_url: str | None = None
    inline: bool = False

    @classmethod
    def split(
        cls, body: Mapping[str, Any], *, urls: UrlSettings, cloud: CloudSettings
    ) -> tuple[AsyncOptions, dict[str, Any]]:
        """Take our keys out of a /predict body; what is left is the PredictRequest's."""
        check_fields(dict(body))
        rest = {k: v for k, v in body.items() if k not in ASYNC_KEYS}
        priority = body.get("priority", "normal")
        if priority not in PRIORITIES:
            raise errors.BadRequest(f"priority must be one of {', '.join(PRIORITIES)}")
        webhook = body.get("webhook")
        url = None
        if webhook is not None:
            url = webhook.get("url") if isinstance(webhook, dict) else webhook
            if not isinstance(url, str) or not url:
                raise errors.BadRequest('webhook must be an object like {"url": "https://…"}')
            urlguard.check_url(url, urls=urls, cloud=cloud, purpose="webhook URL")
        inline = body.get("inline", False)
        if not isinstance(inline, bool):
            raise errors.BadRequest("inline must be true or false")
        return cls(priority, url, inline), rest


class JobService:
    def __init__(
        self,
        *,
        jobs: JobSettings,
        http: HttpSettings,
        urls: UrlSettings,
        cloud: CloudSettings,
        models: ModelSettings,
        repo: JobRepo,
        queue: TaskQueue,
        views: JobViews,
        outbox: Outbox,
        runner: Runner | None,
        checks: Preflight,
        templates: Templates | None,
        worker: LocalWorker | None = None,
    ):
        self.job_settings = jobs
        self.http, self.urls, self.cloud, self.models = http, urls, cloud, models
        self.repo = repo
        self.queue = queue
        self.views = views
        self.outbox = outbox
        self.runner = runner
        self.worker = worker  # local queue: a job may start at once
        self.checks = checks
        self.templates = templates

    @property
    def store(self) -> Store:
        return self.repo.store

    # --- submit

    def submit(
        self,
        body: Any,
        *,
        base_url: str | None = None,
        job_id: str | None = None,
        source: str = "api",
        task: str | None = None,
        caller: Caller | None = None,
    ) -> Job:
        """Validate, store and queue a job. Raises ServiceError (4xx) when it could not run.
        `caller`: who submits (None: a client-made task, which its token vouches for)."""
        if not isinstance(body, dict):
            raise errors.BadRequest("the request body must be a JSON object")
        options, rest = AsyncOptions.split(body, urls=self.urls, cloud=self.cloud)
        request = parse_predict_body(
            rest,
            http=self.http,
            urls=self.urls,
            cloud=self.cloud,
            models=self.models,
            templates=self.templates,
        )
        limit = self.job_settings.tasks_dispatch_deadline_s - DISPATCH_MARGIN_S
        if self.job_settings.queue_backend == "cloudtasks" and request.timeout_s > limit:
            raise errors.BadRequest(
                f"timeout may be at most {limit:g} seconds for async jobs: Cloud Tasks ends a dispatch "
                f"after {self.job_settings.tasks_dispatch_deadline_s} s"
            )
        request.confined = caller is not None and caller.confine(request.workflow_id)
        self.checks.preflight(request.workflow, confined=request.confined)
        job = Job(
            job_id=job_id or uuid.uuid4().hex,
            priority=options.priority,
            source=source,
            task=task,
            caller=caller.owner if caller is not None else None,
            confined=request.confined,
            base_url=base_url,
            inline=options.inline,
            timeout_s=request.timeout_s,
            webhook_url=options.webhook_url,
            webhook_id=webhooks.new_webhook_id() if options.webhook_url else None,
        )
        started = (
            source == "api"
            and self.worker is not None
            and self.worker.start_at_once(job, request, lambda: self.repo.create(job, rest))
        )
        if started:
            log.info("job %s started (%s)", job.job_id, job.priority)
            return job
        self.repo.create(job, rest)
        if source == "api":
            self._enqueue(job)
        log.info("job %s queued (%s)", job.job_id, job.priority)
        return job

    def _enqueue(self, job: Job) -> None:
        try:
            self.queue.enqueue(job.job_id, job.priority)
        except Exception as exc:
            log.error("could not queue job %s: %s", job.job_id, exc)
            self.repo.update(
                job.job_id,
                lambda j: j.finish(JobState.FAILED, error=error("queue_unavailable", "the job queue is unavailable")),
            )
            raise errors.ComfyUnavailable("the job queue is unavailable; try again shortly") from None

    # --- tasks a client created for /predict (the route has verified the task's token)

    def task_job_id(self, body: Any, queue_name: str, task_name: str, generation: int = 0) -> str:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        message = f"{queue_name}/{task_name}\n{digest}\n{generation}".encode()
        return "ct-" + hmac.new(self._secret(), message, hashlib.sha256).hexdigest()[:32]

    def _secret(self) -> bytes:
        if self.job_settings.job_id_secret:
            return self.job_settings.job_id_secret.encode()
        found = self.store.get_json(SECRET_KEY)
        if found is None:
            try:
                self.store.cas_json(SECRET_KEY, {"secret": secrets.token_hex(32)}, generation=0)
            except PreconditionFailed:
                pass  # another instance made it first
            found = self.store.get_json(SECRET_KEY)
        assert found is not None
        return str(found.data["secret"]).encode()

    def adopt_task(self, body: Any, *, queue_name: str, task_name: str, base_url: str | None) -> str:
        """One job per task, however often it is delivered; a name reused after Cloud Tasks'
        hold is a new task, so it gets a new job."""
        for generation in range(100):
            job_id = self.task_job_id(body, queue_name, task_name, generation)
            existing = self.repo.find(job_id)
            if existing is None:
                break
            if not (existing.final and now() - (existing.finished_at or 0) > TASK_NAME_HOLD_S):
                return job_id
        task = f"{queue_name}/{task_name}"
        try:
            self.submit(body, base_url=base_url, job_id=job_id, source="cloudtasks", task=task)
        except errors.Conflict:
            pass  # a concurrent delivery of the same task created it
        except ServiceError as exc:
            if exc.status_code >= 500:
                raise
            self._record_refused(body, job_id, task, base_url, exc)
        return job_id

    def _record_refused(self, body: Any, job_id: str, task: str, base_url: str | None, exc: ServiceError) -> None:
        """A task that can never run is recorded as failed (its webhook says so once), so
        Cloud Tasks does not retry it for a day."""
        job = Job(job_id=job_id, source="cloudtasks", task=task, base_url=base_url)
        webhook = body.get("webhook") if isinstance(body, dict) else None
        url = webhook.get("url") if isinstance(webhook, dict) else webhook
        if isinstance(url, str):
            try:
                urlguard.check_url(url, urls=self.urls, cloud=self.cloud, purpose="webhook URL")
                job.webhook_url, job.webhook_id = url, webhooks.new_webhook_id()
            except ServiceError:
                pass
        job.finish(JobState.FAILED, error=exc.to_dict()["error"])
        try:
            self.repo.create(job, None)
        except errors.Conflict:
            return  # a concurrent delivery of the same task recorded it
        self.outbox.announce(job)

    # --- status and cancel

    def owned(self, job_id: str, caller: Caller | None) -> Job:
        """The job, when `caller` may see it (None: the service itself); another caller's job is
        answered as no job at all (404), so its id tells nobody else anything."""
        job = self.repo.get(job_id)
        if caller is not None and not caller.owns(job.caller):
            raise errors.NotFound("no such job")
        return job

    def still_open(self, job_id: str) -> bool:
        job = self.repo.find(job_id)
        return job is not None and not job.final

    def status(
        self, job_id: str, *, base_url: str | None = None, inline: bool | None = None, caller: Caller | None = None
    ) -> dict[str, Any]:
        job = self.owned(job_id, caller)
        view = self.views.status(job, base_url=base_url, inline=job.inline if inline is None else inline)
        if job.state.active:  # the run's latest progress (placed: its models may download), from any instance
            progress = read_job_progress(self.store, job_id)
            if progress is not None:
                stamp = progress.get("updated_at")  # stored as Unix time; shown like every other time
                view["progress"] = {**progress, "updated_at": iso(stamp) if isinstance(stamp, (int, float)) else stamp}
        return view

    def cancel(self, job_id: str, caller: Caller | None = None) -> dict[str, Any]:
        """A queued job never runs; a placed or running one here is interrupted (its prompt
        leaves ComfyUI's queue or stops); elsewhere, recorded."""
        self.owned(job_id, caller)
        outcome = ""

        def change(job: Job) -> None:
            nonlocal outcome
            if job.final:
                raise LeaveUnchanged("final")
            if job.state is JobState.QUEUED:
                job.finish(JobState.CANCELLED, error=error("cancelled", "cancelled before it ran"))
                outcome = "dequeued"
            elif job.cancel_requested:
                raise LeaveUnchanged("already")
            else:
                job.cancel_requested = True
                outcome = "requested"

        try:
            job = self.repo.update(job_id, change)
        except LeaveUnchanged as unchanged:
            job = self.repo.get(job_id)
            if unchanged.why == "final":
                raise errors.Conflict(
                    f"the job is already {job.state.value}", job_id=job_id, state=job.state.value
                ) from None
            outcome = "requested"
        if outcome == "dequeued":
            self._drop_from_queue(job)
            self.repo.leave_line(job)
            retention.discard_request(self.repo, job_id)
            self.outbox.announce(job)
            return {
                "job_id": job_id,
                "state": "cancelled",
                "cancel": "dequeued",
                "detail": "the job was queued and will never run",
            }
        if self.runner is not None and self.runner.interrupt(job_id):
            return {
                "job_id": job_id,
                "state": job.state.value,
                "cancel": "interrupting",
                "detail": f"the job is {job.state.value} on this instance and is being interrupted",
            }
        return {
            "job_id": job_id,
            "state": job.state.value,
            "cancel": "requested",
            "detail": (
                f"the job is {job.state.value} on another instance; it stops at its next lease renewal "
                f"(within {self.job_settings.job_lease_ttl_s / 4:.0f} s)"
            ),
        }

    def _drop_from_queue(self, job: Job) -> None:
        try:
            drained = self.queue.pull_queue()
            if drained is not None:
                drained.remove(job.job_id)
            else:
                self.queue.cancel(job.job_id, job.priority)  # type: ignore[attr-defined]
        except Exception as exc:  # the state says cancelled: a delivery will just find that
            log.info("could not take job %s off the queue: %s", job.job_id, exc)
