"""Async jobs: submitted through /predict, queued by priority, run through the same Pipeline,
results in the Store, events through the webhook outbox.

    model.py    Job, JobState, pure transitions, the attempt rule
    repo.py     records in the Store (compare-and-swap), the line, per-run output keys
    runner.py   claim under a lease, run, publish, hand back
    worker.py   the local dispatcher (embedded SQLite queue)
    outbox.py   webhook events: announce, deliver once, retried by a queue
    views.py    what callers see: status documents and webhook payloads
    service.py  submit, client-made tasks, status, cancel

`Jobs.build` wires them for one process; nothing here imports the HTTP layer.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..runtime import Runtime
from ..storage import Store
from ..storage.local import LocalStore
from ..taskqueue import PullQueue, TaskQueue
from .model import FINAL_STATES, Job, JobState
from .outbox import LocalSender, Outbox, OutboxQueue, Sent
from .repo import JobRepo
from .runner import Outcome, Pipeline, Readiness, RunOutcome, Runner
from .service import AsyncOptions, JobService, Preflight
from .views import JobViews
from .worker import LocalWorker

__all__ = ["FINAL_STATES", "AsyncOptions", "Job", "JobService", "JobState", "Jobs", "Outcome", "RunOutcome", "Sent"]


class RunsAndChecks(Pipeline, Preflight):
    """What jobs need of the pipeline: run a request, and check a graph before accepting it."""


@dataclass
class Jobs:
    service: JobService
    runner: Runner
    outbox: Outbox
    worker: LocalWorker | None
    sender: LocalSender | None
    queue: TaskQueue
    outbox_queue: OutboxQueue
    runtime: Runtime

    @classmethod
    def build(cls, settings: Settings, store: Store, queue: TaskQueue, outbox_queue: OutboxQueue,
              pipeline: RunsAndChecks, comfy: Readiness, templates: Any, runtime: Runtime) -> Jobs:
        instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        repo = JobRepo(store, keeps_line=not isinstance(queue, PullQueue))
        views = JobViews(settings, store, serves_outputs=isinstance(store, LocalStore))
        outbox = Outbox(settings, repo, views, outbox_queue)
        runner = Runner(settings, repo, pipeline, comfy, outbox, runtime, templates, instance_id)
        service = JobService(settings, repo, queue, views, outbox, runner, pipeline, templates)
        worker = LocalWorker(runner, queue, repo, comfy, runtime) if isinstance(queue, PullQueue) else None
        sender = (LocalSender(outbox, outbox_queue, settings, runtime.stopping)
                  if isinstance(outbox_queue, PullQueue) else None)
        return cls(service, runner, outbox, worker, sender, queue, outbox_queue, runtime)

    def start(self) -> None:
        self.runner.start()
        if self.sender is not None:
            self.outbox.recover()
            self.runtime.thread("webhook-outbox", self.sender.loop)
        if self.worker is not None:
            self.worker.start()

    def close(self) -> None:
        """After the runtime stopped: release the queues."""
        self.queue.close()
        self.outbox_queue.close()
