"""Webhooks as an outbox: a final job's event is recorded with it, then delivered by a queue.

When a job becomes final, the runner records `webhook.state = pending` in the same write and
then *announces* the job to the outbox queue (Cloud Tasks' webhooks queue, or a local SQLite
queue). A delivery is one signed POST: a 2xx or a permanent refusal ends it, anything else is
retried by the queue with backoff, so no GPU request ever waits on a receiver. Whatever is killed
when, the event is not lost: a job found final with its webhook pending (by a redelivered task,
or by the local scan at start) is announced again, and announcing is idempotent per job.

Every try carries the same `webhook-id`: receivers deduplicate on it (delivery is at least once).

With the local worker and a local outbox, the run's own thread makes the first try itself
(`announce(try_now=True)`), once its place in ComfyUI is given back, so the event skips a queue
write and a thread hop; only a try that fails is queued, ready after the first backoff. At most
`inline_tries` threads try at once, so receivers can never hold every job thread (the local
worker has twice as many threads as places in ComfyUI).
"""

from __future__ import annotations

import enum
import logging
import threading

from handler.config.cloud import CloudSettings
from handler.config.observability import ObservabilitySettings
from handler.config.urls import UrlSettings
from handler.config.webhooks import WebhookSettings
from handler.failpoints import Failpoints
from handler.jobs.model import Job, WebhookState, iso, now
from handler.jobs.repo import JobRepo, LeaveUnchanged
from handler.jobs.views import JobViews
from handler.net import webhooks
from handler.taskqueue import PullQueue, TaskQueue

log = logging.getLogger("handler.jobs.outbox")


class Sent(str, enum.Enum):
    DONE = "done"  # delivered, refused for good, or nothing to send
    RETRY = "retry"  # ask again later


class Outbox:
    def __init__(
        self,
        *,
        webhooks: WebhookSettings,
        urls: UrlSettings,
        cloud: CloudSettings,
        observability: ObservabilitySettings,
        repo: JobRepo,
        views: JobViews,
        queue: TaskQueue,
        inline_tries: int = 0,
    ):
        self.webhook_settings, self.urls, self.cloud = webhooks, urls, cloud
        self.repo = repo
        self.views = views
        self.queue = queue
        self.failpoints = Failpoints(observability.failpoint_kill)
        self._inline = threading.BoundedSemaphore(inline_tries) if inline_tries > 0 else None

    def announce(self, job: Job, *, try_now: bool = False) -> None:
        """Queue the job's event for delivery. Raises when the queue cannot take it. `try_now`:
        the caller's thread may make the first try (when inline tries are on and one is free);
        the event is queued only if that try did not settle it."""
        if not (job.webhook_url and job.final):
            return
        if try_now and self._inline is not None and self._inline.acquire(blocking=False):
            try:
                settled = self._deliver(job) is Sent.DONE
            except Exception as exc:  # the store hiccuped: the queue's retries take over
                log.warning("webhook of job %s: %s", job.job_id, exc)
                settled = False
            finally:
                self._inline.release()
            if settled:
                return
            drained = self.queue.pull_queue()
            if drained is not None:  # inline tries exist only then; the next waits its turn
                drained.enqueue(
                    job.job_id, "normal", delay_s=webhooks.backoff(self.webhook_settings.webhook_backoff_s, 1)
                )
                return
        self.queue.enqueue(job.job_id, "normal")

    def pending(self, job: Job) -> bool:
        return bool(job.webhook_url and job.final and (job.webhook or {}).get("state") == WebhookState.PENDING.value)

    def deliver(self, job_id: str) -> Sent:
        """One attempt at the job's webhook; records what happened on the job."""
        job = self.repo.find(job_id)
        return Sent.DONE if job is None else self._deliver(job)

    def _deliver(self, job: Job) -> Sent:
        job_id = job.job_id
        if not self.pending(job):
            return Sent.DONE
        assert job.webhook_url and job.webhook_id
        result = webhooks.attempt(
            job.webhook_url,
            self.views.event(job),
            webhooks=self.webhook_settings,
            urls=self.urls,
            cloud=self.cloud,
            webhook_id=job.webhook_id,
        )
        attempts = int((job.webhook or {}).get("attempts", 0)) + 1
        if result.delivered:
            self.failpoints.reach("delivered")
            state = WebhookState.DELIVERED
        elif not result.retryable or attempts >= self.webhook_settings.webhook_max_attempts:
            state = WebhookState.FAILED
            log.warning(
                "webhook %s of job %s failed for good after %d attempt(s): %s",
                job.webhook_id,
                job_id,
                attempts,
                result.error,
            )
        else:
            state = WebhookState.PENDING
            log.info(
                "webhook %s of job %s: attempt %d failed (%s); retried later",
                job.webhook_id,
                job_id,
                attempts,
                result.error,
            )

        def record(current: Job) -> None:
            if not self.pending(current):
                raise LeaveUnchanged("settled")  # a concurrent delivery settled it first
            current.webhook = {
                "state": state.value,
                "attempts": attempts,
                "last_status": result.status,
                "error": result.error,
                "delivered_at": iso(now()) if result.delivered else None,
            }

        try:
            self.repo.update(job_id, record)
        except LeaveUnchanged:
            return Sent.DONE
        return Sent.RETRY if state is WebhookState.PENDING else Sent.DONE


class LocalSender:
    """Drains the local outbox queue in one thread, with exponential backoff between tries."""

    def __init__(self, *, outbox: Outbox, queue: PullQueue, webhooks: WebhookSettings, stopping: threading.Event):
        self.outbox = outbox
        self.queue = queue
        self.webhook_settings = webhooks
        self.stopping = stopping

    def loop(self) -> None:
        while not self.stopping.is_set():
            claim = self.queue.next()  # None once the process stops
            if claim is None:
                continue
            try:
                sent = self.outbox.deliver(claim.job_id)
            except Exception as exc:  # the store hiccuped: try again soon
                log.warning("webhook of job %s: %s", claim.job_id, exc)
                sent = Sent.RETRY
            try:
                if sent is Sent.RETRY:
                    self.queue.release(
                        claim.job_id,
                        delay_s=webhooks.backoff(self.webhook_settings.webhook_backoff_s, claim.deliveries),
                    )
                else:
                    self.queue.done(claim.job_id)
            except Exception as exc:  # the queue closed at shutdown: the entry stays for the next start
                log.info("outbox bookkeeping skipped: %s", exc)
