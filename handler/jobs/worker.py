"""The local worker: drains the embedded queue into ComfyUI, in strict priority order.

It holds up to LOCAL_SLOTS jobs inside ComfyUI at once and frees a slot as soon as a job's
pipeline returns, before its outputs are stored, so ComfyUI always has the next prompt waiting.
Prompts enter ComfyUI's own queue by priority too (the pipeline numbers them), so a low job
handed over early never runs before a high one that arrives later.
"""

from __future__ import annotations

import functools
import logging
import threading

from ..runtime import Runtime
from ..taskqueue import Claim, PullQueue
from .model import JobState
from .repo import JobRepo
from .runner import Outcome, Readiness, Runner, RunOutcome

log = logging.getLogger("handler.jobs.worker")

LOCAL_SLOTS = 2  # one running, one waiting in ComfyUI's queue
READY_POLL_S = 0.1


class LocalWorker:
    def __init__(
        self,
        runner: Runner,
        queue: PullQueue,
        repo: JobRepo,
        comfy: Readiness,
        runtime: Runtime,
        slots: int = LOCAL_SLOTS,
    ):
        self.runner = runner
        self.queue = queue
        self.repo = repo
        self.comfy = comfy
        self.runtime = runtime
        self.slots = threading.Semaphore(slots)

    def start(self) -> None:
        self._recover()
        self.runtime.thread("job-dispatcher", self._loop)

    def _recover(self) -> None:
        """Queue again any unfinished job the store knows (a crash between write and enqueue)."""
        for key in self.repo.store.list("jobs/"):
            job = self.repo.find(key.removeprefix("jobs/").removesuffix(".json"))
            if job is not None and job.state in (JobState.QUEUED, JobState.RUNNING):
                self.queue.enqueue(job.job_id, job.priority)

    def _loop(self) -> None:
        stopping = self.runtime.stopping
        while not stopping.is_set():
            if not self.slots.acquire(timeout=0.5):
                continue
            # Do not burn attempts while ComfyUI boots or restarts.
            while not stopping.is_set() and not self.comfy.ready:
                stopping.wait(READY_POLL_S)
            claim = None if stopping.is_set() else self.queue.next(timeout=0.5)
            if claim is None:
                self.slots.release()
                continue
            self.runtime.thread(f"job-{claim.job_id[:8]}", functools.partial(self._work, claim))

    def _work(self, claim: Claim) -> None:
        freed = threading.Event()

        def free() -> None:
            if not freed.is_set():
                freed.set()
                self.slots.release()

        try:
            outcome = self.runner.run(claim.job_id, takeover=True, after_comfy=free)
        except Exception:
            log.exception("job %s: the run failed unexpectedly", claim.job_id)
            outcome = RunOutcome(Outcome.RETRY, detail="unexpected error")
        finally:
            free()
        try:
            if outcome.kind is Outcome.RETRY:
                attempts = outcome.job.attempts if outcome.job else claim.deliveries
                delay = 0.0 if self.runtime.stopping.is_set() else min(30.0, 0.5 * 2 ** max(0, attempts - 1))
                self.queue.release(claim.job_id, delay_s=delay)
            elif outcome.kind is Outcome.BUSY:
                self.queue.release(claim.job_id, delay_s=self.runner.lease_ttl_s / 4)
            else:
                self.queue.done(claim.job_id)
        except Exception as exc:  # the queue closed under us at shutdown: the claim resets on restart
            log.info("job %s: queue bookkeeping skipped: %s", claim.job_id, exc)
