"""Async jobs: a state machine in the Store, runs through the same Pipeline as /predict.

    queued ──run──▶ running ──▶ succeeded | failed | cancelled
       ▲               │
       └── transient ──┘   (ComfyUI restarting, shutdown: back in line, attempts counted)

`jobs/{id}.json` is the truth. Every change is a compare-and-swap on its generation, and a
run first takes a lease (owner, token, expiry) the same way, renewed while it runs: two
deliveries of one job never run at once, a finished job is never run again, and a lease whose
owner died expires so another delivery can take the job over. The request (with its images)
is stored at `inputs/{id}/request.json` before the job is queued; outputs go to
`outputs/{id}/…`. In local mode a worker in this process drains the queue and keeps two jobs
in ComfyUI at a time, so the next prompt is queued before the last one's results are stored.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from . import errors, storage, taskqueue, urlguard, webhooks
from .config import Settings
from .errors import ServiceError
from .predict_request import parse_predict_body
from .storage import PreconditionFailed, Store
from .taskqueue import PRIORITIES, PullQueue, TaskQueue

log = logging.getLogger("handler.jobs")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})
LEASE_TTL_S = 60.0  # a run renews its lease every LEASE_TTL_S / 4
LOCAL_SLOTS = 2  # jobs handed to ComfyUI at once in local mode: one running, one waiting
ASYNC_KEYS = ("async", "priority", "webhook", "inline")
CLOUD_TASKS_HEADER = "x-cloudtasks-taskname"


def _now() -> float:
    return time.time()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the job record --------------------------------------------------------------------------


@dataclass
class Job:
    job_id: str
    priority: str = "normal"
    state: str = "queued"
    created_at: float = field(default_factory=_now)
    updated_at: float = field(default_factory=_now)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0  # runs started
    source: str = "api"  # api | cloudtasks (a task that targeted /predict itself)
    task: str | None = None  # that task's queue/name
    base_url: str | None = None  # how the submitter reached us: for links in webhooks
    inline: bool = False
    webhook_url: str | None = None
    webhook_id: str | None = None
    webhook: dict[str, Any] | None = None  # {"state": "pending"} or a webhooks.Delivery
    cancel_requested: bool = False
    lease: dict[str, Any] | None = None  # {"owner", "token", "expires_at"}
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None  # the latest transient failure

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Job":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def finish(self, state: str, *, error: dict[str, Any] | None = None) -> None:
        self.state = state
        self.finished_at = _now()
        self.lease = None
        self.error = error
        if self.webhook_url:
            self.webhook = {"state": "pending"}

    def lease_alive(self, now: float | None = None) -> bool:
        return bool(self.lease) and self.lease.get("expires_at", 0) > (now or _now())


@dataclass(frozen=True)
class AsyncOptions:
    priority: str = "normal"
    webhook_url: str | None = None
    inline: bool = False

    @classmethod
    def split(cls, body: Mapping[str, Any], settings: Settings) -> tuple["AsyncOptions", dict[str, Any]]:
        """Take our keys out of a /predict body; what is left is the PredictRequest's."""
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
            urlguard.check_url(url, settings, purpose="webhook URL")
        inline = body.get("inline", False)
        if not isinstance(inline, bool):
            raise errors.BadRequest("inline must be true or false")
        return cls(priority, url, inline), rest


@dataclass
class RunOutcome:
    """What a delivery of a job achieved, and what the deliverer should do next."""

    kind: str  # final | retry | busy | unknown
    job: Job | None = None
    detail: str = ""

    @property
    def http_status(self) -> int:
        # Cloud Tasks retries anything but a 2xx: ask again only when it could help.
        return {"final": 200, "unknown": 200, "retry": 503, "busy": 409}[self.kind]


class _Keep(Exception):
    """Raised inside an update function: leave the job as it is."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class LeaseLost(Exception):
    pass


@dataclass
class _Active:
    token: str
    cancel: threading.Event = field(default_factory=threading.Event)
    shutdown: bool = False


def job_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


def request_key(job_id: str) -> str:
    return f"inputs/{job_id}/request.json"


def _check_job_id(job_id: str) -> str:
    if not job_id or len(job_id) > 100 or not all(c.isalnum() or c in "-_" for c in job_id):
        raise errors.NotFound(f"no job {job_id!r}")
    return job_id


# --- the service ------------------------------------------------------------------------------


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: TaskQueue,
        pipeline: Any,
        comfy: Any,
        templates: Any = None,
    ):
        self.settings = settings
        self.store = store
        self.queue = queue
        self.pipeline = pipeline
        self.comfy = comfy
        self.templates = templates
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.task_verifier: Any = None  # jobs_api.TaskTokenVerifier, checks /tasks/run in cloud mode
        self.worker: LocalWorker | None = None
        if isinstance(queue, PullQueue):
            self.worker = LocalWorker(self, queue)

    @classmethod
    def from_services(cls, services: Any) -> "JobService":
        settings = services.settings
        return cls(
            settings,
            storage.from_settings(settings),
            taskqueue.from_settings(settings),
            services.pipeline,
            services.comfy,
            services.templates,
        )

    # --- lifecycle

    def start(self) -> None:
        keeper = threading.Thread(target=self._keep_leases, name="job-leases", daemon=True)
        keeper.start()
        self._threads.append(keeper)
        if self.worker:
            self.worker.start()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Interrupt runs here (they go back to queued) and stop taking work."""
        self._stopping.set()
        with self._lock:
            for active in self._active.values():
                active.shutdown = True
                active.cancel.set()
        if self.worker:
            self.worker.stop(timeout_s)
        for thread in self._threads:
            thread.join(timeout=2)
        self.queue.close()

    # --- routing help for app.predict

    def wants_async(self, body: Any, headers: Mapping[str, str]) -> bool:
        if headers.get(CLOUD_TASKS_HEADER):
            return True
        return isinstance(body, dict) and (body.get("async") is True or body.get("webhook") is not None)

    async def accept(self, body: Any, request: Any) -> Any:
        """/predict with async, a webhook, or from Cloud Tasks: see jobs_api.accept."""
        from .jobs_api import accept

        return await accept(self, body, request)

    # --- submit

    def submit(
        self,
        body: Any,
        *,
        base_url: str | None = None,
        job_id: str | None = None,
        source: str = "api",
        task: str | None = None,
    ) -> Job:
        """Validate, store and queue a job. Raises ServiceError (4xx) when it could not run."""
        if not isinstance(body, dict):
            raise errors.BadRequest("the request body must be a JSON object")
        options, rest = AsyncOptions.split(body, self.settings)
        request = parse_predict_body(rest, self.settings, self.templates)
        self.pipeline.preflight(request.workflow)
        job = Job(
            job_id=job_id or uuid.uuid4().hex,
            priority=options.priority,
            source=source,
            task=task,
            base_url=base_url,
            inline=options.inline,
            webhook_url=options.webhook_url,
            webhook_id=webhooks.new_webhook_id() if options.webhook_url else None,
        )
        self.store.put_json(request_key(job.job_id), rest)
        try:
            self.store.cas_json(job_key(job.job_id), job.to_dict(), generation=0)
        except PreconditionFailed:
            raise errors.Conflict(f"job {job.job_id} already exists", job_id=job.job_id) from None
        if source == "api":
            self._enqueue(job)
        log.info("job %s queued (%s)", job.job_id, job.priority)
        return job

    def _enqueue(self, job: Job) -> None:
        try:
            self.queue.enqueue(job.job_id, job.priority)
        except Exception as exc:
            log.error("could not queue job %s: %s", job.job_id, exc)
            self._update(job.job_id, lambda j: j.finish("failed", error=_error("queue_unavailable", str(exc))))
            raise errors.ComfyUnavailable("the job queue is unavailable; try again shortly") from None

    def adopt_task(self, body: Any, *, queue_name: str, task_name: str, base_url: str | None) -> str:
        """A task a client created for /predict: one job per task, however often it comes."""
        digest = hashlib.sha256(f"{queue_name}/{task_name}".encode()).hexdigest()[:32]
        job_id = f"ct-{digest}"
        if self.store.get_json(job_key(job_id)) is not None:
            return job_id
        try:
            self.submit(body, base_url=base_url, job_id=job_id, source="cloudtasks", task=f"{queue_name}/{task_name}")
        except errors.Conflict:
            pass  # a concurrent delivery of the same task created it
        except ServiceError as exc:
            if exc.status_code >= 500:
                raise
            # It can never run: record it as failed (and say so once) so the task is not retried.
            job = Job(job_id=job_id, source="cloudtasks", task=f"{queue_name}/{task_name}", base_url=base_url)
            if isinstance(body, dict) and isinstance(body.get("webhook"), (dict, str)):
                url = body["webhook"].get("url") if isinstance(body["webhook"], dict) else body["webhook"]
                if isinstance(url, str):
                    job.webhook_url, job.webhook_id = url, webhooks.new_webhook_id()
            job.finish("failed", error=exc.to_dict()["error"])
            try:
                self.store.cas_json(job_key(job_id), job.to_dict(), generation=0)
            except PreconditionFailed:
                return job_id
            self._notify(job)
        return job_id

    # --- status and cancel

    def get(self, job_id: str) -> Job:
        found = self.store.get_json(job_key(_check_job_id(job_id)))
        if found is None:
            raise errors.NotFound(f"no job {job_id!r}")
        return Job.from_dict(found.data)

    def status(self, job_id: str, *, base_url: str | None = None, inline: bool | None = None) -> dict[str, Any]:
        job = self.get(job_id)
        return self.view(job, base_url=base_url, inline=job.inline if inline is None else inline)

    def view(self, job: Job, *, base_url: str | None = None, inline: bool = False) -> dict[str, Any]:
        base = (base_url or job.base_url or self.settings.service_url or "").rstrip("/")
        out: dict[str, Any] = {
            "job_id": job.job_id,
            "state": job.state,
            "priority": job.priority,
            "attempts": job.attempts,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "updated_at": _iso(job.updated_at),
            "status_url": f"{base}/status/{job.job_id}" if base else f"/status/{job.job_id}",
        }
        if job.cancel_requested and not job.final:
            out["cancel_requested"] = True
        if job.source != "api":
            out["source"] = job.source
        if job.result is not None:
            out["result"] = self._result_view(job, base, inline)
        if job.error is not None:
            out["error"] = job.error
        elif job.last_error is not None and not job.final:
            out["last_error"] = job.last_error
        if job.webhook_url:
            shown = {k: v for k, v in (job.webhook or {}).items() if k != "webhook_id"}
            out["webhook"] = {"url": webhooks.shown_url(job.webhook_url), **shown}
        return out

    def _result_view(self, job: Job, base: str, inline: bool) -> dict[str, Any]:
        result = dict(job.result or {})
        files = []
        total = sum(f.get("size", 0) for f in result.get("files", []))
        embed = inline and total <= self.settings.inline_max_bytes
        unsigned = False
        for entry in result.get("files", []):
            entry = dict(entry)
            key = entry.pop("key")
            entry["uri"] = self.store.uri(key)
            url = self.store.signed_url(key, self.settings.signed_url_ttl_s)
            if url is None and hasattr(self.store, "path"):  # a local folder: we serve it ourselves
                url = f"{base}/{key}" if base else f"/{key}"
            unsigned = unsigned or url is None
            entry["url"] = url
            if embed:
                data = self.store.get_bytes(key)
                entry["base64"] = base64.b64encode(data or b"").decode("ascii")
            files.append(entry)
        result["files"] = files
        if inline and not embed:
            result["inline_skipped"] = f"outputs total {total} bytes, over INLINE_MAX_BYTES"
        if unsigned:
            result["url_note"] = "these storage credentials cannot sign URLs; use the gs:// URIs"
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel: a queued job never runs; a running one here is interrupted; else recorded."""
        outcome = {"value": ""}

        def change(job: Job) -> None:
            if job.final:
                raise _Keep("final")
            if job.state == "queued":
                job.finish("cancelled", error=_error("cancelled", "cancelled before it ran"))
                outcome["value"] = "cancelled"
            else:
                if job.cancel_requested:
                    raise _Keep("already")
                job.cancel_requested = True
                outcome["value"] = "requested"

        try:
            job = self._update(job_id, change)
        except _Keep as keep:
            job = self.get(job_id)
            if keep.why == "final":
                raise errors.Conflict(f"job {job_id} already {job.state}", job_id=job_id, state=job.state) from None
            outcome["value"] = "requested"
        if outcome["value"] == "cancelled":
            self._drop_from_queue(job)
            self._notify_later(job)
            return {"job_id": job_id, "state": "cancelled", "cancel": "dequeued",
                    "detail": "the job was queued and will never run"}
        with self._lock:
            active = self._active.get(job_id)
        if active is not None:
            active.cancel.set()
            return {"job_id": job_id, "state": job.state, "cancel": "interrupting",
                    "detail": "the job is running on this instance and is being interrupted"}
        return {"job_id": job_id, "state": job.state, "cancel": "requested",
                "detail": (f"the job is running on another instance; it stops at its next lease renewal "
                           f"(within {LEASE_TTL_S / 4:.0f} s)")}

    def _drop_from_queue(self, job: Job) -> None:
        try:
            if isinstance(self.queue, PullQueue):
                self.queue.remove(job.job_id)
            elif hasattr(self.queue, "cancel"):
                self.queue.cancel(job.job_id, job.priority)
        except Exception as exc:  # the state says cancelled: a delivery will just find that
            log.info("could not take job %s off the queue: %s", job.job_id, exc)

    # --- running

    def run(self, job_id: str, *, takeover: bool = False,
            after_comfy: Callable[[], None] | None = None) -> RunOutcome:
        """One delivery of a job: take the lease, run the pipeline, store and report the result.

        `takeover`: a live lease held by another process is void (the local queue has one
        consumer, so a running job it hands out is an orphan of a previous process).
        """
        if self._stopping.is_set():
            return RunOutcome("retry", detail="the service is shutting down")
        if not getattr(self.comfy, "ready", True):
            return RunOutcome("retry", detail="ComfyUI is not ready")
        token = uuid.uuid4().hex
        active = _Active(token)
        decision = {"value": ""}

        def acquire(job: Job) -> None:
            now = _now()
            if job.final:
                raise _Keep("final")
            with self._lock:
                here = job.job_id in self._active
            if job.state == "running" and (here or (job.lease_alive(now) and not takeover)):
                raise _Keep("busy")
            if job.cancel_requested:
                job.finish("cancelled", error=_error("cancelled", "cancelled before it could finish"))
                decision["value"] = "cancelled"
            elif job.attempts >= self.settings.job_max_attempts:
                last = (job.last_error or {}).get("message", "transient failures")
                job.finish("failed", error=_error(
                    "gave_up", f"gave up after {job.attempts} attempts; the last: {last}"))
                decision["value"] = "gave_up"
            else:
                job.state = "running"
                job.attempts += 1
                job.started_at = now
                job.lease = {"owner": self.instance_id, "token": token, "expires_at": now + LEASE_TTL_S}
                decision["value"] = "run"

        try:
            job = self._update(job_id, acquire)
        except errors.NotFound:
            if after_comfy:
                after_comfy()
            return RunOutcome("unknown", detail=f"no job {job_id}")
        except _Keep as keep:
            if after_comfy:
                after_comfy()
            job = self.get(job_id)
            if keep.why == "final":
                self._resend_pending_webhook(job)
                return RunOutcome("final", job, f"already {job.state}")
            return RunOutcome("busy", job, "another delivery of this job is running it")
        if decision["value"] != "run":
            if after_comfy:
                after_comfy()
            self._notify(job)
            return RunOutcome("final", job, decision["value"])

        with self._lock:
            self._active[job_id] = active
        try:
            return self._execute(job, active, after_comfy)
        finally:
            with self._lock:
                self._active.pop(job_id, None)

    def _execute(self, job: Job, active: _Active, after_comfy: Callable[[], None] | None) -> RunOutcome:
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed and after_comfy:
                freed = True
                after_comfy()

        try:
            stored = self.store.get_json(request_key(job.job_id))
            if stored is None:
                raise errors.NotFound("the job's stored request is missing")
            request = parse_predict_body(stored.data, self.settings, self.templates)
            request.request_id = job.job_id
            result = self.pipeline.run(request, cancel=active.cancel)
        except errors.Cancelled as exc:
            free()
            if active.shutdown:
                return self._transient(job, active, _error("shutdown", "the service shut down during the run"))
            return self._final(job, active, "cancelled", error=exc.to_dict()["error"])
        except errors.ComfyUnavailable as exc:
            free()
            if active.shutdown:
                return self._transient(job, active, _error("shutdown", "the service shut down during the run"))
            return self._transient(job, active, exc.to_dict()["error"])
        except ServiceError as exc:
            free()
            if active.shutdown:
                return self._transient(job, active, _error("shutdown", "the service shut down during the run"))
            return self._final(job, active, "failed", error=exc.to_dict()["error"])
        except Exception as exc:
            free()
            log.exception("job %s failed unexpectedly", job.job_id)
            return self._final(job, active, "failed", error=_error("internal_error", type(exc).__name__))
        free()  # ComfyUI has the next prompt already: store this one's outputs meanwhile
        try:
            files = self._upload(job.job_id, result.files)
        except Exception as exc:
            log.warning("job %s: storing outputs failed: %s", job.job_id, exc)
            return self._transient(job, active, _error("storage_unavailable", f"storing outputs failed: {exc}"))
        summary = {
            "prompt_id": result.prompt_id,
            "files": files,
            "outputs": result.outputs,
            "timings": result.timings,
        }
        return self._final(job, active, "succeeded", result=summary)

    def _upload(self, job_id: str, files: list[Any]) -> list[dict[str, Any]]:
        entries, used = [], set()
        for file in files:
            name = f"{file.subfolder}/{file.filename}" if file.subfolder else file.filename
            key, n = f"outputs/{job_id}/{name}", 1
            while key in used:  # two nodes wrote the same name
                n += 1
                key = f"outputs/{job_id}/{file.node_id}-{n}-{file.filename}"
            used.add(key)
            self.store.put_bytes(key, file.data, file.content_type)
            entries.append({**file.describe(), "key": key})
        return entries

    def _final(self, job: Job, active: _Active, state: str, *, error: dict | None = None,
               result: dict | None = None) -> RunOutcome:
        def change(current: Job) -> None:
            _own(current, active)
            current.finish(state, error=error)
            current.result = result

        try:
            job = self._update(job.job_id, change)
        except LeaseLost:
            return RunOutcome("busy", self.get(job.job_id), "the lease was taken over; this run's result is dropped")
        log.info("job %s %s after %d attempt(s)", job.job_id, state, job.attempts)
        self._notify(job)
        return RunOutcome("final", job, state)

    def _transient(self, job: Job, active: _Active, error: dict[str, Any]) -> RunOutcome:
        def change(current: Job) -> None:
            _own(current, active)
            current.last_error = error
            if current.cancel_requested:
                current.finish("cancelled", error=_error("cancelled", "cancelled"))
            elif current.attempts >= self.settings.job_max_attempts and error.get("code") != "shutdown":
                current.finish("failed", error=_error(
                    "gave_up", f"gave up after {current.attempts} attempts; the last: {error.get('message')}"))
            else:
                current.state = "queued"
                current.lease = None

        try:
            job = self._update(job.job_id, change)
        except LeaseLost:
            return RunOutcome("busy", self.get(job.job_id), "the lease was taken over")
        if job.final:
            self._notify(job)
            return RunOutcome("final", job, job.state)
        log.warning("job %s back in line after a transient failure: %s", job.job_id, error.get("message"))
        return RunOutcome("retry", job, error.get("message", ""))

    # --- webhooks

    def _notify(self, job: Job) -> None:
        if not job.webhook_url or not job.final:
            return
        body = webhooks_payload(self, job)
        record = webhooks.deliver(job.webhook_url, body, self.settings,
                                  webhook_id=job.webhook_id, stop=self._stopping)

        def change(current: Job) -> None:
            current.webhook = record.to_dict()

        try:
            self._update(job.job_id, change)
        except Exception as exc:
            log.warning("job %s: could not record the webhook delivery: %s", job.job_id, exc)

    def _notify_later(self, job: Job) -> None:
        if job.webhook_url:
            threading.Thread(target=self._notify, args=(job,), name=f"webhook-{job.job_id}", daemon=True).start()

    def _resend_pending_webhook(self, job: Job) -> None:
        """A delivery found the job finished but its webhook never sent (the sender died)."""
        if job.webhook and job.webhook.get("state") == "pending" and _now() - (job.finished_at or 0) > LEASE_TTL_S:
            self._notify(job)

    # --- leases

    def _keep_leases(self) -> None:
        period = LEASE_TTL_S / 4
        while not self._stopping.wait(period):
            with self._lock:
                active = dict(self._active)
            for job_id, run in active.items():
                self._renew(job_id, run)

    def _renew(self, job_id: str, active: _Active) -> None:
        def change(job: Job) -> None:
            _own(job, active)
            if job.cancel_requested:
                active.cancel.set()  # a cancel recorded by another instance
            job.lease["expires_at"] = _now() + LEASE_TTL_S

        try:
            self._update(job_id, change)
        except LeaseLost:
            log.warning("job %s: lease lost; interrupting this run", job_id)
            active.cancel.set()
        except Exception as exc:
            log.warning("job %s: could not renew the lease: %s", job_id, exc)

    # --- storage

    def _update(self, job_id: str, change: Callable[[Job], None], attempts: int = 20) -> Job:
        """Read, change, compare-and-swap; again from the top when someone else wrote first."""
        key = job_key(_check_job_id(job_id))
        for _ in range(attempts):
            found = self.store.get_json(key)
            if found is None:
                raise errors.NotFound(f"no job {job_id!r}")
            job = Job.from_dict(found.data)
            change(job)
            job.updated_at = _now()
            try:
                self.store.cas_json(key, job.to_dict(), generation=found.generation)
                return job
            except PreconditionFailed:
                time.sleep(0.01)
        raise errors.Conflict(f"job {job_id} is changing too often; try again")


def _own(job: Job, active: _Active) -> None:
    if job.state != "running" or not job.lease or job.lease.get("token") != active.token:
        raise LeaseLost(job.job_id)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def webhooks_payload(service: JobService, job: Job) -> bytes:
    import json

    data = service.view(job, inline=job.inline)
    payload = {"type": f"job.{job.state}", "timestamp": _iso(_now()), "data": data}
    return json.dumps(payload, separators=(",", ":")).encode()


# --- the local worker -------------------------------------------------------------------------


class LocalWorker:
    """Drains the local queue. Holds up to LOCAL_SLOTS jobs inside ComfyUI at once and frees a
    slot as soon as a job's pipeline returns, before its outputs are stored and its webhook
    sent, so ComfyUI always has the next prompt waiting."""

    def __init__(self, service: JobService, queue: PullQueue, slots: int = LOCAL_SLOTS):
        self.service = service
        self.queue = queue
        self.slots = threading.Semaphore(slots)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: set[threading.Thread] = set()
        self._runs_lock = threading.Lock()

    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="job-dispatcher", daemon=True)
        self._thread.start()

    def _recover(self) -> None:
        """Queue again any unfinished job the store knows (a crash between write and enqueue)."""
        try:
            keys = self.service.store.list("jobs/")
        except Exception as exc:
            log.warning("could not list jobs to recover: %s", exc)
            return
        for key in keys:
            found = self.service.store.get_json(key)
            if found and found.data.get("state") in ("queued", "running"):
                self.queue.enqueue(found.data["job_id"], found.data.get("priority", "normal"))

    def _loop(self) -> None:
        comfy = self.service.comfy
        while not self._stop.is_set():
            if not self.slots.acquire(timeout=0.5):
                continue
            # Do not burn attempts while ComfyUI boots or restarts: wait until it is ready.
            while not self._stop.is_set() and not getattr(comfy, "ready", True):
                self._stop.wait(0.1)
            claim = None if self._stop.is_set() else self.queue.next(timeout=0.5)
            if claim is None:
                self.slots.release()
                continue
            thread = threading.Thread(target=self._work, args=(claim,), name=f"job-{claim.job_id}", daemon=True)
            with self._runs_lock:
                self._runs.add(thread)
            thread.start()

    def _work(self, claim: taskqueue.Claim) -> None:
        freed = threading.Event()

        def free() -> None:
            if not freed.is_set():
                freed.set()
                self.slots.release()

        try:
            outcome = self.service.run(claim.job_id, takeover=True, after_comfy=free)
        except Exception:
            log.exception("job %s: the run failed unexpectedly", claim.job_id)
            outcome = RunOutcome("retry", detail="unexpected error")
        finally:
            free()
            with self._runs_lock:
                self._runs.discard(threading.current_thread())
        try:
            if outcome.kind == "retry":
                attempts = outcome.job.attempts if outcome.job else claim.deliveries
                delay = 0.0 if self._stop.is_set() else min(30.0, 0.5 * 2 ** max(0, attempts - 1))
                self.queue.release(claim.job_id, delay_s=delay)
            elif outcome.kind == "busy":
                self.queue.release(claim.job_id, delay_s=LEASE_TTL_S / 4)
            else:
                self.queue.done(claim.job_id)
        except Exception as exc:  # the queue closed under us at shutdown: the claim resets on restart
            log.info("job %s: queue bookkeeping skipped: %s", claim.job_id, exc)

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        deadline = time.monotonic() + timeout_s
        with self._runs_lock:
            runs = list(self._runs)
        for thread in runs:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
