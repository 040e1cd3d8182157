"""The local worker: drains the embedded queue into ComfyUI, in strict priority order.

It holds up to LOCAL_SLOTS jobs inside ComfyUI at once and frees a slot as soon as a job's
pipeline returns, before its outputs are stored, so ComfyUI always has the next prompt waiting.
Prompts enter ComfyUI's own queue by priority too (the pipeline numbers them), so a low job
handed over early never runs before a high one that arrives later.

One dispatcher thread takes a free slot, waits for the next job and hands it to one of
WORKER_THREADS long-lived threads, which runs it and stores its outputs (by then its slot serves
the next job): no thread is started per job, and each hand-off wakes exactly one thread. The
dispatcher waits on one event, set when a slot frees, when ComfyUI becomes ready and when the
service stops, or in the queue's `next`, which a stop ends too (`stop_waiting`): none polls.

A job submitted while ComfyUI has a free place and nothing waits in line starts at once
(`start_at_once`): it is created already claimed, one write instead of two, and goes straight to a
worker thread with the request its submit parsed, past the dispatcher and the queue's `next`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue

from handler import errors
from handler.jobs.leases import ActiveRun
from handler.jobs.model import Job
from handler.jobs.runner import Outcome, Readiness, Runner, RunOutcome
from handler.predict_request import PredictRequest
from handler.runtime import Runtime, link
from handler.taskqueue import Claim, PullQueue

log = logging.getLogger("handler.jobs.worker")

# One running and three waiting in ComfyUI's queue, so that a burst of bookkeeping in this
# process (submits, webhooks) never leaves ComfyUI without its next prompt. Waiting prompts
# are numbered by priority, so a later higher job still runs before them.
LOCAL_SLOTS = 4
# Twice the slots: a thread that gave its slot back still stores its run's outputs.
WORKER_THREADS = 2 * LOCAL_SLOTS


class Slots:
    """A count of free places in ComfyUI; `freed` is set each time one is given back."""

    def __init__(self, count: int, freed: threading.Event):
        self._free = count
        self._lock = threading.Lock()
        self.freed = freed

    def take(self) -> bool:
        with self._lock:
            if self._free == 0:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self._free += 1
        self.freed.set()


@dataclass(frozen=True)
class Started:
    """A new job claimed as it was created: its run, and the request its submit parsed."""

    claim: Claim
    job: Job
    active: ActiveRun
    request: PredictRequest


class LocalWorker:
    def __init__(
        self,
        *,
        runner: Runner,
        queue: PullQueue,
        comfy: Readiness,
        runtime: Runtime,
        slots: int = LOCAL_SLOTS,
        threads: int = WORKER_THREADS,
    ):
        self.runner = runner
        self.queue = queue
        self.comfy = comfy
        self.runtime = runtime
        # Set by a freed slot, by ComfyUI becoming ready and by `stopping` (linked in `_dispatch`).
        self._wake = threading.Event()
        self.slots = Slots(slots, self._wake)
        self.threads = threads
        self._claims: SimpleQueue[Claim | Started | None] = SimpleQueue()  # None: stop
        self._handing = threading.Lock()  # a started job is handed over before the threads' stop, or not at all
        self._closed = False

    def start(self) -> None:
        for n in range(self.threads):
            self.runtime.thread(f"job-worker-{n}", self._serve)
        self.runtime.thread("job-dispatcher", self._dispatch)

    def _dispatch(self) -> None:
        stopping, wake = self.runtime.stopping, self._wake
        try:
            with link(stopping, wake), self.comfy.notify_ready(wake):
                while not stopping.is_set():
                    wake.clear()  # cleared before the checks: a change after them ends the wait below
                    # Do not burn attempts while ComfyUI boots or restarts; at most LOCAL_SLOTS in it.
                    if not self._comfy_ready() or not self.slots.take():
                        wake.wait()
                        continue
                    claim = None if stopping.is_set() else self.queue.next()
                    if claim is None:
                        self.slots.give()
                        continue
                    if not self._comfy_ready():  # it went down while we waited for a job: not an attempt
                        self.queue.release(claim.job_id)
                        self.slots.give()
                        continue
                    self._claims.put(claim)
        finally:
            with self._handing:
                self._closed = True
                for _ in range(self.threads):
                    self._claims.put(None)

    def start_at_once(self, job: Job, request: PredictRequest, create: Callable[[], None]) -> bool:
        """Run a new job now if ComfyUI has a free place and nothing waits in line (strict
        priority holds: nothing is passed). `create` writes the job, already claimed. False: the
        caller creates and queues it the usual way."""
        if self.runtime.stopping.is_set() or not self._comfy_ready() or any(self.queue.pending().values()):
            return False
        if not self.slots.take():
            return False
        active = self.runner.claim_new(job)
        try:
            # Queued first, so a create that fails can take the entry back; a crash between the
            # two leaves an id without a job, which the run after a restart finds missing and drops.
            claim = self.queue.enqueue_claimed(job.job_id, job.priority)
        except Exception as exc:
            self._abandon(job)
            log.error("could not queue job %s: %s", job.job_id, exc)
            raise errors.ComfyUnavailable("the job queue is unavailable; try again shortly") from None
        try:
            create()
        except BaseException:
            self.queue.done(job.job_id)
            self._abandon(job)
            raise
        started = Started(claim, job, active, request)
        with self._handing:
            handed = not self._closed
            if handed:
                self._claims.put(started)
        if not handed:  # the job threads have stopped: this run hands the job back now, not counted
            self._work(started)
        return True

    def _abandon(self, job: Job) -> None:
        self.runner.forget(job.job_id)
        self.slots.give()

    def _serve(self) -> None:
        while (item := self._claims.get()) is not None:
            self._work(item)

    def _comfy_ready(self) -> bool:
        return self.comfy.ready  # a call, read afresh each time (it changes under us)

    def _work(self, item: Claim | Started) -> None:
        freed = threading.Event()
        claim = item.claim if isinstance(item, Started) else item

        def free() -> None:
            if not freed.is_set():
                freed.set()
                self.slots.give()

        try:
            if isinstance(item, Started):
                outcome = self.runner.run_claimed(item.job, item.active, item.request, after_comfy=free)
            else:
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
