"""Async jobs: submitted through /predict, queued by priority, run through the same Pipeline,
results in the Store, events through the webhook outbox.

    model.py    Job, JobState, pure transitions, the attempt rule
    repo.py     records in the Store (compare-and-swap), the line, per-run output keys
    runner.py   claim under a lease, run, publish, hand back
    leases.py   the runs in this process: stopped on cancel or shutdown, their leases renewed
    worker.py   the local dispatcher (embedded SQLite queue)
    outbox.py   webhook events: announce, deliver once, retried by a queue
    views.py    what callers see: status documents and webhook payloads
    service.py  submit, client-made tasks, status, cancel

`Jobs.build` wires them for one process; nothing here imports the HTTP layer.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass

from handler.config.cloud import CloudSettings
from handler.config.http import HttpSettings
from handler.config.jobs import JobSettings
from handler.config.models import ModelSettings
from handler.config.observability import ObservabilitySettings
from handler.config.urls import UrlSettings
from handler.config.webhooks import WebhookSettings
from handler.jobs import retention
from handler.jobs.leases import Leases
from handler.jobs.model import FINAL_STATES, Job, JobState
from handler.jobs.outbox import LocalSender, Outbox, Sent
from handler.jobs.repo import JobRepo, Observer
from handler.jobs.runner import Outcome, Pipeline, Readiness, Runner, RunOutcome
from handler.jobs.service import AsyncOptions, JobService, Preflight
from handler.jobs.views import JobViews
from handler.jobs.worker import LOCAL_SLOTS, WORKER_THREADS, LocalWorker
from handler.runtime import Runtime
from handler.storage import Store
from handler.taskqueue import TaskQueue
from handler.templates.registry import Templates

log = logging.getLogger("handler.jobs")

__all__ = [
    "FINAL_STATES",
    "AsyncOptions",
    "Job",
    "JobService",
    "JobState",
    "Jobs",
    "Outcome",
    "Preflight",
    "RunOutcome",
    "Runs",
    "Sent",
]


@dataclass(frozen=True)
class Runs:
    """What running jobs needs: the pipeline, and whether ComfyUI is ready."""

    pipeline: Pipeline
    comfy: Readiness


@dataclass(kw_only=True)
class Jobs:
    """One process's async jobs, wired for its role by `build`."""

    service: JobService
    runner: Runner | None  # None in the api role: jobs run on the workers
    outbox: Outbox
    worker: LocalWorker | None
    sender: LocalSender | None
    queue: TaskQueue
    outbox_queue: TaskQueue
    runtime: Runtime

    @classmethod
    def build(
        cls,
        *,
        jobs: JobSettings,
        http: HttpSettings,
        urls: UrlSettings,
        cloud: CloudSettings,
        models: ModelSettings,
        webhooks: WebhookSettings,
        observability: ObservabilitySettings,
        store: Store,
        queue: TaskQueue,
        outbox_queue: TaskQueue,
        checks: Preflight,
        runs: Runs | None,
        templates: Templates | None,
        runtime: Runtime,
        observer: Observer | None = None,
    ) -> Jobs:
        """`runs`: the pipeline and ComfyUI's readiness where this process runs jobs (roles
        all and worker); `checks`: how submits are checked (the pipeline, or the catalogue the
        workers published). The queues say whether this process drains them (`pull_queue`: the
        local backend) or Cloud Tasks pushes their tasks; the store, whether it is on this disk."""
        instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        jobs_here, webhooks_here = queue.pull_queue(), outbox_queue.pull_queue()
        repo = JobRepo(
            store=store,
            keeps_line=jobs_here is None,
            observer=observer,
            min_write_interval_s=0.0 if store.on_local_disk else jobs.gcs_object_write_interval_s,
        )
        views = JobViews(jobs=jobs, cloud=cloud, store=store)
        local_worker = runs is not None and jobs_here is not None
        # The local worker's threads beyond its places in ComfyUI may make a webhook's first try.
        inline = WORKER_THREADS - LOCAL_SLOTS if local_worker and webhooks_here is not None else 0
        outbox = Outbox(
            webhooks=webhooks,
            urls=urls,
            cloud=cloud,
            observability=observability,
            repo=repo,
            views=views,
            queue=outbox_queue,
            inline_tries=inline,
        )
        runner = worker = None
        if runs is not None:
            runner = Runner(
                jobs=jobs,
                http=http,
                urls=urls,
                cloud=cloud,
                models=models,
                observability=observability,
                repo=repo,
                pipeline=runs.pipeline,
                comfy=runs.comfy,
                outbox=outbox,
                leases=Leases(repo=repo, runtime=runtime, ttl_s=jobs.job_lease_ttl_s),
                runtime=runtime,
                templates=templates,
                instance_id=instance_id,
            )
            if jobs_here is not None:
                worker = LocalWorker(runner=runner, queue=jobs_here, comfy=runs.comfy, runtime=runtime)
        service = JobService(
            jobs=jobs,
            http=http,
            urls=urls,
            cloud=cloud,
            models=models,
            repo=repo,
            queue=queue,
            views=views,
            outbox=outbox,
            runner=runner,
            checks=checks,
            templates=templates,
            worker=worker,
        )
        sender = None
        if webhooks_here is not None:
            sender = LocalSender(outbox=outbox, queue=webhooks_here, webhooks=webhooks, stopping=runtime.stopping)
        for drained in (jobs_here, webhooks_here):
            if drained is not None:
                runtime.on_stop(drained.stop_waiting)  # the dispatcher and the sender wait in `next`
        return cls(
            service=service,
            runner=runner,
            outbox=outbox,
            worker=worker,
            sender=sender,
            queue=queue,
            outbox_queue=outbox_queue,
            runtime=runtime,
        )

    def start(self) -> None:
        if self.runner is not None:
            self.runner.start()
        if self.service.store.on_local_disk:  # in the cloud, the bucket's lifecycle rules
            self.runtime.thread("retention", self._sweep)
        if self.worker is not None or self.sender is not None:
            self._recover()
        if self.sender is not None:
            self.runtime.thread("webhook-outbox", self.sender.loop)
        if self.worker is not None:
            self.worker.start()

    def _recover(self) -> None:
        """Local queues, at start, in one pass over the store: queue again every unfinished job (a
        crash between its write and its enqueue) and announce every final job whose webhook is
        still pending (a crash between the final write and the outbox)."""
        for job in self.service.repo.all():
            if self.worker is not None and not job.final:
                self.queue.enqueue(job.job_id, job.priority)
            elif self.sender is not None and self.outbox.pending(job):
                self.outbox.announce(job)

    def _sweep(self) -> None:
        while True:
            try:
                retention.sweep(self.service.repo, jobs=self.service.job_settings)
            except Exception as exc:
                log.warning("retention sweep failed: %s", exc)
            if self.runtime.stopping.wait(retention.SWEEP_EVERY_S):
                return

    def close(self) -> None:
        """After the runtime stopped: release the queues."""
        self.queue.close()
        self.outbox_queue.close()
