"""The runs in this process and their leases.

A run is known here from its claim to its end (`add`, `forget`), so a cancel or a shutdown can
stop it at once (`interrupt`, and every run on `stopping`). One thread renews every lease each
quarter of its life; a run whose lease was taken over, or lapsed without a successful renewal,
is stopped, since another delivery may own the job by then.

A run is `placed` from its claim; when ComfyUI starts executing its prompt, `started` (called on
ComfyUI's listener thread, so it only hands over) has one thread of its own write `running`: a
store write never holds the listener. The write is skipped when the run no longer owns the job
or the job is no longer placed (its final write came first: that write takes the start time
from the run, `ActiveRun.started_at`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from queue import SimpleQueue

from handler.jobs.model import Job, JobState, now
from handler.jobs.repo import JobRepo, LeaseLost, LeaveUnchanged
from handler.runtime import Runtime, Trigger

log = logging.getLogger("handler.jobs.leases")


@dataclass
class ActiveRun:
    token: str
    lease_expires_at: float
    cancel: Trigger = field(default_factory=Trigger)  # wakes the pipeline's wait at once
    why: str = ""  # cancel | shutdown | lease_lost
    started_at: float | None = None  # when ComfyUI began executing the run's prompt

    def stop(self, why: str) -> None:
        self.why = self.why or why
        self.cancel.set()


class Leases:
    def __init__(self, *, repo: JobRepo, runtime: Runtime, ttl_s: float):
        self.repo = repo
        self.runtime = runtime
        self.ttl_s = ttl_s
        self._active: dict[str, ActiveRun] = {}
        self._lock = threading.Lock()
        self._starts: SimpleQueue[tuple[str, ActiveRun] | None] = SimpleQueue()  # None: stop
        self._marker: threading.Thread | None = None
        runtime.on_stop(self._stop_all)

    def start(self) -> None:
        self.runtime.thread("job-leases", self._keep)

    def add(self, job_id: str, active: ActiveRun) -> None:
        with self._lock:
            self._active[job_id] = active

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._active.pop(job_id, None)

    def get(self, job_id: str) -> ActiveRun | None:
        with self._lock:
            return self._active.get(job_id)

    def interrupt(self, job_id: str) -> bool:
        """Stop a run of this job in this process; False when it does not run here."""
        active = self.get(job_id)
        if active is not None:
            active.stop("cancel")
        return active is not None

    def started(self, job_id: str, active: ActiveRun) -> None:
        """ComfyUI began executing this run's prompt: record `running` (on a thread of its own,
        started with the first such run)."""
        if active.started_at is not None:
            return
        active.started_at = now()
        with self._lock:
            if self._marker is None and not self.runtime.stopping.is_set():
                self._marker = self.runtime.thread("job-starts", self._mark_starts)
        self._starts.put((job_id, active))

    def _mark_starts(self) -> None:
        while (item := self._starts.get()) is not None:
            job_id, active = item
            try:
                self.mark_running(job_id, active)
            except Exception as exc:  # the job stays placed; its final write keeps the start time
                log.warning("job %s: could not record that it runs: %s", job_id, exc)

    def mark_running(self, job_id: str, active: ActiveRun) -> None:
        def change(job: Job) -> None:
            if job.state is not JobState.PLACED or not job.owned_by(active.token):
                raise LeaveUnchanged("not placed by this run")
            job.start(active.started_at or now())

        try:
            self.repo.update(job_id, change)
        except LeaveUnchanged:
            pass

    def _stop_all(self) -> None:
        self._starts.put(None)
        with self._lock:
            runs = list(self._active.values())
        for active in runs:
            active.stop("shutdown")

    def _keep(self) -> None:
        while not self.runtime.stopping.wait(self.ttl_s / 4):
            with self._lock:
                runs = dict(self._active)
            for job_id, active in runs.items():
                self.renew(job_id, active)

    def renew(self, job_id: str, active: ActiveRun) -> None:
        def change(job: Job) -> None:
            if not job.owned_by(active.token):
                raise LeaseLost(job_id)
            if job.cancel_requested:
                active.stop("cancel")  # recorded by another instance
            assert job.lease is not None
            job.lease.expires_at = now() + self.ttl_s

        try:
            job = self.repo.update(job_id, change)
            assert job.lease is not None
            active.lease_expires_at = job.lease.expires_at
        except LeaseLost:
            log.warning("job %s: lease lost; stopping this run", job_id)
            active.stop("lease_lost")
        except Exception as exc:
            # Renewals time out well inside the lease; once it lapsed, another delivery may
            # own the job, so this run stops rather than race it.
            if time.time() >= active.lease_expires_at - self.ttl_s / 8:
                log.warning("job %s: lease lapsed without a renewal (%s); stopping this run", job_id, exc)
                active.stop("lease_lost")
            else:
                log.warning("job %s: could not renew the lease: %s", job_id, exc)
