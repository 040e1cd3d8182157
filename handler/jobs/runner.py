"""Runs jobs: claim under a lease, run the pipeline, publish the result, announce the event.

A run first takes the job's lease by compare-and-swap (owner, token, expiry): the job is `placed`
(its prompt goes to ComfyUI's queue), and `running` once ComfyUI starts executing that prompt
(the run's `started` progress event, recorded by `leases.py`). `leases.py` renews the lease
every quarter of its life. It stops itself (the prompt is interrupted) when it is cancelled, when the
process is stopping (the job is handed back, not counted as an attempt, within Cloud Run's 10 s),
or when its lease lapsed without a successful renewal (another delivery may own the job now).
Its outputs go under its own run token and are published by the final write, which succeeds
only while the run still owns the job; a run that lost the job removes its files.

Cloud Tasks' deliveries are tokens: `run_next` claims the highest-priority, oldest queued job in
the store's line, not necessarily the job the task named. The local worker names its job (its
SQLite queue is already ordered), or starts a new job at once: `claim_new` claims it before it
is created, so its record is written once, already running, and `run_claimed` runs it.
"""

from __future__ import annotations

import enum
import logging
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from handler import errors, logs
from handler.comfyui.outputs import store_keys
from handler.comfyui.progress import JobProgress, OnStart, ProgressSink
from handler.config import CloudSettings, HttpSettings, JobSettings, ModelSettings, ObservabilitySettings, UrlSettings
from handler.errors import ServiceError
from handler.failpoints import Failpoints
from handler.jobs import retention
from handler.jobs.leases import ActiveRun, Leases
from handler.jobs.model import Job, JobState, error, now
from handler.jobs.outbox import Outbox
from handler.jobs.repo import JobRepo, LeaseLost, LeaveUnchanged, outputs_prefix
from handler.pipeline import PredictResult
from handler.predict_request import PredictRequest, parse_predict_body
from handler.runtime import Runtime
from handler.templates.registry import Templates

log = logging.getLogger("handler.jobs.runner")


class Pipeline(Protocol):
    def run(
        self,
        request: PredictRequest,
        cancel: threading.Event | None = None,
        *,
        defer_cleanup: bool = False,
        progress: ProgressSink | None = None,
    ) -> PredictResult: ...


class Readiness(Protocol):
    """Whether ComfyUI is ready for work, and a way to be woken when it becomes so."""

    @property
    def ready(self) -> bool: ...

    def notify_ready(self, event: threading.Event) -> AbstractContextManager[None]:
        """While inside, `event` is set each time ComfyUI becomes ready (at once if it is)."""
        ...


class Outcome(str, enum.Enum):
    FINAL = "final"  # the job is final (now or before): the task is done
    IDLE = "idle"  # nothing to run for this task
    RETRY = "retry"  # ask again later (ComfyUI restarting, shutdown)
    BUSY = "busy"  # another delivery holds the job


HTTP_STATUS = {Outcome.FINAL: 200, Outcome.IDLE: 200, Outcome.RETRY: 503, Outcome.BUSY: 409}


@dataclass
class RunOutcome:
    kind: Outcome
    job: Job | None = None
    detail: str = ""

    @property
    def http_status(self) -> int:
        # Cloud Tasks retries anything but a 2xx: ask again only when it could help.
        return HTTP_STATUS[self.kind]


class Runner:
    def __init__(
        self,
        *,
        jobs: JobSettings,
        http: HttpSettings,
        urls: UrlSettings,
        cloud: CloudSettings,
        models: ModelSettings,
        observability: ObservabilitySettings,
        repo: JobRepo,
        pipeline: Pipeline,
        comfy: Readiness,
        outbox: Outbox,
        leases: Leases,
        runtime: Runtime,
        templates: Templates | None,
        instance_id: str,
    ):
        self.job_settings = jobs
        self.http, self.urls, self.cloud, self.models = http, urls, cloud, models
        self.repo = repo
        self.pipeline = pipeline
        self.comfy = comfy
        self.outbox = outbox
        self.leases = leases
        self.runtime = runtime
        self.templates = templates
        self.instance_id = instance_id
        self.lease_ttl_s = leases.ttl_s
        self.failpoints = Failpoints(observability.failpoint_kill)

    def start(self) -> None:
        self.leases.start()

    def interrupt(self, job_id: str) -> bool:
        """Stop a run of this job in this process; False when it does not run here."""
        return self.leases.interrupt(job_id)

    # --- deliveries

    def run_next(self, hint: str | None) -> RunOutcome:
        """A Cloud Tasks delivery: run the first job in line. `hint` is the job the task named:
        if it is final with its webhook pending, the event is announced again; if it was
        orphaned (its run died), it takes its old place in line again."""
        if self.runtime.stopping.is_set() or not self.comfy.ready:
            return RunOutcome(Outcome.RETRY, detail="not ready to run jobs")
        hinted = self.repo.find(hint) if hint else None
        settled = None
        if hinted is not None and hinted.final:
            # Another token ran it: this token still runs whoever is first in line now.
            settled = self._settled(hinted)
            if settled.kind is Outcome.RETRY:
                return settled
        line = self.repo.line()
        if (
            hinted is not None
            and hinted.job_id not in line
            and (hinted.state is JobState.QUEUED or not hinted.lease_alive(now()))
        ):
            self.repo.join_line(hinted)
            line = self.repo.line()
        for job_id in line:
            outcome = self.run(job_id, takeover=False)
            skipped = outcome.kind in (Outcome.BUSY, Outcome.IDLE) or (
                outcome.kind is Outcome.FINAL and outcome.detail == "already"
            )
            if not skipped:
                return outcome
        if settled is None and hinted is not None and hinted.state.active:
            # Its run holds a live lease, here or in a process that may have died (SIGKILL, OOM):
            # keep the task (409 → retried) until the job is final or its lease lapses and it
            # takes its place in line again. An idle 200 would end the last token of the job.
            return RunOutcome(Outcome.BUSY, hinted, "another delivery of this job holds its lease")
        return settled or RunOutcome(Outcome.IDLE, hinted, "no job is waiting")

    @logs.in_context  # the job's id labels this delivery's log lines, and no later ones
    def run(self, job_id: str, *, takeover: bool = False, after_comfy: Callable[[], None] | None = None) -> RunOutcome:
        """One delivery of a job. `takeover`: a live lease held by another process is void (the
        local queue has one consumer, so a running job it hands out is an orphan)."""
        logs.bind(job_id=job_id)
        free = _Once(after_comfy)
        if self.runtime.stopping.is_set():
            free()
            return RunOutcome(Outcome.RETRY, detail="the service is shutting down")
        token = uuid.uuid4().hex
        decision = ""

        def acquire(job: Job) -> None:
            nonlocal decision
            at = now()
            if job.final:
                raise LeaveUnchanged("final")
            here = self.leases.get(job.job_id) is not None
            if job.state.active and (here or (job.lease_alive(at) and not takeover)):
                raise LeaveUnchanged("busy")
            if job.cancel_requested:
                job.finish(JobState.CANCELLED, error=error("cancelled", "cancelled before it could finish"))
                decision = "cancelled"
            elif job.attempts >= self.job_settings.job_max_attempts:
                last = (job.last_error or {}).get("message", "transient failures")
                job.finish(
                    JobState.FAILED, error=error("gave_up", f"gave up after {job.attempts} attempts; the last: {last}")
                )
                decision = "gave_up"
            else:
                job.claim(self.instance_id, token, at, self.lease_ttl_s)
                decision = "run"

        try:
            job = self.repo.update(job_id, acquire)
        except errors.NotFound:
            free()
            return RunOutcome(Outcome.IDLE, detail="no such job")
        except LeaveUnchanged as unchanged:
            free()
            found = self.repo.get(job_id)
            if unchanged.why == "final":
                self.repo.leave_line(found)
                outcome = self._settled(found)
                outcome.detail = "already"
                return outcome
            return RunOutcome(Outcome.BUSY, found, "another delivery of this job is running it")
        self.repo.leave_line(job)
        if decision != "run":
            free()
            return self._announced(job, decision)
        active = ActiveRun(token, now() + self.lease_ttl_s)
        self.leases.add(job_id, active)
        return self._run_claimed(job, active, free, None)

    # --- a new job that starts at once (the local worker had a free place in ComfyUI)

    def claim_new(self, job: Job) -> ActiveRun:
        """Claim a job that is about to be created: its first write is already the claim. The
        run is known here from now on, so a cancel finds it; `forget` it if the create fails."""
        active = ActiveRun(uuid.uuid4().hex, 0.0)
        job.claim(self.instance_id, active.token, now(), self.lease_ttl_s)
        assert job.lease is not None
        active.lease_expires_at = job.lease.expires_at
        self.leases.add(job.job_id, active)
        return active

    def forget(self, job_id: str) -> None:
        self.leases.forget(job_id)

    @logs.in_context
    def run_claimed(
        self, job: Job, active: ActiveRun, request: PredictRequest, *, after_comfy: Callable[[], None] | None = None
    ) -> RunOutcome:
        """Run a job created already claimed (`claim_new`), with the request its submit parsed."""
        logs.bind(job_id=job.job_id)
        return self._run_claimed(job, active, _Once(after_comfy), request)

    # --- one run

    def _run_claimed(
        self, job: Job, active: ActiveRun, free: Callable[[], None], request: PredictRequest | None
    ) -> RunOutcome:
        self.failpoints.reach("claimed")
        try:
            return self._execute(job, active, free, request)
        finally:
            self.forget(job.job_id)
            free()

    def _execute(
        self, job: Job, active: ActiveRun, free: Callable[[], None], request: PredictRequest | None
    ) -> RunOutcome:
        try:
            if request is None:
                stored = self.repo.request(job.job_id)
                if stored is None:
                    raise errors.NotFound("the job's stored request is missing")
                request = parse_predict_body(
                    stored,
                    http=self.http,
                    urls=self.urls,
                    cloud=self.cloud,
                    models=self.models,
                    templates=self.templates,
                )
            request.priority = job.priority
            request.confined = job.confined
            # Progress for /status on any instance: in the store, at most once a second; and
            # `running` once ComfyUI starts the prompt (placed until then).
            progress = OnStart(
                JobProgress(self.repo.store, job.job_id), lambda: self.leases.started(job.job_id, active)
            )
            try:
                # ComfyUI's copies of the outputs go once the event is on its way, not before it.
                result = self.pipeline.run(request, cancel=active.cancel, progress=progress, defer_cleanup=True)
            finally:
                progress.close()
        except ServiceError as exc:
            free()
            return self._ended_by(job, active, exc)
        except Exception as exc:
            free()
            log.exception("job %s failed unexpectedly", job.job_id)
            return self._final(job, active, JobState.FAILED, error=error("internal_error", type(exc).__name__))
        free()  # ComfyUI has the next prompt already: store this one's outputs meanwhile
        try:
            self.failpoints.reach("ran")
            try:
                files = self._upload(job.job_id, active.token, result)
            except Exception as exc:
                log.warning("job %s: storing outputs failed: %s", job.job_id, exc)
                self.repo.discard_outputs(job.job_id, active.token)
                reason = error("storage_unavailable", "storing the outputs failed")
                return self._hand_back(job, active, reason, counts=True)
            summary = {
                "prompt_id": result.prompt_id,
                "files": files,
                "outputs": result.outputs,
                "timings": result.timings,
            }
            self.failpoints.reach("uploaded")
            return self._final(job, active, JobState.SUCCEEDED, result=summary)
        finally:
            if result.cleanup is not None:
                result.cleanup()

    def _ended_by(self, job: Job, active: ActiveRun, exc: ServiceError) -> RunOutcome:
        """Map how the pipeline stopped onto the job: the one place that decides attempts."""
        if active.why == "shutdown" or self.runtime.stopping.is_set():
            return self._hand_back(job, active, error("shutdown", "the service shut down during the run"), counts=False)
        if active.why == "lease_lost":
            self.repo.discard_outputs(job.job_id, active.token)
            return RunOutcome(Outcome.BUSY, self.repo.find(job.job_id), "this run lost its lease and stopped")
        if isinstance(exc, errors.Cancelled):
            return self._final(job, active, JobState.CANCELLED, error=exc.to_dict()["error"])
        if isinstance(exc, errors.ComfyUnavailable):
            return self._hand_back(job, active, exc.to_dict()["error"], counts=True)
        return self._final(job, active, JobState.FAILED, error=exc.to_dict()["error"])

    def _upload(self, job_id: str, token: str, result: PredictResult) -> list[dict[str, Any]]:
        entries = []
        for file, key in zip(result.files, store_keys(outputs_prefix(job_id, token), result.files), strict=True):
            self.repo.store.put_bytes(key, file.data, file.content_type)
            entries.append({**file.describe(), "key": key})
        return entries

    def _final(
        self,
        job: Job,
        active: ActiveRun,
        state: JobState,
        *,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> RunOutcome:
        def change(current: Job) -> None:
            if not current.owned_by(active.token):
                raise LeaseLost(current.job_id)
            if current.started_at is None:  # ended before `running` was written, or without it
                current.started_at = active.started_at
            current.finish(state, error=error, result=result)

        try:
            job = self.repo.update(job.job_id, change)
        except LeaseLost:
            self.repo.discard_outputs(job.job_id, active.token)
            return RunOutcome(
                Outcome.BUSY, self.repo.find(job.job_id), "the lease was taken over; this run's result is dropped"
            )
        self.failpoints.reach("final")
        outcome = self._announced(job, state.value)
        log.info("job %s %s after %d attempt(s)", job.job_id, state.value, job.attempts)  # after: off the event's path
        return outcome

    def _hand_back(self, job: Job, active: ActiveRun, reason: dict[str, Any], *, counts: bool) -> RunOutcome:
        def change(current: Job) -> None:
            if not current.owned_by(active.token):
                raise LeaseLost(current.job_id)
            if current.cancel_requested:
                current.finish(JobState.CANCELLED, error=error("cancelled", "cancelled"))
            elif counts and current.attempts >= self.job_settings.job_max_attempts:
                current.finish(
                    JobState.FAILED,
                    error=error(
                        "gave_up", f"gave up after {current.attempts} attempts; the last: {reason.get('message')}"
                    ),
                )
            else:
                current.hand_back(reason, counts=counts)

        try:
            job = self.repo.update(job.job_id, change)
        except LeaseLost:
            return RunOutcome(Outcome.BUSY, self.repo.find(job.job_id), "the lease was taken over")
        if job.final:
            return self._announced(job, job.state.value)
        self.repo.join_line(job)
        log.warning("job %s back in line: %s", job.job_id, reason.get("message"))
        return RunOutcome(Outcome.RETRY, job, str(reason.get("message", "")))

    # --- the event of a final job

    def _settled(self, job: Job) -> RunOutcome:
        """A delivery found the job final: make sure its webhook is in the outbox."""
        if self.outbox.pending(job):
            return self._announced(job, f"already {job.state.value}")
        return RunOutcome(Outcome.FINAL, job, f"already {job.state.value}")

    def _announced(self, job: Job, detail: str) -> RunOutcome:
        try:
            self.outbox.announce(job, try_now=True)
        except Exception as exc:  # the task stays, and its next delivery announces again
            log.warning("job %s: could not queue its webhook: %s", job.job_id, exc)
            return RunOutcome(Outcome.RETRY, job, "the job is final; its webhook could not be queued yet")
        finally:
            retention.discard_request(self.repo, job.job_id)  # after the event is on its way
        return RunOutcome(Outcome.FINAL, job, detail)


class _Once:
    """Calls `fn` at most once (freeing the local worker's ComfyUI slot)."""

    def __init__(self, fn: Callable[[], None] | None):
        self.fn = fn

    def __call__(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn()
