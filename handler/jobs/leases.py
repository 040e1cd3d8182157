"""The runs in this process and their leases.

A run is known here from its claim to its end (`add`, `forget`), so a cancel or a shutdown can
stop it at once (`interrupt`, and every run on `stopping`). One thread renews every lease each
quarter of its life; a run whose lease was taken over, or lapsed without a successful renewal,
is stopped, since another delivery may own the job by then.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from handler.jobs.model import Job, now
from handler.jobs.repo import JobRepo, LeaseLost
from handler.runtime import Runtime, Trigger

log = logging.getLogger("handler.jobs.leases")


@dataclass
class ActiveRun:
    token: str
    lease_expires_at: float
    cancel: Trigger = field(default_factory=Trigger)  # wakes the pipeline's wait at once
    why: str = ""  # cancel | shutdown | lease_lost

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

    def _stop_all(self) -> None:
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
